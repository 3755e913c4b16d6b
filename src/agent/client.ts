/**
 * Talking to the agent. Whole operations, like the vault session: secret bytes in (a passphrase)
 * and out (a value) stay in secure memory here and never reach the CLI.
 */
import net from 'node:net';
import os from 'node:os';
import type { ServerRecord } from './mcp-pins.js';
import { ERROR_CODES, KeywardError, type ErrorCode } from '../errors.js';
import { secureFree, secureTake, writeAllSync, type SecureBuffer } from '../lib/secure.js';
import type { PassphraseSource } from '../vault/index.js';
import { peerCredentials } from '../lib/libc.js';
import { runtimeState } from '../lib/runtime-guard.js';
import { printable } from '../lib/text.js';
import { socketFd } from './peer.js';
import {
  FrameReader,
  frameHead,
  REQ,
  RES_ERROR,
  RES_HELLO,
  RES_PENDING,
  RUN_SIGNALS,
  STREAM,
  type Frame,
  type RequestType,
} from './protocol.js';
import { checkAgentSocket } from './socketdir.js';

/** Longer than the first identification of a new executable (hashing it) on a busy machine. */
const HELLO_TIMEOUT_MS = 30_000;

/** Called once this process has been greeted by an agent (the CLI hardens itself there). */
let afterHello: () => void = () => undefined;
export function onAgentHello(f: () => void): void {
  afterHello = f;
}

/** What the agent says while a request waits for a person (RES_PENDING). */
export interface PendingNotice {
  id: string;
  mode: string;
  action: string;
  target: string;
  timeoutMs: number;
  console: string | null;
}

/** Called when a request of this process waits for a person (the CLI says so on stderr). */
let onPending: (n: PendingNotice) => void = () => undefined;
export function onApprovalPending(f: (n: PendingNotice) => void): void {
  onPending = f;
}

function pendingNotice(f: Frame): PendingNotice {
  const m = f.meta;
  const s = (k: string) => (typeof m[k] === 'string' ? printable(m[k], 200) : '');
  return {
    id: s('id'),
    mode: s('mode'),
    action: s('action'),
    target: s('target'),
    timeoutMs: typeof m['timeoutMs'] === 'number' ? m['timeoutMs'] : 0,
    console: typeof m['console'] === 'string' ? printable(m['console'], 200) : null,
  };
}

/** The KeywardError an error reply carries (its code, message and hint). */
export function errorFrom(f: Frame): KeywardError {
  const code =
    typeof f.meta['code'] === 'string' && f.meta['code'] in ERROR_CODES
      ? (f.meta['code'] as ErrorCode)
      : 'INTERNAL';
  const hint = typeof f.meta['hint'] === 'string' ? f.meta['hint'] : undefined;
  return new KeywardError(
    code,
    String(f.meta['message'] ?? 'the agent refused'),
    hint === undefined ? {} : { hint },
  );
}

const malformed = (e: unknown) =>
  new KeywardError(
    'PROTOCOL_ERROR',
    `the agent sent a malformed frame (${e instanceof Error ? e.message : 'unknown'})`,
  );

function unavailable(path: string): KeywardError {
  return new KeywardError('AGENT_UNAVAILABLE', `no agent answers on ${path}`, {
    hint: 'start one with: keyward agent start',
  });
}

/** A frame the client got, or the end of the connection. */
type Next = { frame: Frame } | { error: unknown };

/**
 * A connection to an agent the client has checked (docs/PROTOCOL.md, "Trusting the agent"):
 * the socket's directory and the socket are this user's and nobody else can write there; the
 * listening process runs as this user (SO_PEERCRED); and it greeted as a keyward agent. A
 * connection that will carry a secret from here (a passphrase, a run's environment, bytes to
 * scan) also needs an agent that can't be debugged, unless this process has --allow-debugger.
 * Failing any check: AGENT_UNTRUSTED (exit 8), nothing sent.
 */
export class AgentConnection {
  private readonly queue: Next[] = [];
  private waiter: ((n: Next) => void) | undefined;
  private handler: ((n: Next) => void) | undefined;
  private ended = false;

  private constructor(
    readonly socket: net.Socket,
    private readonly reader: FrameReader,
    readonly hello: Record<string, unknown>,
  ) {}

