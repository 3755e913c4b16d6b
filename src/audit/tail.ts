/**
 * Reading an audit segment from its end (the last line, to chain to) and its start (the first
 * entry's time, for rotation by age), without reading the whole file; and the two repairs and
 * checks a writer makes at the end: cutting a torn line, and finding its own last line again.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { AuditRecord } from './events.js';
import { sha256 } from './keys.js';
import { lineHash, parseLine, ZERO_HASH } from './entry.js';
import { segmentName, unavailable } from './state.js';
import { openOwnFile } from '../lib/files.js';
import { listSegments } from './verify.js';

const TAIL_WINDOW = 256 * 1024;
/** Longer than any entry a writer makes (its details are bounded): a walk carries no more. */
export const MAX_LINE_BYTES = 1024 * 1024;

export interface Tail {
  size: number;
  lastLine: string | undefined;
  tornBytes: number;
  /** The last line's bytes with its newline, when this writer wrote it (kept, not read). */
  lastBytes?: Buffer;
}

/**
 * The segment's size, its last complete line, and the bytes after it (a torn write). Reads a
 * small window from the end and widens it only while the last line doesn't fit (up to
 * TAIL_WINDOW): an append costs a few KB of reading, not the window.
 */
export function readTail(file: string): Tail {
  let fd: number;
  try {
    fd = openOwnFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      return { size: 0, lastLine: undefined, tornBytes: 0 };
    throw e;
  }
  try {
    const size = fs.fstatSync(fd).size;
    for (let want = 8 * 1024; ; want *= 2) {
      const len = Math.min(size, want, TAIL_WINDOW);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      const whole = len === size;
      const last = len === Math.min(size, TAIL_WINDOW);
      const lastNl = buf.lastIndexOf(0x0a);
      if (lastNl === -1) {
        if (!last) continue;
        // A file whose last TAIL_WINDOW bytes hold no line end is no log a writer can chain to
        // (an entry is far shorter): never taken for an empty segment, where a new chain would
        // begin apart.
        if (!whole)
          throw unavailable(
            `the last ${TAIL_WINDOW / 1024} KiB of ${file.split('/').at(-1) ?? file} hold no line end: bytes were put after its entries`,
            'nothing was written; run: keyward audit verify',
          );
        return { size, lastLine: undefined, tornBytes: size };
      }
      const prevNl = lastNl === 0 ? -1 : buf.lastIndexOf(0x0a, lastNl - 1);
      // The line before the last one must start inside the window (or the file must start there).
      if (prevNl === -1 && !whole && !last) continue;
      const tornBytes = len - lastNl - 1;
      return { size, lastLine: buf.subarray(prevNl + 1, lastNl).toString('utf8'), tornBytes };
    }
  } finally {
    fs.closeSync(fd);
  }
}

