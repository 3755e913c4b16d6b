/**
 * The SHA-256 of a caller's executable, taken when something first needs it (a rule with
 * `exe_sha256`, a grant remembered per executable or per process, a pending approval), not at
 * every first connection of a program: node's 99 MB binary took ~70 ms to hash, paid by `agent
 * start`'s own check and by `agent stop`, which need no hash.
 *
 * Laziness must not change what is hashed. At identification the agent opens /proc/PID/exe,
 * which is a descriptor of the very file the process runs (not a path that could be replaced),
 * and checks it against the stat taken then. The hash, when asked for, is read from that
 * descriptor, and the file's stat must still be the one seen at identification (device, inode,
 * size, mtime, ctime: a write between changes ctime). A process that makes itself unreadable
 * after identification changes nothing: the descriptor was opened while it could be read.
 *
 * A file that changed since, can't be read at all (execute-only), or whose bytes may change while
 * it runs (a memfd, a mount the user made: notHeldWhileRunning, exe-trust.ts) refuses every
 * request that needs the hash, for as long as the identity lives: an unknown hash would let a
 * caller step around a rule that denies its executable.
 *
 * The descriptor belongs to the program handle (peer.ts): it closes with the handle's last
 * holder, when no connection of the program is left to ask.
 */
import type * as Crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { KeywardError } from '../errors.js';
import { fileKey } from '../lib/files.js';
import { closeFd } from '../lib/libc.js';
import { fixedForUser, notHeldWhileRunning } from './exe-trust.js';

/**
 * Hashes by file key (device, inode, size, mtime, ctime), for files no process of this user can
 * change (fixedForUser): for any other, a key is not its bytes. A write through a shared mapping
 * changes none of the key's fields on tmpfs (a page read first is mapped writable, and no fault
 * updates a time), nor on ext4 through pages made writable before the key was taken; such a file
 * is hashed again wherever its hash is needed.
 */
const hashCache = new Map<string, string>();

function remember(key: string, hash: string): void {
  if (hashCache.size >= HASH_CACHE_MAX) hashCache.clear();
  hashCache.set(key, hash);
}

/**
 * Larger executables are not hashed (a refusal wherever a hash is needed): a sparse file of a
 * terabyte (truncate -s 1T) took the better part of an hour to hash, then on the agent's thread;
 * off it now (prepare()), it would still keep a core busy that long. node is 99 MB, the largest
 * common programs a few hundred.
 */
const EXE_HASH_MAX_BYTES = 512 * 1024 * 1024;
/** Executables hashed and remembered at once; past it the cache starts over. */
const HASH_CACHE_MAX = 512;

/**
 * One buffer for every executable read (public bytes): no 100 MB allocation per first sight.
 * Made at the first hash, as node:crypto is loaded then: every command imports this module (the
 * agent's entry), and only the agent hashes.
 */
let chunk: Buffer | undefined;
let sha256: typeof Crypto.createHash | undefined;
const require = createRequire(import.meta.url);

/** The same, each chunk read on libuv's thread pool (a buffer of its own: several may run). */
async function hashFdAsync(fd: number): Promise<string> {
  sha256 ??= (require('node:crypto') as typeof Crypto).createHash;
  const buf = Buffer.allocUnsafe(1 << 20);
  const h = sha256('sha256');
  const read = (at: number) =>
    new Promise<number>((resolve, reject) =>
      fs.read(fd, buf, 0, buf.length, at, (e, n) => (e ? reject(e) : resolve(n))),
    );
  let at = 0;
  for (let n; (n = await read(at)) > 0; at += n) h.update(buf.subarray(0, n));
  return h.digest('hex');
}

/** SHA-256 of an open file from its start, a chunk at a time. */
function hashFd(fd: number): string {
  sha256 ??= (require('node:crypto') as typeof Crypto).createHash;
  const buf = (chunk ??= Buffer.allocUnsafe(1 << 20));
  const h = sha256('sha256');
  let at = 0;
  for (let n; (n = fs.readSync(fd, buf, 0, buf.length, at)) > 0; at += n)
    h.update(buf.subarray(0, n));
  return h.digest('hex');
}

const CHANGED = 'changed on disk (or could not be read) after it connected';

