/**
 * "Has anything at these paths changed since I last asked?" for a long-running process that
 * would otherwise stat the same files at every request (the agent's policy files: three stats a
 * signature, ~10% of its time at concurrency 8). An inotify descriptor, non-blocking, read with
 * one system call. Each path is watched as the inode it names when opened: a file for any write,
 * truncation or change of its attributes (chmod, touch, its link count), by whatever path or
 * hard link it is reached; a directory for the same of its entries (through it) and for entries
 * made, removed or renamed in it; either for being moved or removed itself. The kernel queues the
 * event during the call that made the change, so a change made before a request was sent is seen
 * by that request.
 *
 * What inotify does not see, and the caller must check some other way: writes through a shared
 * mapping (no event), an entry of a watched directory changed through another hard link of it
 * (unless the entry is watched too), a rename of any ancestor of a watched path (it changes what
 * the paths mean, with no event here), changes on file systems other than local disks and tmpfs
 * (where nothing is watched). WatchedStamp therefore stats everything every 64th call all the
 * same, and aims its watch again at each stat, at the inodes the paths name then. Any event at
 * all (a watched inode moved or removed, the kernel dropping a watch, an overflowed queue) answers
 * "changed"; an error ends the watch, and every later call says "changed".
 *
 * The descriptor is kept for the process's life and aimed again with inotify_add_watch and
 * inotify_rm_watch (tens of microseconds): closing an inotify descriptor waits for the kernel's
 * grace period over its marks, 0.7 ms here and up to ~25 ms on a busy machine, which the agent's
 * requests would have waited for (a benchmark's p99 went from 5 to 25 ms).
 */
import fs from 'node:fs';
import { LOCAL_FILE_SYSTEMS } from './file-systems.js';
import { EAGAIN, EINTR, libc } from './libc-core.js';

const IN_NONBLOCK = 0o4000;
const IN_CLOEXEC = 0o2000000;
const IN_MODIFY = 0x2;
const IN_ATTRIB = 0x4;
const IN_CLOSE_WRITE = 0x8;
const IN_MOVED_FROM = 0x40;
const IN_MOVED_TO = 0x80;
const IN_CREATE = 0x100;
const IN_DELETE = 0x200;
const IN_DELETE_SELF = 0x400;
const IN_MOVE_SELF = 0x800;
const MASK =
  IN_MODIFY |
  IN_ATTRIB |
  IN_CLOSE_WRITE |
  IN_MOVED_FROM |
  IN_MOVED_TO |
  IN_CREATE |
  IN_DELETE |
  IN_DELETE_SELF |
  IN_MOVE_SELF;
/**
 * Calls of a WatchedStamp between full stats while its watch is quiet: what inotify can't see (a
 * write through a shared mapping, an ancestor directory renamed) is seen within this many.
 */
export const FULL_CHECK_EVERY = 64;

export class PathWatch {
  private readonly buf = Buffer.alloc(4096);
  /** The watch descriptors of the paths last aimed at. */
  private wds = new Set<number>();
  private constructor(private fd: number) {}

  /** A watch on nothing yet (aim() gives it paths); undefined when the kernel refuses one. */
  static create(): PathWatch | undefined {
    const fd = libc().inotifyInit1(IN_NONBLOCK | IN_CLOEXEC);
    return fd < 0 ? undefined : new PathWatch(fd);
  }

  /** A watch on paths (create, then aim); undefined when any can't be watched. */
  static open(paths: string[]): PathWatch | undefined {
    const w = PathWatch.create();
    if (w && !w.aim(paths)) {
      w.close();
      return undefined;
    }
    return w;
  }

  /**
   * Watches exactly the inodes these paths name now (a directory: its entries, not what is
   * below them), and no longer those it watched before that they don't name. False when one
   * can't be watched (a missing path, the kernel's limit, a file system whose changes inotify
   * can't vouch for): the caller must then stat at every call; the watch watches nothing.
   */
  aim(paths: string[]): boolean {
    if (this.fd < 0) return false;
    const l = libc();
    const wds = new Set<number>();
    let ok = true;
    for (const p of paths) {
      // Only where every change goes through this kernel's file system code: not NFS, SMB,
      // FUSE, 9p or virtiofs (another machine or process writes them), nor overlayfs (a write
      // to its upper directory changes what the overlay shows with no event on its inode).
      let local: boolean;
      try {
        local = LOCAL_FILE_SYSTEMS.has(Number(fs.statfsSync(p).type));
      } catch {
        local = false;
      }
      const wd = local ? l.inotifyAddWatch(this.fd, p, MASK) : -1;
      if (wd < 0) {
        ok = false;
        break;
      }
      wds.add(wd);
    }
    // Refused: nothing stays watched, neither what was nor what this call added before it failed.
    const keep = ok ? wds : new Set<number>();
    for (const wd of new Set([...this.wds, ...wds]))
      if (!keep.has(wd)) l.inotifyRmWatch(this.fd, wd);
    this.wds = keep;
    return ok;
  }

  /**
   * Whether anything watched may have changed since the last call: the queue is read to its end
   * (so a change is reported once), and any event is "changed". An error ends the watch: every
   * later call says "changed".
   */
  changed(): boolean {
    if (this.fd < 0) return true;
    const l = libc();
    let any = false;
    for (;;) {
      const n = Number(l.read(this.fd, this.buf, this.buf.length));
      if (n > 0) {
        any = true;
        continue;
      }
      if (n < 0) {
        const err = l.errno();
        if (err === EINTR) continue;
        if (err === EAGAIN) return any;
      }
      // 0 (end of file: never for inotify) or an error: no longer trusted.
      this.close();
      return true;
    }
  }

  /** Whether the watch can still watch (false once an error ended it, or closed). */
  get open(): boolean {
    return this.fd >= 0;
  }

  /** Ends the watch (the close waits for the kernel: not for a request's path). */
  close(): void {
    if (this.fd >= 0) libc().close(this.fd);
    this.fd = -1;
    this.wds.clear();
  }
}

/**
 * A stamp of some files (from `stat`, the caller's) taken again only when the watch on `paths`
 * reports a change, or every `fullEvery`-th call whatever it reports (for what inotify can't
 * see). Each stat aims the watch again, first, at what `paths` names then; when the stat makes
 * `paths` name other paths (a history's new last entry), the next call stats and aims again.
 */
export class WatchedStamp {
  private readonly watch = PathWatch.create();
  /** Whether the watch covers every path (else every call stats). */
  private aimed = false;
  private stamp = '';
  private quiet = 0;

  constructor(
    private readonly paths: () => string[],
    private readonly stat: () => string,
    private readonly fullEvery = FULL_CHECK_EVERY,
  ) {}

  get(): string {
    if (this.aimed && this.quiet < this.fullEvery - 1 && this.watch?.changed() === false) {
      this.quiet += 1;
      return this.stamp;
    }
    // The watch is aimed before the stats: a change made after them is an event for the next
    // call. Aimed at every stat: the paths may name other inodes than the ones watched (a file
    // renamed over, a directory above renamed and replaced) with nothing a watch could report.
    const key = this.paths();
    this.aimed = this.watch?.aim(key) ?? false;
    // Events of before the aim are answered by the stats below.
    this.watch?.changed();
    this.stamp = this.stat();
    this.quiet = 0;
    // What the stats found asks for other paths: stat-ed and watched at the next call.
    if (this.paths().join('\0') !== key.join('\0')) this.aimed = false;
    return this.stamp;
  }

  close(): void {
    this.watch?.close();
    this.aimed = false;
  }
}
