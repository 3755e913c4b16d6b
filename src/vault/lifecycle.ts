/**
 * A vault's life around a command: created once (initVault), then opened, used and closed
 * with its keys wiped, for reading or under the exclusive lock for writing.
 */
import fs from 'node:fs';
import { UsageError } from '../errors.js';
import { assertPrivate, ensurePrivateDir, sweepTempFiles, withFileLock } from '../lib/files.js';
import { secureEqual, secureFree, type SecureBuffer } from '../lib/secure.js';
import {
  KDF_DEFAULT,
  kdfInBounds,
  randomSecureKey,
  systemRng,
  type KdfParams,
  type Rng,
} from './crypto.js';
import {
  checkPlaces,
  LOCK_TIMEOUT_MS,
  notFound,
  readHeaderInfo,
  vaultExists,
  type VaultPaths,
} from './file.js';
import { VAULT_ID_BYTES } from './format.js';
import { keyringStore } from './keyring.js';
import { wrapKeyringSlot, wrapPassphraseSlot, type Unlock } from './slots.js';
import { Vault } from './vault.js';

export interface InitOptions {
  kdf?: KdfParams;
  keyring?: boolean;
  /** Move an existing vault aside (vault.kw.bak-TIME) and create a new one. */
  force?: boolean;
  rng?: Rng;
  now?: () => Date;
  /** Runs on the new vault before its first save (keyward's own records go in here). */
  setup?: (v: Vault) => void;
  /** Runs after the first save, with the vault still open (the audit log starts here). */
  afterSave?: (v: Vault) => void;
}

export interface InitResult {
  created: boolean;
  backup?: string;
  vaultId: string;
}

/** Opens the vault for reading (every record checked), runs fn, and wipes the keys. */
export function withVaultRead<T>(
  paths: VaultPaths,
  unlock: Unlock,
  fn: (v: Vault) => T,
  mode: 'all' | 'lazy' = 'all',
): T {
  const v = Vault.open(paths, unlock, systemRng, mode);
  try {
    return fn(v);
  } finally {
    v.close();
  }
}

/**
 * Opens the vault under its exclusive lock, runs fn (which calls save() to persist), and wipes
 * the keys. Temp files of writers that were killed are swept first.
 */
export function withVaultWrite<T>(paths: VaultPaths, unlock: Unlock, fn: (v: Vault) => T): T {
  checkPlaces(paths);
  if (!vaultExists(paths)) throw notFound(paths);
  return withFileLock(paths.lock, LOCK_TIMEOUT_MS, () => {
    sweepTempFiles(paths.file);
    // A write reads what it touches: its cost must not grow with the vault (Vault.open).
    return withVaultRead(paths, unlock, fn, 'lazy');
  });
}

/** Creates a vault. With one present, does nothing (created: false) unless force is set. */
export function initVault(
  paths: VaultPaths,
  passphrase: SecureBuffer,
  opts: InitOptions = {},
): InitResult {
  const rng = opts.rng ?? systemRng;
  const kdf = opts.kdf ?? KDF_DEFAULT;
  const now = opts.now ?? (() => new Date());
  if (!kdfInBounds(kdf)) throw new UsageError('USAGE', 'KDF parameters out of range');
  ensurePrivateDir(paths.home);
  assertPrivate(paths.file, 'file');
  return withFileLock(paths.lock, LOCK_TIMEOUT_MS, () => {
    sweepTempFiles(paths.file);
    let backup: string | undefined;
    if (vaultExists(paths)) {
      if (!opts.force) return { created: false, vaultId: readHeaderInfo(paths).vaultId };
      backup = `${paths.file}.bak-${now().toISOString().replace(/[:.]/g, '-')}`;
      fs.renameSync(paths.file, backup);
    }
    const vaultId = Buffer.alloc(VAULT_ID_BYTES);
    rng(vaultId);
    const dk = randomSecureKey(rng);
    const { slot, kek } = wrapPassphraseSlot(vaultId, dk, passphrase, kdf, rng);
    const slots = [slot];
    let v: Vault | undefined;
    try {
      if (opts.keyring) {
        const kk = randomSecureKey(rng);
        try {
          slots.push(wrapKeyringSlot(vaultId, dk, kk, rng));
          keyringStore(vaultId, kk);
        } finally {
          secureFree(kk);
        }
      }
      v = Vault.create(paths, vaultId, slots, dk, { slotIndex: 0, kek }, rng);
      opts.setup?.(v);
      v.save();
    } catch (e) {
      if (v) v.close();
      else {
        secureFree(dk);
        secureFree(kek);
      }
      throw e;
    }
    const result: InitResult =
      backup === undefined
        ? { created: true, vaultId: vaultId.toString('hex') }
        : { created: true, backup, vaultId: vaultId.toString('hex') };
    opts.afterSave?.(v);
    v.close();
    return result;
  });
}

/** Two secure buffers hold the same passphrase (constant time). */
export function samePassphrase(a: SecureBuffer, b: SecureBuffer): boolean {
  return secureEqual(a, b);
}