  static open(path: string, o: { sendsSecret: boolean }): Promise<AgentConnection> {
    checkAgentSocket(path);
    return new Promise((resolve, reject) => {
      const reader = new FrameReader();
      // The agent never sends two frames at once outside a run, but a client has no reason to
      // refuse it: the one-request-at-a-time rule protects the agent.
      reader.many = true;
      const s = net.createConnection(path);
      let conn: AgentConnection | undefined;
      let settled = false;
      const fail = (e: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reader.destroy();
        s.destroy();
        reject(e);
      };
      const timer = setTimeout(
        () => fail(new KeywardError('AGENT_UNAVAILABLE', `the agent on ${path} did not answer`)),
        HELLO_TIMEOUT_MS,
      );
      timer.unref();
      s.once('connect', () => {
        const fd = socketFd(s);
        const me = process.geteuid?.() ?? -1;
        let peer: number | undefined;
        try {
          if (fd !== undefined) peer = peerCredentials(fd).uid;
        } catch {
          peer = undefined;
        }
        if (peer !== me)
          fail(
            new KeywardError(
              'AGENT_UNTRUSTED',
              `the process listening on ${path} runs as uid ${peer ?? 'unknown'}, not as you (${me})`,
              { hint: 'keyward sends nothing to it; find out who started it' },
            ),
          );
      });
      s.on('data', (chunk: Buffer) => {
        let frames: Frame[];
        try {
          frames = reader.push(chunk);
        } catch (e) {
          if (conn) conn.deliver({ error: malformed(e) });
          else fail(malformed(e));
          return;
        }
        for (const f of frames) {
          if (conn) {
            conn.deliver({ frame: f });
            continue;
          }
          if (f.type !== RES_HELLO || f.meta['agent'] !== 'keyward') {
            secureFree(f.raw);
            fail(
              new KeywardError('PROTOCOL_ERROR', `what answers on ${path} is not a keyward agent`),
            );
            return;
          }
          const debuggable = Array.isArray(f.meta['debuggable']) ? f.meta['debuggable'] : [];
          if (o.sendsSecret && debuggable.length > 0 && !runtimeState.allowed) {
            fail(
              new KeywardError(
                'AGENT_UNTRUSTED',
                `the agent can be debugged (${debuggable.map((d) => printable(String(d), 200)).join('; ')}); keyward sends it no secret`,
                {
                  hint: 'restart it with keyward agent stop && keyward agent start, or pass --allow-debugger if you debug it yourself',
                },
              ),
            );
            return;
          }
          settled = true;
          clearTimeout(timer);
          conn = new AgentConnection(s, reader, f.meta);
          afterHello();
          resolve(conn);
        }
      });
      s.on('error', (e: NodeJS.ErrnoException) => {
        const err = e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? unavailable(path) : e;
        if (conn) conn.deliver({ error: err });
        else fail(err);
      });
      s.on('close', () => {
        const err = new KeywardError('AGENT_UNAVAILABLE', 'the agent closed the connection');
        if (conn) conn.deliver({ error: err });
        else fail(err);
      });
    });
  }

  private deliver(n: Next): void {
    if (this.ended) {
      if ('frame' in n) secureFree(n.frame.raw);
      return;
    }
    // A notice, not a reply: the request waits for a person; its reply comes later.
    if ('frame' in n && n.frame.type === RES_PENDING) {
      secureFree(n.frame.raw);
      onPending(pendingNotice(n.frame));
      return;
    }
    if ('error' in n) this.ended = true;
    if (this.handler) this.handler(n);
    else if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w(n);
    } else this.queue.push(n);
  }

  /**
   * Writes a request; the raw bytes are freed once the kernel has them. Every request asks to
   * hear at once when it waits for a person (notify: frame 0x83, handled in deliver()).
   */
  send(type: number, meta: Record<string, unknown>, raw?: SecureBuffer): void {
    if (this.socket.destroyed) {
      secureFree(raw);
      return;
    }
    this.socket.write(frameHead(type, { ...meta, notify: true }, raw?.length ?? 0));
    if (raw && raw.length > 0) this.socket.write(raw, () => secureFree(raw));
    else secureFree(raw);
  }

  /** The next frame from the agent; an error reply rejects with its KeywardError. */
  async next(): Promise<Frame> {
    const n = this.queue.shift() ?? (await new Promise<Next>((resolve) => (this.waiter = resolve)));
    if ('error' in n) throw n.error;
    if (n.frame.type === RES_ERROR) {
      secureFree(n.frame.raw);
      throw errorFrom(n.frame);
    }
    return n.frame;
  }

  /** From now on every frame (and the end) goes to h, as it arrives: a run's streams. */
  onEach(h: (n: Next) => void): void {
    this.handler = h;
    for (const n of this.queue.splice(0)) h(n);
  }

  close(): void {
    this.ended = true;
    for (const n of this.queue.splice(0)) if ('frame' in n) secureFree(n.frame.raw);
    this.reader.destroy();
    this.socket.destroy();
  }
}

