/**
 * The vault domain's public surface. Other domains import from here only (test/architecture.test.ts).
 */
export { Vault, type EntryMeta, type Replaced } from './vault.js';
export { VALUE_MAX_BYTES } from './values.js';
export {
  headerInfoOf,
  readHeaderInfo,
  requireVault,
  vaultExists,
  vaultPaths,
  type VaultHeaderInfo,
  type VaultPaths,
} from './file.js';
export {
  initVault,
  withVaultRead,
  withVaultWrite,
  type InitOptions,
  type InitResult,
} from './lifecycle.js';
export type { Unlock } from './slots.js';
export { BACKUP_STANZA, openBackupStanza, type BackupSealer } from './backup-key.js';
export {
  decodeAgeSecretKey,
  hkdfSha256,
  hmacSha256,
  readAgeIdentities,
  unwrapX25519,
} from './age-identity.js';
export {
  KDF_DEFAULT,
  KDF_BOUNDS,
  KDF_INTERACTIVE,
  kdfInBounds,
  type KdfParams,
  type Rng,
} from './crypto.js';
export { assertValidName, NAME_MAX_BYTES } from '../lib/names.js';
export type { OnDerive } from './slots.js';
export {
  hasTerminal,
  PASSPHRASE_MIN_BYTES,
  readHiddenLine,
  readPassphrase,
  readPassphraseFile,
  type PassphraseSource,
} from './input.js';
export {
  changePassphrase,
  createVault,
  listSecrets,
  printSecret,
  rekeyVault,
  removeSecret,
  storeSecret,
  TERMINAL_TRIES,
  useVault,
  lookThenWrite,
  type Auth,
  type AuditSink,
} from './session.js';
