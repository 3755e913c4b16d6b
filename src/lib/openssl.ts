/**
 * ECDSA and RSA signing through Node's own OpenSSL, called directly (the node binary exports its
 * libcrypto symbols; koffi.load(null) finds them, so no second OpenSSL is loaded).
 *
 * Why not node:crypto: its KeyObjects are forbidden (rule 1), and its one-shot sign() with a DER
 * key parses the key into an internal handle that is freed only when V8 collects it. Measured
 * here: every call left the parsed private numbers allocated (32 bytes of secure heap per P-256
 * signature, ~900 per RSA-2048) until a GC, so the agent kept copies of ECDSA scalars and RSA
 * primes after `ssh-add -D` and after a lock. Here a key is parsed from secure memory into an
 * EVP_PKEY that keyward frees itself, at once (OpenSSL clears private numbers when it frees them).
 *
 * The agent starts OpenSSL's secure heap first thing (secureHeapReady): private numbers are then
 * allocated there (BN_secure_new: mmap'd, mlocked where the limit allows, guard pages, excluded
 * from core dumps, cleared on free). A key the agent keeps is parsed once and held there for the
 * unlock (117 us a P-256 signature from DER against ~25 us held; RSA-3072 2.0 against 1.37 ms).
 * OpenSSL would cache the Montgomery forms of an RSA key's p and q with it, in its ordinary heap,
 * for as long as it is held: the agent first makes OpenSSL's default RSA method one that caches
 * nothing (rsaHoldable), and where it can't, RSA keys are parsed for each signature and freed
 * after it. docs/THREAT-MODEL.md says what remains.
 */
import { KeywardError } from '../errors.js';
import { koffi } from './koffi.js';
import { openssl, type Crypto, type Pointer, type Sha512Calls } from './openssl-calls.js';

export type { Sha512Calls } from './openssl-calls.js';

/** OpenSSL's secure heap: 1 MiB (a power of two), blocks of at least 32 bytes. */
const SECURE_HEAP_BYTES = 1 << 20;
const SECURE_HEAP_MIN = 32;
const EVP_PKEY_EC = 408;
const EVP_PKEY_RSA = 6;

/**
 * Signatures on the thread pool at once: three of libuv's four threads, so the fourth is there
 * for the audit log's fsyncs (audit/group.ts). Each holds its place from the key's parse (on the
 * agent's thread) to the signature's end, so a third lets a parse overlap two signatures: RSA-3072
 * at concurrency 8 measured 1.04x ssh-agent with two, 1.21-1.27x with three.
 */
export const ASYNC_SIGNERS = 3;
/** Signatures waiting for a place; more are refused (each holds its request meanwhile). */
const MAX_WAITING = 256;

let free = ASYNC_SIGNERS;
const waiting: (() => void)[] = [];

/**
 * Runs fn in one of ASYNC_SIGNERS places (first come, first served), refusing when MAX_WAITING
 * wait already. A key is parsed inside the place, never while waiting: at most ASYNC_SIGNERS
 * parsed copies exist at once, and one wiped while its request waited is never parsed.
 */
export async function withSigningPlace<T>(fn: () => Promise<T>): Promise<T> {
  if (free > 0) free -= 1;
  else {
    if (waiting.length >= MAX_WAITING) throw new Error('too many signatures are waiting');
    await new Promise<void>((resolve) => waiting.push(resolve));
  }
  try {
    return await fn();
  } finally {
    const next = waiting.shift();
    if (next) next();
    else free += 1;
  }
}

/**
 * Whether a signature asked for now would be refused for too many waiting (withSigningPlace). The
 * agent asks before it takes a use and records an allow: a caller that floods the queue is refused
 * before either, in the same synchronous step that then enters the queue.
 */
export function signingQueueFull(): boolean {
  return free === 0 && waiting.length >= MAX_WAITING;
}

/**
 * Starts OpenSSL's secure heap, once per process, before any key is parsed into it. False when
 * OpenSSL could not make one (the keys then stay on node:crypto's per-call path).
 */
