/**
 * keyward's socket protocol, version 1 (docs/PROTOCOL.md).
 *
 *   u32 length of what follows (big-endian, at most MAX_FRAME)
 *   u8  version (1)
 *   u8  type
 *   u16 meta length (at most MAX_META)
 *   meta: UTF-8 JSON object: names, options, results; never secret bytes
 *   raw:  the rest: secret bytes (a passphrase in, a value out), travelling as they are
 *
 * Frames arriving from a peer are untrusted: every length is checked before use and a malformed
 * frame is a ProtocolError (an error reply, then the connection is closed), never an exception
 * that reaches the daemon.
 */
import {
  secureAlloc,
  secureFree,
  securePooled,
  secureRelease,
  zero,
  type SecureBuffer,
} from '../lib/secure.js';
import { inFlight, SMALL_FRAME } from './inflight.js';

export const PROTOCOL_VERSION = 1;
export const MAX_FRAME = 17 * 1024 * 1024; // a 16 MiB value plus headers
export const MAX_META = 16 * 1024;
const MAX_FRAMES_PER_CHUNK = 64;
/** A reader keeps a buffer of this size between frames; larger ones go back to the budget. */
const SMALL = 4096;
const HEADER = 4 + 1 + 1 + 2;

export const REQ = {
  status: 0x01,
  list: 0x02,
  read: 0x03,
  lock: 0x04,
  unlock: 0x05,
  stop: 0x06,
  approvals: 0x07,
  approve: 0x08,
  deny: 0x09,
  run: 0x0a,
  fetch: 0x0b,
  mcp: 0x0c,
  console: 0x0d,
  audit: 0x0e,
  policy: 0x0f,
  project: 0x10,
} as const;
export type RequestType = keyof typeof REQ;
export const RES_OK = 0x80;
export const RES_ERROR = 0x81;
/**
 * The agent's greeting, sent as soon as it has identified the peer and before it reads a byte:
 * { agent: "keyward", pid, debuggable: [reasons] }. A client sends nothing before it arrives
 * (docs/PROTOCOL.md, "Trusting the agent").
 */
export const RES_HELLO = 0x82;
/**
 * Sent to the requester while its request waits for a person: { id, mode, action, target,
 * expiresAt, timeoutMs, console: URL or null }. The final reply follows (docs/PROTOCOL.md,
 * "Approvals").
 */
export const RES_PENDING = 0x83;

/**
 * After a run request's ok, the connection carries the run's streams (docs/PROTOCOL.md, "Runs"):
 * client to agent: stdin bytes, end of stdin, a signal, a terminal size; agent to client: the
 * child's (masked) stdout and stderr, and finally its exit.
 */
/** The signals `keyward run` passes from its own process to the child (docs/RUN.md). */
export const RUN_SIGNALS: readonly NodeJS.Signals[] = [
  'SIGINT',
  'SIGTERM',
  'SIGHUP',
  'SIGQUIT',
  'SIGUSR1',
  'SIGUSR2',
];

export const STREAM = {
  stdin: 0x20,
  stdinEnd: 0x21,
  signal: 0x22,
  resize: 0x23,
  stdout: 0xa0,
  stderr: 0xa1,
  exit: 0xa2,
} as const;

const REQ_BY_CODE = new Map<number, RequestType>(
  Object.entries(REQ).map(([k, v]) => [v, k as RequestType]),
);

export class ProtocolError extends Error {}

export interface Frame {
  type: number;
  meta: Record<string, unknown>;
  /** Secret bytes, in secure memory: the receiver frees them. Empty when none. */
  raw: SecureBuffer | undefined;
}

export function requestName(type: number): RequestType | undefined {
  return REQ_BY_CODE.get(type);
}

/**
 * Writes made in fn leave in one writev: a frame's head and its raw part reach the peer together,
 * and it wakes once for the frame instead of once for the head and again for the rest (measured:
 * ~0.1 ms of each request through the MCP gateway).
 */
export function inOneWrite(s: { cork(): void; uncork(): void }, fn: () => void): void {
  s.cork();
  try {
    fn();
  } finally {
    s.uncork();
  }
}

/** A frame whose bytes need nothing done once written (a run's streams): in one writev. */
export function writeFrame(
  s: { cork(): void; uncork(): void; write(b: Uint8Array): unknown },
  type: number,
  meta: Record<string, unknown>,
  data?: Uint8Array,
): void {
  inOneWrite(s, () => {
    s.write(frameHead(type, meta, data?.length ?? 0));
    if (data && data.length > 0) s.write(data);
  });
}

/** The header and meta of a frame; the raw part is written after it, from secure memory. */
export function frameHead(type: number, meta: Record<string, unknown>, rawLength: number): Buffer {
  const m = Buffer.from(JSON.stringify(meta), 'utf8');
  if (m.length > MAX_META) throw new ProtocolError('meta too large');
  const total = 1 + 1 + 2 + m.length + rawLength;
  if (total > MAX_FRAME) throw new ProtocolError('frame too large');
  const h = Buffer.alloc(HEADER);
  h.writeUInt32BE(total, 0);
  h.writeUInt8(PROTOCOL_VERSION, 4);
  h.writeUInt8(type, 5);
  h.writeUInt16BE(m.length, 6);
  return Buffer.concat([h, m]);
}

