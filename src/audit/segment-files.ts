/**
 * The segment a writer appends to, held open between appends, and used only while its path still
 * names the file the descriptor has (a segment replaced under the writer is opened anew).
 */
import fs from 'node:fs';
import { unwritable } from './state.js';
import { lineStillThere } from './tail.js';
import { openOwnFile } from '../lib/files.js';
import { statWithoutTimes, type FileIdentity } from '../lib/libc.js';
import type { LineBefore } from './log-types.js';

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
 * Appends data to a segment's descriptor (O_APPEND), which the writer read, under the log's
 * lock, as `at` bytes long and ending in the line `before` (its hash and length with the
 * newline; none in an empty segment). Gives the new end and identity, and `moved`: why the
 * lines did not land where the writer's checks saw the end, if they did not. Another process,
 * which takes no lock, can cut or rewrite the file between those checks and this write: the
 * lines then follow what it left, and the writer's own last line would stand where its next
 * check looks, the change unseen; or, the file replaced or removed, they go to a file no longer
 * in the log. Nothing is taken back (the bytes after `at` may be anyone's); the caller records
 * the break.
 */
export function appendAt(
  file: string,
  fd: number,
  data: Buffer,
  at: number,
  before: LineBefore | undefined,
): { end: number; stat: FileIdentity; moved: string | undefined } {
  let off = 0;
  while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off);
  const stat = statWithoutTimes(fd);
  if (stat === undefined) throw new Error('the segment has no size');
  const end = Number(stat.size);
  // The path too: a file renamed over it, or its removal, leaves the descriptor's file as it was.
  const named = statWithoutTimes(file);
  let moved: string | undefined;
  if (named?.dev !== stat.dev || named.ino !== stat.ino)
    moved = `the segment changed while a batch was written to it: the file was replaced or removed`;
  else if (end - data.length !== at)
    moved = `the segment changed while a batch was written to it: it was ${at} bytes long when checked, ${end - data.length} when the batch's ${data.length} bytes went after it`;
  else if (before !== undefined && !lineBeforeThere(fd, before, at))
    moved = `the segment changed while a batch was written to it: the entry the batch follows, ending at byte ${at}, is not the one checked`;
  return { end, stat, moved };
}

/** A kept buffer for the line read back after each write (no allocation a batch). */
let readBack = Buffer.alloc(4096);

/** Whether the line ending at byte `at` is `before`: its bytes compared, else its hash. */
function lineBeforeThere(fd: number, before: LineBefore, at: number): boolean {
  const want = before.bytes;
  if (want === undefined) return lineStillThere(fd, '', { ...before, end: at });
  if (want.length > readBack.length) readBack = Buffer.alloc(want.length);
  const n = fs.readSync(fd, readBack, 0, want.length, at - want.length);
  // eslint-disable-next-line no-restricted-syntax -- a line of the log: public bytes.
  return n === want.length && readBack.subarray(0, n).equals(want);
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
    // By statx, as held() compares it: node:fs reads an inode past 2^63 as a negative bigint,
    // statx as a positive one (an overlay's lower layer with xino), and asks for the times.
    let st: FileIdentity | undefined;
    try {
      st = statWithoutTimes(fd);
      if (st === undefined) throw new Error('the segment has no identity');
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
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
