/**
 * Secret bytes in a garbage-collected process.
 *
 * Measured on the target machine: JS strings, node:crypto KeyObjects, small (<= 64 byte) Buffers
 * that live through a GC, and unzeroed I/O chunks all leave copies in the heap that a memory scan
 * finds later. sodium_malloc'd memory does not move, is guarded, locked where the memlock limit
 * allows, and is zeroed when freed. So: every secret byte lives in a SecureBuffer from here, is
 * never turned into a string, and is freed (which zeroes it) as soon as it has been used.
 */
import fs from 'node:fs';
import { KeywardError } from '../errors.js';
import { secureMemory as memory, sodiumPackage } from './sodium-addon.js';

/** A Buffer whose memory came from sodium_malloc. The brand stops a plain Buffer passing as one. */
export type SecureBuffer = Buffer & { readonly __secure: true };

/** A view handed out by securePooled, to the class buffer it is the start of. */
const classOf = new WeakMap<Buffer, SecureBuffer>();
/**
 * Buffers (and views) already given back: a second give-back or free of one is ignored. Without
 * this, a buffer released by one path and freed by another (an error path that frees what it
 * received) would be unmapped while the pool lists it, or zero the start of a buffer another
 * holder has taken since.
 */
const givenBack = new WeakSet<Buffer>();

/**
 * Secure buffers up to this size are locked or refused (secureAlloc): twice the 64 KiB a value
 * may have and still be locked, so that what holds one (a frame with its meta, a read grown by
 * doubling past its end) is locked too.
 */
export const MUST_LOCK = 128 * 1024;

/**
 * mustLock: refused where it can't be locked whatever its size, for a buffer larger than
 * MUST_LOCK that holds what is derived from a small value (its masking forms, a masker's work).
 */
export function secureAlloc(size: number, o?: { mustLock?: boolean }): SecureBuffer {
  // An empty buffer holds nothing to protect: an ordinary one, so callers stay uniform. (From
  // sodium_malloc it was a page between guard pages, three or four mappings that secureFree,
  // passing over empty buffers, left to a collection: a caller that sent empty values could run
  // the agent into the kernel's limit on mappings, and it aborted.)
  if (size <= 0) return Buffer.alloc(0) as SecureBuffer;
  const buf = memory().sodium_malloc(size) as SecureBuffer;
  // sodium_malloc locks its pages where RLIMIT_MEMLOCK allows and goes on silently where it
  // doesn't: a secret there could be swapped to disk. Any process of the user can lower the
  // limit of a running keyward process (prlimit; found in review), so each allocation is locked
  // again here (nothing to do where it is locked already), and one of at most MUST_LOCK bytes
  // (every key, and what holds a value of up to 64 KiB) is refused where it can't be. Larger
  // ones stay where libsodium put them, as THREAT-MODEL.md says: 8 MiB could not hold them.
  try {
    memory().sodium_mlock(buf);
  } catch {
    if (size <= MUST_LOCK || o?.mustLock === true) {
      freeNow(buf);
      throw notLocked(size);
    }
  }
  // libsodium fills new allocations with 0xdb (to catch use of uninitialised memory); code that
  // writes a short value right-aligned (a scalar without its leading zero bytes) must see zeros.
  buf.fill(0);
  return buf;
}

/**
 * Zeroes and releases. The buffer must not be used afterwards (its length reads 0).
 * sodium-native's sodium_free detaches the buffer; libsodium zeroes and unmaps it only when the
 * garbage collector finalizes it. So the zeroing happens here, at once.
 */
export function secureFree(buf: SecureBuffer | undefined): void {
  if (buf === undefined || buf.length === 0 || givenBack.has(buf)) return;
  // A view from securePooled: the class buffer behind it goes (its bytes past the view too).
  const b = classOf.get(buf) ?? buf;
  classOf.delete(buf);
  freeNow(b);
}