export function firstLineTime(file: string): number | undefined {
  try {
    const fd = openOwnFile(file);
    try {
      const buf = Buffer.alloc(4096);
      const n = fs.readSync(fd, buf, 0, buf.length, 0);
      const m = /"time":"([^"]+)"/.exec(buf.subarray(0, n).toString('utf8'));
      return m?.[1] === undefined ? undefined : Date.parse(m[1]);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

/**
 * Cuts the torn bytes after a segment's last complete line (a writer died mid-line), fsynced, and
 * returns the record that says so in the log itself: never silently.
 */
export function cutTorn(file: string, tail: Tail, segment: string): AuditRecord {
  const fd = openOwnFile(file, fs.constants.O_RDWR);
  try {
    const cut = Buffer.alloc(tail.tornBytes);
    fs.readSync(fd, cut, 0, cut.length, tail.size - tail.tornBytes);
    fs.ftruncateSync(fd, tail.size - tail.tornBytes);
    fs.fsyncSync(fd);
    return {
      type: 'audit.recovered',
      decision: 'info',
      reason: 'a torn last entry was cut at start-up',
      details: { segment, cutBytes: cut.length, cutSha256: sha256(cut).toString('hex') },
    };
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads len bytes at pos into the start of buf (fewer only at the file's end); how many. */
function readSyncFully(fd: number, buf: Buffer, len: number, pos: number): number {
  let got = 0;
  while (got < len) {
    const n = fs.readSync(fd, buf, got, len - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/**
 * The walk under scanBackFor and scanBackLines: the file read from its end in chunks of 1 MiB into
 * one buffer (the log's own bytes, public), each chunk's whole lines handed to `lines` (a view,
 * valid only during the call; the last line's newline optional) until it returns true.
 */
function walkBack(file: string, lines: (whole: Buffer) => boolean): boolean {
  let fd: number;
  try {
    fd = openOwnFile(file);
  } catch {
    return false;
  }
  try {
    let end = fs.fstatSync(fd).size;
    const CHUNK = 1024 * 1024;
    // A chunk, then the start of the line the chunk after it began with (`carry` bytes), moved
    // up behind it before each read.
    let buf = Buffer.allocUnsafe(Math.min(end, 2 * CHUNK));
    let carry = 0;
    while (end > 0) {
      // A run longer than any line (bytes someone put there): the walk ends, as at the start of
      // the file, instead of carrying it whole from chunk to chunk.
      if (carry > MAX_LINE_BYTES) return false;
      const start = Math.max(0, end - CHUNK);
      const len = end - start;
      if (buf.length < len + carry) {
        const bigger = Buffer.allocUnsafe(len + carry);
        buf.copy(bigger, len, 0, carry);
        buf = bigger;
      } else buf.copy(buf, len, 0, carry);
      // The file shrank under the walk: nothing more to see.
      if (readSyncFully(fd, buf, len, start) < len) return false;
      const here = buf.subarray(0, len + carry);
      if (start === 0) return lines(here);
      // The chunk's first line may have begun before it: it waits for the next read.
      const first = here.indexOf(0x0a);
      if (first >= 0 && lines(here.subarray(first + 1))) return true;
      carry = first >= 0 ? first + 1 : len + carry;
      end = start;
    }
    return false;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Calls visit with the lines of file that contain `needle` (which holds no newline), found
 * natively in each chunk: a line without it is never made a string (a walk through a whole log for
 * its rare `audit.*` entries).
 */
export function scanBackFor(
  file: string,
  needle: Uint8Array,
  visit: (line: string) => boolean,
): boolean {
  return walkBack(file, (lines) => {
    for (let at = lines.lastIndexOf(needle); at >= 0;) {
      const start = lines.lastIndexOf(0x0a, at) + 1;
      const nl = lines.indexOf(0x0a, at);
      if (visit(lines.toString('utf8', start, nl < 0 ? lines.length : nl))) return true;
      at = start === 0 ? -1 : lines.lastIndexOf(needle, start - 1);
    }
    return false;
  });
}

/**
 * Calls visit with each non-empty line of file, last first, until it returns true: as a view of the walk's buffer
 * (without its newline), valid only during the call. No line is made a string. With
 * `wholeOnly`, bytes after the file's last line end (a torn write) are no line.
 */
export function scanBackLines(
  file: string,
  visit: (line: Buffer) => boolean,
  wholeOnly = false,
): boolean {
  // The walk's first buffer ends where the file does.
  let atEnd = true;
  return walkBack(file, (lines) => {
    let end = lines.length;
    // A last line with its newline: the newline is not a line's start.
    if (end > 0 && lines[end - 1] === 0x0a) end -= 1;
    else if (atEnd && wholeOnly) end = lines.lastIndexOf(0x0a);
    atEnd = false;
    while (end >= 0) {
      const start = end === 0 ? 0 : lines.lastIndexOf(0x0a, end - 1) + 1;
      if (end > start && visit(lines.subarray(start, end))) return true;
      if (start === 0) break;
      end = start - 1;
    }
    return false;
  });
}

/**
 * Whether the line a writer wrote (its hash, where it ended and its length) is still in its
 * segment: read through the descriptor the writer holds when the path still names its file
 * (`held`), else through the file the path names now.
 */
export function lineStillThere(
  held: number | undefined,
  file: string,
  h: { hash: string; end?: number | undefined; length?: number | undefined },
): boolean {
  if (h.end === undefined || h.length === undefined) return true;
  let fd: number;
  try {
    fd = held ?? openOwnFile(file);
  } catch {
    return false;
  }
  try {
    const buf = Buffer.alloc(h.length);
    const n = fs.readSync(fd, buf, 0, h.length, h.end - h.length);
    if (n !== h.length || buf[h.length - 1] !== 0x0a) return false;
    return lineHash(buf.subarray(0, h.length - 1)) === h.hash;
  } finally {
    if (held === undefined) fs.closeSync(fd);
  }
}

/**
 * A segment's last entry (seq, hash) and its tail. An empty (or missing) segment is the one a
 * rotation just began: it takes the entry before it, which must be the rotation entry that ends
 * the segment before. Anything else (a state file that names a segment no rotation began) is
 * refused: what a writer put there would chain past entries no reader lists.
 */
export function headOfSegment(
  pathOf: (segment: number) => string,
  segment: number,
): { head: { seq: number; hash: string; segment: number }; tail: Tail } {
  const tail = readTail(pathOf(segment));
  const last = (t: Tail, n: number) => {
    const p = t.lastLine === undefined ? undefined : parseLine(t.lastLine);
    if (!p)
      throw unavailable(
        `the last entry of ${segmentName(n)} is malformed, so nothing can be chained to it`,
        'run: keyward audit verify',
      );
    return p;
  };
  if (tail.lastLine !== undefined) {
    const p = last(tail, segment);
    return { head: { seq: p.seq, hash: p.hash, segment }, tail };
  }
  // Segments begin at 1, and an empty first one is a new log only when it is the only one.
  if (segment < 1)
    throw unavailable(
      `the audit state names segment ${segment}; segments begin at 1: the state file was changed`,
      'nothing was written; run: keyward audit verify',
    );
  if (segment === 1) {
    if (listSegments(path.dirname(pathOf(1))).some((f) => path.basename(f) !== segmentName(1)))
      throw unavailable(
        `the audit state names ${segmentName(1)}, which is empty, but the log has other segments: the state file was changed`,
        'nothing was written; run: keyward audit verify',
      );
    return { head: { seq: 0, hash: ZERO_HASH, segment }, tail };
  }
  const before = readTail(pathOf(segment - 1));
  const p = before.lastLine === undefined ? undefined : last(before, segment - 1);
  if (p?.type !== 'audit.rotated')
    throw unavailable(
      `the audit state names ${segmentName(segment)}, but ${segmentName(segment - 1)} does not end with the rotation that would begin it`,
      'nothing was written; run: keyward audit verify',
    );
  return { head: { seq: p.seq, hash: p.hash, segment }, tail };
}
