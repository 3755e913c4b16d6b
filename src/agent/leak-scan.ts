/**
 * Leak scanning for the MCP gateway (docs/MCP.md, "Leak blocking"): does a message hold a value
 * keyward released, in any form masking knows (docs/RUN.md), or in one of the forms a model uses
 * to slip a value past a plain search:
 * - split across fields: the gateway sends the concatenation of the message's strings as a
 *   second part, searched like the first;
 * - percent-encoded byte by byte (`%67%68...`, any case, mixed with plain characters): every
 *   part is also searched after decoding every %XX;
 * - hex with separators (`de ad be ef`, `de:ad:..`, `\xde\xad`, `0xde, 0xad`): every part is
 *   also searched as its run of hex digits, separators and prefixes dropped;
 * - reversed.
 * Everything here works on bytes in secure memory: no part of a message (which may hold the
 * value) becomes a JS string in the agent.
 */
import { securePooled, secureRelease, type SecureBuffer } from '../lib/secure.js';

/**
 * Values shorter than this are not looked for. Any scan is an oracle ("is this a released
 * value?"), and whoever can send it many candidates at once could confirm a short value (a
 * 6-digit code is a million candidates, one request); 12 bytes of even digits is 10^12.
 */
export const SCAN_MIN_BYTES = 12;

const isHex = (c: number) =>
  (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);
const hexVal = (c: number) => (c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10);
/**
 * Characters that may stand between the bytes of a hex dump: whitespace, control characters,
 * every ASCII punctuation mark (found in review: `|`, `/`, `+` and `#` were not in a list of
 * them) and every byte of a non-ASCII character (a no-break space, say). Letters other than a-f
 * break a run of digits.
 */
const isSeparator = (c: number) =>
  c <= 0x20 ||
  (c >= 0x21 && c <= 0x2f) ||
  (c >= 0x3a && c <= 0x40) ||
  (c >= 0x5b && c <= 0x60) ||
  c >= 0x7b;

/**
 * Every %XX decoded; other bytes as they are. Undefined when there is no %XX at all. Two passes
 * (count, then write) so the view is allocated once, at its size, from the pool.
 */
export function percentDecoded(data: Uint8Array): SecureBuffer | undefined {
  if (data.indexOf(0x25) < 0) return undefined;
  const escapeAt = (i: number) =>
    data[i] === 0x25 && isHex(data[i + 1] ?? 0) && isHex(data[i + 2] ?? 0);
  let escapes = 0;
  for (let i = 0; i < data.length; i++) {
    if (escapeAt(i)) {
      escapes += 1;
      i += 2;
    }
  }
  if (escapes === 0) return undefined;
  const out = securePooled(data.length - 2 * escapes);
  let n = 0;
  for (let i = 0; i < data.length; i++) {
    if (escapeAt(i)) {
      out[n++] = hexVal(data[i + 1] ?? 0) * 16 + hexVal(data[i + 2] ?? 0);
      i += 2;
    } else out[n++] = data[i] ?? 0;
  }
  return out;
}

/**
 * The hex digits of data, lowercased, with separators and `\x` / `0x` prefixes between them
 * dropped; anything else ends a run (a `|`). `de:ad be-ef`, `\xde\xad\xbe\xef` and
 * `0xde, 0xad, 0xbe, 0xef` all become `deadbeef`. Two passes, as percentDecoded.
 */
export function hexDigits(data: Uint8Array): SecureBuffer | undefined {
  const walk = (put: (c: number) => void): number => {
    let n = 0;
    let lastBar = true; // nothing written yet: no leading bar
    for (let i = 0; i < data.length; i++) {
      const c = data[i] ?? 0;
      const next = data[i + 1] ?? 0;
      // A prefix: \x, or 0x before a hex digit.
      if (
        (c === 0x5c || c === 0x30) &&
        (next === 0x78 || next === 0x58) &&
        isHex(data[i + 2] ?? 0)
      ) {
        i += 1;
        continue;
      }
      if (isHex(c)) {
        put(c | 0x20);
        n += 1;
        lastBar = false;
      } else if (isSeparator(c)) continue;
      else if (!lastBar) {
        put(0x7c);
        n += 1;
        lastBar = true;
      }
    }
    return n;
  };
  const size = walk(() => undefined);
  // No zero-length secure buffers: each is a mapping that secureFree can't tell from a freed one.
  if (size === 0) return undefined;
  const out = securePooled(size);
  let at = 0;
  walk((c) => (out[at++] = c));
  return out;
}

function reversed(v: Uint8Array): SecureBuffer {
  const out = securePooled(v.length);
  for (let i = 0; i < v.length; i++) out[i] = v[v.length - 1 - i] ?? 0;
  return out;
}

function hexLower(v: Uint8Array): SecureBuffer {
  const out = securePooled(v.length * 2);
  const digits = '0123456789abcdef';
  for (let i = 0; i < v.length; i++) {
    const b = v[i] ?? 0;
    out[2 * i] = digits.charCodeAt(b >> 4);
    out[2 * i + 1] = digits.charCodeAt(b & 15);
  }
  return out;
}

/** The views of a message searched for values: the parts, decoded, and as hex digits. */
export class ScanViews {
  private readonly texts: Buffer[];
  private readonly decoded: SecureBuffer[] = [];
  private readonly hex: SecureBuffer[] = [];

  /** parts: the message as sent first, then (optionally) the concatenation of its strings. */
  constructor(parts: Uint8Array[]) {
    this.texts = parts.map(asBuffer);
    for (const p of parts) {
      const d = percentDecoded(p);
      if (d) this.decoded.push(d);
      const h = hexDigits(p);
      if (h) this.hex.push(h);
    }
  }

  /**
   * Where value is: 'verbatim' when one of its masking forms is in the first part as sent (so a
   * Masker can redact it there), 'hidden' when only a transformed view holds it, or undefined.
   */
  find(plain: Uint8Array, forms: Buffer[]): 'verbatim' | 'hidden' | undefined {
    if (plain.length < SCAN_MIN_BYTES) return undefined;
    const value = asBuffer(plain);
    const first = this.texts[0];
    if (first && forms.some((f) => first.indexOf(f) >= 0)) return 'verbatim';
    const rev = reversed(value);
    const hx = hexLower(value);
    try {
      const hit =
        this.texts.some((t) => forms.some((f) => t.indexOf(f) >= 0) || t.indexOf(rev) >= 0) ||
        this.decoded.some((d) => d.indexOf(value) >= 0 || d.indexOf(rev) >= 0) ||
        this.hex.some((h) => h.indexOf(hx) >= 0);
      return hit ? 'hidden' : undefined;
    } finally {
      secureRelease(rev);
      secureRelease(hx);
    }
  }

  destroy(): void {
    for (const b of [...this.decoded, ...this.hex]) secureRelease(b);
    this.decoded.length = 0;
    this.hex.length = 0;
  }
}

/** A Buffer over the same memory (indexOf of a sequence needs one); no copy. */
const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
