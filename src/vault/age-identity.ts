/**
 * Opening a backup made to an age X25519 recipient with the recipient's identity file, without
 * the identity ever becoming a JS string (docs/BACKUP.md, "Encryption"). age-encryption takes
 * identities as strings, so keyward reads the file into secure memory, decodes the bech32 key
 * there, and unwraps the stanza itself as age-encryption.org/v1 specifies:
 *
 *   shared   = X25519(identity, ephemeral share)
 *   wrap key = HKDF-SHA256(ikm = shared, salt = share || recipient, info = "age-encryption.org/v1/X25519")
 *   file key = ChaCha20-Poly1305(wrap key, nonce 0) open of the stanza body
 *
 * HMAC and HKDF are built on libsodium's SHA-256 (sodium-native has no HMAC-SHA256 for keys of
 * any length) with every key-dependent buffer in secure memory; test/backup.test.ts checks them
 * against RFC 4231 and RFC 5869 and against node:crypto, and the whole against the age command.
 */
import fs from 'node:fs';
import { IntegrityError, UsageError } from '../errors.js';
import { hardenProcess } from '../lib/libc.js';
import {
  readFdToSecure,
  secureAlloc,
  secureFree,
  securePooled,
  secureRelease,
  type SecureBuffer,
} from '../lib/secure.js';
import { sodium } from '../lib/sodium.js';

const BLOCK = 64;
const HASH = 32;
const FILE_KEY_BYTES = 16;
const IDENTITY_FILE_MAX = 64 * 1024;
const HRP = 'age-secret-key-';
/**
 * bech32's alphabet, upper case as age writes identities (code -> value, -1 elsewhere): no string
 * per character. age accepts no other case, and neither does keyward.
 */
const CHARSET = (() => {
  const t = new Int8Array(128).fill(-1);
  const letters = 'QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L';
  for (let i = 0; i < letters.length; i++) t[letters.charCodeAt(i)] = i;
  return t;
})();
const PREFIX = Buffer.from('AGE-SECRET-KEY-1', 'ascii');
const LABEL = Buffer.from('age-encryption.org/v1/X25519', 'ascii');

/** HMAC-SHA256 (RFC 2104) of the concatenated messages into out (32 bytes). */
export function hmacSha256(out: Uint8Array, key: Uint8Array, ...messages: Uint8Array[]): void {
  // Pooled (secure.ts): a run of unwraps would otherwise hold a mapping per temporary until GC.
  const k0 = securePooled(BLOCK);
  const pad = securePooled(BLOCK);
  const state = securePooled(sodium.crypto_hash_sha256_STATEBYTES);
  const inner = securePooled(HASH);
  try {
    if (key.length > BLOCK) sodium.crypto_hash_sha256(k0.subarray(0, HASH), key);
    else k0.set(key);
    for (let i = 0; i < BLOCK; i++) pad[i] = (k0[i] ?? 0) ^ 0x36;
    sodium.crypto_hash_sha256_init(state);
    sodium.crypto_hash_sha256_update(state, pad);
    for (const m of messages) sodium.crypto_hash_sha256_update(state, m);
    sodium.crypto_hash_sha256_final(state, inner);
    for (let i = 0; i < BLOCK; i++) pad[i] = (k0[i] ?? 0) ^ 0x5c;
    sodium.crypto_hash_sha256_init(state);
    sodium.crypto_hash_sha256_update(state, pad);
    sodium.crypto_hash_sha256_update(state, inner);
    sodium.crypto_hash_sha256_final(state, out);
  } finally {
    secureRelease(k0);
    secureRelease(pad);
    secureRelease(state);
    secureRelease(inner);
  }
}

/** HKDF-SHA256 (RFC 5869), at most 255 x 32 bytes, into secure memory. */
export function hkdfSha256(
  ikm: Uint8Array,
  salt: Uint8Array,
  info: Uint8Array,
  length: number,
): SecureBuffer {
  if (length < 1 || length > 255 * HASH) throw new RangeError('HKDF length out of range');
  const prk = securePooled(HASH);
  const t = securePooled(HASH);
  const out = secureAlloc(length);
  try {
    hmacSha256(prk, salt.length > 0 ? salt : new Uint8Array(HASH), ikm);
    for (let i = 0, done = 0; done < length; i++) {
      hmacSha256(t, prk, i === 0 ? new Uint8Array(0) : t, info, Uint8Array.of(i + 1));
      out.set(t.subarray(0, Math.min(HASH, length - done)), done);
      done += HASH;
    }
    return out;
  } catch (e) {
    secureFree(out);
    throw e;
  } finally {
    secureRelease(prk);
    secureRelease(t);
  }
}

function polymod(values: Uint8Array, count: number): number {
  const gen = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
  let chk = 1;
  for (let i = 0; i < count; i++) {
    const top = chk >>> 25;
    chk = (((chk & 0x1ffffff) << 5) ^ (values[i] ?? 0)) >>> 0;
    for (let j = 0; j < 5; j++) if ((top >>> j) & 1) chk = (chk ^ (gen[j] ?? 0)) >>> 0;
  }
  return chk;
}

/**
 * The 32-byte key of one `AGE-SECRET-KEY-1...` line (bech32, checksum checked), decoded in
 * secure memory; undefined when the line is not one.
 */
