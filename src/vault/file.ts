/**
 * vault.kw as a file: where it lives, whether it is there and private, its bytes read in one
 * piece, and what its header says (no passphrase needed for that).
 */
import fs from 'node:fs';
import path from 'node:path';
import { KeywardError } from '../errors.js';
import { assertPrivate, diskFailure, openOwnFile, type FileId } from '../lib/files.js';
import type { KdfParams } from './crypto.js';
import {
  corruptError,
  formatVersion,
  parsePassphraseSlot,
  parseVault,
  SLOT_KEYRING,
  SLOT_PASSPHRASE,
  type ParsedVault,
  type Slot,
} from './format.js';
import { parseLog, parseLogHeader } from './log-format.js';

/** What one read of vault.kw takes (Node's largest Buffer is 4 GiB, a file read's 2 GiB). */
const VAULT_MAX_BYTES = 2 ** 31 - 1;
export const LOCK_TIMEOUT_MS = 10_000;

export interface VaultPaths {
  home: string;
  file: string;
  lock: string;
}

export function vaultPaths(home: string): VaultPaths {
  return { home, file: path.join(home, 'vault.kw'), lock: path.join(home, 'vault.lock') };
}

export function notFound(paths: VaultPaths): KeywardError {
  return new KeywardError('VAULT_NOT_FOUND', `no vault yet (${paths.file})`, {
    hint: 'create one with: keyward init',
  });
}

/** Refuses (exit 3) when there is no vault yet: for commands that mean nothing before init. */
export function requireVault(paths: VaultPaths): void {
  if (!vaultExists(paths)) throw notFound(paths);
}

/** Fails closed unless the vault directory and file are private to this user. */
export function checkPlaces(paths: VaultPaths): void {
  assertPrivate(paths.home, 'dir');
  assertPrivate(paths.file, 'file');
}

export function vaultExists(paths: VaultPaths): boolean {
  return fs.existsSync(paths.file);
}

/** vault.kw's bytes, and the file they came from (an append goes only to that file). */
export interface VaultFile {
  bytes: Buffer;
  stat: FileId;
}

export function readVaultFile(paths: VaultPaths): VaultFile {
  checkPlaces(paths);
  let fd: number;
  try {
    fd = openOwnFile(paths.file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(paths);
    throw e;
  }
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    if (st.size > VAULT_MAX_BYTES) {
      throw corruptError(
        `vault.kw is ${st.size} bytes, more than keyward reads (${VAULT_MAX_BYTES}); it is not a vault keyward wrote`,
      );
    }
    return { bytes: fs.readFileSync(fd), stat: { dev: st.dev, ino: st.ino } };
  } finally {
    fs.closeSync(fd);
  }
}

/** What either format's header says: enough to unwrap the data key. */
export interface HeaderFacts {
  version: 1 | 2;
  vaultId: Buffer;
  keyId: Buffer;
  slots: Slot[];
  /** Format 1 only: the whole file, parsed. */
  v1?: ParsedVault;
}

export function headerFacts(bytes: Buffer): HeaderFacts {
  if (formatVersion(bytes) === 1) {
    const p = parseVault(bytes);
    return { version: 1, vaultId: p.vaultId, keyId: p.keyId, slots: p.slots, v1: p };
  }
  const h = parseLogHeader(bytes);
  return { version: 2, vaultId: h.vaultId, keyId: h.keyId, slots: h.slots };
}

/** Header facts anyone with read access can see; no passphrase needed. */
export interface VaultHeaderInfo {
  path: string;
  version: number;
  vaultId: string;
  keyId: string;
  generation: number;
  slots: Array<{ type: 'passphrase'; kdf: KdfParams } | { type: 'keyring' } | { type: 'unknown' }>;
  bytes: number;
}

export function readHeaderInfo(paths: VaultPaths): VaultHeaderInfo {
  return headerInfoOf(paths.file, readVaultFile(paths).bytes);
}

/** The same facts from a vault's bytes already read (a backup's snapshot of vault.kw). */
export function headerInfoOf(file: string, bytes: Buffer): VaultHeaderInfo {
  const p = headerFacts(bytes);
  let generation: bigint;
  if (p.v1) generation = p.v1.generation;
  else {
    const layout = parseLog(bytes);
    generation = layout.header.base + BigInt(layout.starts.length);
  }
  return {
    path: file,
    version: p.version,
    vaultId: p.vaultId.toString('hex'),
    keyId: p.keyId.toString('hex'),
    generation: Number(generation),
    slots: p.slots.map((s) => {
      if (s.type === SLOT_PASSPHRASE) {
        const ps = parsePassphraseSlot(s.body);
        return {
          type: 'passphrase' as const,
          kdf: { opsLimit: ps.opsLimit, memLimitKiB: ps.memLimitKiB },
        };
      }
      return s.type === SLOT_KEYRING ? { type: 'keyring' as const } : { type: 'unknown' as const };
    }),
    bytes: bytes.length,
  };
}

/**
 * A save that failed for the disk's reasons, as a person should hear it (found in test: an I/O
 * error said "internal error ... a bug in keyward"). Whether the change is in the file depends on
 * where it failed: before the rename of a replace, or in an append that was taken back, the file
 * is as it was; after the rename (the directory's fsync), or where an append could not be taken
 * back, the change may be there, and may not survive a crash (found in review). So it says "may".
 * Other errors pass unchanged.
 */
export function unsaved(e: unknown): unknown {
  if (e instanceof KeywardError) return e;
  const why = diskFailure(e);
  if (why === undefined) return e;
  return new KeywardError(
    'VAULT_UNWRITABLE',
    `vault.kw could not be written safely (${why}); the change may not have been saved`,
    {
      hint: 'free space or fix the disk, then look (keyward secret list) and try again',
      cause: e,
    },
  );
}
