/**
 * The age format (age-encryption.org/v1) for one small secret payload (a project file's data
 * key) to X25519 recipients, written and read by keyward itself with every key-dependent byte in
 * secure memory. age-encryption (typage) would hold the file key, and the payload it encrypts,
 * in its own JS arrays; the format is small enough to do here, and the `age` command checks it
 * both ways in test/project.test.ts.
 *
 *   header  = "age-encryption.org/v1\n" stanza* "---" " " base64(MAC) "\n"
 *   stanza  = "-> X25519 " base64(share) "\n" base64(body) "\n"     (base64 without padding)
 *   body    = ChaCha20-Poly1305(HKDF(X25519(e, R), share || R, "age-encryption.org/v1/X25519"),
 *             nonce 0, file key)
 *   MAC     = HMAC-SHA256(HKDF(file key, "", "header"), header up to and including "---")
 *   payload = nonce(16) || ChaCha20-Poly1305(HKDF(file key, nonce, "payload"), 0^11 || 1, data)
 *
 * Only one payload chunk (at most 64 KiB): that is all a data key needs.
 */
import { IntegrityError } from '../errors.js';
import {
  randomBytes,
  secureEqual,
  secureFree,
  securePooled,
  secureRandom,
  secureRelease,
  type SecureBuffer,
} from '../lib/secure.js';
import { sodium } from '../lib/sodium.js';
import { hkdfSha256, hmacSha256, unwrapX25519 } from '../vault/index.js';

const INTRO = 'age-encryption.org/v1\n';
const LABEL = Buffer.from('age-encryption.org/v1/X25519', 'ascii');
const FILE_KEY_BYTES = 16;
const CHUNK = 64 * 1024;
const TAG = 16;

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64').replace(/=+$/, '');

/** bech32 (BIP 173) checksum over the human-readable part and the data's 5-bit groups. */
function polymod(values: readonly number[]): number {
  const gen = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
  let chk = 1;
  for (const v of values) {
    const top = chk >>> 25;
    chk = (((chk & 0x1ffffff) << 5) ^ v) >>> 0;
    for (let j = 0; j < 5; j++) if ((top >>> j) & 1) chk = (chk ^ (gen[j] ?? 0)) >>> 0;
  }
  return chk;
}
const CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
const HRP = 'age';
const hrpValues = [...HRP]
  .map((c) => c.charCodeAt(0) >> 5)
  .concat(
    [0],
    [...HRP].map((c) => c.charCodeAt(0) & 31),
  );

/** The `age1...` recipient of an X25519 public key (public data). */
export function encodeRecipient(publicKey: Uint8Array): string {
  if (publicKey.length !== 32) throw new RangeError('an X25519 public key is 32 bytes');
  const data: number[] = [];
  let acc = 0;
  let bits = 0;
  for (const b of publicKey) {
    acc = ((acc << 8) | b) & 0xfff;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      data.push((acc >> bits) & 31);
    }
  }
  if (bits > 0) data.push((acc << (5 - bits)) & 31);
  const chk = polymod([...hrpValues, ...data, 0, 0, 0, 0, 0, 0]) ^ 1;
  const check = Array.from({ length: 6 }, (_, i) => (chk >>> (5 * (5 - i))) & 31);
  return `${HRP}1${[...data, ...check].map((v) => CHARSET[v]).join('')}`;
}

/** The X25519 public key of an `age1...` recipient, or undefined when it is not one. */
export function decodeRecipient(text: string): Buffer | undefined {
  if (!/^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$/.test(text)) return undefined;
  const values = [...text.slice(4)].map((c) => CHARSET.indexOf(c));
  if (polymod([...hrpValues, ...values]) !== 1) return undefined;
  const out: number[] = [];
  let acc = 0;
  let bits = 0;
  for (const v of values.slice(0, -6)) {
    acc = ((acc << 5) | v) & 0xfff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  if (out.length !== 32 || (acc & ((1 << bits) - 1)) !== 0) return undefined;
  return Buffer.from(out);
}

/** The X25519 public key of a secret one (32 bytes, secure memory). */
export function publicKeyOf(identity: SecureBuffer): Buffer {
  const pk = Buffer.alloc(32);
  sodium.crypto_scalarmult_base(pk, identity);
  return pk;
}

function headerMac(fileKey: SecureBuffer, header: Uint8Array): Buffer {
  const key = hkdfSha256(fileKey, new Uint8Array(0), Buffer.from('header'), 32);
  try {
    const mac = Buffer.alloc(32);
    hmacSha256(mac, key, header);
    return mac;
  } finally {
    secureRelease(key);
  }
}

const LAST_CHUNK_NONCE = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/** An age file of `payload` (at most 64 KiB) to every recipient (32-byte X25519 public keys). */
export function ageEncrypt(payload: SecureBuffer, recipients: readonly Uint8Array[]): Buffer {
  if (payload.length > CHUNK) throw new RangeError('one chunk only: at most 64 KiB');
  if (recipients.length === 0) throw new RangeError('at least one recipient');
  const fileKey = secureRandom(FILE_KEY_BYTES);
  try {
    let header = INTRO;
    for (const r of recipients) {
      const e = secureRandom(32);
      const shared = securePooled(32);
      let wrap: SecureBuffer | undefined;
      try {
        const share = Buffer.alloc(32);
        sodium.crypto_scalarmult_base(share, e);
        sodium.crypto_scalarmult(shared, e, r);
        wrap = hkdfSha256(shared, Buffer.concat([share, r]), LABEL, 32);
        const body = Buffer.alloc(FILE_KEY_BYTES + TAG);
        sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
          body,
          fileKey,
          null,
          null,
          Buffer.alloc(12),
          wrap,
        );
        header += `-> X25519 ${b64(share)}\n${b64(body)}\n`;
      } finally {
        secureFree(e);
        secureRelease(shared);
        secureRelease(wrap);
      }
    }
    header += '---';
    const mac = headerMac(fileKey, Buffer.from(header, 'ascii'));
    const nonce = randomBytes(16);
    const key = hkdfSha256(fileKey, nonce, Buffer.from('payload'), 32);
    try {
      const sealed = Buffer.alloc(payload.length + TAG);
      sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
        sealed,
        payload,
        null,
        null,
        LAST_CHUNK_NONCE,
        key,
      );
      return Buffer.concat([Buffer.from(`${header} ${b64(mac)}\n`, 'ascii'), nonce, sealed]);
    } finally {
      secureRelease(key);
    }
  } finally {
    secureFree(fileKey);
  }
}