/** Requests that carry a secret from the client, even with no raw bytes at hand. */
const SENDS_SECRET = new Set<RequestType>(['unlock', 'approve', 'run', 'mcp']);

/** One request, one response. The request's raw bytes are freed once sent (or on failure). */
export async function call(
  path: string,
  type: RequestType,
  meta: Record<string, unknown> = {},
  raw?: SecureBuffer,
): Promise<Frame> {
  let conn: AgentConnection;
  try {
    conn = await AgentConnection.open(path, {
      sendsSecret: raw !== undefined || SENDS_SECRET.has(type),
    });
  } catch (e) {
    secureFree(raw);
    throw e;
  }
  try {
    conn.send(REQ[type], meta, raw);
    return await conn.next();
  } finally {
    conn.close();
  }
}

/** The agent's status, or undefined when none answers. */
export async function agentStatus(path: string): Promise<Record<string, unknown> | undefined> {
  try {
    return (await call(path, 'status')).meta;
  } catch (e) {
    if (e instanceof KeywardError && e.code === 'AGENT_UNAVAILABLE') return undefined;
    throw e;
  }
}

/**
 * One request that carries the passphrase. The connection comes first: the agent identifies this
 * process while it can still be read, and only then is the passphrase read (which hardens it).
 */
/** The vault's passphrase reading, loaded only by the commands that ask for one. */
const vault = () => import('../vault/index.js');

async function withPassphrase(
  path: string,
  type: RequestType,
  meta: Record<string, unknown>,
  read: () => SecureBuffer,
): Promise<Frame> {
  const conn = await AgentConnection.open(path, { sendsSecret: true });
  try {
    conn.send(REQ[type], meta, read());
    return await conn.next();
  } finally {
    conn.close();
  }
}

/**
 * The console request (docs/PROTOCOL.md): credentials answers as it is; rename and revoke carry
 * the passphrase, asked here.
 */
export async function agentConsole(
  path: string,
  meta: { op: 'credentials' } | { op: 'rename' | 'revoke'; id: string; name?: string },
  src?: PassphraseSource,
): Promise<Record<string, unknown>> {
  if (meta.op === 'credentials') return (await call(path, 'console', meta)).meta;
  const { readPassphrase } = await vault();
  const f = await withPassphrase(path, 'console', meta, () =>
    readPassphrase(src ?? {}, `passphrase to ${meta.op} the credential: `),
  );
  return f.meta;
}

export async function agentUnlock(
  path: string,
  src: PassphraseSource,
  keyring: boolean,
  onNote?: (m: string) => void,
): Promise<Record<string, unknown>> {
  if (keyring) return (await call(path, 'unlock', { keyring: true })).meta;
  const { readPassphrase, TERMINAL_TRIES } = await vault();
  // Three tries on a terminal, one from a file; the agent records each failure and counts it.
  for (let attempt = 1; ; attempt++) {
    try {
      return (await withPassphrase(path, 'unlock', {}, () => readPassphrase(src))).meta;
    } catch (e) {
      const wrong = e instanceof KeywardError && e.code === 'VAULT_BAD_PASSPHRASE';
      if (!wrong || src.file !== undefined || attempt >= TERMINAL_TRIES) throw e;
      onNote?.(`wrong passphrase; try again (${attempt + 1} of ${TERMINAL_TRIES})`);
    }
  }
}

/** The pending approval requests, whole (`keyward approvals`). */
export async function agentApprovals(path: string): Promise<Array<Record<string, unknown>>> {
  const f = await call(path, 'approvals');
  try {
    const list: unknown = f.raw ? JSON.parse(Buffer.from(f.raw).toString('utf8')) : [];
    if (!Array.isArray(list)) throw new Error('not a list');
    return list as Array<Record<string, unknown>>;
  } catch (e) {
    throw malformed(e);
  } finally {
    secureFree(f.raw);
  }
}

