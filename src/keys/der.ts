/**
 * The little DER keyward needs to hand ECDSA and RSA keys to OpenSSL (through node:crypto) and
 * to read back the keys OpenSSL generates: SEC 1 ECPrivateKey (RFC 5915) and PKCS #1
 * RSAPrivateKey (RFC 8017). The encoder writes into a buffer the caller sizes and allocates
 * (secure memory), the decoder returns views; neither copies key bytes anywhere else.
 */
import { KeywardError } from '../errors.js';

export type Der =
  | { tag: number; content: Uint8Array }
  | { tag: number; children: readonly Der[] }
  | { tag: 0x02; integer: Uint8Array };

const lengthBytes = (n: number): number => (n < 0x80 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 4);

/** INTEGER content for a non-negative magnitude: minimal, with a 0x00 when the top bit is set. */
function integerContentLength(m: Uint8Array): number {
  let i = 0;
  while (i < m.length - 1 && m[i] === 0) i++;
  return m.length - i + (((m[i] ?? 0) & 0x80) !== 0 ? 1 : 0);
}

function contentLength(d: Der): number {
  if ('integer' in d) return Math.max(1, integerContentLength(d.integer));
  if ('content' in d) return d.content.length;
  return d.children.reduce((n, c) => n + encodedLength(c), 0);
}

export function encodedLength(d: Der): number {
  const n = contentLength(d);
  return 1 + lengthBytes(n) + n;
}

/** Encodes d into out at offset; returns the offset after it. */
export function encodeInto(d: Der, out: Uint8Array, offset = 0): number {
  const n = contentLength(d);
  let p = offset;
  out[p++] = d.tag;
  const lb = lengthBytes(n);
  if (lb === 1) out[p++] = n;
  else {
    out[p++] = 0x80 | (lb - 1);
    for (let i = lb - 2; i >= 0; i--) out[p++] = (n >>> (8 * i)) & 0xff;
  }
  if ('integer' in d) {
    let i = 0;
    while (i < d.integer.length - 1 && d.integer[i] === 0) i++;
    const m = d.integer.subarray(i);
    if (m.length === 0 || ((m[0] ?? 0) & 0x80) !== 0) out[p++] = 0;
    out.set(m, p);
    return p + m.length;
  }
  if ('content' in d) {
    out.set(d.content, p);
    return p + d.content.length;
  }
  for (const c of d.children) p = encodeInto(c, out, p);
  return p;
}

export const seq = (...children: Der[]): Der => ({ tag: 0x30, children });
export const int = (integer: Uint8Array): Der => ({ tag: 0x02, integer });

class DerError extends KeywardError {
  constructor(what: string) {
    super('PROTOCOL_ERROR', `malformed DER: ${what}`);
  }
}

/** One TLV at the front of b: its tag, a view of its content, and the bytes after it. */
export function readTlv(b: Uint8Array): { tag: number; content: Uint8Array; rest: Uint8Array } {
  if (b.length < 2) throw new DerError('truncated');
  const tag = b[0] ?? 0;
  let n = b[1] ?? 0;
  let p = 2;
  if (n & 0x80) {
    const k = n & 0x7f;
    if (k < 1 || k > 3 || b.length < 2 + k) throw new DerError('bad length');
    n = 0;
    for (let i = 0; i < k; i++) n = n * 256 + (b[p++] ?? 0);
  }
  if (b.length - p < n) throw new DerError('truncated');
  return { tag, content: b.subarray(p, p + n), rest: b.subarray(p + n) };
}

/** The TLVs inside a SEQUENCE's content, in order. */
export function readSequence(b: Uint8Array, expectTag = 0x30): Uint8Array[] {
  const outer = readTlv(b);
  if (outer.tag !== expectTag) throw new DerError(`expected tag ${expectTag}, got ${outer.tag}`);
  const items: Uint8Array[] = [];
  let rest = outer.content;
  while (rest.length > 0) {
    const t = readTlv(rest);
    items.push(rest.subarray(0, rest.length - t.rest.length));
    rest = t.rest;
  }
  return items;
}

/** An INTEGER's magnitude as a view, without the sign padding byte. */
export function readInteger(tlv: Uint8Array): Uint8Array {
  const t = readTlv(tlv);
  if (t.tag !== 0x02 || t.content.length === 0) throw new DerError('expected an INTEGER');
  if (((t.content[0] ?? 0) & 0x80) !== 0) throw new DerError('negative INTEGER');
  return t.content[0] === 0 ? t.content.subarray(1) : t.content;
}
