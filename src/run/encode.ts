/**
 * The forms a secret value can take in a program's output, for masking: the bytes as they are,
 * hex (both cases), base64 and base64url (at each of the three alignments a value can have
 * inside a longer encoded buffer), percent-encoding and JSON string escaping.
 *
 * Every form is written byte by byte into secure memory: an encoded secret is a secret, and
 * must not become a JS string any more than the value itself.
 */
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';

/** Values (and forms) shorter than this are not masked: too many false matches (docs/RUN.md). */
export const MASK_MIN_BYTES = 6;
/** Above this size only the value's own bytes are masked, not its encodings. */
export const MASK_FORMS_MAX_BYTES = 64 * 1024;

const HEX_LOWER = Buffer.from('0123456789abcdef');
const HEX_UPPER = Buffer.from('0123456789ABCDEF');
const B64 = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/');
const B64URL = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_');

function hex(v: Uint8Array, digits: Buffer): SecureBuffer {
  const out = secureAlloc(v.length * 2);
  for (let i = 0; i < v.length; i++) {
    const b = v[i] ?? 0;
    out[2 * i] = digits[b >> 4] ?? 0;
    out[2 * i + 1] = digits[b & 15] ?? 0;
  }
  return out;
}

/**
 * The base64 characters that depend only on the value when it sits `shift` bytes (0, 1 or 2)
 * into a 3-byte group of a longer buffer: whole 3-byte groups made only of value bytes. Without
 * padding, so the form also matches inside a longer encoding.
 */
function base64Core(v: Uint8Array, shift: number, alphabet: Buffer): SecureBuffer {
  const skip = shift === 0 ? 0 : 3 - shift; // value bytes that share a group with bytes before
  const groups = Math.floor((v.length - skip) / 3);
  if (groups <= 0) return secureAlloc(0);
  const out = secureAlloc(groups * 4);
  for (let g = 0; g < groups; g++) {
    const i = skip + 3 * g;
    const n = ((v[i] ?? 0) << 16) | ((v[i + 1] ?? 0) << 8) | (v[i + 2] ?? 0);
    out[4 * g] = alphabet[(n >> 18) & 63] ?? 0;
    out[4 * g + 1] = alphabet[(n >> 12) & 63] ?? 0;
    out[4 * g + 2] = alphabet[(n >> 6) & 63] ?? 0;
    out[4 * g + 3] = alphabet[n & 63] ?? 0;
  }
  return out;
}

/** The value's own base64 tail: the last partial group, which base64 of the value alone ends with. */
function base64Whole(v: Uint8Array, alphabet: Buffer, pad: boolean): SecureBuffer {
  const full = Math.floor(v.length / 3);
  const rest = v.length - 3 * full;
  const len = 4 * full + (rest === 0 ? 0 : pad ? 4 : rest + 1);
  const out = secureAlloc(len);
  const core = base64Core(v.subarray(0, 3 * full), 0, alphabet);
  out.set(core);
  secureFree(core);
  if (rest > 0) {
    const a = v[3 * full] ?? 0;
    const b = rest === 2 ? (v[3 * full + 1] ?? 0) : 0;
    const n = (a << 16) | (b << 8);
    let o = 4 * full;
    out[o++] = alphabet[(n >> 18) & 63] ?? 0;
    out[o++] = alphabet[(n >> 12) & 63] ?? 0;
    if (rest === 2) out[o++] = alphabet[(n >> 6) & 63] ?? 0;
    if (pad) while (o < len) out[o++] = 0x3d; // '='
  }
  return out;
}

const isUnreserved = (b: number) =>
  (b >= 0x30 && b <= 0x39) ||
  (b >= 0x41 && b <= 0x5a) ||
  (b >= 0x61 && b <= 0x7a) ||
  b === 0x2d ||
  b === 0x2e ||
  b === 0x5f ||
  b === 0x7e;

/** encodeURIComponent also leaves ! ' ( ) * as they are. */
const isMark = (b: number) => b === 0x21 || b === 0x27 || b === 0x28 || b === 0x29 || b === 0x2a;