export function secureHeapReady(): boolean {
  if (secureHeapActive()) return true;
  // 1: made and locked; 2: made, but mlock failed (still guarded, cleared and not dumped):
  // refused, as secureAlloc refuses a small buffer it can't lock (a key would be held there).
  const made = openssl().secureMallocInit(SECURE_HEAP_BYTES, SECURE_HEAP_MIN);
  if (made === 2)
    throw new KeywardError(
      'MEMORY_NOT_LOCKED',
      `refusing to start: OpenSSL's secure heap for private keys (${SECURE_HEAP_BYTES} bytes) could not be locked in memory (RLIMIT_MEMLOCK), so keys could be swapped to disk`,
      { hint: 'raise the limit on locked memory (ulimit -l, or LimitMEMLOCK= in a systemd unit)' },
    );
  return made !== 0;
}

/**
 * SHA-256 of public bytes (audit lines) into out: OpenSSL uses the CPU's SHA instructions,
 * which libsodium's portable code does not (0.9 against 1.6 us for a 500-byte line here).
 */
export function sha256Public(data: Uint8Array, out: Buffer): Buffer {
  const c = openssl();
  if (!c.sha256 || c.oneShot(data, data.length, out, null, c.sha256, null) !== 1) {
    throw new Error('OpenSSL could not hash');
  }
  return out;
}

/**
 * HMAC-SHA1 (TOTP's MAC) of data under key, into out (20 bytes). The key is read by OpenSSL in
 * place, from secure memory; the one copy OpenSSL makes is in a context it clears and frees
 * before this returns, not one an Hmac object keeps until V8 collects it.
 */
export function hmacSha1(key: Uint8Array, data: Uint8Array, out: Buffer): Buffer {
  const c = openssl();
  const len = [out.length];
  if (out.length < 20 || !c.sha1 || !c.hmac(c.sha1, key, key.length, data, data.length, out, len))
    throw new Error('OpenSSL could not compute an HMAC');
  return out;
}

/** SHA-512's low-level calls (TagChecker), where this libcrypto has them. */
export function sha512Calls(): Sha512Calls | undefined {
  return openssl().sha512Low;
}

/** Bytes of OpenSSL's secure heap in use (its blocks, rounded up to powers of two). */
export function secureHeapUsed(): number {
  return Number(openssl().secureUsed());
}

/**
 * What keys held for the unlock may take of the secure heap (half of it): the rest is for the
 * keys parsed for one signature (three RSA at most at once) and anything else OpenSSL parses
 * there. Past it, keys are parsed for each signature (SigningKey.holdParsed): OpenSSL 3 does not
 * fall back to its ordinary heap when the secure one is full, it fails every parse.
 */
export const SECURE_HEAP_HOLD_BUDGET = SECURE_HEAP_BYTES / 2;

/** Whether this process has OpenSSL's secure heap (the agent makes it at start). */
export function secureHeapActive(): boolean {
  return openssl().secureMallocInitialized() === 1;
}

let rsaHold: boolean | undefined;

/**
 * Whether an RSA key parsed from now on may be held between signatures: true once this process's
 * default RSA method is OpenSSL's own without its init, which is what sets a new key's
 * RSA_FLAG_CACHE_PRIVATE (and _PUBLIC). Without those flags OpenSSL computes the Montgomery
 * forms of p and q (in its ordinary heap) for each signature and clears them when it frees them,
 * as it did when keyward parsed the key for each signature; the private numbers themselves stay
 * in the secure heap. Measured (RSA-3072, 200 signatures): a held key signs in 1.37 ms with or
 * without the cache, against 2.0 ms parsed for each; the Montgomery forms are not what a held key
 * saves (the parse, and the blinding values made at its first signature, are). False, and RSA keys stay parsed for each signature,
 * where the secure heap is not running, a call is missing, or the default method is another's
 * (an engine's, or an engine set as RSA's default). A key in another provider (FIPS) has that
 * provider's method: SigningKey.holdParsed holds only keys of the default provider
 * (OpensslKey.inDefaultProvider). Process-wide (the agent's own only: node:crypto's RSA keys
 * then cache nothing either), and set before the agent parses any key.
 */
