/**
 * The vault's cryptography, all through libsodium (docs/FORMAT.md, "Keys"). Keys are
 * SecureBuffers; nothing here allocates a JS string from key or plaintext bytes.
 */
import { sodium } from '../lib/sodium.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';

export const KEY_BYTES = 32;
export const NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES; // 24
export const TAG_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES; // 16
export const SALT_BYTES = sodium.crypto_pwhash_SALTBYTES; // 16
export const KEY_ID_BYTES = 16;

/** Fills `out` with random bytes. Injected so that test vectors can be made deterministically. */
export type Rng = (out: Uint8Array) => void;
export const systemRng: Rng = (out) => sodium.randombytes_buf(out);

export const SUBKEY = {
  index: 1,
  secrets: 2,
  audit: 3,
  state: 4,
  signing: 5,
  keyId: 6,
  nameTag: 7,
  backup: 8,
} as const;
export type SubkeyPurpose = keyof typeof SUBKEY;

const KDF_CONTEXT = Buffer.from('keyward1', 'ascii');

export function deriveSubkey(dataKey: SecureBuffer, purpose: SubkeyPurpose): SecureBuffer {
  const len = purpose === 'keyId' ? KEY_ID_BYTES : KEY_BYTES;
  const out = secureAlloc(len);
  sodium.crypto_kdf_derive_from_key(out, SUBKEY[purpose], KDF_CONTEXT, dataKey);
  return out;
}

/** The published identifier of a data key: subkey 6, which reveals nothing about the key. */
export function keyIdOf(dataKey: SecureBuffer): Buffer {
  const sub = deriveSubkey(dataKey, 'keyId');
  try {
    return Buffer.from(sub);
  } finally {
    secureFree(sub);
  }
}

export interface KdfParams {
  opsLimit: number;
  memLimitKiB: number;
}

export const KDF_DEFAULT: KdfParams = {
  opsLimit: sodium.crypto_pwhash_OPSLIMIT_MODERATE,
  memLimitKiB: sodium.crypto_pwhash_MEMLIMIT_MODERATE / 1024,
};
/** Below this keyward warns: libsodium's "interactive" level. */
export const KDF_INTERACTIVE: KdfParams = {
  opsLimit: sodium.crypto_pwhash_OPSLIMIT_INTERACTIVE,
  memLimitKiB: sodium.crypto_pwhash_MEMLIMIT_INTERACTIVE / 1024,
};
/** Bounds a reader accepts, so a tampered header can't demand absurd work or memory. */
export const KDF_BOUNDS = {
  opsMin: 1,
  opsMax: 32,
  memMinKiB: 8 * 1024,
  memMaxKiB: 4 * 1024 * 1024,
} as const;

export function kdfInBounds(p: KdfParams): boolean {
  return (
    Number.isInteger(p.opsLimit) &&
    Number.isInteger(p.memLimitKiB) &&
    p.opsLimit >= KDF_BOUNDS.opsMin &&
    p.opsLimit <= KDF_BOUNDS.opsMax &&
    p.memLimitKiB >= KDF_BOUNDS.memMinKiB &&
    p.memLimitKiB <= KDF_BOUNDS.memMaxKiB
  );
}

/** argon2id(passphrase, salt) -> 32-byte key-encryption key, in secure memory. */
export function passphraseKek(
  passphrase: SecureBuffer,
  salt: Uint8Array,
  p: KdfParams,
): SecureBuffer {
  const kek = secureAlloc(KEY_BYTES);
  sodium.crypto_pwhash(
    kek,
    passphrase,
    salt,
    p.opsLimit,
    p.memLimitKiB * 1024,
    sodium.crypto_pwhash_ALG_ARGON2ID13,
  );
  return kek;
}

/**
 * The same as passphraseKek, computed on libuv's thread pool: the agent keeps answering other
 * clients during the ~0.5 s of argon2id. The caller keeps passphrase alive until it resolves.
 */
export async function passphraseKekAsync(
  passphrase: SecureBuffer,
  salt: Uint8Array,
  p: KdfParams,
): Promise<SecureBuffer> {
  const kek = secureAlloc(KEY_BYTES);
  try {
    await sodium.crypto_pwhash_async(
      kek,
      passphrase,
      salt,
      p.opsLimit,
      p.memLimitKiB * 1024,
      sodium.crypto_pwhash_ALG_ARGON2ID13,
    );
    return kek;
  } catch (e) {
    secureFree(kek);
    throw e;
  }
}

export function randomSecureKey(rng: Rng): SecureBuffer {
  const k = secureAlloc(KEY_BYTES);
  rng(k);
  return k;
}

/** nonce || ciphertext, for a plaintext that is not secret or is in secure memory. */
export function seal(key: SecureBuffer, plaintext: Uint8Array, ad: Uint8Array, rng: Rng): Buffer {
  const out = Buffer.alloc(NONCE_BYTES + plaintext.length + TAG_BYTES);
  const nonce = out.subarray(0, NONCE_BYTES);
  rng(nonce);
  sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
    out.subarray(NONCE_BYTES),
    plaintext,
    ad,
    null,
    nonce,
    key,
  );
  return out;
}

/**
 * Opens nonce || ciphertext into secure memory. Returns undefined when authentication fails
 * (wrong key, or the bytes or the associated data were changed): callers decide what that means.
 */
export function open(
  key: SecureBuffer,
  record: Uint8Array,
  ad: Uint8Array,
): SecureBuffer | undefined {
  if (record.length < NONCE_BYTES + TAG_BYTES) return undefined;
  const nonce = record.subarray(0, NONCE_BYTES);
  const ct = record.subarray(NONCE_BYTES);
  const out = secureAlloc(ct.length - TAG_BYTES);
  try {
    sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(out, null, ct, ad, nonce, key);
    return out;
  } catch {
    secureFree(out);
    return undefined;
  }
}

/**
 * Opens nonce || ciphertext into the start of scratch, which must be long enough (a loop over many
 * records reuses one secure buffer instead of allocating one per record). Returns the plaintext's
 * length, or undefined when authentication fails. The caller zeroes scratch.
 */
export function openInto(
  key: SecureBuffer,
  record: Uint8Array,
  ad: Uint8Array,
  scratch: SecureBuffer,
): number | undefined {
  if (record.length < NONCE_BYTES + TAG_BYTES) return undefined;
  const ct = record.subarray(NONCE_BYTES);
  const len = ct.length - TAG_BYTES;
  if (len > scratch.length) throw new RangeError('scratch buffer too small');
  try {
    sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
      scratch.subarray(0, len),
      null,
      ct,
      ad,
      record.subarray(0, NONCE_BYTES),
      key,
    );
    return len;
  } catch {
    return undefined;
  }
}

export function blake2b256(data: Uint8Array): Buffer {
  const out = Buffer.alloc(32);
  sodium.crypto_generichash(out, data);
  return out;
}
