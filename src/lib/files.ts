/**
 * State files: atomic durable writes, private modes, and fail-closed permission checks.
 */
import fs from 'node:fs';
import path from 'node:path';
import { IntegrityError, KeywardError } from '../errors.js';
import { flock, LOCK_EX, LOCK_NB, LOCK_UN } from './libc.js';
import { randomBytes } from './secure.js';

const TMP_MARK = '.tmp-';

/** The temp-file name pattern for `target`; stale ones are swept by sweepTempFiles. */
function tempName(target: string): string {
  const dir = path.dirname(target);
  const base = path.basename(target);
  return path.join(dir, `.${base}${TMP_MARK}${process.pid}-${randomBytes(6).toString('hex')}`);
}

/**
 * A file as stat saw it: device, inode, size, modification and change times (touch can set
 * mtime, not ctime). Two equal keys are the same file with the same contents, short of a write
 * through a shared mapping (THREAT-MODEL.md).
 */
export function fileKey(st: fs.BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/**
 * Opens one of keyward's own files: never through a symbolic link (O_NOFOLLOW), and never
 * waiting (O_NONBLOCK): a FIFO put where the file belongs would have the open wait for a writer,
 * holding the thread (the agent's: every request, the lock, the unlock window's end) for as
 * long as none comes. Anything but a regular file is refused, and says what it is. ENOENT and
 * other errors of the open pass as they are.
 */
export function openOwnFile(
  file: string,
  flags: number = fs.constants.O_RDONLY,
  mode = 0o600,
  follow = false,
): number {
  return openRegular(file, flags, mode, follow).fd;
}

/** openOwnFile, with the stat it took of the descriptor. */
function openRegular(
  file: string,
  flags: number,
  mode: number,
  follow: boolean,
): { fd: number; st: fs.Stats } {
  const nofollow = follow ? 0 : fs.constants.O_NOFOLLOW;
  let fd: number;
  try {
    fd = fs.openSync(file, flags | nofollow | fs.constants.O_NONBLOCK, mode);
  } catch (e) {
    // O_NOFOLLOW's refusal of a link, said as keyward's refusal, not as an internal error.
    if ((e as NodeJS.ErrnoException).code === 'ELOOP' && !follow)
      refuseIfProblem(file, 'file', 'it is a symbolic link');
    throw e;
  }
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  if (!st.isFile()) {
    fs.closeSync(fd);
    throw notRegular(file, st);
  }
  return { fd, st };
}

/**
 * The whole of one of keyward's own files (openOwnFile's checks). private: the file must also be
 * the user's alone (checked on the descriptor read, not on a path that could change between);
 * maxBytes: a larger one is refused before it is read; follow: a symbolic link is followed (a
 * file keyward reads but does not own: an askpass program, a CA bundle), still never to a FIFO.
 */
export function readOwnFile(
  file: string,
  o: { private?: boolean; maxBytes?: number; follow?: boolean } = {},
): Buffer {
  const { fd, st } = openRegular(file, fs.constants.O_RDONLY, 0o600, o.follow === true);
  try {
    if (o.private === true) refuseIfProblem(file, 'file', problemOf(st, 'file'));
    if (o.maxBytes !== undefined && st.size > o.maxBytes)
      throw new KeywardError(
        'USAGE',
        `refusing to read ${file}: it is ${st.size} bytes, more than ${o.maxBytes}`,
      );
    return fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function notRegular(file: string, st: fs.Stats): IntegrityError {
  const what = st.isFIFO()
    ? 'a FIFO'
    : st.isDirectory()
      ? 'a directory'
      : st.isSocket()
        ? 'a socket'
        : 'a device';
  return new IntegrityError(
    'INSECURE_PERMISSIONS',
    `refusing to use ${file}: it is not a regular file (it is ${what})`,
    { hint: 'keyward did not put it there: look at what it is, then remove it' },
  );
}

/** Makes a directory entry change (create, rename) durable. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The errors of a write, fsync or rename that mean a file can't be written now, as a person reads them. */
const DISK_ERRORS: Partial<Record<string, string>> = {
  ENOSPC: 'no space left on its filesystem',
  EDQUOT: 'the disk quota is exhausted',
  EROFS: 'its filesystem is read-only',
  EIO: 'an I/O error',
  EFBIG: 'the file is too large for its filesystem',
};

/**
 * A failed write, fsync or rename that is the disk's doing (no space, a quota, read-only, an I/O
 * error), named for a message: `CODE: what it means`. Undefined for any other error.
 */
export function diskFailure(e: unknown): string | undefined {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const what = code === undefined ? undefined : DISK_ERRORS[code];
  return what === undefined ? undefined : `${code}: ${what}`;
}

/**
 * A file's identity: its device and inode, as bigints. Inode numbers pass 2^53 on some file
 * systems (an overlay's lower layers with xino: the layer's index in the high bits, kept when a
 * file is copied up), where two files' numbers as JS numbers are one.
 */
export interface FileId {
  dev: bigint;
  ino: bigint;
}

/**
 * Replaces `target` with `chunks` so that a crash at any instant leaves either the old file or
 * the new one, never a mix and never neither: write a temp file in the same directory (same
 * filesystem, so rename is atomic), fsync it, rename over the target, fsync the directory so the
 * rename itself is durable. Mode 0600 from creation (no window where the file is more open).
 */
export function writeFileAtomic(target: string, chunks: readonly Uint8Array[]): FileId {
  const staged = stageFile(target, chunks);
  staged.commit();
  return staged.written;
}

/**
 * writeFileAtomic in two steps: the new file written and fsynced beside `target` now, put in
 * its place by commit() (rename, fsync the directory), or removed by discard() with `target`
 * untouched. For a file whose replacing must wait for something else to succeed first.
 */
export function stageFile(
  target: string,
  chunks: readonly Uint8Array[],
): { commit(): void; discard(): void; written: FileId } {
  const tmp = tempName(target);
  const flags =
    fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  const fd = fs.openSync(tmp, flags, 0o600);
  let dev: bigint;
  let ino: bigint;
  try {
    for (const c of chunks) {
      let off = 0;
      while (off < c.length) off += fs.writeSync(fd, c, off, c.length - off);
    }
    fs.fsyncSync(fd);
    // The file written, by its identity: whatever the path names later may be another's.
    ({ dev, ino } = fs.fstatSync(fd, { bigint: true }));
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  return {
    written: { dev, ino },
    commit() {
      try {
        fs.renameSync(tmp, target);
      } catch (e) {
        fs.rmSync(tmp, { force: true });
        throw e;
      }
      fsyncDir(path.dirname(target));
    },
    discard() {
      fs.rmSync(tmp, { force: true });
    },
  };
}

/**
 * Removes temp files a killed writer left next to `target`. Call only while holding the
 * directory's lock, so a live writer's temp file is never taken away; or with deadOnly, which
 * takes only those of processes that are gone.
 */
export function sweepTempFiles(target: string, deadOnly = false): string[] {
  const dir = path.dirname(target);
  const prefix = `.${path.basename(target)}${TMP_MARK}`;
  const removed: string[] = [];
  for (const name of fs.readdirSync(dir)) {
    if (name.startsWith(prefix)) {
      // deadOnly: a writer holds no lock here, so another may be writing now; only the temp of a
      // process that is gone is a leftover (a pid reused since leaves one: it is swept later).
      const pid = /^(\d+)-[0-9a-f]+$/.exec(name.slice(prefix.length))?.[1];
      if (deadOnly && (pid === undefined || fs.existsSync(`/proc/${pid}`))) continue;
      const entry = path.join(dir, name);
      const st = fs.lstatSync(entry, { throwIfNoEntry: false });
      // Only what a write of keyward's leaves (a file); anything else is not ours to remove.
      if (st && !st.isFile() && !st.isSymbolicLink()) throw notRegular(entry, st);
      fs.rmSync(entry, { force: true });
      removed.push(name);
    }
  }
  return removed;
}

/** Why a path is not private to this user ("it is ..."), or undefined when it is. */
export function permissionProblem(p: string, kind: 'dir' | 'file'): string | undefined {
  const st = fs.lstatSync(p, { throwIfNoEntry: false });
  return st === undefined ? undefined : problemOf(st, kind);
}

/** The effective uid, read once: keyward never changes its own. */
const EUID = process.geteuid?.() ?? -1;

/** What is wrong with an entry's type, owner or mode for a private dir or file (lstat's stats). */
export function problemOf(st: fs.Stats, kind: 'dir' | 'file'): string | undefined {
  if (st.isSymbolicLink()) return 'it is a symbolic link';
  if (kind === 'dir' && !st.isDirectory()) return 'it is not a directory';
  if (kind === 'file' && !st.isFile()) return 'it is not a regular file';
  if (st.uid !== EUID) return `it is owned by uid ${st.uid}, not by you (uid ${EUID})`;
  const loose = st.mode & 0o077;
  if (loose !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(3, '0');
    return `it has mode ${mode}, so others can ${loose & 0o022 ? 'change' : 'read'} it`;
  }
  return undefined;
}

/** Fails closed when `p` exists and others could read or change it. */
export function assertPrivate(p: string, kind: 'dir' | 'file'): void {
  refuseIfProblem(p, kind, permissionProblem(p, kind));
}

/** Throws INSECURE_PERMISSIONS for p when there is a problem (problemOf, permissionProblem). */
export function refuseIfProblem(
  p: string,
  kind: 'dir' | 'file',
  problem: string | undefined,
): void {
  if (problem !== undefined) {
    const wanted = kind === 'dir' ? '700' : '600';
    // A link is no matter of modes: what it points to, and who made it, is.
    const hint =
      problem === 'it is a symbolic link'
        ? `keyward makes no links there: look at what ${p} points to and who made it; put the real ${kind === 'dir' ? 'directory' : 'file'} back in its place`
        : `if that is your own doing, run: chmod ${wanted} '${p}' (and check nobody else changed it)`;
    throw new IntegrityError('INSECURE_PERMISSIONS', `refusing to use ${p}: ${problem}`, { hint });
  }
}

/** Creates a private directory (0700) or checks that an existing one is private. */
export function ensurePrivateDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  assertPrivate(dir, 'dir');
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

function openLockFile(lockPath: string): number {
  return fs.openSync(
    lockPath,
    fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW,
    0o600,
  );
}

function busy(lockPath: string): KeywardError {
  return new KeywardError('VAULT_BUSY', `another keyward process holds ${lockPath}`, {
    hint: 'wait for it to finish and try again',
  });
}

/** withFileLock for async work: polls without blocking the event loop. */
export async function withFileLockAsync<T>(
  lockPath: string,
  timeoutMs: number,
  fn: () => T | Promise<T>,
): Promise<T> {
  const fd = openLockFile(lockPath);
  try {
    const deadline = Date.now() + timeoutMs;
    while (!flock(fd, LOCK_EX | LOCK_NB)) {
      if (Date.now() > deadline) throw busy(lockPath);
      await new Promise((r) => setTimeout(r, 2));
    }
    try {
      // A synchronous fn's lock ends in the same run as fn: nothing else runs while it is held.
      const r = fn();
      return r instanceof Promise ? await r : r;
    } finally {
      flock(fd, LOCK_UN);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Holds an exclusive flock on `lockPath` while fn runs. The kernel drops the lock when the
 * process dies (SIGKILL included), so a crashed writer never wedges the vault.
 */
export function withFileLock<T>(lockPath: string, timeoutMs: number, fn: () => T): T {
  const fd = openLockFile(lockPath);
  try {
    const deadline = Date.now() + timeoutMs;
    while (!flock(fd, LOCK_EX | LOCK_NB)) {
      if (Date.now() > deadline) throw busy(lockPath);
      Atomics.wait(sleepCell, 0, 0, 20);
    }
    try {
      return fn();
    } finally {
      flock(fd, LOCK_UN);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A lock file a long-running process keeps open (the agent's audit writer): each use takes the
 * flock on the held descriptor, then checks that the path still names that file, and opens it
 * again if not (moved aside, replaced): a lock on a file no one else opens excludes no one.
 */
export class HeldLock {
  private held: { fd: number; dev: bigint; ino: bigint } | undefined;

  constructor(private readonly lockPath: string) {}

  async with<T>(timeoutMs: number, fn: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const h = this.open();
      while (!flock(h.fd, LOCK_EX | LOCK_NB)) {
        if (Date.now() > deadline) throw busy(this.lockPath);
        await new Promise((r) => setTimeout(r, 2));
      }
      const now = fs.lstatSync(this.lockPath, { bigint: true, throwIfNoEntry: false });
      if (now?.dev === h.dev && now.ino === h.ino) {
        try {
          return await fn();
        } finally {
          flock(h.fd, LOCK_UN);
        }
      }
      flock(h.fd, LOCK_UN);
      this.close();
    }
  }

  private open(): { fd: number; dev: bigint; ino: bigint } {
    if (!this.held) {
      const fd = openLockFile(this.lockPath);
      const st = fs.fstatSync(fd, { bigint: true });
      this.held = { fd, dev: st.dev, ino: st.ino };
    }
    return this.held;
  }

  close(): void {
    if (this.held) fs.closeSync(this.held.fd);
    this.held = undefined;
  }
}