/** The vault's names and metadata (size, created, updated: never values), from the agent. */
export async function agentList(
  path: string,
  meta: Record<string, unknown> = {},
): Promise<Array<{ name: string; size: number; created: string; updated: string }>> {
  return (
    jsonBody<{
      entries?: Array<{ name: string; size: number; created: string; updated: string }>;
    }>(await call(path, 'list', meta)).entries ?? []
  );
}

/**
 * The vault's signing keys (names and public halves), from the agent. `quiet`: only if the
 * policy allows the list outright, else undefined (no prompt, no denial recorded).
 */
export async function agentKeys(
  path: string,
  quiet = false,
): Promise<Array<{ name: string; type: string; bits: number; publicBlob: Buffer }> | undefined> {
  const f = await call(path, 'list', { kind: 'keys', ...(quiet ? { quiet } : {}) });
  if (f.meta['withheld'] === true) {
    secureFree(f.raw);
    return undefined;
  }
  const keys =
    jsonBody<{ keys?: Array<{ name: string; type: string; bits: number; publicBlob: string }> }>(f)
      .keys ?? [];
  return keys.map((k) => ({ ...k, publicBlob: Buffer.from(k.publicBlob, 'base64') }));
}

/** The MCP pin record (hashes and dates, nothing secret) of one server or all, from the agent. */
export async function agentMcpPins(
  path: string,
  server?: string,
): Promise<Record<string, ServerRecord>> {
  const f = await call(path, 'mcp', { op: 'pins', ...(server === undefined ? {} : { server }) });
  return jsonBody<{ servers?: Record<string, ServerRecord> }>(f).servers ?? {};
}

/**
 * A reply whose body is JSON that holds nothing secret (names, hashes, metadata), parsed; the
 * body is freed. An empty body is an empty object.
 */
export function jsonBody<T extends object>(f: Frame): T {
  try {
    return (f.raw && f.raw.length > 0 ? JSON.parse(f.raw.toString('utf8')) : {}) as T;
  } finally {
    secureFree(f.raw);
  }
}

/** Reads a secret through the agent and writes it to fd from secure memory, then wipes it. */
export async function agentRead(
  path: string,
  name: string,
  fd: number,
  newline: boolean,
): Promise<void> {
  const f = await call(path, 'read', { name });
  try {
    if (f.raw) writeAllSync(fd, f.raw);
    if (newline) writeAllSync(fd, Buffer.from('\n'));
  } finally {
    secureFree(f.raw);
  }
}

/** Approves with a TOTP code when one is given, else with the passphrase. */
export async function agentApprove(
  path: string,
  id: string,
  src: PassphraseSource,
  code?: string,
): Promise<void> {
  if (code !== undefined) {
    await call(path, 'approve', { id, code });
    return;
  }
  const { readPassphrase } = await vault();
  await withPassphrase(path, 'approve', { id }, () =>
    readPassphrase(src, 'passphrase to approve: '),
  );
}

export interface RunRequest {
  argv: string[];
  cwd: string;
  env: Array<{ var: string; name: string }>;
  fds: Array<{ fd: number; name: string }>;
  masking: boolean;
  /** This process's stdout is a terminal of this size: the child runs under a pty. */
  pty?: { rows: number; cols: number };
}

/**
 * `keyward run` (docs/RUN.md): the agent starts the child; this process relays its own stdin and
 * signals to it and writes the child's (masked) output to its own stdout and stderr. Resolves to
 * the exit status a shell would report (128 + N for a child killed by signal N). `environ` is
 * this process's environment as NAME=VALUE\0 entries (wiped once sent).
 */
/**
 * Where a run's output goes when it is not this process's own terminal (keyward mcp serve):
 * sinks for the masked output, no stdin, no signal forwarding, an optional time limit.
 */
export interface RunSinks {
  stdout(data: Buffer): void;
  stderr(data: Buffer): void;
  /** After this long the child's group gets SIGTERM. */
  timeoutMs?: number;
}

