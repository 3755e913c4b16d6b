// The subset of sodium-native keyward uses, typed narrowly. Keeping our own declaration makes
// every libsodium entry point the code depends on visible in one place.
declare module 'sodium-native' {
  const sodium: {
    sodium_malloc(size: number): Buffer;
    sodium_free(buf: Buffer): void;
    sodium_memzero(buf: Uint8Array): void;
    sodium_mlock(buf: Uint8Array): void;
    sodium_memcmp(a: Uint8Array, b: Uint8Array): boolean;
    randombytes_buf(buf: Uint8Array): void;

    crypto_pwhash(
      out: Uint8Array,
      passwd: Uint8Array,
      salt: Uint8Array,
      opslimit: number,
      memlimit: number,
      alg: number,
    ): void;
    /** The same, on libuv's thread pool: the event loop keeps running. */
    crypto_pwhash_async(
      out: Uint8Array,
      passwd: Uint8Array,
      salt: Uint8Array,
      opslimit: number,
      memlimit: number,
      alg: number,
    ): Promise<void>;
    crypto_pwhash_ALG_ARGON2ID13: number;
    crypto_pwhash_SALTBYTES: number;
    crypto_pwhash_OPSLIMIT_MODERATE: number;
    crypto_pwhash_MEMLIMIT_MODERATE: number;
    crypto_pwhash_OPSLIMIT_INTERACTIVE: number;
    crypto_pwhash_MEMLIMIT_INTERACTIVE: number;

    crypto_aead_xchacha20poly1305_ietf_encrypt(
      ciphertext: Uint8Array,
      message: Uint8Array,
      additionalData: Uint8Array | null,
      nsec: null,
      npub: Uint8Array,
      key: Uint8Array,
    ): number;
    crypto_aead_xchacha20poly1305_ietf_decrypt(
      message: Uint8Array,
      nsec: null,
      ciphertext: Uint8Array,
      additionalData: Uint8Array | null,
      npub: Uint8Array,
      key: Uint8Array,
    ): number;
    crypto_aead_xchacha20poly1305_ietf_ABYTES: number;
    crypto_aead_xchacha20poly1305_ietf_KEYBYTES: number;
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES: number;

    crypto_kdf_derive_from_key(
      subkey: Uint8Array,
      subkeyId: number,
      context: Uint8Array,
      key: Uint8Array,
    ): void;
    crypto_kdf_CONTEXTBYTES: number;

    crypto_generichash(out: Uint8Array, input: Uint8Array, key?: Uint8Array): void;
    crypto_generichash_batch(out: Uint8Array, inputs: Uint8Array[], key?: Uint8Array): void;

    crypto_auth(out: Uint8Array, input: Uint8Array, key: Uint8Array): void;
    crypto_auth_verify(mac: Uint8Array, input: Uint8Array, key: Uint8Array): boolean;
    crypto_auth_BYTES: number;
    crypto_hash_sha256(out: Uint8Array, input: Uint8Array): void;
    crypto_hash_sha256_init(state: Uint8Array): void;
    crypto_hash_sha256_update(state: Uint8Array, input: Uint8Array): void;
    crypto_hash_sha256_final(state: Uint8Array, out: Uint8Array): void;
    crypto_hash_sha256_STATEBYTES: number;
    crypto_hash_sha512_init(state: Uint8Array): void;
    crypto_hash_sha512_update(state: Uint8Array, input: Uint8Array): void;
    crypto_hash_sha512_STATEBYTES: number;

    crypto_box_keypair(pk: Uint8Array, sk: Uint8Array): void;
    crypto_box_seed_keypair(pk: Uint8Array, sk: Uint8Array, seed: Uint8Array): void;
    crypto_box_seal(out: Uint8Array, message: Uint8Array, pk: Uint8Array): void;
    crypto_box_seal_open(
      out: Uint8Array,
      ciphertext: Uint8Array,
      pk: Uint8Array,
      sk: Uint8Array,
    ): boolean;
    crypto_box_SEALBYTES: number;
    crypto_scalarmult_base(q: Uint8Array, n: Uint8Array): void;
    /** Throws when the result is all zeros (a low-order point). */
    crypto_scalarmult(q: Uint8Array, n: Uint8Array, p: Uint8Array): void;
    crypto_aead_chacha20poly1305_ietf_encrypt(
      ciphertext: Uint8Array,
      message: Uint8Array,
      additionalData: Uint8Array | null,
      nsec: null,
      npub: Uint8Array,
      key: Uint8Array,
    ): number;
    /** Throws when the ciphertext does not authenticate. */
    crypto_aead_chacha20poly1305_ietf_decrypt(
      message: Uint8Array,
      nsec: null,
      ciphertext: Uint8Array,
      additionalData: Uint8Array | null,
      npub: Uint8Array,
      key: Uint8Array,
    ): number;

    crypto_sign_keypair(pk: Uint8Array, sk: Uint8Array): void;
    crypto_sign_detached(sig: Uint8Array, message: Uint8Array, sk: Uint8Array): void;
    crypto_sign_verify_detached(sig: Uint8Array, message: Uint8Array, pk: Uint8Array): boolean;
    crypto_hash_sha512(out: Uint8Array, message: Uint8Array): void;
    crypto_sign_PUBLICKEYBYTES: number;
    crypto_sign_SECRETKEYBYTES: number;
    crypto_sign_BYTES: number;
    crypto_box_PUBLICKEYBYTES: number;
    crypto_box_SECRETKEYBYTES: number;
  };
  export default sodium;
}

// bcrypt-pbkdf 1.0.2: only the Blowfish core (keys/bcrypt.ts runs the PBKDF loop itself).
declare module 'bcrypt-pbkdf' {
  const bcrypt: {
    hash(sha2pass: Uint8Array, sha2salt: Uint8Array, out: Uint8Array): void;
    pbkdf(
      pass: Uint8Array,
      passlen: number,
      salt: Uint8Array,
      saltlen: number,
      key: Uint8Array,
      keylen: number,
      rounds: number,
    ): number;
  };
  export default bcrypt;
}
