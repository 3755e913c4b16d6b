/**
 * The agent's requests as whole operations (docs/PROTOCOL.md), on client.ts's connection: unlock,
 * approve and the console's passphrase ask for it here; a read writes the value out from secure
 * memory; run streams a child's I/O. Secret bytes never reach the caller.
 */
import os from 'node:os';
import { KeywardError } from '../errors.js';
import { isValidName } from '../lib/names.js';
import { secureFree, secureTake, writeValueSync, type SecureBuffer } from '../lib/secure.js';
import type { PassphraseSource } from '../vault/index.js';
import { AgentConnection, call, errorFrom, jsonBody, malformed, noAgentAt } from './client.js';
import type { ServerRecord } from './mcp-pins.js';
import {
  frameHead,
  inOneWrite,
  REQ,
  RES_ERROR,
  RES_OK,
  RUN_SIGNALS,
  STREAM,
  writeFrame,
  type Frame,
  type RequestType,
} from './protocol.js';

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

/** After a run's time limit: SIGTERM, this long, SIGKILL, this long, then the call ends. */
const KILL_GRACE_MS = 5_000;

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
  const entries =
    jsonBody<{
      entries?: Array<{ name: string; size: number; created: string; updated: string }>;
    }>(await call(path, 'list', meta)).entries ?? [];
  // What a process posing as the agent says goes to the terminal: only what the vault can hold.
  for (const e of entries) {
    if (
      !isValidName(e.name) ||
      !Number.isSafeInteger(e.size) ||
      !isTimestamp(e.created) ||
      !isTimestamp(e.updated)
    )
      throw malformed(new Error('a listed entry is not a secret'));
  }
  return entries;
}

const isTimestamp = (t: unknown): t is string =>
  typeof t === 'string' && /^\d{4}-\d\d-\d\dT[\d:.]+Z$/.test(t);

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
  for (const k of keys) {
    if (
      !isValidName(k.name) ||
      typeof k.type !== 'string' ||
      !/^[a-z0-9@.-]{1,64}$/.test(k.type) ||
      !Number.isSafeInteger(k.bits) ||
      typeof k.publicBlob !== 'string'
    )
      throw malformed(new Error('a listed key is not a key'));
  }
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

/** Reads a secret through the agent and writes it to fd from secure memory, then wipes it. */
/**
 * Reads a secret through the agent and writes it to fd. False, with nothing sent, when no agent
 * answers on path (the caller may then read directly): one connection, no status round trip
 * first. An agent that answered and then failed is an error, never a fallback.
 */
export async function agentRead(
  path: string,
  name: string,
  fd: number,
  newline: boolean,
): Promise<boolean> {
  // The blocking read (quick.ts) waited for a greeting there already, and none came.
  if (noAgentAt(path)) return false;
  let conn: AgentConnection;
  try {
    conn = await AgentConnection.open(path, { sendsSecret: false });
  } catch (e) {
    if (e instanceof KeywardError && e.code === 'AGENT_UNAVAILABLE') return false;
    throw e;
  }
  try {
    conn.send(REQ.read, { name });
    writeReleased(await conn.next(), fd, newline);
    return true;
  } finally {
    conn.close();
  }
}

/**
 * A value of a sealed project file, opened by the agent (docs/PROJECT-FILES.md) and written to
 * fd from secure memory. The file's bytes are public; the agent names the value by the project
 * the file names.
 */
export async function agentProjectRead(
  path: string,
  file: Buffer,
  name: string,
  fd: number,
  newline: boolean,
): Promise<void> {
  writeReleased(
    await call(path, 'project', { op: 'read', name }, secureTake(Buffer.from(file))),
    fd,
    newline,
  );
}

/** A released value written to fd from secure memory (a newline after it when asked), then freed. */
export function writeReleased(f: Frame, fd: number, newline: boolean): void {
  try {
    // Only a value answers a request: a second greeting, or any other frame, is not one.
    if (f.type !== RES_OK)
      throw new KeywardError('PROTOCOL_ERROR', `the agent answered with frame type ${f.type}`);
    const whole = !f.raw || writeValueSync(fd, f.raw);
    if (whole && newline) writeValueSync(fd, Buffer.from('\n'));
  } finally {
    secureFree(f.raw);
  }
}

/** The agent's check of a sealed file: it opens (MAC, recipient); names, nothing decrypted. */
export async function agentProjectCheck(
  path: string,
  file: Buffer,
): Promise<Record<string, unknown>> {
  const f = await call(path, 'project', { op: 'check' }, secureTake(Buffer.from(file)));
  secureFree(f.raw);
  return f.meta;
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
  /** A sealed project file's bytes: each of its values goes to the child under its own name. */
  project?: Buffer;
  /** Placeholders for the child, the values put into its requests by a proxy (docs/PROXY.md). */
  proxy?: boolean;
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
  // A sealed project file (public bytes) goes last; projectBytes says where it begins.
  const project = req.project ?? Buffer.alloc(0);
  const raw = secureTake(Buffer.concat([argc, args, environ, project]));
  environ.fill(0);
  const meta: Record<string, unknown> = { ...req };
  delete meta['argv'];
  delete meta['project'];
  if (project.length > 0) meta['projectBytes'] = project.length;
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
      if (!s.destroyed) writeFrame(s, type, meta, data);
    };
    const onSignal = (sig: NodeJS.Signals) => send(STREAM.signal, { signal: sig });
    const onResize = () =>
      send(STREAM.resize, { rows: process.stdout.rows, cols: process.stdout.columns });
    // Under a pty, keys go to the child as typed (Ctrl-C included: its terminal makes the signal).
    const rawTerminal = !sinks && req.pty !== undefined && process.stdin.isTTY;
    let timer: NodeJS.Timeout | undefined;
    let restored = false;
    let stdoutGone = false;
    let stderrGone = false;
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
          // At the limit SIGTERM; a command that ignores it gets SIGKILL; one that left its
          // process group (setsid) no longer holds the call.
          if (sinks.timeoutMs !== undefined)
            timer = setTimeout(() => {
              onSignal('SIGTERM');
              timer = setTimeout(() => {
                onSignal('SIGKILL');
                timer = setTimeout(
                  () =>
                    finish(
                      new KeywardError(
                        'CANCELLED',
                        'the command did not end at its time limit, nor when killed',
                      ),
                    ),
                  KILL_GRACE_MS,
                );
              }, KILL_GRACE_MS);
            }, sinks.timeoutMs);
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
        else if (!stdoutGone && !writeValueSync(1, f.raw)) {
          // The reader went away (`keyward run ... | head`): the child gets SIGPIPE, as it would
          // have writing to that pipe itself, and what else it writes is dropped.
          stdoutGone = true;
          send(STREAM.signal, { signal: 'SIGPIPE' });
        }
      } else if (f.type === STREAM.stderr && f.raw) {
        if (sinks) sinks.stderr(Buffer.from(f.raw));
        else if (!stderrGone) stderrGone = !writeValueSync(2, f.raw);
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
      } catch (e) {
        // Output that could not be written (no space, an I/O error): the run's error.
        finish(e);
      } finally {
        secureFree(n.frame.raw);
      }
    });
    inOneWrite(s, () => {
      s.write(frameHead(REQ.run, { ...meta, notify: true }, raw.length));
      if (raw.length > 0) s.write(raw, () => secureFree(raw));
    });
  });
}