/** What the refusal says: the limit and what this process has locked, from /proc. */
function notLocked(size: number): KeywardError {
  let limit = 'unknown';
  let locked = 'unknown';
  try {
    limit =
      /^Max locked memory\s+(\S+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'))?.[1] ??
      limit;
    locked =
      /^VmLck:\s+(\d+ kB)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? locked;
  } catch {
    // The figures are for the message only.
  }
  return new KeywardError(
    'MEMORY_NOT_LOCKED',
    `refusing to hold ${size} bytes of secret memory that could be swapped to disk: the kernel would not lock it (the limit on locked memory, RLIMIT_MEMLOCK, is ${limit} bytes; this process has ${locked} locked)`,
    {
      hint: 'raise the limit (ulimit -l, or LimitMEMLOCK= in a systemd unit) and restart the agent; a process of yours may have lowered it (prlimit)',
    },
  );
}

function freeNow(b: SecureBuffer): void {
  memory().sodium_memzero(b);
  memory().sodium_free(b);
}

/**
 * Secure buffers kept for reuse: a hot path that takes and gives back buffers (an SSH agent's
 * requests, a frame's bytes, a scan's views) pays sodium_malloc's mmap, mprotect and mlock, and
 * their undoing at free, once instead of per request. Those are about ten system calls that
 * change the process's memory map, each a TLB shootdown across its threads (~8% of the agent's
 * CPU under the signing benchmark; a third of a leak scan's). Kept by size class (a power of
 * two, at least 64 bytes): every take is a view of the end of a class buffer, so messages
 * whose lengths vary still reuse buffers, and the take's last byte is still followed by
 * sodium_malloc's guard page (a native write past it faults, as it would on a buffer of its own). A buffer given back is zeroed whole at once, and a
 * second give-back or free of the same take is ignored; at most POOL_BUFFERS of at most
 * POOL_MAX_BYTES each are kept.
 */
const pool = new Map<number, SecureBuffer[]>();
/** Every pooled buffer, oldest first: a full pool frees its oldest to keep the newest. */
const order: SecureBuffer[] = [];
const POOL_BUFFERS = 64;
const POOL_MAX_BYTES = 64 * 1024;
const SMALLEST_CLASS = 64;

const sizeClass = (size: number): number =>
  size <= SMALLEST_CLASS ? SMALLEST_CLASS : 2 ** Math.ceil(Math.log2(size));

/**
 * A zeroed secure buffer of exactly size bytes (a view of a class buffer), reused when one was
 * given back. Give it back with secureRelease, or free it with
 * secureFree: either frees or keeps the whole class buffer behind it.
 */
export function securePooled(size: number): SecureBuffer {
  if (size <= 0 || size > POOL_MAX_BYTES) return secureAlloc(size);
  const cls = sizeClass(size);
  let whole = pool.get(cls)?.pop();
  if (whole) order.splice(order.indexOf(whole), 1);
  else whole = secureAlloc(cls);
  // Always a view, a new object at each take: a holder that gives back or frees twice names
  // its own handout, never the next holder's.
  const view = whole.subarray(cls - size) as SecureBuffer;
  classOf.set(view, whole);
  return view;
}

/** The bytes of secure memory behind buf: a pooled take holds its whole class buffer. */
export function secureFootprint(buf: SecureBuffer): number {
  return classOf.get(buf)?.length ?? buf.length;
}

/**
 * Gives back a buffer from securePooled (or secureAlloc): zeroed now, kept for reuse or freed.
 * The caller must hold no other reference to it: the next securePooled of its class returns it.
 */
export function secureRelease(buf: SecureBuffer | undefined): void {
  if (buf === undefined || buf.length === 0 || givenBack.has(buf)) return;
  const whole = classOf.get(buf);
  if (whole) classOf.delete(buf);
  const b = whole ?? buf;
  if (b.length > POOL_MAX_BYTES || b.length !== sizeClass(b.length)) {
    freeNow(b);
    return;
  }
  // A view stays attached while its class buffer waits in the pool: marked, so it is never used.
  if (whole) givenBack.add(buf);
  memory().sodium_memzero(b);
  if (order.length >= POOL_BUFFERS) {
    const oldest = order.shift() as SecureBuffer;
    const list = pool.get(oldest.length) ?? [];
    list.splice(list.indexOf(oldest), 1);
    if (list.length === 0) pool.delete(oldest.length);
    freeNow(oldest);
  }
  const list = pool.get(b.length) ?? [];
  list.push(b);
  pool.set(b.length, list);
  order.push(b);
  givenBack.add(b);
}

/** Runs fn with buf and frees buf afterwards, whatever happens. */
export function withSecure<T>(buf: SecureBuffer, fn: (b: SecureBuffer) => T): T {
  try {
    return fn(buf);
  } finally {
    secureFree(buf);
  }
}

/**
 * Copies bytes into a new secure buffer and zeroes the source. Use on every buffer that held
 * secret bytes but did not come from sodium_malloc (a socket chunk, a keyring answer).
 */
export function secureTake(source: Uint8Array | number[], pooled = false): SecureBuffer {
  const out = pooled ? securePooled(source.length) : secureAlloc(source.length);
  if (Array.isArray(source)) {
    for (let i = 0; i < source.length; i++) out[i] = source[i] ?? 0;
    source.fill(0);
  } else {
    out.set(source);
    memory().sodium_memzero(source);
  }
  return out;
}

/** A secure copy of part of a secure buffer; the source is untouched. */
export function secureSlice(source: SecureBuffer, start: number, end: number): SecureBuffer {
  const out = secureAlloc(end - start);
  source.copy(out, 0, start, end);
  return out;
}

/** Constant-time comparison of secret bytes. Never compare secrets with `===` or Buffer#equals. */
export function secureEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && sodiumPackage().sodium_memcmp(a, b);
}

export function zero(buf: Uint8Array): void {
  memory().sodium_memzero(buf);
}

/**
 * SHA-256 of secret bytes, into an ordinary Buffer: for a high-entropy secret (an API key) whose
 * hash is what is stored and compared. libsodium's hash leaves no state behind.
 */
