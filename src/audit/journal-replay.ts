/**
 * Replaying a journal a writer left in use (journal.ts, docs/AUDIT.md "The journal"): the
 * entries that chain to the last one written, checked against the segment, then written where
 * it lacks them.
 */
import fs from 'node:fs';
import path from 'node:path';
import { openOwnFile } from '../lib/files.js';
import { flock, LOCK_EX, LOCK_NB } from '../lib/libc.js';
import {
  check,
  ENTRY_HEAD,
  ENTRY_MAGIC,
  FILE_MAGIC,
  HEADER,
  IN_USE,
  journalPath,
  openIfThere,
  same,
  setAside,
  SIZE,
  writeAll,
  type Entry,
  type Replayed,
} from './journal-file.js';

/**
 * For a writer that does not journal: replays a journal left in use by a writer that is gone (no
 * one holds its flock), into the current segment, and marks it not in use. Undefined when there
 * is no journal, someone holds it, or nothing was left in use.
 */
export function replayJournal(
  dir: string,
  segment: number,
  segmentPath: string,
): Replayed | undefined {
  const file = journalPath(dir);
  const { fd, aside } = openIfThere(file, dir);
  if (fd === undefined) return aside;
  try {
    if (!flock(fd, LOCK_EX | LOCK_NB)) return undefined;
    const r = replayHeld(fd, file, dir, segment, segmentPath);
    if (!r.movedAside && r.inUse) {
      // Not in use any more: the header's one byte that says so.
      writeAll(fd, Buffer.from([0]), 4);
      fs.fdatasyncSync(fd);
    }
    return r.replayed;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Reads the journal held (flocked) at fd and, when a writer left it in use, puts back into the
 * segment what its entries hold and the segment lost. A journal that can't be read as one, or
 * whose entries disagree with the segment, is moved aside as evidence (never deleted).
 */
export function replayHeld(
  fd: number,
  file: string,
  dir: string,
  segment: number,
  segmentPath: string,
): { replayed: Replayed | undefined; inUse: boolean; movedAside: boolean } {
  const aside = (why: string) => ({
    replayed: setAside(file, dir, why),
    inUse: false,
    movedAside: true,
  });
  const notInUse = { replayed: undefined, inUse: false, movedAside: false };
  // The header first: a journal not in use (the usual case for a writer that doesn't journal)
  // costs one small read; the entries are read only when it is in use.
  const header = Buffer.alloc(HEADER);
  const got = fs.readSync(fd, header, 0, HEADER, 0);
  if (got !== HEADER) return aside(`it is shorter than its header`);
  if (!same(header.subarray(0, 4), FILE_MAGIC)) {
    // A journal made but never used is all zeros: nothing to replay.
    if (header.every((b) => b === 0)) return notInUse;
    return aside('its header is not a journal’s');
  }
  if (header[4] !== IN_USE) return notInUse;
  const buf = Buffer.alloc(SIZE);
  const n = readAll(fd, buf);
  if (n !== SIZE) return aside(`it is ${n} bytes, not ${SIZE}`);
  const gen = header.subarray(8, 16);
  const chain = chainOf(entriesOf(buf, gen), segment);
  if (chain.length === 0) return { replayed: undefined, inUse: true, movedAside: false };
  const put = putBack(segmentPath, chain);
  if (put.refused !== undefined)
    return { replayed: setAside(file, dir, put.refused, true), inUse: false, movedAside: true };
  if (put.restored === 0) return { replayed: undefined, inUse: true, movedAside: false };
  const name = path.basename(segmentPath);
  return {
    replayed: {
      restored: put.restored,
      record: {
        type: 'audit.recovered',
        decision: 'info',
        reason:
          'lines the segment lacked (after a crash of the system, or a cut of the segment) were put back from the journal a writer left in use',
        details: { segment: name, fromOffset: put.from ?? 0, restoredBytes: put.restored },
      },
    },
    inUse: true,
    movedAside: false,
  };
}

function readAll(fd: number, buf: Buffer): number {
  let got = 0;
  for (;;) {
    const n = fs.readSync(fd, buf, got, buf.length - got, got);
    if (n === 0) break;
    got += n;
    if (got === buf.length) {
      // One byte more means the file is larger than a journal.
      const extra = Buffer.alloc(1);
      return fs.readSync(fd, extra, 0, 1, got) === 0 ? got : got + 1;
    }
  }
  return got;
}

/** Every whole entry of this generation, wherever it lies (a wrap leaves older ones behind). */
function entriesOf(buf: Buffer, gen: Buffer): Entry[] {
  const out: Entry[] = [];
  let at = buf.indexOf(ENTRY_MAGIC, HEADER);
  while (at >= 0 && at + ENTRY_HEAD <= buf.length) {
    const len = buf.readUInt32LE(at + 32);
    const end = at + ENTRY_HEAD + len;
    const whole =
      end <= buf.length &&
      same(buf.subarray(at + 4, at + 12), gen) &&
      same(
        check(buf.subarray(at, at + 36), buf.subarray(at + ENTRY_HEAD, end)),
        buf.subarray(at + 36, at + ENTRY_HEAD),
      );
    if (whole) {
      out.push({
        counter: buf.readBigUInt64LE(at + 12),
        segment: buf.readUInt32LE(at + 20),
        offset: Number(buf.readBigUInt64LE(at + 24)),
        data: Buffer.from(buf.subarray(at + ENTRY_HEAD, end)),
      });
    }
    at = buf.indexOf(ENTRY_MAGIC, whole ? end : at + 1);
  }
  return out;
}

/**
 * The entries of the segment that lead, each ending where the next begins, to the last one
 * written: what the writer's segment held. An entry left behind by a cut the writer recorded
 * (the log cut under it, its next lines written at the cut) is not on the way, and is skipped.
 */
function chainOf(entries: Entry[], segment: number): Entry[] {
  const mine = entries.filter((e) => e.segment === segment);
  mine.sort((a, b) => (a.counter < b.counter ? 1 : a.counter > b.counter ? -1 : 0));
  const last = mine[0];
  if (last === undefined) return [];
  const chain = [last];
  let start = last.offset;
  for (const e of mine.slice(1)) {
    if (e.offset + e.data.length !== start) continue;
    chain.unshift(e);
    start = e.offset;
  }
  return chain;
}

/**
 * Writes the chain's bytes where the segment lacks them: past its end, or where it holds zeros
 * (blocks a crash left unwritten). A byte that differs and is not zero is not a crash's doing:
 * nothing more is written, and the caller keeps the journal aside.
 */
function putBack(
  segmentPath: string,
  chain: Entry[],
): { restored: number; from?: number; refused?: string } {
  let fd: number;
  try {
    fd = openOwnFile(segmentPath, fs.constants.O_RDWR);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      return { restored: 0, refused: `${path.basename(segmentPath)} is missing` };
    throw e;
  }
  try {
    const size = fs.fstatSync(fd).size;
    const first = chain[0] as Entry;
    if (first.offset > size)
      return {
        restored: 0,
        refused: `${path.basename(segmentPath)} ends at ${size}, before the journal's first entry (${first.offset})`,
      };
    // Every entry checked before any is written (found in review: a refusal after some were
    // written left them there, unsynced, under a record that said nothing was put back).
    const writes: Entry[] = [];
    for (const e of chain) {
      const have = Buffer.alloc(Math.max(0, Math.min(e.data.length, size - e.offset)));
      if (have.length > 0) fs.readSync(fd, have, 0, have.length, e.offset);
      let differs = have.length < e.data.length;
      for (let i = 0; i < have.length; i++) {
        if (have[i] === e.data[i]) continue;
        if (have[i] !== 0)
          return {
            restored: 0,
            refused: `${path.basename(segmentPath)} holds other bytes than the journal at offset ${e.offset + i}`,
          };
        differs = true;
      }
      if (differs) writes.push(e);
    }
    let restored = 0;
    for (const e of writes) {
      writeAll(fd, e.data, e.offset);
      restored += e.data.length;
    }
    const from = writes[0]?.offset;
    // Whatever was put back, the segment is made durable now: the entries are dropped after this
    // (a new generation, or the journal marked not in use), and they may have been all that held
    // lines the page cache has and the disk not yet (a writer killed, the system up).
    fs.fsyncSync(fd);
    return { restored, ...(from === undefined ? {} : { from }) };
  } finally {
    fs.closeSync(fd);
  }
}
