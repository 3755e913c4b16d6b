/**
 * The audit log's keys (docs/AUDIT.md, "Keys"): a seed that derives every epoch key, a one-way
 * evolution from one epoch key to the next, HMAC-SHA-512-256 line MACs, and sealed boxes for
 * bodies. All through libsodium; keys stay in secure memory.
 */
import { sodium } from '../lib/sodium.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';

const CONTEXT = Buffer.from('kwaudit1', 'ascii');
export const KEY_BYTES = 32;
export const MAC_BYTES = sodium.crypto_auth_BYTES; // 32
export const BOX_PK_BYTES = sodium.crypto_box_PUBLICKEYBYTES;
export const BOX_SK_BYTES = sodium.crypto_box_SECRETKEYBYTES;

export function epochZeroKey(seed: SecureBuffer): SecureBuffer {
  const k = secureAlloc(KEY_BYTES);
  sodium.crypto_kdf_derive_from_key(k, 1, CONTEXT, seed);
  return k;
}

/** K(n+1) from K(n). One-way: K(n+1) tells nothing about K(n). The caller frees K(n). */
export function nextEpochKey(key: SecureBuffer, into?: SecureBuffer): SecureBuffer {
  const k = into ?? secureAlloc(KEY_BYTES);
  sodium.crypto_kdf_derive_from_key(k, 2, CONTEXT, key);
  return k;
}

/**
 * K(epoch) for rising epochs, from the seed: what a verifier does. The walk derives in two
 * buffers in turn, allocating nothing per step (a secure allocation per step held mappings until
 * GC, and a forged epoch of a million ran the process out of them).
 */
export class EpochKeys {
  private epoch = 0;
  private key: SecureBuffer;
  private spare: SecureBuffer;
  constructor(seed: SecureBuffer) {
    this.key = epochZeroKey(seed);
    this.spare = secureAlloc(KEY_BYTES);
  }
  /** K(epoch), epoch no lower than the last asked for; the walk keeps it. */
  at(epoch: number): SecureBuffer {
    while (this.epoch < epoch) {
      const next = nextEpochKey(this.key, this.spare);
      sodium.sodium_memzero(this.key);
      this.spare = this.key;
      this.key = next;
      this.epoch += 1;
    }
    return this.key;
  }
  /** Ends the walk and hands over the current key, for the caller to free. */
  take(): SecureBuffer {
    secureFree(this.spare);
    return this.key;
  }
  free(): void {
    secureFree(this.key);
    secureFree(this.spare);
  }
}

/** K(epoch) derived from the seed, for the caller to free. */
export function epochKeyFromSeed(seed: SecureBuffer, epoch: number): SecureBuffer {
  const walk = new EpochKeys(seed);
  walk.at(epoch);
  return walk.take();
}

export function mac(key: SecureBuffer, data: Uint8Array, out = Buffer.alloc(MAC_BYTES)): Buffer {
  sodium.crypto_auth(out, data, key);
  return out;
}

export function macOk(key: SecureBuffer, data: Uint8Array, tag: Uint8Array): boolean {
  return tag.length === MAC_BYTES && sodium.crypto_auth_verify(tag, data, key);
}

export function sha256(data: Uint8Array, out: Buffer = Buffer.alloc(32)): Buffer {
  sodium.crypto_hash_sha256(out, data);
  return out;
}

export function boxKeypair(): { publicKey: Buffer; secretKey: SecureBuffer } {
  const publicKey = Buffer.alloc(BOX_PK_BYTES);
  const secretKey = secureAlloc(BOX_SK_BYTES);
  sodium.crypto_box_keypair(publicKey, secretKey);
  return { publicKey, secretKey };
}

export function boxPublicOf(secretKey: SecureBuffer): Buffer {
  // A crypto_box secret key is the X25519 scalar, so its public key is scalarmult_base of it.
  const pk = Buffer.alloc(BOX_PK_BYTES);
  sodium.crypto_scalarmult_base(pk, secretKey);
  return pk;
}
