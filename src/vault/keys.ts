/**
 * Signing keys in the vault: ed25519, signed with libsodium from secure memory. A key is an
 * internal record `@key/NAME` holding libsodium's 64-byte secret key (seed || public key), so it
 * is encrypted, rekeyed and backed up with everything else, and never listed as a secret.
 */
import sodium from 'sodium-native';
import { KeywardError } from '../errors.js';
import { secureAlloc, secureFree } from '../lib/secure.js';
import { assertValidName } from './names.js';
import type { Vault } from './vault.js';

const PREFIX = '@key/';

export interface PublicKeyInfo {
  name: string;
  type: 'ssh-ed25519';
  /** The 32-byte public key. */
  publicKey: Buffer;
}

const recordName = (name: string): `@${string}` => `${PREFIX}${name}` as `@${string}`;

export function generateEd25519(v: Vault, name: string): PublicKeyInfo {
  assertValidName(name);
  if (v.has(recordName(name))) {
    throw new KeywardError('USAGE', `a key named ${name} exists`, { hint: 'choose another name' });
  }
  const pk = Buffer.alloc(sodium.crypto_sign_PUBLICKEYBYTES);
  const sk = secureAlloc(sodium.crypto_sign_SECRETKEYBYTES);
  try {
    sodium.crypto_sign_keypair(pk, sk);
    v.setInternal(recordName(name), sk);
  } finally {
    secureFree(sk);
  }
  return { name, type: 'ssh-ed25519', publicKey: pk };
}

export function listKeys(v: Vault): PublicKeyInfo[] {
  return v.internalNames(PREFIX).map((n) => {
    const sk = v.revealInternal(n as `@${string}`);
    try {
      if (!sk || sk.length !== sodium.crypto_sign_SECRETKEYBYTES)
        throw new KeywardError('VAULT_CORRUPT', `key ${n} is damaged`);
      return {
        name: n.slice(PREFIX.length),
        type: 'ssh-ed25519' as const,
        publicKey: Buffer.from(sk.subarray(32)),
      };
    } finally {
      secureFree(sk);
    }
  });
}

/** An ed25519 signature by the named key; the secret key is revealed, used and wiped here. */
export function signEd25519(v: Vault, name: string, data: Uint8Array): Buffer {
  const sk = v.revealInternal(recordName(name));
  if (!sk) throw new KeywardError('SECRET_NOT_FOUND', `no key named ${name}`);
  try {
    const sig = Buffer.alloc(sodium.crypto_sign_BYTES);
    sodium.crypto_sign_detached(sig, data, sk);
    return sig;
  } finally {
    secureFree(sk);
  }
}
