/**
 * Keys in the vault: an internal record `@key/NAME` holding the private key in the SSH agent
 * protocol's encoding (docs/FORMAT.md), encrypted, rekeyed and backed up with everything else and
 * never listed as a secret. The functions at the bottom are whole operations for the CLI: they
 * read their own secret input and hand back public data only.
 */
import fs from 'node:fs';
import { KeywardError, UsageError } from '../errors.js';
import { readFdToSecure, secureFree } from '../lib/secure.js';
import {
  assertValidName,
  readHiddenLine,
  readPassphraseFile,
  useVault,
  type Auth,
  type Vault,
  type VaultPaths,
} from '../vault/index.js';
import { SigningKey, type KeyType } from './key.js';
import { inspectKeyFile, readKeyFile } from './openssh.js';
import { samePublic } from './wire.js';

const PREFIX = '@key/';
const recordName = (name: string): `@${string}` => `${PREFIX}${name}` as `@${string}`;

export interface PublicKeyInfo {
  name: string;
  type: KeyType;
  bits: number;
  /** The SSH public key blob. */
  publicBlob: Buffer;
}

function info(name: string, k: SigningKey): PublicKeyInfo {
  return { name, type: k.type, bits: k.bits, publicBlob: Buffer.from(k.publicBlob) };
}

export function storeKey(v: Vault, name: string, key: SigningKey): PublicKeyInfo {
  assertValidName(name);
  if (v.has(recordName(name)))
    throw new KeywardError('USAGE', `a key named ${name} exists`, { hint: 'choose another name' });
  v.setInternal(recordName(name), key.record);
  return info(name, key);
}

/** The named key, loaded into secure memory; the caller wipes it. */
export function loadKey(v: Vault, name: string): SigningKey | undefined {
  const rec = v.revealInternal(recordName(name));
  if (!rec) return undefined;
  try {
    return SigningKey.fromRecord(rec);
  } catch (e) {
    if (e instanceof KeywardError && e.code === 'PROTOCOL_ERROR')
      throw new KeywardError('VAULT_CORRUPT', `the key ${name} in the vault is damaged`);
    throw e;
  } finally {
    secureFree(rec);
  }
}

export function vaultKeyNames(v: Vault): string[] {
  return v.internalNames(PREFIX).map((n) => n.slice(PREFIX.length));
}

/** Every key's public half (each private key is loaded and wiped on the way). */
export function listKeys(v: Vault): PublicKeyInfo[] {
  return vaultKeyNames(v).map((name) => {
    const k = loadKey(v, name);
    if (!k) throw new KeywardError('VAULT_CORRUPT', `the key ${name} vanished`);
    try {
      return info(name, k);
    } finally {
      k.wipe();
    }
  });
}

export function removeKey(v: Vault, name: string): void {
  if (!v.has(recordName(name)))
    throw new KeywardError('SECRET_NOT_FOUND', `no key named ${name}`, {
      hint: 'see: keyward key list',
    });
  v.remove(recordName(name));
}

export function generateKey(
  paths: VaultPaths,
  auth: Auth,
  name: string,
  type: KeyType,
  rsaBits?: number,
): PublicKeyInfo {
  assertValidName(name);
  return useVault(paths, auth, 'write', (v) => {
    if (v.has(recordName(name)))
      throw new KeywardError('USAGE', `a key named ${name} exists`, {
        hint: 'choose another name',
      });
    const key = SigningKey.generate(type, rsaBits);
    // A key is stored only once it has made a signature its public half verifies.
    key.selfTest();
    try {
      auth.audit.record({
        type: 'key.add',
        target: name,
        decision: 'allow',
        details: {
          keyType: key.type,
          bits: key.bits,
          fingerprint: key.fingerprint,
          source: 'generate',
        },
      });
      const made = storeKey(v, name, key);
      v.save();
      return made;
    } finally {
      key.wipe();
    }
  });
}

export interface ImportOptions {
  /** A file holding the key file's passphrase (mode 0600); else it is asked on the terminal. */
  keyPassphraseFile?: string | undefined;
}

/**
 * Imports an OpenSSH private key file. The key file's passphrase is asked (and the key decrypted
 * and checked) before the vault is opened, so a wrong one costs nothing.
 */
export function importKey(
  paths: VaultPaths,
  auth: Auth,
  name: string | undefined,
  file: string,
  opts: ImportOptions,
): PublicKeyInfo & { comment: string } {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError('USAGE', `cannot read the key file ${file} (${code})`, {
      hint: code === 'ELOOP' ? 'give the real path, not a symbolic link' : 'check the path',
    });
  }
  let bytes;
  try {
    if (!fs.fstatSync(fd).isFile()) throw new UsageError('USAGE', `${file} is not a regular file`);
    bytes = readFdToSecure(fd, 64 * 1024);
  } catch (e) {
    if (e instanceof RangeError)
      throw new UsageError('USAGE', `${file} is too large for a key file`);
    throw e;
  } finally {
    fs.closeSync(fd);
  }
  let loaded: { key: SigningKey; comment: string };
  try {
    const { encrypted } = inspectKeyFile(bytes);
    loaded = readKeyFile(bytes, () => {
      if (!encrypted) throw new KeywardError('PROTOCOL_ERROR', 'unexpected passphrase request');
      return opts.keyPassphraseFile !== undefined
        ? readPassphraseFile(opts.keyPassphraseFile)
        : readHiddenLine(`passphrase for ${file}: `, 1025);
    });
  } finally {
    secureFree(bytes);
  }
  const { key, comment } = loaded;
  try {
    key.selfTest();
    const keyName = name ?? defaultName(comment, file);
    assertValidName(keyName);
    return useVault(paths, auth, 'write', (v) => {
      if (v.has(recordName(keyName)))
        throw new KeywardError('USAGE', `a key named ${keyName} exists`, {
          hint: 'give another name: keyward key import FILE --name NAME',
        });
      if (listKeys(v).some((k) => samePublic(k.publicBlob, key.publicBlob)))
        throw new KeywardError('USAGE', `this key is already in the vault`, {
          hint: 'see: keyward key list',
        });
      auth.audit.record({
        type: 'key.add',
        target: keyName,
        decision: 'allow',
        details: {
          keyType: key.type,
          bits: key.bits,
          fingerprint: key.fingerprint,
          source: 'import',
        },
      });
      const made = storeKey(v, keyName, key);
      v.save();
      return { ...made, comment };
    });
  } finally {
    key.wipe();
  }
}

/** A key name from the file's comment or file name: `git-signing`, `id_ed25519`. */
function defaultName(comment: string, file: string): string {
  const base = file.split('/').pop() ?? 'key';
  const from = /^[A-Za-z0-9._-]{1,64}$/.test(comment) ? comment : base;
  return from.replace(/[^A-Za-z0-9._-]/g, '-');
}

export function deleteKey(paths: VaultPaths, auth: Auth, name: string): void {
  useVault(paths, auth, 'write', (v) => {
    if (!v.has(recordName(name)))
      throw new KeywardError('SECRET_NOT_FOUND', `no key named ${name}`, {
        hint: 'see: keyward key list',
      });
    auth.audit.record({ type: 'key.remove', target: name, decision: 'allow', details: {} });
    removeKey(v, name);
    v.save();
  });
}
