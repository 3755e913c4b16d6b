/**
 * TOTP (RFC 6238 over RFC 4226: HMAC-SHA1, 30-second steps, 6 digits) as an approval factor.
 *
 * Written here rather than taken from otplib because otplib takes the shared secret as a base32
 * JS string; here it stays in secure memory (the HMAC is OpenSSL's, reading the key in place:
 * lib/openssl.ts). Checked against Debian's oathtool in the tests.
 */
import { timingSafeEqual } from 'node:crypto';
import { hmacSha1 } from '../lib/openssl.js';
import {
  secureAlloc,
  secureFree,
  secureRandom,
  writeAllSync,
  type SecureBuffer,
} from '../lib/secure.js';
import { writeQr } from '../lib/qr.js';
import type { Vault } from '../vault/index.js';

export const TOTP_SECRET = '@totp/secret';
export const STEP_SECONDS = 30;
const DIGITS = 6;
const SECRET_BYTES = 20;

/** RFC 4226 section 5.3: dynamic truncation of HMAC-SHA1(secret, counter). */
export function hotp(secret: SecureBuffer, counter: number): string {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const mac = hmacSha1(secret, msg, Buffer.alloc(20));
  const offset = (mac[mac.length - 1] ?? 0) & 0x0f;
  const bin = (mac.readUInt32BE(offset) & 0x7fffffff) % 10 ** DIGITS;
  mac.fill(0);
  return String(bin).padStart(DIGITS, '0');
}

/**
 * The time step a code is valid for (the current one or one step either side, for clock drift),
 * or undefined. The caller refuses steps at or before the last one it accepted: codes are single-use.
 */
export function verifyTotp(
  secret: SecureBuffer,
  code: string,
  nowMs: number,
  lastStep: number,
): number | undefined {
  if (!/^\d{6}$/.test(code)) return undefined;
  const step = Math.floor(nowMs / 1000 / STEP_SECONDS);
  // Every step is computed and compared in constant time, so timing says nothing about which
  // digits (or which step) matched.
  let found: number | undefined;
  for (const s of [step - 1, step, step + 1]) {
    const same = timingSafeEqual(Buffer.from(hotp(secret, s)), Buffer.from(code));
    if (same && s > lastStep && found === undefined) found = s;
  }
  return found;
}

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 (no padding) of secret bytes, into secure memory. */
function base32(bytes: SecureBuffer): SecureBuffer {
  const out = secureAlloc(Math.ceil((bytes.length * 8) / 5));
  let bits = 0;
  let value = 0;
  let o = 0;
  for (const b of bytes) {
    value = ((value << 8) | b) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      out[o++] = B32.charCodeAt((value >>> (bits - 5)) & 31);
      bits -= 5;
    }
  }
  if (bits > 0) out[o] = B32.charCodeAt((value << (5 - bits)) & 31);
  return out;
}

/**
 * `keyward totp enroll`: a new 20-byte secret in the vault (replacing any previous one), shown once
 * as an otpauth URI and a QR code for an authenticator app. The caller saves the vault.
 */
/**
 * A new TOTP secret, put in the vault (replacing any other), and its otpauth URI, in secure
 * memory: the caller shows it (as text or a QR code), frees it, and saves the vault.
 */
export function newTotp(v: Vault, label: string): SecureBuffer {
  const secret = secureRandom(SECRET_BYTES);
  const b32 = base32(secret);
  const head = Buffer.from(`otpauth://totp/keyward:${encodeURIComponent(label)}?secret=`, 'utf8');
  const tail = Buffer.from(
    `&issuer=keyward&algorithm=SHA1&digits=${DIGITS}&period=${STEP_SECONDS}`,
    'utf8',
  );
  const uri = secureAlloc(head.length + b32.length + tail.length);
  head.copy(uri, 0);
  b32.copy(uri, head.length);
  tail.copy(uri, head.length + b32.length);
  try {
    v.setInternal(TOTP_SECRET, secret);
    return uri;
  } catch (e) {
    secureFree(uri);
    throw e;
  } finally {
    secureFree(secret);
    secureFree(b32);
  }
}

export function enrollTotp(v: Vault, label: string, fd: number, qr: boolean): void {
  const uri = newTotp(v, label);
  try {
    writeAllSync(fd, uri);
    writeAllSync(fd, Buffer.from('\n'));
    if (qr) writeQr(uri, fd);
  } finally {
    secureFree(uri);
  }
}
