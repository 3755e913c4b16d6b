/**
 * The vault operations the CLI runs, whole: each one gets its own secret input (passphrase,
 * value), opens the vault, acts, and wipes everything before returning. The CLI passes paths,
 * names and options in and gets names and metadata out; it never holds a secret byte.
 */
import fs from 'node:fs';
import { KeywardError } from '../errors.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import type { KdfParams } from './crypto.js';
import {
  hasTerminal,
  readNewPassphrase,
  readPassphrase,
  readSecretValue,
  type PassphraseSource,
} from './input.js';
import { assertValidName } from '../lib/names.js';
import { writeSecretTo } from './output.js';
import { readHeaderInfo, type VaultPaths } from './file.js';
import {
  initVault,
  withVaultRead,
  withVaultWrite,
  type InitOptions,
  type InitResult,
} from './lifecycle.js';
import type { Unlock } from './slots.js';
import type { EntryMeta, Vault } from './vault.js';
import type { OnDerive } from './slots.js';

/**
 * Where vault sessions record what they do. The audit domain implements it; record() returns
 * only once the entry is durable, and throws when it can't be written, which stops the operation
 * (fail closed: nothing is changed or released without its record).
 */
export interface AuditSink {
  record(r: {
    type: string;
    target?: string;
    decision?: 'allow' | 'deny' | 'error' | 'info';
    reason?: string;
    details?: Record<string, string | number | boolean | null>;
  }): void;
  /** Seals the log's head into the vault's state, so a deleted tail is detectable. */
  checkpoint(v: Vault): void;
  /**
   * The vault is open, before the session records anything: a log cut since its checkpoints is
   * recorded (audit.gap) and a warning returned for the user.
   */
  attach?(v: Vault): string | undefined;
  /** Right before the vault is saved: the log's head goes into the vault (its checkpoint). */
  beforeSave?(v: Vault): void;
  /**
   * Runs the data key's replacement: what the audit log sealed under the old key (its checkpoint
   * file) is sealed again, unchanged, under the new one.
   */
  rekey?(v: Vault, replaceKey: () => void): void;
}

export interface Auth extends PassphraseSource {
  /** Refuse the keyring and insist on the passphrase (passwd, rekey). */
  passphraseOnly?: boolean;
  /** Told when keyward falls back from the keyring to the passphrase, for a note on stderr. */
  onNote?: (message: string) => void;
  /** Told when argon2id starts on a passphrase (a progress line on a terminal). */
  onDerive?: OnDerive | undefined;
  audit: AuditSink;
}

/** Tries a passphrase typed on a terminal gets (as sudo and ssh-add give); a file gets one. */
export const TERMINAL_TRIES = 3;

function withPassphrase<T>(
  src: PassphraseSource & { onNote?: (m: string) => void; onDerive?: OnDerive | undefined },
  fn: (u: Unlock) => T,
): T {
  for (let attempt = 1; ; attempt++) {
    const passphrase = readPassphrase(src);
    try {
      return fn({ passphrase, onDerive: src.onDerive });
    } catch (e) {
      // Each failure is recorded by fn (vault.unlock_failed); a typo on a terminal is retried.
      const wrong = e instanceof KeywardError && e.code === 'VAULT_BAD_PASSPHRASE';
      if (!wrong || src.file !== undefined || attempt >= TERMINAL_TRIES) throw e;
      src.onNote?.(`wrong passphrase; try again (${attempt + 1} of ${TERMINAL_TRIES})`);
    } finally {
      secureFree(passphrase);
    }
  }
}

/**
 * Opens with the keyring when the vault has a keyring slot and no passphrase file was named;
 * falls back to asking the passphrase on the terminal when the keyring can't open it.
 */
