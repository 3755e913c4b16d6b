/**
 * Talking to the agent. Whole operations, like the vault session: secret bytes in (a passphrase)
 * and out (a value) stay in secure memory here and never reach the CLI.
 */
import net from 'node:net';
import os from 'node:os';
import { ERROR_CODES, KeywardError, type ErrorCode } from '../errors.js';
import { secureFree, secureTake, writeAllSync, type SecureBuffer } from '../lib/secure.js';
import { readPassphrase, type PassphraseSource } from '../vault/index.js';
import {
  FrameReader,
  frameHead,
  REQ,
  RES_ERROR,
  RUN_SIGNALS,
  STREAM,
  type Frame,
  type RequestType,
} from './protocol.js';

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

/** One request, one response. The request's raw bytes are freed once sent. */
export function call(
  path: string,
  type: RequestType,
  meta: Record<string, unknown> = {},
  raw?: SecureBuffer,
): Promise<Frame> {
  return new Promise((resolve, reject) => {
    const reader = new FrameReader();
    const s = net.createConnection(path);
    let settled = false;
    const finish = (err: unknown, f?: Frame) => {
      if (settled) {
        secureFree(f?.raw);
        return;
      }
      settled = true;
      secureFree(raw);
      reader.destroy();
      s.destroy();
      if (err) reject(err);
      else if (f) resolve(f);
    };
    s.once('connect', () => {
      s.write(frameHead(REQ[type], meta, raw?.length ?? 0));
      if (raw && raw.length > 0) s.write(raw);
    });
    s.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = reader.push(chunk);
      } catch (e) {
        finish(malformed(e));
        return;
      }
      const f = frames[0];
      if (!f) return;
      if (f.type === RES_ERROR) {
        secureFree(f.raw);
        finish(errorFrom(f));
      } else finish(undefined, f);
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      finish(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? unavailable(path) : e);
    });
    s.on('close', () =>
      finish(new KeywardError('AGENT_UNAVAILABLE', 'the agent closed the connection')),
    );
  });
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

export async function agentUnlock(
  path: string,
  src: PassphraseSource,
  keyring: boolean,
): Promise<Record<string, unknown>> {
  if (keyring) return (await call(path, 'unlock', { keyring: true })).meta;
  return (await call(path, 'unlock', {}, readPassphrase(src))).meta;
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
  if (code !== undefined) await call(path, 'approve', { id, code });
  else await call(path, 'approve', { id }, readPassphrase(src, 'passphrase to approve: '));
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

export function agentRun(
  path: string,
  req: RunRequest & { mcp?: string },
  environ: Buffer,
  sinks?: RunSinks,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const reader = new FrameReader();
    reader.many = true;
    // The raw part: u32 argc, the arguments NUL-terminated, then the environment. An argument
    // holding a NUL would end early and pass its tail off as environment: refused.
    if (req.argv.some((x) => x.includes('\0'))) {
      reject(new KeywardError('USAGE', 'a command-line argument holds a NUL character'));
      return;
    }
    const argc = Buffer.alloc(4);
    argc.writeUInt32BE(req.argv.length);
    const args = Buffer.from(req.argv.map((a) => `${a}\0`).join(''), 'utf8');
    const raw = secureTake(Buffer.concat([argc, args, environ]));
    environ.fill(0);
    const meta: Record<string, unknown> = { ...req };
    delete meta['argv'];
    const s = net.createConnection(path);
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
      reader.destroy();
      s.destroy();
      if (err) reject(err);
      else resolve(code ?? 1);
    };
    s.once('connect', () => {
      s.write(frameHead(REQ.run, meta, raw.length));
      if (raw.length > 0) s.write(raw, () => secureFree(raw));
    });
    s.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = reader.push(chunk);
      } catch (e) {
        finish(malformed(e));
        return;
      }
      for (const f of frames) {
        try {
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
              continue;
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
            return;
          }
        } finally {
          secureFree(f.raw);
        }
      }
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      finish(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? unavailable(path) : e);
    });
    s.on('close', () =>
      finish(new KeywardError('AGENT_UNAVAILABLE', 'the agent closed the connection')),
    );
  });
}
