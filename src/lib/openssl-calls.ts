/**
 * The libcrypto calls keyward makes, bound once per process through koffi (koffi.load(null): the
 * node binary exports its OpenSSL's symbols, so no second OpenSSL is loaded). openssl.ts says what
 * each is for and why it is called directly.
 */
import { koffi } from './koffi.js';
import { processWide } from './once.js';

export type Pointer = unknown;

export interface Crypto {
  secureMallocInit: (size: number, min: number) => number;
  secureMallocInitialized: () => number;
  secureUsed: () => number | bigint;
  /** The provider a key lives in, and its name ("default", "fips", ...). */
  pkeyProvider: (pkey: Pointer) => Pointer;
  providerName: (prov: Pointer) => string;
  /** ENGINE_get_default_RSA, where this libcrypto has engines: an engine's RSA method wins. */
  engineDefaultRsa: (() => Pointer) | undefined;
  bioNewMemBuf: (buf: Uint8Array, len: number) => Pointer;
  bioFree: (bio: Pointer) => number;
  d2iPrivateKeyBio: (bio: Pointer, out: null) => Pointer;
  pkeyId: (pkey: Pointer) => number;
  pkeySize: (pkey: Pointer) => number;
  pkeyFree: (pkey: Pointer) => void;
  mdCtxNew: () => Pointer;
  mdCtxFree: (ctx: Pointer) => void;
  digestSignInit: (ctx: Pointer, pctx: null, md: Pointer, e: null, pkey: Pointer) => number;
  digestSign: (
    ctx: Pointer,
    sig: Buffer,
    len: bigint[] | number[],
    tbs: Uint8Array,
    tbsLen: number,
  ) => number;
  /** EVP_DigestSign on libuv's thread pool: the RSA signature off the agent's event loop. */
  digestSignAsync: (
    ctx: Pointer,
    sig: Buffer,
    len: number[],
    tbs: Uint8Array,
    tbsLen: number,
    done: (err: unknown, ok: number) => void,
  ) => void;
  digest: (name: 'sha256' | 'sha384' | 'sha512') => Pointer;
  /**
   * An ECDSA signature over a digest, on a context made once per held key (OpensslKey.sign):
   * EVP_DigestSignInit fetched the signature's algorithm and made a context at every signature,
   * ~5 us of a P-256 signature's ~25 in the agent. Undefined where this libcrypto lacks one.
   */
  pkeySign:
    | {
        ctxNew: (pkey: Pointer, e: null) => Pointer;
        ctxFree: (ctx: Pointer) => void;
        init: (ctx: Pointer) => number;
        setMd: (ctx: Pointer, md: Pointer) => number;
        sign: (ctx: Pointer, sig: Buffer, len: number[], tbs: Buffer, tbsLen: number) => number;
        /** The digests, fetched once, as the one-shot hash and setMd take them. */
        md: Record<'sha256' | 'sha384' | 'sha512', Pointer>;
      }
    | undefined;
  errClear: () => void;
  /** EVP_Digest: a one-shot hash of public data. */
  oneShot: (
    data: Uint8Array,
    len: number,
    out: Buffer,
    outLen: null,
    md: Pointer,
    e: null,
  ) => number;
  /** SHA-256, fetched once (EVP_sha256() would fetch it again at each use). */
  sha256: Pointer;
  /** SHA-1, fetched once: HMAC-SHA1 for TOTP (RFC 6238). */
  sha1: Pointer;
  /**
   * RSA_METHOD calls (deprecated in OpenSSL 3, still exported): a copy of OpenSSL's own method
   * without its init, made the default, so new RSA keys cache no Montgomery forms (rsaHoldable).
   * Undefined where this libcrypto lacks one of them.
   */
  rsaMethod:
    | {
        defaultMethod: () => Pointer;
        openssl: () => Pointer;
        dup: (m: Pointer) => Pointer;
        setInit: (m: Pointer, init: null) => number;
        setDefault: (m: Pointer) => void;
      }
    | undefined;
  /**
   * SHA-512's low-level calls on a caller's SHA512_CTX, and a constant-time compare: the audit
   * verifier's tag check (audit/keys.ts, TagChecker). Undefined where this libcrypto lacks them.
   */
  sha512Low: Sha512Calls | undefined;
  /** HMAC: a one-shot MAC, the key read in place (OpenSSL clears its copy when it frees it). */
  hmac: (
    md: Pointer,
    key: Uint8Array,
    keyLen: number,
    data: Uint8Array,
    dataLen: number,
    out: Buffer,
    outLen: number[],
  ) => Pointer;
}

export interface Sha512Calls {
  init: (ctx: Uint8Array) => number;
  update: (ctx: Uint8Array, data: Uint8Array, len: number) => number;
  final: (md: Uint8Array, ctx: Uint8Array) => number;
  memcmp: (a: Uint8Array, b: Uint8Array, len: number) => number;
}

let cached: Crypto | undefined;

/** The bindings, made at the first call in this process (lib/once.ts: one for every copy). */
export function openssl(): Crypto {
  return (cached ??= processWide('openssl', bind));
}