/** A reader's buffer back to the pool if it is of the pooled size, else freed (both zero it). */
function giveBack(buf: SecureBuffer): void {
  if (buf.length === SMALL) secureRelease(buf);
  else secureFree(buf);
}

/**
 * Accumulates socket chunks into frames. Each chunk is copied into secure memory and zeroed at
 * once (an unzeroed socket chunk is one of the copies a memory scan finds).
 */
export class FrameReader {
  /** Allocated when bytes first arrive; its length is taken from the agent's in-flight budget. */
  private buf: SecureBuffer | undefined;
  private used = 0;
  /** The length field of the frame being read (valid once 4 bytes are in). */
  private total = 0;
  /** A run's stream: many frames may arrive in one chunk. Otherwise one request at a time. */
  many = false;

  /** Bytes of an incomplete frame are waiting. */
  get pending(): boolean {
    return this.used > 0;
  }

  /**
   * Takes a chunk (and zeroes it). Returns the frame it completed, if any: requests on a
   * connection come one at a time, so a chunk that completes two frames is a ProtocolError. The
   * buffer grows as bytes arrive, never to a length a peer merely declared, and never past one
   * frame: bytes after a frame's end wait for the next call only if they start the next frame.
   */
  push(chunk: Buffer): Frame[] {
    const frames: Frame[] = [];
    try {
      let off = 0;
      while (off < chunk.length) {
        const want = this.used < 4 ? 4 - this.used : 4 + this.total - this.used;
        const take = Math.min(want, chunk.length - off);
        const buf = this.ensure(this.used + take);
        chunk.copy(buf, this.used, off, off + take);
        this.used += take;
        off += take;
        if (this.used === 4) {
          this.total = buf.readUInt32BE(0);
          if (this.total < 4 || this.total > MAX_FRAME)
            throw new ProtocolError(`bad frame length ${this.total}`);
        }
        if (this.used >= 4 && this.used === 4 + this.total) {
          if (frames.length > 0 && !this.many)
            throw new ProtocolError('one request at a time on a connection');
          // A run's stream: each frame is a secure allocation, so a chunk holds a bounded number.
          if (frames.length >= MAX_FRAMES_PER_CHUNK)
            throw new ProtocolError('too many frames at once');
          frames.push(this.parse(buf, this.total));
          this.used = 0;
          this.total = 0;
          // A large frame's buffer goes back to the budget at once; a small one is kept.
          if (buf.length > SMALL) this.drop();
          else buf.fill(0);
        }
      }
      return frames;
    } catch (e) {
      for (const f of frames) secureFree(f.raw);
      throw e;
    } finally {
      zero(chunk);
    }
  }

  private parse(buf: SecureBuffer, total: number): Frame {
    const version = buf.readUInt8(4);
    if (version !== PROTOCOL_VERSION)
      throw new ProtocolError(`unsupported protocol version ${version}`);
    const type = buf.readUInt8(5);
    const metaLen = buf.readUInt16BE(6);
    if (metaLen > MAX_META || 4 + metaLen > total) throw new ProtocolError('bad meta length');
    let meta: unknown;
    try {
      meta = JSON.parse(buf.subarray(HEADER, HEADER + metaLen).toString('utf8'));
    } catch {
      throw new ProtocolError('meta is not JSON');
    }
    if (meta === null || typeof meta !== 'object' || Array.isArray(meta))
      throw new ProtocolError('meta is not an object');
    const rawLen = total - 4 - metaLen;
    let raw: SecureBuffer | undefined;
    if (rawLen > 0) {
      // From the pool: a consumer on a hot path gives it back (secureRelease), any other frees it.
      raw = securePooled(rawLen);
      buf.copy(raw, 0, HEADER + metaLen, 4 + total);
    }
    return { type, meta: meta as Record<string, unknown>, raw };
  }

  /** A buffer of at least n bytes, grown as bytes arrive, within the agent's in-flight budget. */
  private ensure(n: number): SecureBuffer {
    const have = this.buf?.length ?? 0;
    if (this.buf && n <= have) return this.buf;
    const size = Math.max(SMALL, Math.min(Math.max(n, have * 2), 4 + this.total));
    if (!inFlight.reserve(size - have, size <= SMALL_FRAME))
      throw new ProtocolError('the agent is holding too much request data: try again shortly');
    // A connection's first buffer is of one size (SMALL), taken from the pool and given back to
    // it: a new connection per request (every command line) no longer pays an mmap, mprotect
    // and mlock, and their undoing, for it.
    const bigger = size === SMALL ? securePooled(size) : secureAlloc(size);
    if (this.buf) {
      this.buf.copy(bigger, 0, 0, this.used);
      giveBack(this.buf);
    }
    this.buf = bigger;
    return bigger;
  }

  private drop(): void {
    if (!this.buf) return;
    inFlight.release(this.buf.length);
    giveBack(this.buf);
    this.buf = undefined;
  }

  /** Wipes what is buffered. The reader must not be used afterwards. */
  destroy(): void {
    this.drop();
    this.used = 0;
    this.total = 0;
  }
}

/** What goes on the wire for an error: a code, a message and a hint. No stack, no cause. */
export interface WireError {
  code: string;
  message: string;
  hint?: string;
}

export function str(meta: Record<string, unknown>, key: string): string | undefined {
  const v = meta[key];
  return typeof v === 'string' ? v : undefined;
}