function unlockAnd<T>(paths: VaultPaths, auth: Auth, fn: (u: Unlock) => T): T {
  if (auth.file === undefined && !auth.passphraseOnly) {
    const info = readHeaderInfo(paths);
    if (info.slots.some((s) => s.type === 'keyring')) {
      try {
        return fn({ keyring: true });
      } catch (e) {
        const keyringFailed =
          e instanceof KeywardError &&
          (e.code === 'KEYRING_UNAVAILABLE' || e.code === 'KEYRING_KEY_MISMATCH');
        if (!keyringFailed || !hasTerminal()) throw e;
        auth.onNote?.(`${e.message}; asking for the passphrase instead`);
      }
    }
  }
  return withPassphrase(auth, fn);
}

/**
 * Opens the vault and runs fn, recording the unlock (or its failure) and sealing a checkpoint of
 * the audit log afterwards.
 */
function openAnd<T>(paths: VaultPaths, auth: Auth, write: boolean, fn: (v: Vault) => T): T {
  return unlockAnd(paths, auth, (u) => openWith(paths, auth, u, write, fn));
}

/** openAnd with the vault's key already at hand (one passphrase for several opens). */
function openWith<T>(
  paths: VaultPaths,
  auth: Auth,
  u: Unlock,
  write: boolean,
  fn: (v: Vault) => T,
): T {
  {
    const method = 'passphrase' in u ? 'passphrase' : 'keyring';
    const run = (v: Vault): T => {
      const warning = auth.audit.attach?.(v);
      if (warning) auth.onNote?.(warning);
      if (write) v.beforeSave = () => auth.audit.beforeSave?.(v);
      auth.audit.record({
        type: 'vault.unlock',
        decision: 'allow',
        details: { method, mode: 'direct' },
      });
      const r = fn(v);
      auth.audit.checkpoint(v);
      return r;
    };
    try {
      return write ? withVaultWrite(paths, u, run) : withVaultRead(paths, u, run);
    } catch (e) {
      if (
        e instanceof KeywardError &&
        (e.code === 'VAULT_BAD_PASSPHRASE' || e.code === 'KEYRING_KEY_MISMATCH')
      ) {
        auth.audit.record({
          type: 'vault.unlock_failed',
          decision: 'deny',
          reason: e.message,
          details: { method },
        });
      }
      throw e;
    }
  }
}

/**
 * Looks at the vault (read), asks a person with what it saw (no lock held while they read), then
 * writes: one passphrase for both. `write` gets what `look` saw and must check that what it
 * binds to still holds. Undefined when the person said no.
 */
export function lookThenWrite<P, T>(
  paths: VaultPaths,
  auth: Auth,
  look: (v: Vault) => P,
  ask: (seen: P) => boolean,
  write: (v: Vault, seen: P) => T,
): T | undefined {
  return unlockAnd(paths, auth, (u) => {
    const seen = openWith(paths, auth, u, false, look);
    if (!ask(seen)) return undefined;
    return openWith(paths, auth, u, true, (v) => write(v, seen));
  });
}

function readVault<T>(paths: VaultPaths, auth: Auth, fn: (v: Vault) => T): T {
  return openAnd(paths, auth, false, fn);
}

function writeVault<T>(paths: VaultPaths, auth: Auth, fn: (v: Vault) => T): T {
  return openAnd(paths, auth, true, fn);
}

/** For other domains (audit commands): an open vault for the length of fn, unlock recorded. */
export function useVault<T>(
  paths: VaultPaths,
  auth: Auth,
  mode: 'read' | 'write',
  fn: (v: Vault) => T,
): T {
  return openAnd(paths, auth, mode === 'write', fn);
}

export function createVault(
  paths: VaultPaths,
  src: PassphraseSource,
  opts: Omit<InitOptions, 'rng'>,
): InitResult {
  const passphrase = readNewPassphrase(src, 'new vault passphrase');
  try {
    return initVault(paths, passphrase, opts);
  } finally {
    secureFree(passphrase);
  }
}

export function listSecrets(paths: VaultPaths, auth: Auth): EntryMeta[] {
  return readVault(paths, auth, (v) => v.list());
}

