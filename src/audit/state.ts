/**
 * The writer's state file (docs/AUDIT.md, "state"): binary, 88 bytes, replaced atomically.
 */
import fs from 'node:fs';
import path from 'node:path';
import { IntegrityError, KeywardError } from '../errors.js';
import { openOwnFile, writeFileAtomic } from '../lib/files.js';
import { readFdToSecure, secureFree, secureSlice, type SecureBuffer } from '../lib/secure.js';
import { BOX_PK_BYTES, KEY_BYTES } from './keys.js';

const MAGIC = Buffer.from('KWAUDST1', 'ascii');
export const STATE_BYTES = 8 + 4 + 8 + 4 + KEY_BYTES + BOX_PK_BYTES; // 88

export interface AuditState {
  epoch: number;
  epochStartMs: number;
  segment: number;
  /** K(epoch), in secure memory: the owner frees it. */
  key: SecureBuffer;
  boxPublicKey: Buffer;
}

export interface AuditPaths {
  dir: string;
  state: string;
  lock: string;
  checkpoint: string;
}

export function auditPaths(home: string): AuditPaths {
  const dir = path.join(home, 'audit');
  return {
    dir,
    state: path.join(dir, 'state'),
    lock: path.join(dir, 'lock'),
    checkpoint: path.join(dir, 'checkpoint'),
  };
}

export function segmentName(n: number): string {
  return `log-${String(n).padStart(6, '0')}.jsonl`;
}

export function unavailable(message: string, hint?: string): KeywardError {
  return new KeywardError('AUDIT_UNAVAILABLE', message, {
    hint: hint ?? 'nothing was released; run keyward doctor, or keyward audit verify',
  });
}

/** The errors of a write or fsync that mean the log can't be written now, as a person reads them. */
const UNWRITABLE: Partial<Record<string, string>> = {
  ENOSPC: 'no space left on its filesystem',
  EDQUOT: 'the disk quota is exhausted',
  EROFS: 'its filesystem is read-only',
  EIO: 'an I/O error',
  EFBIG: 'the segment is too large for its filesystem',
};

/**
 * A failed write or fsync as the requester should hear it: the errno named (nothing of the
 * entry), and nothing released until the log can be written. Other errors pass unchanged.
 */
export function unwritable(e: unknown): unknown {
  if (e instanceof KeywardError) return e;
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const what = code === undefined ? undefined : UNWRITABLE[code];
  if (what === undefined) return e;
  return new KeywardError(
    'AUDIT_UNAVAILABLE',
    `the audit log cannot be written (${code}: ${what}); nothing was released`,
    { hint: 'free space or fix the audit directory, then try again (keyward doctor)', cause: e },
  );
}

export function readState(p: AuditPaths): AuditState {
  let fd: number;
  try {
    fd = openOwnFile(p.state);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw unavailable(`the audit log has no state file (${p.state})`, 'run: keyward audit init');
    }
    throw e;
  }
  let raw: SecureBuffer;
  try {
    raw = readFdToSecure(fd, STATE_BYTES);
  } catch (e) {
    if (e instanceof RangeError) throw badState(p);
    throw e;
  } finally {
    fs.closeSync(fd);
  }
  try {
    // eslint-disable-next-line no-restricted-syntax -- the magic is public
    if (raw.length !== STATE_BYTES || !raw.subarray(0, 8).equals(MAGIC)) throw badState(p);
    return {
      epoch: raw.readUInt32BE(8),
      epochStartMs: Number(raw.readBigUInt64BE(12)),
      segment: raw.readUInt32BE(20),
      key: secureSlice(raw, 24, 24 + KEY_BYTES),
      boxPublicKey: Buffer.from(raw.subarray(24 + KEY_BYTES)),
    };
  } finally {
    secureFree(raw);
  }
}

function badState(p: AuditPaths): IntegrityError {
  return new IntegrityError('AUDIT_CHAIN_BROKEN', `the audit state file ${p.state} is damaged`, {
    hint: 'nothing was released; restore it from a backup or run keyward audit verify',
  });
}

/** Writes the state atomically; the previous key is gone from the file once this returns. */
export function writeState(p: AuditPaths, s: AuditState): void {
  const head = Buffer.alloc(24);
  MAGIC.copy(head, 0);
  head.writeUInt32BE(s.epoch, 8);
  head.writeBigUInt64BE(BigInt(s.epochStartMs), 12);
  head.writeUInt32BE(s.segment, 20);
  writeFileAtomic(p.state, [head, s.key, s.boxPublicKey]);
}
