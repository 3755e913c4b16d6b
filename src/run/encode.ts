/**
 * The forms a secret value can take in a program's output, for masking: the bytes as they are,
 * hex (both cases), base64 and base64url (at each of the three alignments a value can have
 * inside a longer encoded buffer), percent-encoding and JSON string escaping, each as the common
 * encoders write it (docs/RUN.md, "Masking").
 *
 * Every form is written byte by byte into secure memory: an encoded secret is a secret, and
 * must not become a JS string any more than the value itself.
 */
import { secureAlloc as anyAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';

/** Values (and forms) shorter than this are not masked: too many false matches (docs/RUN.md). */
export const MASK_MIN_BYTES = 6;
/** Above this size only the value's own bytes are masked, not its encodings. */
export const MASK_FORMS_MAX_BYTES = 64 * 1024;

/**
 * Every buffer here holds a value or a form of one no larger than MASK_FORMS_MAX_BYTES (the
 * copy of a larger value aside): locked, or refused (MEMORY_NOT_LOCKED), whatever its size (found
 * in review: a form, or the JSON scratch of six bytes a byte, passed secureAlloc's 128 KiB and
 * stayed unlocked).
 */
const secureAlloc = (size: number): SecureBuffer => anyAlloc(size, { mustLock: true });

/**
 * A form of value, size bytes: locked or refused for a value of MASK_FORMS_MAX_BYTES or less; a
 * larger value's (itself, its \r\n form) held as any large value is, locked where the limit allows.
 */
const formOf = (value: Uint8Array, size: number): SecureBuffer =>
  value.length > MASK_FORMS_MAX_BYTES ? anyAlloc(size) : secureAlloc(size);

/** The longest form of a value of MASK_FORMS_MAX_BYTES (JSON's \\uXXXX, six bytes a byte). */
export const MASK_FORMS_LONGEST = 6 * MASK_FORMS_MAX_BYTES;

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

const isAlnum = (b: number) =>
  (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a);

/** RFC 3986's unreserved characters: what every percent-encoder leaves as it is. */
const isUnreserved = (b: number) =>
  isAlnum(b) || b === 0x2d || b === 0x2e || b === 0x5f || b === 0x7e;

/** encodeURIComponent also leaves ! ' ( ) * as they are. */
const isMark = (b: number) => b === 0x21 || b === 0x27 || b === 0x28 || b === 0x29 || b === 0x2a;

/** The bytes a percent-encoder leaves as they are; the rest become %XX. */
type Keep = (b: number) => boolean;
const KEEP = {
  /** RFC 3986 (and Python's urllib.parse.quote with safe=''). */
  strict: isUnreserved,
  /** encodeURIComponent. */
  uriComponent: (b: number) => isUnreserved(b) || isMark(b),
  /** Python's urllib.parse.quote, whose default keeps the slash. */
  path: (b: number) => isUnreserved(b) || b === 0x2f,
  /** WHATWG form encoding (URLSearchParams): * - . _ kept, ~ encoded. */
  whatwgForm: (b: number) => isAlnum(b) || b === 0x2a || b === 0x2d || b === 0x2e || b === 0x5f,
} satisfies Record<string, Keep>;

/**
 * Percent-encoding: the bytes keep leaves as they are, the others as %XX in digits' case; with
 * plusForSpace, a space as + (form encoding, application/x-www-form-urlencoded).
 */
function percent(v: Uint8Array, keep: Keep, digits: Buffer, plusForSpace = false): SecureBuffer {
  const plain = (b: number) => keep(b) || (plusForSpace && b === 0x20);
  let len = 0;
  for (const b of v) len += plain(b) ? 1 : 3;
  const out = secureAlloc(len);
  let o = 0;
  for (const b of v) {
    if (b === 0x20 && plusForSpace) out[o++] = 0x2b;
    else if (keep(b)) out[o++] = b;
    else {
      out[o++] = 0x25;
      out[o++] = digits[b >> 4] ?? 0;
      out[o++] = digits[b & 15] ?? 0;
    }
  }
  return out;
}

/**
 * How a JSON encoder writes a string beyond the escapes every encoder makes (\" \\ and the
 * control characters): ascii, every character past ASCII (and DEL) as \uXXXX, in UTF-16 (Python's
 * json.dumps, PHP's json_encode); slash, / as \/ (PHP); html, < > & and U+2028, U+2029 as
 * \uXXXX (Go's json.Marshal). All lowercase hex, as those write it.
 */
interface JsonStyle {
  ascii?: boolean;
  slash?: boolean;
  html?: boolean;
}

/**
 * The code point of the UTF-8 sequence at v[i], and its length; undefined when it is not valid
 * UTF-8 (such a value is no string to those encoders: no form).
 */
function codePointAt(v: Uint8Array, i: number): { cp: number; len: number } | undefined {
  const b = v[i] ?? 0;
  if (b < 0x80) return { cp: b, len: 1 };
  const cont = (k: number) => {
    const c = v[i + k];
    return c !== undefined && (c & 0xc0) === 0x80 ? c & 0x3f : -1;
  };
  let len: number;
  let cp: number;
  let min: number;
  if (b >= 0xc2 && b <= 0xdf) [len, cp, min] = [2, b & 0x1f, 0x80];
  else if (b >= 0xe0 && b <= 0xef) [len, cp, min] = [3, b & 0x0f, 0x800];
  else if (b >= 0xf0 && b <= 0xf4) [len, cp, min] = [4, b & 0x07, 0x10000];
  else return undefined;
  for (let k = 1; k < len; k++) {
    const c = cont(k);
    if (c < 0) return undefined;
    cp = (cp << 6) | c;
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return undefined;
  return { cp, len };
}

/** The value inside a JSON string, as JSON.stringify escapes it, or in another encoder's style. */
function jsonEscaped(v: Uint8Array, style: JsonStyle = {}): SecureBuffer | undefined {
  const SHORT: Record<number, number> = { 8: 0x62, 9: 0x74, 10: 0x6e, 12: 0x66, 13: 0x72 };
  // At most 6 bytes for one (a control byte as \u00XX; two to four bytes of UTF-8 become at most
  // twelve), written here and copied out at its length.
  const tmp = secureAlloc(v.length * 6);
  let o = 0;
  /** A UTF-16 code unit as \uxxxx. */
  const u = (unit: number) => {
    tmp[o++] = 0x5c;
    tmp[o++] = 0x75;
    for (const shift of [12, 8, 4, 0]) tmp[o++] = HEX_LOWER[(unit >> shift) & 15] ?? 0;
  };
  try {
    for (let i = 0; i < v.length;) {
      const b = v[i] ?? 0;
      const short = SHORT[b];
      if (b === 0x22 || b === 0x5c || (style.slash && b === 0x2f)) {
        tmp[o++] = 0x5c;
        tmp[o++] = b;
      } else if (short) {
        tmp[o++] = 0x5c;
        tmp[o++] = short;
      } else if (b < 0x20 || (style.ascii && b === 0x7f)) u(b);
      else if (style.html && (b === 0x3c || b === 0x3e || b === 0x26)) u(b);
      else if (b < 0x80 || (!style.ascii && !style.html)) tmp[o++] = b;
      else {
        const c = codePointAt(v, i);
        if (!c) return undefined;
        if (style.ascii && c.cp >= 0x10000) {
          u(0xd800 + ((c.cp - 0x10000) >> 10));
          u(0xdc00 + ((c.cp - 0x10000) & 0x3ff));
        } else if (style.ascii || c.cp === 0x2028 || c.cp === 0x2029) u(c.cp);
        else {
          tmp.set(v.subarray(i, i + c.len), o);
          o += c.len;
        }
        i += c.len;
        continue;
      }
      i++;
    }
    const out = secureAlloc(o);
    out.set(tmp.subarray(0, o));
    return out;
  } finally {
    secureFree(tmp);
  }
}

/**
 * The value as a terminal prints it: every \n as \r\n (the pty's ONLCR), whatever precedes it,
 * so a value stored with \r\n line ends shows as \r\r\n.
 */
function crlf(v: Uint8Array): SecureBuffer {
  let n = 0;
  for (const b of v) if (b === 0x0a) n++;
  const out = formOf(v, v.length + n);
  let o = 0;
  for (const b of v) {
    if (b === 0x0a) out[o++] = 0x0d;
    out[o++] = b;
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
  // The value itself: a large one (no forms made) is held as any large value is.
  const candidates: SecureBuffer[] = [formOf(value, value.length)];
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
  // Percent-encodings as encoders write them: encodeURIComponent, RFC 3986, Python's quote (a
  // slash kept), form encoding (a space as +; Python's quote_plus, URLSearchParams); the first
  // two in lowercase hex as well, as some write it.
  for (const digits of [HEX_UPPER, HEX_LOWER])
    candidates.push(percent(value, KEEP.uriComponent, digits), percent(value, KEEP.strict, digits));
  candidates.push(
    percent(value, KEEP.path, HEX_UPPER),
    percent(value, KEEP.strict, HEX_UPPER, true),
    percent(value, KEEP.whatwgForm, HEX_UPPER, true),
  );
  // JSON as JSON.stringify writes it, and as Python, PHP (with and without its \u escapes) and
  // Go do. A value that is not UTF-8 has no form but JSON.stringify's byte for byte one.
  const styles: JsonStyle[] = [
    {},
    { ascii: true },
    { ascii: true, slash: true },
    { slash: true },
    { html: true },
  ];
  for (const style of styles) {
    const json = jsonEscaped(value, style);
    if (json) candidates.push(json);
  }
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
