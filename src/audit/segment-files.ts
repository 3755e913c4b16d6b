/**
 * The segment a writer appends to, held open between appends, and used only while its path still
 * names the file the descriptor has (a segment replaced under the writer is opened anew).
 */
import fs from 'node:fs';
import { IntegrityError } from '../errors.js';
import { unwritable } from './state.js';
import { openOwnFile } from '../lib/files.js';
import { statWithoutTimes, type FileIdentity } from '../lib/libc.js';

/** Device, inode, size, and modification and change times (ns): what any write changes. */
export { fileKey as stampFrom } from '../lib/files.js';

/**
 * A segment's stamp: device, inode and size, taken without asking its times (statWithoutTimes:
 * asking them would cost the journal's fdatasync its speed). Another writer's append changes
 * the size and a replaced file the inode; a write in place that keeps the size changes neither,
 * and is found by the last line's read-back (tail.ts, lineStillThere) and by verify's MACs.
 */
export function segmentStamp(id: FileIdentity): string {
  return `${id.dev}:${id.ino}:${id.size}`;
}

/**
 * The segment's end moved between the writer's reading of it (its checks, its head) and its
 * write: another process, which takes no lock, cut or wrote the file in that moment. The
 * writer's lines were taken back; it goes through its checks again (AuditLog.appendOnce).
 */
export class SegmentMoved extends Error {
  constructor(
    readonly segment: number,
    readonly expected: number,
    readonly found: number,
  ) {
    super(`the segment's end moved while it was written (at byte ${expected}, now ${found})`);
  }
}

/**
 * Runs a writer's checks and its write under the log's lock, and once more when the segment
 * moved under the write (SegmentMoved): the second time, the checks see what the other process
 * left (a cut behind the agent is recorded as one). A second move refuses, writing nothing more.
 */
export function checkedAgain<T>(write: () => T): T {
  try {
    return write();
  } catch (e) {
    if (!(e instanceof SegmentMoved)) throw e;
  }
  try {
    return write();
  } catch (e) {
    if (!(e instanceof SegmentMoved)) throw e;
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `nothing written: the log's segment changed twice while this writer appended to it (${e.message}); another process writes it without the log's lock`,
      { hint: 'keep a copy of the log as evidence; run keyward audit verify' },
    );
  }
}

/**
 * Appends data to segment n's descriptor (O_APPEND), which the writer read as `at` bytes long:
 * its new end and identity. When the lines did not land at `at`, the file changed after the
 * writer's checks; they are cut off again and SegmentMoved thrown, so that what they link to
 * is never taken for checked (an append after a cut would put the writer's own last line back
 * where its next check looks, and the cut would pass unseen).
 */
export function appendAt(
  n: number,
  fd: number,
  data: Buffer,
  at: number,
): { end: number; stat: FileIdentity } {
  let off = 0;
  while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off);
  const stat = statWithoutTimes(fd);
  if (stat === undefined) throw new Error('the segment has no size');
  const end = Number(stat.size);
  if (end - data.length !== at) {
    fs.ftruncateSync(fd, end - data.length);
    throw new SegmentMoved(n, at, end - data.length);
  }
  return { end, stat };
}

export class SegmentFiles {
  private segment: { n: number; fd: number; dev: bigint; ino: bigint } | undefined;

  constructor(private readonly pathOf: (n: number) => string) {}

  /**
   * The segment, open for appending: the one held if the path still names that file, else
   * opened now (and held).
   */
  open(n: number, seen?: FileIdentity): { fd: number; created: boolean } {
    const file = this.pathOf(n);
    const held = this.held(n, seen);
    if (held !== undefined) return { fd: held, created: false };
    this.close();
    const created = !fs.existsSync(file);
    const fd = openOwnFile(
      file,
      fs.constants.O_RDWR | fs.constants.O_APPEND | fs.constants.O_CREAT,
      0o600,
    );
    const st = fs.fstatSync(fd, { bigint: true });
    this.segment = { n, fd, dev: st.dev, ino: st.ino };
    return { fd, created };
  }

  /**
   * The held descriptor of segment n, if the path still names the file it has open. seen: the
   * path's statx (no times), taken by the caller under the same lock a moment before (not taken again).
   */
  held(n: number, seen?: FileIdentity): number | undefined {
    const held = this.segment;
    if (held?.n !== n) return undefined;
    const now = seen ?? statWithoutTimes(this.pathOf(n));
    return now?.isFile && now.dev === held.dev && now.ino === held.ino ? held.fd : undefined;
  }

  /** fsyncs segment n, blocking (the CLI's append, a rotation). */
  sync(n: number): void {
    const { fd, own } = this.syncTarget(n);
    try {
      fs.fsyncSync(fd);
    } catch (e) {
      throw unwritable(e);
    } finally {
      if (own) fs.closeSync(fd);
    }
  }

  /** A descriptor to fsync segment n with: the held one, or one opened for it (own: close it). */
  syncTarget(n: number): { fd: number; own: boolean } {
    if (this.segment?.n === n) return { fd: this.segment.fd, own: false };
    const fd = openOwnFile(this.pathOf(n));
    return { fd, own: true };
  }

  close(): void {
    if (this.segment) fs.closeSync(this.segment.fd);
    this.segment = undefined;
  }
}
