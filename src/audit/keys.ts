/**
 * The audit log's keys (docs/AUDIT.md, "Keys"): a seed that derives every epoch key, a one-way
 * evolution from one epoch key to the next, HMAC-SHA-512-256 line MACs, and sealed boxes for
 * bodies. All through libsodium, but for the verifier's tag check (TagChecker, below: OpenSSL's
 * SHA-512 from states made once per key); keys stay in secure memory.
 */
import { sha512Calls, type Sha512Calls as Sha512 } from '../lib/openssl.js';
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

/**
 * The key that authenticates what a break's record names (checkpoint.ts): derived from the seed,
 * so only a holder of the vault (or of an exported audit key) has it; the state file does not.
 */
export function gapKey(seed: SecureBuffer): SecureBuffer {
  const k = secureAlloc(KEY_BYTES);
  sodium.crypto_kdf_derive_from_key(k, 3, CONTEXT, seed);
  return k;
}

/** The MAC (hex) over what a break's record names, under gapKey. */
export function gapAuth(key: SecureBuffer, named: string): string {
  return mac(key, Buffer.from(`audit.gap:${named}`, 'utf8')).toString('hex');
}

/** Whether a record's `auth` is the MAC over what it names (compared in constant time). */
export function gapAuthOk(key: SecureBuffer, named: string, auth: string): boolean {
  const want = Buffer.from(gapAuth(key, named), 'latin1');
  const got = Buffer.from(auth, 'latin1');
  return got.length === want.length && sodium.sodium_memcmp(got, want);
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
 * secure allocation with a copy of the key (for libsodium, when the fast path can't be used), the
 * working state and the inner hash, zeroed and freed by free(). The states are computed by
 * libsodium's SHA-512 (it zeroes its temporaries) and their eight words copied into OpenSSL's
 * SHA512_CTX: OpenSSL's block function leaves its message schedule on the stack it runs on
 * (koffi's, neither locked nor cleared), and the padded key must never be its message. What it
 * hashes is the line and the inner hash, neither of which gives the key; free() hashes a block
 * of zeros last, over the same stack. SHA512_CTX is a plain struct (216 bytes on 64-bit
 * platforms: h[8], then the bit count's low and high words); each slot here is 256, and the
 * self-test checks the layout with everything else.
 */
const SLOT = 256;
const BLOCK = 128;
const TAG = 32;

/** Whether this process's SHA-512 made libsodium's tag, checked once on a random key and line. */
let agrees: boolean | undefined;
/** libsodium's crypto_hash_sha512_state: h[8] (native words) first. */
const SODIUM_STATE = sodium.crypto_hash_sha512_STATEBYTES;
/** SHA512_CTX: h[8], then Nl (the bit count's low word). */
const CTX_NL = 64;
const ZEROS = new Uint8Array(BLOCK);

/**
 * Checks tags under one key at a time; setKey again for another. Free it when done. Every tag
 * is checked by libsodium instead when the fast path is off (create(false)), could not be
 * verified in this process, or fails a call.
 */
export class TagChecker {
  private readonly mem: SecureBuffer;
  private readonly inner: Buffer;
  private readonly outer: Buffer;
  private readonly work: Buffer;
  private readonly digest: Buffer;
  private readonly key: Buffer;
  private readonly pad: Buffer;
  private readonly sodiumState: Buffer;
  private keyed = false;
  private fast: Sha512 | undefined;

  private constructor(fast: Sha512 | undefined) {
    this.fast = fast;
    this.mem = secureAlloc(3 * SLOT + 64 + KEY_BYTES + BLOCK + SODIUM_STATE);
    let at = 0;
    const take = (n: number) => this.mem.subarray(at, (at += n));
    this.inner = take(SLOT);
    this.outer = take(SLOT);
    this.work = take(SLOT);
    this.digest = take(64);
    this.key = take(KEY_BYTES);
    this.pad = take(BLOCK);
    this.sodiumState = take(SODIUM_STATE);
  }

  /** A checker; fast false: libsodium checks every tag (as writers make them). */
  static create(fast = true): TagChecker {
    const f = fast ? sha512Calls() : undefined;
    if (f && agrees === undefined) {
      const probe = new TagChecker(f);
      agrees = probe.selfTest();
      probe.free();
    }
    return new TagChecker(agrees === true ? f : undefined);
  }

  /** Whether tags are checked with the states (false: by libsodium). */
  get precomputed(): boolean {
    return this.fast !== undefined;
  }

  /** The key tags are checked under from now on (copied: the caller's buffer may change). */
  setKey(key: SecureBuffer): void {
    this.keyed = false;
    if (key.length !== KEY_BYTES) throw new Error(`an audit MAC key is ${KEY_BYTES} bytes`);
    this.key.set(key);
    const f = this.fast;
    if (f && !this.states(f)) this.fast = undefined;
    this.keyed = true;
  }

  /** The inner and outer states from libsodium's SHA-512 of the padded key; false on a failure. */
  private states(f: Sha512): boolean {
    const { pad, sodiumState } = this;
    try {
      for (const [ctx, byte] of [
        [this.inner, 0x36],
        [this.outer, 0x5c],
      ] as const) {
        pad.fill(byte);
        for (let i = 0; i < KEY_BYTES; i++) pad[i] = (this.key[i] ?? 0) ^ byte;
        sodium.crypto_hash_sha512_init(sodiumState);
        sodium.crypto_hash_sha512_update(sodiumState, pad);
        if (f.init(ctx) !== 1) return false;
        ctx.set(sodiumState.subarray(0, 64));
        ctx.writeBigUInt64LE(BigInt(BLOCK * 8), CTX_NL);
      }
      return true;
    } finally {
      sodium.sodium_memzero(pad);
      sodium.sodium_memzero(sodiumState);
    }
  }

  /** Whether tag (32 bytes) is data's under the key. */
  ok(data: Uint8Array, tag: Uint8Array): boolean {
    if (!this.keyed || tag.length !== TAG) return false;
    const f = this.fast;
    const verdict = f ? this.tagMatches(f, data, tag) : undefined;
    // A call that failed is no verdict: libsodium decides, from here on.
    if (verdict === undefined) this.fast = undefined;
    return verdict ?? sodium.crypto_auth_verify(tag, data, this.key);
  }

  /** The tag check through OpenSSL; undefined when a call failed. */
  private tagMatches(f: Sha512, data: Uint8Array, tag: Uint8Array): boolean | undefined {
    const { work, digest } = this;
    work.set(this.inner);
    if (f.update(work, data, data.length) !== 1 || f.final(digest, work) !== 1) return undefined;
    work.set(this.outer);
    if (f.update(work, digest, 64) !== 1 || f.final(digest, work) !== 1) return undefined;
    return f.memcmp(digest, tag, TAG) === 0;
  }

  /** One tag made by libsodium, checked here, and a changed one refused. */
  private selfTest(): boolean {
    const f = this.fast;
    if (!f) return false;
    const key = secureAlloc(KEY_BYTES);
    try {
      sodium.randombytes_buf(key);
      const data = Buffer.alloc(3 * BLOCK + 17);
      sodium.randombytes_buf(data);
      const tag = Buffer.alloc(TAG);
      sodium.crypto_auth(tag, data, key);
      this.setKey(key);
      if (!this.fast) return false;
      const good = this.tagMatches(f, data, tag);
      tag[0] = (tag[0] ?? 0) ^ 1;
      return good === true && this.tagMatches(f, data, tag) === false;
    } catch {
      return false;
    } finally {
      secureFree(key);
    }
  }

  free(): void {
    const f = this.fast;
    // What OpenSSL's block function left on koffi's stack, overwritten with a hash of zeros.
    if (
      f &&
      this.mem.length > 0 &&
      f.init(this.work) === 1 &&
      f.update(this.work, ZEROS, BLOCK) === 1
    )
      f.final(this.digest, this.work);
    this.keyed = false;
    this.fast = undefined;
    secureFree(this.mem);
  }
}