/** Percent-encoding: RFC 3986 (marks too), or as encodeURIComponent does (marks kept). */
function percent(v: Uint8Array, keepMarks: boolean): SecureBuffer {
  const keep = (b: number) => isUnreserved(b) || (keepMarks && isMark(b));
  let len = 0;
  for (const b of v) len += keep(b) ? 1 : 3;
  const out = secureAlloc(len);
  let o = 0;
  for (const b of v) {
    if (keep(b)) out[o++] = b;
    else {
      out[o++] = 0x25;
      out[o++] = HEX_UPPER[b >> 4] ?? 0;
      out[o++] = HEX_UPPER[b & 15] ?? 0;
    }
  }
  return out;
}

/** The value inside a JSON string, as JSON.stringify escapes it (UTF-8 left as is). */
function jsonEscaped(v: Uint8Array): SecureBuffer {
  const SHORT: Record<number, number> = { 8: 0x62, 9: 0x74, 10: 0x6e, 12: 0x66, 13: 0x72 };
  let len = 0;
  for (const b of v) len += b === 0x22 || b === 0x5c || SHORT[b] ? 2 : b < 0x20 ? 6 : 1;
  const out = secureAlloc(len);
  let o = 0;
  for (const b of v) {
    const short = SHORT[b];
    if (b === 0x22 || b === 0x5c) {
      out[o++] = 0x5c;
      out[o++] = b;
    } else if (short) {
      out[o++] = 0x5c;
      out[o++] = short;
    } else if (b < 0x20) {
      out.set([0x5c, 0x75, 0x30, 0x30, HEX_LOWER[b >> 4] ?? 0, HEX_LOWER[b & 15] ?? 0], o);
      o += 6;
    } else out[o++] = b;
  }
  return out;
}

/**
 * The value as a terminal prints it: every \n as \r\n (the pty's ONLCR), whatever precedes it,
 * so a value stored with \r\n line ends shows as \r\r\n.
 */
function crlf(v: Uint8Array): SecureBuffer {
  let n = 0;
  for (const b of v) if (b === 0x0a) n++;
  const out = secureAlloc(v.length + n);
  let o = 0;
  for (const b of v) {
    if (b === 0x0a) out[o++] = 0x0d;
    out[o++] = b;
  }
  return out;
}

function formEncoded(v: Uint8Array): SecureBuffer {
  let len = 0;
  for (const b of v) len += isUnreserved(b) || b === 0x20 ? 1 : 3;
  const out = secureAlloc(len);
  let o = 0;
  for (const b of v) {
    if (b === 0x20) out[o++] = 0x2b;
    else if (isUnreserved(b)) out[o++] = b;
    else {
      out[o++] = 0x25;
      out[o++] = HEX_UPPER[b >> 4] ?? 0;
      out[o++] = HEX_UPPER[b & 15] ?? 0;
    }
  }
  return out;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Every form of value worth masking, deduplicated, each at least MASK_MIN_BYTES long. Empty
 * when the value itself is shorter than that. The caller frees each.
 */
export function maskingForms(value: Uint8Array): SecureBuffer[] {
  if (value.length < MASK_MIN_BYTES) return [];
  const candidates: SecureBuffer[] = [secureAlloc(value.length)];
  candidates[0]?.set(value);
  // A terminal turns \n into \r\n: a multi-line value printed under a pty looks like this
  // (large ones too: a bundle of certificates is one).
  if (value.includes(0x0a)) candidates.push(crlf(value));
  // Large values (certificates, bundles): no encoded copies; thirteen of a megabyte would be a
  // lot of locked memory (docs/RUN.md).
  if (value.length > MASK_FORMS_MAX_BYTES) return dedupe(candidates);
  candidates.push(hex(value, HEX_LOWER), hex(value, HEX_UPPER));
  for (const alphabet of [B64, B64URL]) {
    candidates.push(base64Whole(value, alphabet, true));
    for (const shift of [0, 1, 2]) candidates.push(base64Core(value, shift, alphabet));
  }
  candidates.push(percent(value, false), percent(value, true), jsonEscaped(value));
  // Form encoding (application/x-www-form-urlencoded) writes a space as +.
  if (value.includes(0x20)) candidates.push(formEncoded(value));
  return dedupe(candidates);
}

/** The candidates long enough and distinct; the others freed. */
function dedupe(candidates: SecureBuffer[]): SecureBuffer[] {
  const forms: SecureBuffer[] = [];
  for (const c of candidates) {
    if (c.length < MASK_MIN_BYTES || forms.some((f) => same(f, c))) secureFree(c);
    else forms.push(c);
  }
  return forms;
}
