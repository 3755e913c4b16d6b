/**
 * Talking to the agent. Whole operations, like the vault session: secret bytes in (a passphrase)
 * and out (a value) stay in secure memory here and never reach the CLI.
 */
import net from 'node:net';
import { ERROR_CODES, KeywardError, type ErrorCode } from '../errors.js';
import { secureFree, writeAllSync, type SecureBuffer } from '../lib/secure.js';
import { readPassphrase, type PassphraseSource } from '../vault/index.js';
import {
  FrameReader,
  frameHead,
  REQ,
  RES_ERROR,
  type Frame,
  type RequestType,
} from './protocol.js';

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
        finish(
          new KeywardError(
            'PROTOCOL_ERROR',
            `the agent sent a malformed frame (${e instanceof Error ? e.message : 'unknown'})`,
          ),
        );
        return;
      }
      const f = frames[0];
      if (!f) return;
      if (f.type === RES_ERROR) {
        secureFree(f.raw);
        const code =
          typeof f.meta['code'] === 'string' && f.meta['code'] in ERROR_CODES
            ? (f.meta['code'] as ErrorCode)
            : 'INTERNAL';
        const hint = typeof f.meta['hint'] === 'string' ? f.meta['hint'] : undefined;
        finish(
          new KeywardError(
            code,
            String(f.meta['message'] ?? 'the agent refused'),
            hint === undefined ? {} : { hint },
          ),
        );
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
