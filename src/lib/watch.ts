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
 * (where no watch is opened). WatchedStamp therefore stats everything every 64th call all the
 * same, and opens its watch again at each stat, on the inodes the paths name then. Any doubt (a
 * watched inode moved, removed or dropped by the kernel, an overflowed queue, an error) answers
 * "changed", and from then on the watch answers "changed" until it is opened again.
 */
import fs from 'node:fs';
import { libc } from './libc-core.js';

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
/** Events that mean the watch itself is gone or incomplete: answer "changed" from then on. */
const IN_UNMOUNT = 0x2000;
const IN_Q_OVERFLOW = 0x4000;
const IN_IGNORED = 0x8000;
const BROKEN = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_Q_OVERFLOW | IN_IGNORED;
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
const EAGAIN = 11;
const EINTR = 4;
/** File systems whose every change inotify reports (statfs f_type): local disks and tmpfs. */
const WATCHABLE = new Set([
  0xef53, // ext2, ext3, ext4
  0x58465342, // XFS
  0x9123683e, // Btrfs
  0xf2f52010, // F2FS
  0x2fc12fc1, // ZFS
  0xca451a4e, // bcachefs
  0x01021994, // tmpfs
]);
/** struct inotify_event: wd, mask, cookie, len (4 bytes each), then len bytes of name. */
const EVENT_HEAD = 16;

export class PathWatch {
  private readonly buf = Buffer.alloc(4096);
  private constructor(private fd: number) {}

  /**
   * Watches each path (a directory: its entries, not what is below them). Undefined when the
   * kernel refuses (no inotify, the watch limit, a missing path): the caller then stats always.
   */
  static open(paths: string[]): PathWatch | undefined {
    // Only where every change goes through this kernel's file system code: not NFS, SMB, FUSE,
    // 9p or virtiofs (another machine or process writes them), nor overlayfs (a write to its
    // upper directory changes what the overlay shows with no event on the overlay's inode).
    for (const p of paths) {
      try {
        if (!WATCHABLE.has(Number(fs.statfsSync(p).type))) return undefined;
      } catch {
        return undefined;
      }
    }
    const l = libc();
    const fd = l.inotifyInit1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) return undefined;
    for (const p of paths) {
      if (l.inotifyAddWatch(fd, p, MASK) < 0) {
        l.close(fd);
        return undefined;
      }
    }
    return new PathWatch(fd);
  }

  /**
   * Whether anything watched may have changed since the last call: the queue is read to its end
   * (so a change is reported once), and any doubt is "changed". Once a watch is gone (a watched
   * directory moved or removed, the queue overflowed, an error) every later call says "changed".
   */
  changed(): boolean {
    if (this.fd < 0) return true;
    const l = libc();
    let any = false;
    for (;;) {
      const n = Number(l.read(this.fd, this.buf, this.buf.length));
      if (n > 0) {
        any = true;
        for (let at = 0; at + EVENT_HEAD <= n; at += EVENT_HEAD + this.buf.readUInt32LE(at + 12))
          if ((this.buf.readUInt32LE(at + 4) & BROKEN) !== 0) {
            this.close();
            return true;
          }
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

  /** Whether the watch still watches (false once it has lost a directory or been closed). */
  get open(): boolean {
    return this.fd >= 0;
  }

  close(): void {
    if (this.fd >= 0) libc().close(this.fd);
    this.fd = -1;
  }
}

/**
 * A stamp of some files (from `stat`, the caller's) taken again only when the watch on `paths`
 * reports a change, or every `fullEvery`-th call whatever it reports (for what inotify can't
 * see). `paths` is asked again after each stat: when it names other paths than the watched ones
 * (a file that appeared, a history's new last entry), the next call watches those.
 */
export class WatchedStamp {
  private watch: PathWatch | undefined;
  private watched: string | undefined;
  private stamp = '';
  private quiet = 0;

  constructor(
    private readonly paths: () => string[],
    private readonly stat: () => string,
    private readonly fullEvery = 64,
  ) {}

  get(): string {
    if (this.watch?.open && this.quiet < this.fullEvery - 1 && !this.watch.changed()) {
      this.quiet += 1;
      return this.stamp;
    }
    // Opened again at every stat, before it (a change made after the stats is an event for the
    // next call): the paths may name other inodes than the ones watched (a file renamed over, an
    // ancestor renamed), with nothing the old watch could report. Not opened again while the
    // kernel refuses it for the same paths (then every call stats, as with no watch).
    const key = this.paths().join('\0');
    if (this.watch !== undefined || this.watched !== key) {
      this.watch?.close();
      this.watch = PathWatch.open(key.split('\0'));
      this.watched = key;
    }
    this.stamp = this.stat();
    this.quiet = 0;
    // What the stats found asks for other paths: watched from the next call on.
    if (this.paths().join('\0') !== key) this.watch?.close();
    return this.stamp;
  }

  close(): void {
    this.watch?.close();
    this.watch = undefined;
    this.watched = undefined;
  }
}