export function secretSha256(data: Uint8Array): Buffer {
  const out = Buffer.alloc(32);
  sodiumPackage().crypto_hash_sha256(out, data);
  return out;
}

/**
 * A keyed BLAKE2b-256 digest of secret bytes (libsodium: no state left behind). With a key of
 * the caller's that never leaves the process, the digest can't be checked against a guess.
 */
export function secretKeyedDigest(data: Uint8Array, key: Uint8Array): Buffer {
  const out = Buffer.alloc(32);
  sodiumPackage().crypto_generichash(out, data, key);
  return out;
}

/** secretKeyedDigest of the pieces one after another, as if joined (nothing joined in memory). */
export function secretKeyedDigestOf(pieces: Uint8Array[], key: Uint8Array): Buffer {
  const out = Buffer.alloc(32);
  sodiumPackage().crypto_generichash_batch(out, pieces, key);
  return out;
}

/** n random bytes straight into secure memory: for keys, never randomBytes. */
export function secureRandom(n: number): SecureBuffer {
  const b = secureAlloc(n);
  sodiumPackage().randombytes_buf(b);
  return b;
}

/** Random bytes for public values (ids, nonces, file names). Keys use secureRandom. */
export function randomBytes(n: number): Buffer {
  const b = Buffer.alloc(n);
  sodiumPackage().randombytes_buf(b);
  return b;
}

/**
 * Reads a file descriptor to its end straight into secure memory (no intermediate JS chunk ever
 * holds the bytes) and returns a new buffer holding exactly what was read. Throws
 * RangeError('too large') past maxBytes, so callers can word the error.
 */
export function readFdToSecure(fd: number, maxBytes: number): SecureBuffer {
  return withFdInSecure(fd, maxBytes, (b) => secureSlice(b, 0, b.length));
}

/** A read of a descriptor starts in a pooled buffer this large: most /proc/PID/environ fit. */
const POOLED_READ = 16 * 1024;

/**
 * Reads a descriptor to its end into secure memory (at most maxBytes; more is a RangeError),
 * growing by doubling (each outgrown buffer zeroed), and runs fn on exactly the bytes read, which
 * fn must not keep: afterwards they are zeroed, and the first buffer is kept for the next read
 * (securePooled). For a read made at every request (a caller's environment, at each connection),
 * where a buffer allocated, copied and freed each time was a tenth of the agent's work per
 * connection.
 */
export function withFdInSecure<T>(fd: number, maxBytes: number, fn: (b: SecureBuffer) => T): T {
  const first = securePooled(Math.min(POOLED_READ, maxBytes + 1));
  let buf = first;
  let used = 0;
  // Only the first buffer goes back to the pool: a larger one (a long environment) is freed, so
  // it never fills the pool with sizes no read starts with.
  const done = (b: SecureBuffer) => (b === first ? secureRelease(b) : secureFree(b));
  try {
    for (;;) {
      if (used === buf.length) {
        if (buf.length >= maxBytes + 1) throw new RangeError('too large');
        const bigger = secureAlloc(Math.min(buf.length * 2, maxBytes + 1));
        buf.copy(bigger, 0, 0, used);
        done(buf);
        buf = bigger;
      }
      const n = readSyncRetrying(fd, buf, used, buf.length - used);
      if (n === 0) break;
      used += n;
    }
    if (used > maxBytes) throw new RangeError('too large');
    return fn(buf.subarray(0, used) as SecureBuffer);
  } finally {
    done(buf);
  }
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/** fs.readSync that waits out EAGAIN (a non-blocking stdin) instead of failing. */
export function readSyncRetrying(fd: number, buf: Buffer, offset: number, length: number): number {
  for (;;) {
    try {
      return fs.readSync(fd, buf, offset, length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        Atomics.wait(sleepCell, 0, 0, 5);
        continue;
      }
      if (code === 'EOF') return 0;
      throw e;
    }
  }
}

/** Writes all of buf to fd, retrying short writes and EAGAIN. */
/**
 * A released value (or anything a command prints from secure memory) written to fd whole. False
 * when the reader went away (EPIPE: `keyward read X | true`), which, as for every command, is a
 * quiet end; any other failure (no space, an I/O error, a closed descriptor) is OUTPUT_FAILED,
 * never an internal error.
 */
export function writeValueSync(fd: number, buf: Uint8Array): boolean {
  try {
    writeAllSync(fd, buf);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EPIPE') return false;
    const where = fd === 1 ? 'standard output' : fd === 2 ? 'standard error' : `descriptor ${fd}`;
    throw new KeywardError(
      'OUTPUT_FAILED',
      `could not write to ${where} (${code ?? 'unknown error'})`,
    );
  }
}

export function writeAllSync(fd: number, buf: Uint8Array): void {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        Atomics.wait(sleepCell, 0, 0, 5);
        continue;
      }
      throw e;
    }
  }
}