export function decodeAgeSecretKey(line: Uint8Array): SecureBuffer | undefined {
  const n = line.length;
  // "age-secret-key-" + "1" + 52 data characters + 6 checksum characters.
  if (n !== HRP.length + 1 + 52 + 6) return undefined;
  for (let i = 0; i < PREFIX.length; i++) if (line[i] !== PREFIX[i]) return undefined;
  // hrp expansion (high bits, 0, low bits), then the data and checksum values.
  const values = secureAlloc(HRP.length * 2 + 1 + 58);
  const bytes = secureAlloc(32);
  try {
    for (let i = 0; i < HRP.length; i++) {
      values[i] = HRP.charCodeAt(i) >> 5;
      values[HRP.length + 1 + i] = HRP.charCodeAt(i) & 31;
    }
    values[HRP.length] = 0;
    const base = HRP.length * 2 + 1;
    for (let i = 0; i < 58; i++) {
      const c = line[HRP.length + 1 + i] ?? 0;
      const v = c < 128 ? (CHARSET[c] ?? -1) : -1;
      if (v < 0) return undefined;
      values[base + i] = v;
    }
    if (polymod(values, base + 58) !== 1) return undefined;
    // 52 five-bit groups: 256 bits of key and 4 bits of zero padding.
    let acc = 0;
    let bits = 0;
    let o = 0;
    for (let i = 0; i < 52; i++) {
      acc = ((acc << 5) | (values[base + i] ?? 0)) & 0x1fff;
      bits += 5;
      if (bits >= 8) {
        bits -= 8;
        bytes[o++] = (acc >> bits) & 0xff;
      }
    }
    if (o !== 32 || (acc & ((1 << bits) - 1)) !== 0) return undefined;
    const key = secureAlloc(32);
    key.set(bytes);
    return key;
  } finally {
    secureFree(values);
    secureFree(bytes);
  }
}

/** The identities of an age identity file (0600, yours): comments and blank lines skipped. */
export function readAgeIdentities(file: string): SecureBuffer[] {
  hardenProcess();
  let fd: number;
  try {
    // Not following a link, and not waiting on a pipe: what is read must be a file of yours.
    fd = fs.openSync(
      file,
      fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK,
    );
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    if (code === 'ELOOP')
      throw new IntegrityError(
        'INSECURE_PERMISSIONS',
        `refusing the identity file ${file}: it is a symbolic link`,
        { hint: 'give the file itself' },
      );
    throw new UsageError('USAGE', `cannot read the identity file ${file} (${code})`);
  }
  const keys: SecureBuffer[] = [];
  let all: SecureBuffer | undefined;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile())
      throw new UsageError('USAGE', `the identity file ${file} is not a regular file`);
    if (st.uid !== (process.geteuid?.() ?? -1) || (st.mode & 0o077) !== 0)
      throw new IntegrityError(
        'INSECURE_PERMISSIONS',
        `refusing the identity file ${file}: ${st.uid !== process.geteuid?.() ? 'owned by another user' : 'others can read or change it'}`,
        { hint: `chmod 600 '${file}'` },
      );
    try {
      all = readFdToSecure(fd, IDENTITY_FILE_MAX);
    } catch (e) {
      if (e instanceof RangeError)
        throw new UsageError('USAGE', `the identity file ${file} is too large (over 64 KiB)`);
      throw e;
    }
    let start = 0;
    while (start < all.length) {
      let end = all.indexOf(0x0a, start);
      if (end < 0) end = all.length;
      let stop = end;
      if (stop > start && all[stop - 1] === 0x0d) stop -= 1;
      const line = all.subarray(start, stop);
      if (line.length > 0 && line[0] !== 0x23) {
        const k = decodeAgeSecretKey(line);
        if (!k)
          throw new UsageError(
            'USAGE',
            `the identity file ${file} holds a line that is not an age X25519 identity`,
            {
              hint: 'an identity file is what age-keygen writes: comments and AGE-SECRET-KEY-1... lines',
            },
          );
        keys.push(k);
      }
      start = end + 1;
    }
    if (keys.length === 0)
      throw new UsageError('USAGE', `the identity file ${file} holds no identity`);
    return keys;
  } catch (e) {
    for (const k of keys) secureFree(k);
    throw e;
  } finally {
    secureFree(all);
    fs.closeSync(fd);
  }
}

/**
 * The file key of an X25519 stanza (args: ["X25519", base64 share], body: 32 bytes) for this
 * identity, in secure memory; undefined when the stanza is for another recipient.
 */
export function unwrapX25519(
  identity: SecureBuffer,
  args: readonly string[],
  body: Uint8Array,
): SecureBuffer | undefined {
  if (args[0] !== 'X25519') return undefined;
  const share = Buffer.from(args[1] ?? '', 'base64');
  if (
    share.length !== 32 ||
    share.toString('base64').replace(/=+$/, '') !== args[1] ||
    body.length !== 32
  )
    throw new IntegrityError('BACKUP_CORRUPT', 'the backup is damaged: a malformed X25519 stanza');
  const recipient = Buffer.alloc(32);
  sodium.crypto_scalarmult_base(recipient, identity);
  const shared = securePooled(32);
  let wrap: SecureBuffer | undefined;
  const fileKey = secureAlloc(FILE_KEY_BYTES);
  try {
    try {
      sodium.crypto_scalarmult(shared, identity, share);
    } catch {
      // A low-order share makes no key with anyone: a made-up stanza (age refuses it too).
      throw new IntegrityError(
        'BACKUP_CORRUPT',
        'the backup is damaged: an X25519 stanza with a low-order share',
      );
    }
    wrap = hkdfSha256(shared, Buffer.concat([share, recipient]), LABEL, 32);
    try {
      sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
        fileKey,
        null,
        body,
        null,
        Buffer.alloc(12),
        wrap,
      );
    } catch {
      secureFree(fileKey);
      return undefined; // another recipient's stanza
    }
    return fileKey;
  } finally {
    secureRelease(shared);
    secureRelease(wrap);
  }
}
