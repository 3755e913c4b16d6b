/**
 * The writer's state file (docs/AUDIT.md, "state"): binary, 88 bytes, replaced atomically; and
 * a new log's start (startLog), which moves a log already there aside first.
 */
import fs from 'node:fs';
import path from 'node:path';
import { IntegrityError, KeywardError } from '../errors.js';
import {
  diskFailure,
  ensurePrivateDir,
  fileKey,
  openOwnFile,
  problemOf,
  refuseIfProblem,
  writeFileAtomic,
} from '../lib/files.js';
import {
  readFdToSecure,
  secureAlloc,
  secureEqual,
  secureFree,
  secureSlice,
  zero,
  type SecureBuffer,
} from '../lib/secure.js';
import { BOX_PK_BYTES, epochZeroKey, KEY_BYTES } from './keys.js';

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

/**
 * A failed write or fsync as the requester should hear it: the errno named (nothing of the
 * entry), and nothing released until the log can be written. Other errors pass unchanged.
 */
export function unwritable(e: unknown): unknown {
  if (e instanceof KeywardError) return e;
  const why = diskFailure(e);
  if (why === undefined) return e;
  return new KeywardError(
    'AUDIT_UNAVAILABLE',
    `the audit log cannot be written (${why}); nothing was released`,
    { hint: 'free space or fix the audit directory, then try again (keyward doctor)', cause: e },
  );
}

export function readState(p: AuditPaths): AuditState {
  const held = readStateHeld(p);
  fs.closeSync(held.fd);
  return held.st;
}

/**
 * The state, with the descriptor it was read through (the caller closes it) and that file's
 * stamp, taken before the read: the file a later check of the path's stamp and of these bytes
 * is about.
 */
export function readStateHeld(p: AuditPaths): { st: AuditState; fd: number; stamp: string } {
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
  let stamp: string;
  try {
    stamp = fileKey(fs.fstatSync(fd, { bigint: true }));
    raw = readFdToSecure(fd, STATE_BYTES);
  } catch (e) {
    fs.closeSync(fd);
    if (e instanceof RangeError) throw badState(p);
    throw e;
  }
  try {
    // eslint-disable-next-line no-restricted-syntax -- the magic is public
    if (raw.length !== STATE_BYTES || !raw.subarray(0, 8).equals(MAGIC)) throw badState(p);
    const st = {
      epoch: raw.readUInt32BE(8),
      epochStartMs: Number(raw.readBigUInt64BE(12)),
      segment: raw.readUInt32BE(20),
      key: secureSlice(raw, 24, 24 + KEY_BYTES),
      boxPublicKey: Buffer.from(raw.subarray(24 + KEY_BYTES)),
    };
    return { st, fd, stamp };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  } finally {
    secureFree(raw);
  }
}

function badState(p: AuditPaths): IntegrityError {
  return new IntegrityError('AUDIT_CHAIN_BROKEN', `the audit state file ${p.state} is damaged`, {
    hint: 'nothing was released; restore it from a backup or run keyward audit verify',
  });
}

/**
 * The state file a long-running writer read (readStateHeld), held open: its stamp (the path's
 * must still be it) and its bytes (they must still be the state the writer keeps) are checked at
 * each batch, so neither a write(2), a rename nor a write through a shared mapping goes unseen.
 */
export class HeldState {
  private scratch: SecureBuffer | undefined;

  constructor(
    private stamp: string,
    private fd: number | undefined,
  ) {}

  /** Whether the path's stamp is the held file's, and the file still holds st. */
  still(pathStamp: string | undefined, st: AuditState): boolean {
    return (
      pathStamp !== undefined &&
      pathStamp === this.stamp &&
      this.fd !== undefined &&
      stateStill(this.fd, st, (this.scratch ??= secureAlloc(STATE_BYTES + 1)))
    );
  }

  /**
   * After the writer replaced the file: the stamp and the descriptor are the new file's, both of
   * one open (a file put in its place since is another stamp, or other bytes). Neither when it
   * can't be opened: the state is read again at the next batch.
   */
  rewritten(file: string): void {
    this.closeFd();
    this.stamp = '';
    try {
      this.fd = openOwnFile(file);
      this.stamp = fileKey(fs.fstatSync(this.fd, { bigint: true }));
    } catch {
      // Read again at the next batch.
    }
  }

  close(): void {
    this.closeFd();
    secureFree(this.scratch);
    this.scratch = undefined;
  }

  private closeFd(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}

/**
 * Whether the state file open at fd still holds s, byte for byte (read into scratch, of
 * STATE_BYTES + 1 bytes in secure memory, zeroed after): a write through a shared mapping changes
 * the bytes without the file's stat (tmpfs; ext4 once its page is dirty), so a writer that knows
 * the state by its stamp checks the bytes too, at every batch.
 */
function stateStill(fd: number, s: AuditState, scratch: SecureBuffer): boolean {
  try {
    const n = fs.readSync(fd, scratch, 0, scratch.length, 0);
    return (
      n === STATE_BYTES &&
      // eslint-disable-next-line no-restricted-syntax -- the magic is public
      scratch.subarray(0, 8).equals(MAGIC) &&
      scratch.readUInt32BE(8) === s.epoch &&
      Number(scratch.readBigUInt64BE(12)) === s.epochStartMs &&
      scratch.readUInt32BE(20) === s.segment &&
      secureEqual(scratch.subarray(24, 24 + KEY_BYTES), s.key) &&
      // eslint-disable-next-line no-restricted-syntax -- a public key
      scratch.subarray(24 + KEY_BYTES, STATE_BYTES).equals(s.boxPublicKey)
    );
  } catch {
    return false;
  } finally {
    zero(scratch);
  }
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

/**
 * Starts the log for a new vault: epoch 0 from the seed, no entries yet. Any log already in the
 * directory is moved aside first (audit.bak-TIME), never deleted; returns where it went.
 */
export function startLog(
  p: AuditPaths,
  seed: SecureBuffer,
  boxPublicKey: Buffer,
  now: Date,
): string | undefined {
  let moved: string | undefined;
  if (fs.existsSync(p.dir)) {
    moved = `${p.dir}.bak-${now.toISOString().replace(/[:.]/g, '-')}`;
    fs.renameSync(p.dir, moved);
  }
  ensurePrivateDir(p.dir);
  const key = epochZeroKey(seed);
  try {
    writeState(p, { epoch: 0, epochStartMs: now.getTime(), segment: 1, key, boxPublicKey });
  } finally {
    secureFree(key);
  }
  return moved;
}

/** The log's directory is there and private (one lstat: a writer checks it at every batch). */
export function checkAuditDir(dir: string): void {
  // The home first: a home others may enter is refused at every write, the agent's too, not
  // only when a command opens it (found in review: an unlocked agent went on releasing from a
  // home made 0777).
  const home = path.dirname(dir);
  const h = fs.lstatSync(home, { throwIfNoEntry: false });
  if (h !== undefined) refuseIfProblem(home, 'dir', problemOf(h, 'dir'));
  const st = fs.lstatSync(dir, { throwIfNoEntry: false });
  if (st === undefined) throw unavailable(`no audit log at ${dir}`, 'run: keyward audit init');
  refuseIfProblem(dir, 'dir', problemOf(st, 'dir'));
}