export function rsaHoldable(): boolean {
  if (rsaHold !== undefined) return rsaHold;
  const c = openssl();
  const m = c.rsaMethod;
  rsaHold = false;
  if (!m || !secureHeapActive()) return false;
  // An engine set as RSA's default gives new keys its method instead of the default one.
  if (c.engineDefaultRsa?.()) return false;
  const current = m.defaultMethod();
  const own = m.openssl();
  if (!current || !own || koffi.address(current) !== koffi.address(own)) return false;
  const copy = m.dup(own);
  if (!copy) return false;
  if (m.setInit(copy, null) !== 1) return false; // the copy is kept: one small block, once
  m.setDefault(copy);
  rsaHold = koffi.address(m.defaultMethod()) === koffi.address(copy);
  return rsaHold;
}

/** An ECDSA or RSA private key held by OpenSSL; sign() until free(). */
export class OpensslKey {
  private constructor(
    private pkey: Pointer | undefined,
    private readonly maxSig: number,
    private readonly kind: 'ec' | 'rsa',
  ) {}

  /** An EC key's signing context, made at its first signature and kept until free(). */
  private ecCtx: Pointer | undefined;
  private ecHash: 'sha256' | 'sha384' | 'sha512' | undefined;

  /** Signatures on the thread pool with this key: free() waits for the last before freeing it. */
  private signing = 0;
  private freeing = false;

  /**
   * Parses SEC 1 (EC) or PKCS #1 (RSA) DER, read by OpenSSL in place from secure memory. The
   * private numbers go to OpenSSL's secure heap where the process made one (the agent does, at
   * start: secureHeapReady), else to its ordinary heap, cleared when freed. Undefined when
   * OpenSSL refuses the DER or it is not of the kind asked for.
   */
  static parse(der: Uint8Array, kind: 'ec' | 'rsa'): OpensslKey | undefined {
    const c = openssl();
    const bio = c.bioNewMemBuf(der, der.length);
    if (!bio) return undefined;
    try {
      const pkey = c.d2iPrivateKeyBio(bio, null);
      if (!pkey) {
        c.errClear();
        return undefined;
      }
      if (c.pkeyId(pkey) !== (kind === 'ec' ? EVP_PKEY_EC : EVP_PKEY_RSA)) {
        c.pkeyFree(pkey);
        return undefined;
      }
      return new OpensslKey(pkey, c.pkeySize(pkey), kind);
    } finally {
      c.bioFree(bio);
    }
  }

  /** Whether OpenSSL's default provider holds the key (where rsaHoldable's method applies). */
  inDefaultProvider(): boolean {
    if (this.pkey === undefined) return false;
    const c = openssl();
    const prov = c.pkeyProvider(this.pkey);
    return prov !== null && c.providerName(prov) === 'default';
  }

  /**
   * A signature over data, hashed with `hash`: for ECDSA the DER SEQUENCE of r and s, for RSA
   * the PKCS #1 v1.5 signature (OpenSSL's default padding).
   */
  sign(hash: 'sha256' | 'sha384' | 'sha512', data: Uint8Array): Buffer {
    if (this.pkey === undefined || this.freeing) throw new Error('the key was freed');
    const c = openssl();
    if (this.kind === 'ec' && c.pkeySign) return this.signEc(c.pkeySign, hash, data);
    const ctx = c.mdCtxNew();
    if (!ctx) throw new Error('OpenSSL could not make a signing context');
    try {
      if (c.digestSignInit(ctx, null, c.digest(hash), null, this.pkey) !== 1) {
        c.errClear();
        throw new Error('OpenSSL refused to start the signature');
      }
      const sig = Buffer.alloc(this.maxSig);
      const len = [sig.length];
      if (c.digestSign(ctx, sig, len, data, data.length) !== 1) {
        c.errClear();
        throw new Error('OpenSSL refused to sign');
      }
      return sig.subarray(0, Number(len[0]));
    } finally {
      c.mdCtxFree(ctx);
    }
  }