/** Reads the value (stdin or a hidden prompt) first, then opens the vault and stores it. */
export function storeSecret(
  paths: VaultPaths,
  auth: Auth,
  name: string,
  opts: { raw: boolean },
): { result: 'created' | 'updated'; size: number } {
  assertValidName(name);
  const value: SecureBuffer = readSecretValue({
    raw: opts.raw,
    prompt: `value of ${name} (hidden): `,
  });
  try {
    const size = value.length;
    const result = writeVault(paths, auth, (v) => {
      auth.audit.record({
        type: 'secret.set',
        target: name,
        decision: 'allow',
        details: { bytes: size, existed: v.has(name) },
      });
      const r = v.set(name, value);
      v.save();
      return r;
    });
    return { result, size };
  } finally {
    secureFree(value);
  }
}

export function removeSecret(paths: VaultPaths, auth: Auth, name: string): void {
  assertValidName(name);
  writeVault(paths, auth, (v) => {
    v.assertHas(name);
    auth.audit.record({ type: 'secret.rm', target: name, decision: 'allow' });
    v.remove(name);
    v.save();
  });
}

/** Writes one secret's bytes to fd, then a newline when asked (a terminal), then wipes it. */
export function printSecret(
  paths: VaultPaths,
  auth: Auth,
  name: string,
  fd: number,
  newline: boolean,
): void {
  assertValidName(name);
  readVault(paths, auth, (v) => {
    const value = v.reveal(name);
    try {
      // Rule 4: the release is durable in the audit log before the value leaves.
      auth.audit.record({
        type: 'secret.read',
        target: name,
        decision: 'allow',
        reason: 'direct mode: passphrase',
        details: { bytes: value.length },
      });
    } catch (e) {
      secureFree(value);
      throw e;
    }
    writeSecretTo(fd, value);
    if (newline) fs.writeSync(fd, '\n');
  });
}

export function changePassphrase(
  paths: VaultPaths,
  auth: Auth,
  newSrc: PassphraseSource,
  kdf?: KdfParams,
): void {
  writeVault(paths, { ...auth, passphraseOnly: true }, (v) => {
    const next = readNewPassphrase(newSrc);
    auth.audit.record({ type: 'vault.passwd', decision: 'allow' });
    try {
      v.changePassphrase(next, kdf);
    } finally {
      secureFree(next);
    }
    v.save();
  });
}

/**
 * `keyward rekey`. keyringSlot: kept (the keyring holds the new key), dropped (the keyring held
 * none: the slot went), none, or unstored (the slot is in the file, and the keyring refused its
 * key: only the passphrase opens the vault until a rekey with the keyring there).
 */
export function rekeyVault(
  paths: VaultPaths,
  auth: Auth,
): { keyringSlot: 'kept' | 'dropped' | 'none' | 'unstored' } {
  return writeVault(paths, { ...auth, passphraseOnly: true }, (v) => {
    auth.audit.record({ type: 'vault.rekey', decision: 'allow' });
    const r: { done?: ReturnType<Vault['rekey']> } = {};
    const replace = () => {
      r.done = v.rekey();
    };
    try {
      if (auth.audit.rekey) auth.audit.rekey(v, replace);
      else replace();
      v.save();
    } catch (e) {
      // The keyring's new key goes in whenever the file its slot opens is on disk: a save can
      // throw after its rename (the directory's fsync, the audit's checkpoint; found in review),
      // and the keyring's old key would then open nothing.
      const key = r.done?.keyringKey;
      if (key !== undefined && v.fileUnderThisKey()) v.giveKeyringKey(key);
      else secureFree(key);
      throw e;
    }
    const { done } = r;
    if (!done) throw new Error('rekey did not run');
    // The keyring's new key goes in once the file its slot is in was written.
    if (done.keyringKey !== undefined)
      return { keyringSlot: v.giveKeyringKey(done.keyringKey) ? 'kept' : 'unstored' };
    return { keyringSlot: done.keyringSlot };
  });
}