export async function agentRun(
  path: string,
  req: RunRequest & { mcp?: string },
  environ: Buffer,
  sinks?: RunSinks,
): Promise<number> {
  // The raw part: u32 argc, the arguments NUL-terminated, then the environment. An argument
  // holding a NUL would end early and pass its tail off as environment: refused.
  if (req.argv.some((x) => x.includes('\0'))) {
    environ.fill(0);
    throw new KeywardError('USAGE', 'a command-line argument holds a NUL character');
  }
  const argc = Buffer.alloc(4);
  argc.writeUInt32BE(req.argv.length);
  const args = Buffer.from(req.argv.map((a) => `${a}\0`).join(''), 'utf8');
  const raw = secureTake(Buffer.concat([argc, args, environ]));
  environ.fill(0);
  const meta: Record<string, unknown> = { ...req };
  delete meta['argv'];
  let conn: AgentConnection;
  try {
    conn = await AgentConnection.open(path, { sendsSecret: true });
  } catch (e) {
    secureFree(raw);
    throw e;
  }
  const s = conn.socket;
  return new Promise((resolve, reject) => {
    let started = false;
    let settled = false;
    const send = (type: number, meta: Record<string, unknown>, data?: Buffer) => {
      if (s.destroyed) return;
      s.write(frameHead(type, meta, data?.length ?? 0));
      if (data && data.length > 0) s.write(data);
    };
    const onSignal = (sig: NodeJS.Signals) => send(STREAM.signal, { signal: sig });
    const onResize = () =>
      send(STREAM.resize, { rows: process.stdout.rows, cols: process.stdout.columns });
    // Under a pty, keys go to the child as typed (Ctrl-C included: its terminal makes the signal).
    const rawTerminal = !sinks && req.pty !== undefined && process.stdin.isTTY;
    let timer: NodeJS.Timeout | undefined;
    let restored = false;
    const restore = () => {
      if (rawTerminal && !restored) {
        restored = true;
        process.stdin.setRawMode(false);
      }
    };
    const onStdin = (chunk: Buffer) => {
      send(STREAM.stdin, {}, chunk);
      // What was typed (a password, say) is not kept in this process once it is on its way.
      s.write(Buffer.alloc(0), () => chunk.fill(0));
    };
    const onStdinEnd = () => send(STREAM.stdinEnd, {});
    const finish = (err: unknown, code?: number) => {
      if (settled) return;
      settled = true;
      secureFree(raw);
      clearTimeout(timer);
      if (!sinks) {
        for (const sig of RUN_SIGNALS) process.off(sig, onSignal);
        process.off('SIGWINCH', onResize);
        restore();
        process.stdin.off('data', onStdin);
        process.stdin.off('end', onStdinEnd);
        process.stdin.pause();
        process.stdin.destroy();
      }
      conn.close();
      if (err) reject(err);
      else resolve(code ?? 1);
    };
    const onFrame = (f: Frame) => {
      if (!started) {
        if (f.type === RES_ERROR) {
          finish(errorFrom(f));
          return;
        }
        started = true;
        if (sinks) {
          // No input; a time limit if asked.
          send(STREAM.stdinEnd, {});
          if (sinks.timeoutMs !== undefined)
            timer = setTimeout(() => onSignal('SIGTERM'), sinks.timeoutMs);
          return;
        }
        // From here Ctrl-C and friends go to the child, as if it were this process.
        for (const sig of RUN_SIGNALS) process.on(sig, onSignal);
        if (req.pty) process.on('SIGWINCH', onResize);
        if (rawTerminal) process.stdin.setRawMode(true);
        process.stdin.on('data', onStdin);
        process.stdin.on('end', onStdinEnd);
        process.stdin.on('error', onStdinEnd);
      } else if (f.type === STREAM.stdout && f.raw) {
        if (sinks) sinks.stdout(Buffer.from(f.raw));
        else writeAllSync(1, f.raw);
      } else if (f.type === STREAM.stderr && f.raw) {
        if (sinks) sinks.stderr(Buffer.from(f.raw));
        else writeAllSync(2, f.raw);
      } else if (f.type === STREAM.exit) {
        const code = f.meta['code'];
        const signal = f.meta['signal'];
        const signo =
          typeof signal === 'string'
            ? (os.constants.signals as Record<string, number>)[signal]
            : undefined;
        finish(undefined, typeof code === 'number' ? code : 128 + (signo ?? 0));
      }
    };
    conn.onEach((n) => {
      if ('error' in n) {
        finish(n.error);
        return;
      }
      try {
        if (!settled) onFrame(n.frame);
      } finally {
        secureFree(n.frame.raw);
      }
    });
    s.write(frameHead(REQ.run, { ...meta, notify: true }, raw.length));
    if (raw.length > 0) s.write(raw, () => secureFree(raw));
  });
}