const refused = (why: string): KeywardError =>
  new KeywardError(
    'POLICY_DENIED',
    `the caller's executable ${why}: its hash is not the program's`,
    {
      hint: 'start the program again: this process stays refused (its hash could not be taken)',
    },
  );

/**
 * An executable's hash: known, or computable once from a descriptor held since identification.
 * A hash that could not be taken stays refused for as long as the identity lives: asking again
 * must never turn a refusal into an unknown hash.
 */
export class ExeHash {
  private value: string | undefined;
  private fd: number | undefined;
  private failure: string | undefined;
  /** The hash being taken off the thread (prepare()); its end closes the descriptor. */
  private taking: Promise<void> | undefined;

  /**
   * key: the file's key at identification; sealed: no process of this user can change the
   * file (fixedForUser), so its hash may be remembered by key and taken from what was.
   */
  constructor(
    private readonly key: string,
    known: string | undefined,
    fd: number | undefined,
    failure?: string,
    private readonly sealed = false,
  ) {
    this.value = known;
    this.fd = known === undefined ? fd : undefined;
    this.failure =
      known === undefined && fd === undefined ? (failure ?? 'can not be read') : undefined;
    if (known !== undefined && fd !== undefined) closeFd(fd);
  }

  /** A hash that can't be taken (the file can't be opened: execute-only, or no descriptor left). */
  static unreadable(why: string): ExeHash {
    return new ExeHash('', undefined, undefined, why);
  }

  /**
   * The hash. Throws (POLICY_DENIED) when the file changed since identification or can't be
   * read, now and at every later call: an unknown hash would let a caller step around a rule
   * that denies its executable.
   */
  get(): string {
    if (this.value !== undefined) return this.value;
    // While prepare() reads the file, a caller that can't wait hashes it here (positioned reads:
    // the two don't disturb each other), and the descriptor stays open until both are done.
    if (this.failure !== undefined || this.fd === undefined)
      throw refused(this.failure ?? 'was not hashed while it could be');
    const fd = this.fd;
    let h: string | undefined;
    let why = CHANGED;
    try {
      const no = this.unhashable(fd);
      if (no !== undefined) why = no;
      else {
        const hashed = hashFd(fd);
        if (this.unchanged(fd)) h = hashed;
      }
    } catch {
      h = undefined;
    } finally {
      this.close();
    }
    if (h === undefined) {
      this.failure = why;
      throw refused(this.failure);
    }
    if (this.sealed) remember(this.key, h);
    this.value = h;
    return h;
  }

  /**
   * Takes the hash without holding the agent's thread: the file is read a chunk at a time on
   * libuv's thread pool and hashed between other work, so a large executable (node is 99 MB)
   * delays only its own requests. get() then answers at once. The same checks as get(): the
   * file's stat before and after, the size limit; a failure is kept as get()'s.
   */
  prepare(): Promise<void> {
    if (this.value !== undefined || this.failure !== undefined || this.fd === undefined)
      return Promise.resolve();
    const cached = this.sealed ? hashCache.get(this.key) : undefined;
    if (cached !== undefined) {
      this.value = cached;
      this.close();
      return Promise.resolve();
    }
    return (this.taking ??= this.take(this.fd));
  }

  private async take(fd: number): Promise<void> {
    let h: string | undefined;
    let why = CHANGED;
    try {
      const no = this.unhashable(fd);
      if (no !== undefined) why = no;
      else {
        const hashed = await hashFdAsync(fd);
        if (this.unchanged(fd)) h = hashed;
      }
    } catch {
      h = undefined;
    }
    this.taking = undefined;
    // get() may have answered meanwhile, on the thread (a hash or a refusal): that answer stands.
    if (this.value === undefined && this.failure === undefined) {
      if (h === undefined) this.failure = why;
      else {
        if (this.sealed) remember(this.key, h);
        this.value = h;
      }
    }
    this.close();
  }