  /**
   * An ECDSA signature as sign() makes it, on this key's own context: the data hashed (public
   * bytes), then the digest signed. The same DER as EVP_DigestSign's, without its fetches and
   * allocations at every signature.
   */
  private signEc(
    p: NonNullable<Crypto['pkeySign']>,
    hash: 'sha256' | 'sha384' | 'sha512',
    data: Uint8Array,
  ): Buffer {
    const c = openssl();
    if (this.ecCtx === undefined) {
      const ctx = p.ctxNew(this.pkey, null);
      if (!ctx) throw new Error('OpenSSL could not make a signing context');
      if (p.init(ctx) !== 1) {
        p.ctxFree(ctx);
        c.errClear();
        throw new Error('OpenSSL refused to start the signature');
      }
      this.ecCtx = ctx;
    }
    if (this.ecHash !== hash) {
      if (p.setMd(this.ecCtx, p.md[hash]) !== 1) {
        c.errClear();
        throw new Error('OpenSSL refused the digest');
      }
      this.ecHash = hash;
    }
    const size = hash === 'sha256' ? 32 : hash === 'sha384' ? 48 : 64;
    const digest = Buffer.alloc(size);
    if (c.oneShot(data, data.byteLength, digest, null, p.md[hash], null) !== 1) {
      c.errClear();
      throw new Error('OpenSSL could not hash');
    }
    const sig = Buffer.alloc(this.maxSig);
    const len = [sig.length];
    if (p.sign(this.ecCtx, sig, len, digest, size) !== 1) {
      c.errClear();
      throw new Error('OpenSSL refused to sign');
    }
    return sig.subarray(0, Number(len[0]));
  }

  /**
   * sign(), with the signature computed on libuv's thread pool: for RSA, whose signature is ~2 ms
   * of CPU, the event loop goes on meanwhile. Call it inside withSigningPlace. free() meanwhile
   * waits for it.
   */
  async signAsync(hash: 'sha256' | 'sha384' | 'sha512', data: Uint8Array): Promise<Buffer> {
    if (this.pkey === undefined || this.freeing) throw new Error('the key was freed');
    const c = openssl();
    const length = data.byteLength;
    let ctx: Pointer | undefined;
    // A key held between signatures (RSA in the agent) may be freed (a lock) while a pool thread
    // still signs with it: free() then leaves it to the last signature to end.
    this.signing += 1;
    try {
      ctx = c.mdCtxNew();
      if (!ctx) throw new Error('OpenSSL could not make a signing context');
      if (c.digestSignInit(ctx, null, c.digest(hash), null, this.pkey) !== 1) {
        c.errClear();
        throw new Error('OpenSSL refused to start the signature');
      }
      const sig = Buffer.alloc(this.maxSig);
      const len = [sig.length];
      const ok = await new Promise<number>((resolve, reject) =>
        c.digestSignAsync(ctx, sig, len, data, length, (err, r) =>
          err
            ? reject(err instanceof Error ? err : new Error('OpenSSL could not sign'))
            : resolve(r),
        ),
      );
      // koffi hands the pool thread bare pointers to sig and data and keeps no reference to
      // either: both must stay reachable until the call is done (sig is used below; data here,
      // which also refuses a buffer detached or cut meanwhile).
      if (data.byteLength !== length) throw new Error('the data to sign changed meanwhile');
      // A failure leaves OpenSSL's error entries in the pool thread's queue (it is per thread):
      // memory only, since every call's own status is what is read.
      if (ok !== 1) throw new Error('OpenSSL refused to sign');
      return sig.subarray(0, Number(len[0]));
    } finally {
      if (ctx) c.mdCtxFree(ctx);
      this.signing -= 1;
      if (this.freeing && this.signing === 0) this.free();
    }
  }

  /**
   * Frees the key: OpenSSL clears its private numbers (BN_clear_free). At once, unless signatures
   * run with it on the thread pool: then as the last of them ends, and none starts meanwhile.
   */
  free(): void {
    if (this.signing > 0) {
      this.freeing = true;
      return;
    }
    // The context holds a reference to the key: freed first, so that the key's is the last.
    if (this.ecCtx !== undefined) openssl().pkeySign?.ctxFree(this.ecCtx);
    this.ecCtx = undefined;
    this.ecHash = undefined;
    if (this.pkey !== undefined) openssl().pkeyFree(this.pkey);
    this.pkey = undefined;
    this.freeing = false;
  }
}
