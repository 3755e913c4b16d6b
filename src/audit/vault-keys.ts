/**
 * The audit log's keys kept in the vault (docs/AUDIT.md, "Keys"), and rebuilding the writer's
 * state from them: after a lost state file (audit init) and after a restore, which never carries
 * the state file (it holds the current epoch key in the clear; docs/BACKUP.md).
 */
import path from 'node:path';
import { IntegrityError, KeywardError } from '../errors.js';
import { secureFree, secureRandom, type SecureBuffer } from '../lib/secure.js';
import type { Vault } from '../vault/index.js';
import { parseLine } from './entry.js';
import type { AuditRecord } from './events.js';
import { boxKeypair, boxPublicOf, epochKeyFromSeed } from './keys.js';
import type { AuditLog } from './log.js';
import type { BoxTrust } from './box.js';
import { writeState } from './state.js';
import { logSegments } from './verify.js';
import { readOwnFile, writeFileAtomic } from '../lib/files.js';

export const SEED = '@audit/seed';
export const BOX_SECRET = '@audit/box-secret';

export function storeNewKeys(v: Vault): void {
  const seed = secureRandom(32);
  const { secretKey } = boxKeypair();
  try {
    v.setInternal(SEED, seed);
    v.setInternal(BOX_SECRET, secretKey);
  } finally {
    secureFree(seed);
    secureFree(secretKey);
  }
}

/** The box public key sealed beside the log with the vault's state key (audit/box). */
const BOX_LABEL = 'audit-box-key';

function boxFile(dir: string): string {
  return path.join(dir, 'box');
}

/** The box key audit/box holds, when it opens with this vault; else undefined. */
function knownBoxKey(v: Vault, dir: string): Buffer | undefined {
  try {
    const plain = v.openState(BOX_LABEL, readOwnFile(boxFile(dir), { maxBytes: 4096 }));
    return plain?.length === 32 ? Buffer.from(plain) : undefined;
  } catch {
    return undefined;
  }
}

/** Seals the vault's current box public key beside the log (audit/box), for the next writer. */
export function rememberBoxKey(v: Vault, dir: string, current: Buffer): void {
  writeFileAtomic(boxFile(dir), [v.sealState(BOX_LABEL, current)]);
}

/**
 * The vault's box keys, for a writer that holds it (AuditLog.trustBoxKeys), with the log's
 * directory (where the copy sealed beside the log is); none without a box secret.
 */
export function boxTrustOf(v: Vault, dir: string, by: string): BoxTrust {
  const publicOf = (name: string): Buffer[] => {
    const sk = v.revealInternal(name as `@${string}`);
    if (!sk) return [];
    try {
      return [boxPublicOf(sk)];
    } finally {
      secureFree(sk);
    }
  };
  const trust: BoxTrust = {
    known: knownBoxKey(v, dir),
    confirm: () => {
      const [current] = publicOf(BOX_SECRET);
      if (current === undefined) return undefined;
      return { current, retired: v.internalNames(`${BOX_SECRET}.`).flatMap(publicOf) };
    },
    remember: (current) => {
      trust.known = current;
      try {
        rememberBoxKey(v, dir, current);
      } catch {
        // Only a cache: the next writer asks the vault again.
      }
    },
    by,
  };
  return trust;
}

/**
 * A writer that holds the vault seals every body to the vault's box keys, whatever the state
 * file names by the time it writes (a key swapped in is a break it records first).
 */
export function trustVaultBoxKeys(log: AuditLog, v: Vault, by: string): void {
  const trust = boxTrustOf(v, log.paths.dir, by);
  log.trustBoxKeys(() => trust);
}

export function seedOf(v: Vault): SecureBuffer {
  const seed = v.revealInternal(SEED);
  if (!seed) {
    throw new KeywardError('AUDIT_UNAVAILABLE', 'this vault has no audit key yet', {
      hint: 'run: keyward audit init',
    });
  }
  return seed;
}

/**
 * Writes a new state file for a log whose segments are there but whose state is not: `step`
 * epochs after the last entry's (its key derived from the vault's seed), the segment count, the
 * box key; then appends `record`, the first entry under it. Keys only go forward (K(n+1) from
 * K(n)), so the state must start past every epoch any copy of this log has used: one past the
 * last entry where this log is the only copy (a lost state file), and as far as the verifier
 * allows (MAX_EPOCH_STEP) after a restore, whose backup's home may have gone on for a long time.
 */
export function rebuildState(log: AuditLog, v: Vault, record: AuditRecord, step = 1): void {
  const segments = logSegments(log.paths.dir);
  const last = segments.at(-1);
  if (!last) throw new KeywardError('AUDIT_UNAVAILABLE', 'the audit log has no segment');
  const lines = readOwnFile(last).toString('utf8').trimEnd().split('\n');
  const head = parseLine(lines.at(-1) ?? '');
  if (!head)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      'the last audit entry is malformed; run keyward audit verify',
    );
  const seed = seedOf(v);
  const sk = v.revealInternal(BOX_SECRET);
  const epoch = head.epoch + step;
  const key = epochKeyFromSeed(seed, epoch);
  try {
    if (!sk) throw new KeywardError('AUDIT_UNAVAILABLE', 'this vault has no audit box key');
    const boxPublicKey = boxPublicOf(sk);
    writeState(log.paths, {
      epoch,
      epochStartMs: Date.now(),
      segment: segments.length,
      key,
      boxPublicKey,
    });
    rememberBoxKey(v, log.paths.dir, boxPublicKey);
  } finally {
    secureFree(seed);
    secureFree(sk);
    secureFree(key);
  }
  log.append([record]);
}