function corrupt(why: string): IntegrityError {
  return new IntegrityError('PROJECT_TAMPERED', `the data key's age file is damaged: ${why}`);
}

/**
 * An age file's header: where its `---` line begins and its stanza lines (read without a key,
 * not yet checked). One that does not begin as age's or has no end: PROJECT_TAMPERED.
 */
function headerOf(buf: Buffer): { end: number; lines: string[] } {
  // eslint-disable-next-line no-restricted-syntax -- the format's public first line
  if (!buf.subarray(0, INTRO.length).equals(Buffer.from(INTRO, 'ascii')))
    throw corrupt('it does not begin as an age file');
  const end = buf.indexOf('\n---', INTRO.length - 1);
  if (end < 0) throw corrupt('its header has no end');
  return {
    end,
    lines: buf
      .toString('latin1', INTRO.length, end + 1)
      .split('\n')
      .slice(0, -1),
  };
}

/**
 * The kind of each stanza of an age file's header (`X25519`...), read without a key: who the
 * file key is wrapped for, counted. A stanza begins with "-> "; its body lines are base64, which
 * never begins so.
 */
export function stanzaKinds(file: Uint8Array): string[] {
  return headerOf(Buffer.from(file.buffer, file.byteOffset, file.length))
    .lines.filter((l) => l.startsWith('-> '))
    .map((l) => l.slice(3).split(' ')[0] ?? '');
}

/**
 * The payload of an age file, for this identity (32-byte X25519 secret), in secure memory;
 * undefined when no stanza is for it. A malformed or tampered file: PROJECT_TAMPERED.
 */
export function ageDecrypt(file: Uint8Array, identity: SecureBuffer): SecureBuffer | undefined {
  const buf = Buffer.from(file.buffer, file.byteOffset, file.length);
  const { end, lines } = headerOf(buf);
  const macLineEnd = buf.indexOf(0x0a, end + 4);
  if (macLineEnd < 0 || buf[end + 4] !== 0x20) throw corrupt('its header MAC is missing');
  let fileKey: SecureBuffer | undefined;
  try {
    for (let i = 0; i < lines.length;) {
      const m = /^-> (\S+(?: \S+)*)$/.exec(lines[i] ?? '');
      if (!m) throw corrupt('a malformed stanza');
      const args = (m[1] ?? '').split(' ');
      // The body: full lines of 64 characters, ended by a shorter one.
      let body = '';
      for (i += 1; ; i += 1) {
        const l = lines[i];
        if (l === undefined || !/^[A-Za-z0-9+/]{0,64}$/.test(l))
          throw corrupt('a malformed stanza body');
        body += l;
        if (l.length < 64) break;
      }
      i += 1;
      const bodyBytes = Buffer.from(body, 'base64');
      // One encoding only (age's rule): base64 that decodes the same from other text is refused.
      if (b64(bodyBytes) !== body) throw corrupt('a stanza body is not canonical base64');
      if (fileKey === undefined && args[0] === 'X25519') {
        try {
          fileKey = unwrapX25519(identity, args, bodyBytes);
        } catch {
          throw corrupt('a malformed X25519 stanza');
        }
      }
    }
    if (!fileKey) return undefined;
    const macText = buf.toString('latin1', end + 5, macLineEnd);
    const mac = Buffer.from(macText, 'base64');
    if (mac.length !== 32 || b64(mac) !== macText) throw corrupt('its header MAC is malformed');
    if (!secureEqual(mac, headerMac(fileKey, buf.subarray(0, end + 4))))
      throw corrupt('its header MAC does not verify (the recipients were changed)');
    const nonce = buf.subarray(macLineEnd + 1, macLineEnd + 17);
    const sealed = buf.subarray(macLineEnd + 17);
    if (nonce.length !== 16 || sealed.length < TAG || sealed.length > CHUNK + TAG)
      throw corrupt('its payload is cut or too long');
    const key = hkdfSha256(fileKey, nonce, Buffer.from('payload'), 32);
    // Pooled: a caller that gives it back with secureRelease holds no mapping per open.
    const out = securePooled(sealed.length - TAG);
    try {
      sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
        out,
        null,
        sealed,
        null,
        LAST_CHUNK_NONCE,
        key,
      );
      return out;
    } catch {
      secureRelease(out);
      throw corrupt('its payload does not decrypt');
    } finally {
      secureRelease(key);
    }
  } finally {
    secureRelease(fileKey);
  }
}
