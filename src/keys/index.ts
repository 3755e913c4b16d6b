/**
 * The keys domain: SSH signing keys (ed25519, ECDSA P-256/P-384/P-521, RSA), their wire formats,
 * OpenSSH key files, and their records in the vault. Other domains import from here only.
 */
export {
  blobType,
  verifySshSignature,
  fingerprint,
  KEY_TYPES,
  publicKeyLine,
  SigningKey,
  typeLabel,
  type KeyType,
} from './key.js';
export {
  deleteKey,
  generateKey,
  importKey,
  listKeys,
  loadKey,
  vaultKeyNames,
  type ImportOptions,
  type PublicKeyInfo,
} from './store.js';
export { SshParseError, SshReader, SshWriter, sshString, u32 } from './wire.js';
