/**
 * SSH wire types (RFC 4251 section 5): byte, uint32, string, mpint. The reader checks every
 * length, since what it reads comes from an untrusted peer or file, and returns views (no copies),
 * so reading a private key out of secure memory leaves no copy behind.
 */
import { KeywardError } from '../errors.js';

export class SshParseError extends KeywardError {
  constructor(what: string) {
    super('PROTOCOL_ERROR', `malformed SSH data: ${what}`);
  }
}

export class SshReader {
  private pos = 0;
  constructor(private readonly b: Uint8Array) {}

  get remaining(): number {
    return this.b.length - this.pos;
  }

  byte(): number {
    if (this.pos + 1 > this.b.length) throw new SshParseError('truncated');
    return this.b[this.pos++] ?? 0;
  }

  u32(): number {
    if (this.pos + 4 > this.b.length) throw new SshParseError('truncated');
    const b = this.b;
    const v =
      ((b[this.pos] ?? 0) * 0x1000000 +
        (((b[this.pos + 1] ?? 0) << 16) |
          ((b[this.pos + 2] ?? 0) << 8) |
          (b[this.pos + 3] ?? 0))) >>>
      0;
    this.pos += 4;
    return v;
  }

  /** A view into the message: copy it into secure memory if it is secret and must outlive it. */
  string(): Buffer {
    const n = this.u32();
    if (n > this.b.length - this.pos) throw new SshParseError('truncated string');
    const s = Buffer.from(this.b.buffer, this.b.byteOffset + this.pos, n);
    this.pos += n;
    return s;
  }

  /** A UTF-8 string that is public by nature (a key type, a comment, a user name). */
  text(): string {
    return this.string().toString('utf8');
  }

  /** An mpint's bytes (two's complement, big-endian); negative values are refused. */
  mpint(): Buffer {
    const s = this.string();
    if (s.length > 0 && ((s[0] ?? 0) & 0x80) !== 0) throw new SshParseError('negative mpint');
    return s;
  }

  /** The next string as text, without moving past it (a key type to dispatch on). */
  peekText(): string {
    const at = this.pos;
    try {
      return this.text();
    } finally {
      this.pos = at;
    }
  }

  /** The bytes from the current position to the end. */
  rest(): Buffer {
    const s = Buffer.from(this.b.buffer, this.b.byteOffset + this.pos, this.b.length - this.pos);
    this.pos = this.b.length;
    return s;
  }
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** For public data only: the result is an ordinary Buffer. */
export function sshString(b: Uint8Array | string): Buffer {
  const data = typeof b === 'string' ? Buffer.from(b, 'utf8') : b;
  return Buffer.concat([u32(data.length), data]);
}

/** A view of a big-endian magnitude without its leading zero bytes. */
export function stripZeros(m: Uint8Array): Uint8Array {
  let i = 0;
  while (i < m.length && m[i] === 0) i++;
  return m.subarray(i);
}

/** The minimal mpint encoding of a non-negative big-endian magnitude (public data only). */
export function sshMpint(magnitude: Uint8Array): Buffer {
  const m = stripZeros(magnitude);
  const pad = m.length > 0 && ((m[0] ?? 0) & 0x80) !== 0 ? 1 : 0;
  const out = Buffer.alloc(4 + pad + m.length);
  out.writeUInt32BE(pad + m.length);
  out.set(m, 4 + pad);
  return out;
}

/**
 * Writes SSH wire types into a buffer the caller allocated (secure memory for private keys):
 * size first with `measure`, then allocate, then write. Nothing is concatenated through
 * ordinary Buffers.
 */
export class SshWriter {
  private pos = 0;
  constructor(private readonly out: Uint8Array) {}

  static sizeOf(parts: readonly (Uint8Array | string)[]): number {
    return parts.reduce(
      (n, p) => n + 4 + (typeof p === 'string' ? Buffer.byteLength(p) : p.length),
      0,
    );
  }

  string(s: Uint8Array | string): this {
    const data = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    if (this.pos + 4 + data.length > this.out.length) throw new RangeError('SshWriter overflow');
    const n = data.length;
    this.out[this.pos] = (n >>> 24) & 0xff;
    this.out[this.pos + 1] = (n >>> 16) & 0xff;
    this.out[this.pos + 2] = (n >>> 8) & 0xff;
    this.out[this.pos + 3] = n & 0xff;
    this.out.set(data, this.pos + 4);
    this.pos += 4 + n;
    return this;
  }

  /** A minimal mpint from a big-endian magnitude (leading zeros dropped, sign byte added). */
  mpint(magnitude: Uint8Array): this {
    const m = stripZeros(magnitude);
    const pad = m.length > 0 && ((m[0] ?? 0) & 0x80) !== 0 ? 1 : 0;
    if (this.pos + 4 + pad + m.length > this.out.length) throw new RangeError('SshWriter overflow');
    const n = pad + m.length;
    this.out[this.pos] = (n >>> 24) & 0xff;
    this.out[this.pos + 1] = (n >>> 16) & 0xff;
    this.out[this.pos + 2] = (n >>> 8) & 0xff;
    this.out[this.pos + 3] = n & 0xff;
    if (pad) this.out[this.pos + 4] = 0;
    this.out.set(m, this.pos + 4 + pad);
    this.pos += 4 + n;
    return this;
  }

  static mpintSize(magnitude: Uint8Array): number {
    const m = stripZeros(magnitude);
    return 4 + m.length + (m.length > 0 && ((m[0] ?? 0) & 0x80) !== 0 ? 1 : 0);
  }

  get written(): number {
    return this.pos;
  }
}

/** Equality of public bytes (key blobs, magic strings); secrets use secureEqual. */
export function samePublic(a: Uint8Array, b: Uint8Array): boolean {
  // eslint-disable-next-line no-restricted-syntax -- public data only, see the name
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}