function bind(): Crypto {
  const lib = koffi.load(null);
  koffi.opaque('keyward_EVP_PKEY');
  koffi.opaque('keyward_BIO');
  koffi.opaque('keyward_EVP_MD_CTX');
  koffi.opaque('keyward_EVP_MD');
  const sha256 = lib.func('const keyward_EVP_MD *EVP_sha256(void)');
  const sha384 = lib.func('const keyward_EVP_MD *EVP_sha384(void)');
  const sha512 = lib.func('const keyward_EVP_MD *EVP_sha512(void)');
  const fetch = lib.func('keyward_EVP_MD *EVP_MD_fetch(void *, const char *, const char *)');
  const digestSign = lib.func(
    'int EVP_DigestSign(keyward_EVP_MD_CTX *, _Out_ uint8_t *, _Inout_ size_t *, const uint8_t *, size_t)',
  );
  let engineDefaultRsa: Crypto['engineDefaultRsa'];
  try {
    engineDefaultRsa = lib.func('void *ENGINE_get_default_RSA(void)');
  } catch {
    engineDefaultRsa = undefined; // built without engines: none can be the default
  }
  let rsaMethod: Crypto['rsaMethod'];
  try {
    koffi.opaque('keyward_RSA_METHOD');
    rsaMethod = {
      defaultMethod: lib.func('const keyward_RSA_METHOD *RSA_get_default_method(void)'),
      openssl: lib.func('const keyward_RSA_METHOD *RSA_PKCS1_OpenSSL(void)'),
      dup: lib.func('keyward_RSA_METHOD *RSA_meth_dup(const keyward_RSA_METHOD *)'),
      setInit: lib.func('int RSA_meth_set_init(keyward_RSA_METHOD *, void *)'),
      setDefault: lib.func('void RSA_set_default_method(const keyward_RSA_METHOD *)'),
    };
  } catch {
    rsaMethod = undefined; // a libcrypto built without the deprecated calls: RSA keys not held
  }
  let pkeySign: Crypto['pkeySign'];
  try {
    koffi.opaque('keyward_EVP_PKEY_CTX');
    // The calls first: the digests are fetched (and kept) only once every call is there.
    const calls = {
      ctxNew: lib.func('keyward_EVP_PKEY_CTX *EVP_PKEY_CTX_new(keyward_EVP_PKEY *, void *)'),
      ctxFree: lib.func('void EVP_PKEY_CTX_free(keyward_EVP_PKEY_CTX *)'),
      init: lib.func('int EVP_PKEY_sign_init(keyward_EVP_PKEY_CTX *)'),
      setMd: lib.func(
        'int EVP_PKEY_CTX_set_signature_md(keyward_EVP_PKEY_CTX *, const keyward_EVP_MD *)',
      ),
      sign: lib.func(
        'int EVP_PKEY_sign(keyward_EVP_PKEY_CTX *, _Out_ uint8_t *, _Inout_ size_t *, const uint8_t *, size_t)',
      ),
    };
    const md = {
      sha256: fetch(null, 'SHA256', null),
      sha384: fetch(null, 'SHA384', null),
      sha512: fetch(null, 'SHA512', null),
    };
    pkeySign = md.sha256 && md.sha384 && md.sha512 ? { ...calls, md } : undefined;
  } catch {
    pkeySign = undefined; // a libcrypto without one of the calls: EVP_DigestSign each time
  }
  let sha512Low: Sha512Calls | undefined;
  try {
    sha512Low = {
      init: lib.func('int SHA512_Init(uint8_t *)'),
      update: lib.func('int SHA512_Update(uint8_t *, const uint8_t *, size_t)'),
      final: lib.func('int SHA512_Final(uint8_t *, uint8_t *)'),
      memcmp: lib.func('int CRYPTO_memcmp(const uint8_t *, const uint8_t *, size_t)'),
    };
  } catch {
    sha512Low = undefined; // a libcrypto without them: libsodium checks every tag
  }
  return {
    sha512Low,
    pkeySign,
    secureMallocInit: lib.func('int CRYPTO_secure_malloc_init(size_t, size_t)'),
    secureMallocInitialized: lib.func('int CRYPTO_secure_malloc_initialized(void)'),
    secureUsed: lib.func('size_t CRYPTO_secure_used(void)'),
    pkeyProvider: lib.func('const void *EVP_PKEY_get0_provider(const keyward_EVP_PKEY *)'),
    providerName: lib.func('const char *OSSL_PROVIDER_get0_name(const void *)'),
    engineDefaultRsa,
    bioNewMemBuf: lib.func('keyward_BIO *BIO_new_mem_buf(const uint8_t *, int)'),
    bioFree: lib.func('int BIO_free(keyward_BIO *)'),
    d2iPrivateKeyBio: lib.func('keyward_EVP_PKEY *d2i_PrivateKey_bio(keyward_BIO *, void *)'),
    pkeyId: lib.func('int EVP_PKEY_get_base_id(const keyward_EVP_PKEY *)'),
    pkeySize: lib.func('int EVP_PKEY_get_size(const keyward_EVP_PKEY *)'),
    pkeyFree: lib.func('void EVP_PKEY_free(keyward_EVP_PKEY *)'),
    mdCtxNew: lib.func('keyward_EVP_MD_CTX *EVP_MD_CTX_new(void)'),
    mdCtxFree: lib.func('void EVP_MD_CTX_free(keyward_EVP_MD_CTX *)'),
    digestSignInit: lib.func(
      'int EVP_DigestSignInit(keyward_EVP_MD_CTX *, void *, const keyward_EVP_MD *, void *, keyward_EVP_PKEY *)',
    ),
    digestSign,
    digestSignAsync: digestSign.async,
    rsaMethod,
    digest: (name) => (name === 'sha256' ? sha256() : name === 'sha384' ? sha384() : sha512()),
    errClear: lib.func('void ERR_clear_error(void)'),
    oneShot: lib.func(
      'int EVP_Digest(const uint8_t *, size_t, _Out_ uint8_t *, void *, const keyward_EVP_MD *, void *)',
    ),
    sha256: fetch(null, 'SHA256', null),
    sha1: fetch(null, 'SHA1', null),
    hmac: lib.func(
      'void *HMAC(const keyward_EVP_MD *, const uint8_t *, int, const uint8_t *, size_t, _Out_ uint8_t *, _Inout_ unsigned int *)',
    ),
  };
}