  /**
   * Why the file can't be hashed (larger than the limit, or writable while it runs), or CHANGED
   * when its stat is not the one seen at identification; undefined when it can be read now.
   */
  private unhashable(fd: number): string | undefined {
    const st = fs.fstatSync(fd, { bigint: true });
    if (st.size > BigInt(EXE_HASH_MAX_BYTES))
      return `is larger than ${EXE_HASH_MAX_BYTES / 1024 / 1024} MiB, too large to hash`;
    if (fileKey(st) !== this.key) return CHANGED;
    // A hash remembered for the file needs no such check: only a file fixedForUser is.
    return this.sealed ? undefined : notHeldWhileRunning(fd, st);
  }

  /** The file did not change while it was read (its stat is still identification's). */
  private unchanged(fd: number): boolean {
    return fileKey(fs.fstatSync(fd, { bigint: true })) === this.key;
  }

  /** Gives the descriptor back; a hash not taken by now is refused from here on. */
  close(): void {
    // Not while a read of it is on the thread pool (the number could name another file by
    // then): the hash's end closes it.
    if (this.taking !== undefined) return;
    if (this.fd !== undefined) closeFd(this.fd);
    this.fd = undefined;
    if (this.value === undefined) this.failure ??= 'was not hashed while it could be';
  }
}

/**
 * The executable behind /proc/PID/exe: its file (device and inode) and its hash, taken on first
 * use from a descriptor opened now; known at once when the file is one no process of this user
 * can change (fixedForUser) and was hashed before with the same key (device, inode, size,
 * mtime, ctime: touch -m can fake mtime, not ctime).
 */
export function executable(pid: number): { file: string; hash: ExeHash } | undefined {
  const path = `/proc/${pid}/exe`;
  let fd: number | undefined;
  try {
    const st = fs.statSync(path, { bigint: true });
    const file = `${st.dev}:${st.ino}`;
    const key = fileKey(st);
    try {
      fd = fs.openSync(path, fs.constants.O_RDONLY);
    } catch {
      // Seen (stat works) but not readable: an execute-only file, or no descriptor left.
      return { file, hash: ExeHash.unreadable('can not be read (execute-only, or no descriptor)') };
    }
    // The descriptor is of the file stat saw (the process did not exec in between).
    const opened = fs.fstatSync(fd, { bigint: true });
    if (fileKey(opened) !== key) {
      closeFd(fd);
      return { file, hash: ExeHash.unreadable('changed while it was identified') };
    }
    const sealed = fixedForUser(fd, opened);
    const cached = sealed ? hashCache.get(key) : undefined;
    if (cached !== undefined) {
      closeFd(fd);
      return { file, hash: new ExeHash(key, cached, undefined) };
    }
    return { file, hash: new ExeHash(key, undefined, fd, undefined, sealed) };
  } catch {
    if (fd !== undefined) closeFd(fd);
    return undefined;
  }
}

/**
 * A program a run will exec (docs/RUN.md): the key of the file at path (following links, as exec
 * does) and, when it can be read and is at most maxBytes, its hash, read on libuv's thread pool
 * and remembered by key like an executable's (only for a file this user can't change).
 * Undefined when path names no regular file.
 */
export async function programHash(
  path: string,
  maxBytes: number,
): Promise<{ sha256: string | undefined; stamp: string } | undefined> {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch {
    // Execute-only: no hash, but its stat still binds the run to the file as it was.
    try {
      const st = fs.statSync(path, { bigint: true });
      return st.isFile() ? { sha256: undefined, stamp: fileKey(st) } : undefined;
    } catch {
      return undefined;
    }
  }
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    if (!st.isFile()) return undefined;
    const key = fileKey(st);
    // A file this user can change is hashed at every run: its key is not its bytes.
    const sealed = fixedForUser(fd, st);
    const cached = sealed ? hashCache.get(key) : undefined;
    if (cached !== undefined) return { sha256: cached, stamp: key };
    if (st.size > BigInt(maxBytes)) return { sha256: undefined, stamp: key };
    const h = await hashFdAsync(fd);
    // Changed while it was read: not this file's hash (and the stamp no longer holds).
    if (fileKey(fs.fstatSync(fd, { bigint: true })) !== key)
      return { sha256: undefined, stamp: key };
    if (sealed) remember(key, h);
    return { sha256: h, stamp: key };
  } catch {
    return undefined;
  } finally {
    closeFd(fd);
  }
}
