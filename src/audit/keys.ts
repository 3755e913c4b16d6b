/**
 * The audit log's keys (docs/AUDIT.md, "Keys"): a seed that derives every epoch key, a one-way
 * evolution from one epoch key to the next, HMAC-SHA-512-256 line MACs, and sealed boxes for
 * bodies. All through libsodium, but for the verifier's tag check (TagChecker, below: OpenSSL's
 * SHA-512 from states made once per key); keys stay in secure memory.
 */
import { koffi } from '../lib/koffi.js';
import { processWide } from '../lib/once.js';
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

/*
 * Checking many HMAC-SHA-512-256 tags (libsodium's crypto_auth, the audit line's MAC) under one
 * key: what `audit verify` does for every line of an epoch.
 *
 * libsodium's crypto_auth_verify hashes the key's padded block twice for each tag and runs its
 * portable SHA-512: 1.43 us for a 480-byte line here. HMAC (RFC 2104) is
 * H((K ^ opad) || H((K ^ ipad) || m)), so the states after the two padded blocks can be computed
 * once per key and copied for each tag, and Node's own libcrypto (already loaded for ECDSA and
 * RSA: lib/openssl.ts) has a faster SHA-512: 0.85 us a tag. The tags are the same bytes; the first
 * use checks that against libsodium, and anything unexpected (a libcrypto without the low-level
 * SHA-512 calls, a result that differs) leaves libsodium to check them, as before.
 *
 * The two states are as good as the key (they make tags), so they live where it does: in one
 * secure allocation with the working state and the inner hash, zeroed and freed by free().
 * OpenSSL works only in that memory (SHA512_CTX is a plain struct, 216 bytes on 64-bit
 * platforms; each slot here is 256).
 */
const SLOT = 256;
const BLOCK = 128;
const TAG = 32;

interface Sha512 {
  init: (ctx: Uint8Array) => number;
  update: (ctx: Uint8Array, data: Uint8Array, len: number) => number;
  final: (md: Uint8Array, ctx: Uint8Array) => number;
  memcmp: (a: Uint8Array, b: Uint8Array, len: number) => number;
}

function bindSha512(): Sha512 | undefined {
  try {
    const lib = koffi.load(null);
    return {
      init: lib.func('int SHA512_Init(uint8_t *)'),
      update: lib.func('int SHA512_Update(uint8_t *, const uint8_t *, size_t)'),
      final: lib.func('int SHA512_Final(uint8_t *, uint8_t *)'),
      memcmp: lib.func('int CRYPTO_memcmp(const uint8_t *, const uint8_t *, size_t)'),
    };
  } catch {
    return undefined; // a libcrypto without them: libsodium checks every tag
  }
}

/** Whether this process's SHA-512 made libsodium's tag, checked once on a random key and line. */
let agrees: boolean | undefined;

/** Checks tags under one key at a time; setKey again for another. Free it when done. */
export class TagChecker {
  private readonly mem: SecureBuffer;
  private readonly inner: Buffer;
  private readonly outer: Buffer;
  private readonly work: Buffer;
  private readonly digest: Buffer;
  private key: SecureBuffer | undefined;

  private constructor(private readonly fast: Sha512 | undefined) {
    this.mem = secureAlloc(3 * SLOT + 64 + BLOCK);
    this.inner = this.mem.subarray(0, SLOT);
    this.outer = this.mem.subarray(SLOT, 2 * SLOT);
    this.work = this.mem.subarray(2 * SLOT, 3 * SLOT);
    this.digest = this.mem.subarray(3 * SLOT, 3 * SLOT + 64);
  }

  static create(): TagChecker {
    const fast = processWide('sha512', bindSha512);
    if (fast && agrees === undefined) {
      const probe = new TagChecker(fast);
      agrees = probe.selfTest();
      probe.free();
    }
    return new TagChecker(agrees === true ? fast : undefined);
  }

  /** Whether tags are checked with the states (false: by libsodium). */
  get precomputed(): boolean {
    return this.fast !== undefined;
  }

  /** The key tags are checked under from now on (held by the caller, not copied). */
  setKey(key: SecureBuffer): void {
    this.key = key;
    const f = this.fast;
    if (!f) return;
    const pad = this.mem.subarray(3 * SLOT + 64);
    for (const [state, byte] of [
      [this.inner, 0x36],
      [this.outer, 0x5c],
    ] as const) {
      pad.fill(byte);
      for (let i = 0; i < key.length && i < BLOCK; i++) pad[i] = (key[i] ?? 0) ^ byte;
      if (f.init(state) !== 1 || f.update(state, pad, BLOCK) !== 1)
        throw new Error('SHA-512 failed');
    }
    sodium.sodium_memzero(pad);
  }

  /** Whether tag (32 bytes) is data's under the key. */
  ok(data: Uint8Array, tag: Uint8Array): boolean {
    const key = this.key;
    if (!key || tag.length !== TAG) return false;
    const f = this.fast;
    return f ? this.tagMatches(f, data, tag) : sodium.crypto_auth_verify(tag, data, key);
  }

  private tagMatches(f: Sha512, data: Uint8Array, tag: Uint8Array): boolean {
    const { work, digest } = this;
    work.set(this.inner);
    if (f.update(work, data, data.length) !== 1 || f.final(digest, work) !== 1) return false;
    work.set(this.outer);
    if (f.update(work, digest, 64) !== 1 || f.final(digest, work) !== 1) return false;
    return f.memcmp(digest, tag, TAG) === 0;
  }

  /** One tag made by libsodium, checked here, and a changed one refused. */
  private selfTest(): boolean {
    const f = this.fast;
    if (!f) return false;
    const key = secureAlloc(TAG);
    try {
      sodium.randombytes_buf(key);
      const data = Buffer.alloc(3 * BLOCK + 17);
      sodium.randombytes_buf(data);
      const tag = Buffer.alloc(TAG);
      sodium.crypto_auth(tag, data, key);
      this.setKey(key);
      const good = this.tagMatches(f, data, tag);
      tag[0] = (tag[0] ?? 0) ^ 1;
      return good && !this.tagMatches(f, data, tag);
    } catch {
      return false;
    } finally {
      this.key = undefined;
      secureFree(key);
    }
  }

  free(): void {
    this.key = undefined;
    secureFree(this.mem);
  }
}
