/**
 * bcrypt_pbkdf (OpenSSH's openbsd-compat/bcrypt_pbkdf.c), the KDF of encrypted OpenSSH key files.
 * The Blowfish core comes from the bcrypt-pbkdf package (the one ssh2 and sshpk use); the PBKDF
 * loop is here so the passphrase's SHA-512, every intermediate output and the result live in
 * secure memory. What the library keeps (its Blowfish state) is listed in docs/THREAT-MODEL.md.
 */
import { createRequire } from 'node:module';
import type bcryptT from 'bcrypt-pbkdf';
import { sodium } from '../lib/sodium.js';
import { secureAlloc, secureFree } from '../lib/secure.js';

const HASH = 32;

export function bcryptPbkdf(
  pass: Uint8Array,
  salt: Uint8Array,
  rounds: number,
  out: Uint8Array,
): void {
  // Loaded on first use: only `key import` of an encrypted file needs it.
  const bcrypt = createRequire(import.meta.url)('bcrypt-pbkdf') as typeof bcryptT;
  const keylen = out.length;
  const stride = Math.ceil(keylen / HASH);
  const amt = Math.ceil(keylen / stride);
  // sha2pass 64 | sha2salt 64 | block 32 | tmp 32 | countsalt
  const work = secureAlloc(64 + 64 + HASH + HASH + salt.length + 4);
  try {
    const sha2pass = work.subarray(0, 64);
    const sha2salt = work.subarray(64, 128);
    const block = work.subarray(128, 128 + HASH);
    const tmp = work.subarray(128 + HASH, 128 + 2 * HASH);
    const countsalt = work.subarray(128 + 2 * HASH);
    countsalt.set(salt);
    sodium.crypto_hash_sha512(sha2pass, pass);
    let remaining = keylen;
    for (let count = 1; remaining > 0; count++) {
      countsalt.writeUInt32BE(count, salt.length);
      sodium.crypto_hash_sha512(sha2salt, countsalt);
      bcrypt.hash(sha2pass, sha2salt, tmp);
      block.set(tmp);
      for (let i = 1; i < rounds; i++) {
        sodium.crypto_hash_sha512(sha2salt, tmp);
        bcrypt.hash(sha2pass, sha2salt, tmp);
        for (let j = 0; j < HASH; j++) block[j] = (block[j] ?? 0) ^ (tmp[j] ?? 0);
      }
      let i = 0;
      for (; i < Math.min(amt, remaining); i++) {
        const dest = i * stride + (count - 1);
        if (dest >= keylen) break;
        out[dest] = block[i] ?? 0;
      }
      remaining -= i;
    }
  } finally {
    secureFree(work);
  }
}
