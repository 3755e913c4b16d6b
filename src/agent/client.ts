/**
 * Talking to the agent. Whole operations, like the vault session: secret bytes in (a passphrase)
 * and out (a value) stay in secure memory here and never reach the CLI.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import type net from 'node:net';
import { ERROR_CODES, KeywardError, type ErrorCode } from '../errors.js';
import { secureFree, secureRelease, type SecureBuffer } from '../lib/secure.js';
import { peerCredentials } from '../lib/libc.js';
import { runtimeState } from '../lib/runtime-guard.js';
import { asciiShown, printable } from '../lib/text.js';
import { processWide } from '../lib/once.js';
import { socketFd } from '../lib/socket-fd.js';
import {
  FrameReader,
  frameHead,
  inOneWrite,
  REQ,
  RES_ERROR,
  RES_HELLO,
  RES_PENDING,
  type Frame,
  type RequestType,
} from './protocol.js';
import { checkAgentSocket, socketPaths } from './socketdir.js';

const require = createRequire(import.meta.url);
/** node:net, loaded at first use: `keyward read` talks to the agent without it (read-blocking.ts). */
const nodeNet = (): typeof net => require('node:net') as typeof net;

/** Longer than the first identification of a new executable (hashing it) on a busy machine. */
export const HELLO_TIMEOUT_MS = 30_000;

/** Called once this process has been greeted by an agent (the CLI hardens itself there). */
let afterHello: () => void = () => undefined;
export function onAgentHello(f: () => void): void {
  afterHello = f;
}

/** The hook onAgentHello set, for a client that talks without AgentConnection (read-blocking.ts). */
export function greeted(): void {
  afterHello();
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

/** A RES_PENDING frame, told to the hook onApprovalPending set; its bytes are freed. */
export function notePending(f: Frame): void {
  secureFree(f.raw);
  onPending(pendingNotice(f));
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
  const { code, message, hint } = f.meta;
  // Own keys only: 'toString' or '__proto__' is in ERROR_CODES through its prototype, and its
  // exit code then no number (the command died with a stack trace). What the agent says is
  // shown with its control characters escaped: no terminal escape reaches the user's screen.
  return new KeywardError(
    typeof code === 'string' && Object.hasOwn(ERROR_CODES, code) ? (code as ErrorCode) : 'INTERNAL',
    typeof message === 'string' ? asciiShown(message) : 'the agent refused',
    typeof hint === 'string' ? { hint: asciiShown(hint) } : {},
  );
}

/**
 * Whether this process already found no agent answering at path (mark: it did). The blocking
 * read (read-blocking.ts) and main.ts's read are two copies of this module in one process (the
 * read path is a bundle of its own), so the mark is process-wide: a listener that never greeted
 * is waited for once, not twice.
 */
export function noAgentAt(path: string, mark = false): boolean {
  const set = processWide('noAgentAt', () => new Set<string>());
  if (mark) set.add(path);
  return set.has(path);
}

export const malformed = (e: unknown) =>
  new KeywardError(
    'PROTOCOL_ERROR',
    `the agent sent a malformed frame (${e instanceof Error ? e.message : 'unknown'})`,
  );

function unavailable(path: string): KeywardError {
  return new KeywardError('AGENT_UNAVAILABLE', `no agent answers on ${path}`, {
    hint: 'start one with: keyward agent start',
  });
}

/** The refusal of a listener that does not run as this user (SO_PEERCRED). */
export function notMine(path: string, peer: number | undefined, me: number): KeywardError {
  return new KeywardError(
    'AGENT_UNTRUSTED',
    `the process listening on ${path} runs as uid ${peer ?? 'unknown'}, not as you (${me})`,
    { hint: 'keyward sends nothing to it; find out who started it' },
  );
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
      const s = nodeNet().createConnection(path);
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
        if (peer !== me) fail(notMine(path, peer, me));
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
    const s = this.socket;
    inOneWrite(s, () => {
      s.write(frameHead(type, { ...meta, notify: true }, raw?.length ?? 0));
      // Given back to the pool once the kernel has it (lib/secure.ts): freed if not pooled.
      if (raw && raw.length > 0) s.write(raw, () => secureRelease(raw));
      else secureFree(raw);
    });
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

/**
 * Asks the agent to stop and waits until it has (a client's work: it loads none of the daemon's
 * code).
 */
export async function stopAgent(socketDir: string): Promise<boolean> {
  const sp = socketPaths(socketDir);
  // One connection, not a status check first: each costs the agent an identification.
  try {
    await call(sp.agent, 'stop');
  } catch (e) {
    if (e instanceof KeywardError && e.code === 'AGENT_UNAVAILABLE') return false;
    throw e;
  }
  // The socket goes last but one (then the lock, then the process): gone means stopped.
  for (let i = 0; i < 2500 && fs.existsSync(sp.agent); i++)
    await new Promise((r) => setTimeout(r, 2));
  return true;
}
