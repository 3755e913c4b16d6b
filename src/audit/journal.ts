/**
 * The agent's journal (docs/AUDIT.md, "The journal"): where the agent makes a batch durable.
 *
 * An append that grows a file makes its fsync write the inode too (the size); the journal is a
 * file of fixed size, written over, so its fdatasync writes only the entry's blocks: a third
 * less time a batch here (docs/PERFORMANCE.md). The agent appends each batch's lines to the
 * segment as before, without an fsync, then writes the same bytes, with where they went, to the
 * journal and fdatasyncs it; only then is the batch durable and a secret released (rule 4).
 * The segment's bytes are in the page cache, which every reader sees and which a process's
 * death does not lose; a crash of the system may. The next writer to take the log's lock finds
 * the journal left in use and puts back from it what the segment lost (replay, below), and says
 * so in the log (`audit.recovered`).
 *
 * Layout: a header page ("KWJ1", a byte 1 while a writer has it in use, the writer's random
 * generation), then entries written one after another, wrapping to the first after the header
 * when the file is full (the segment is fsynced first, so no entry written over is needed). An
 * entry: "KWJE", the generation, a counter, the segment's number, the offset its bytes went to,
 * their length, the first 16 bytes of a SHA-256 of all that and the bytes (a torn entry, not
 * fdatasynced, never counts), then the bytes: lines of the log, public as the segment is.
 *
 * Only one writer journals: it holds an flock on the journal while it runs (the agent). Any
 * other writer that can take that flock knows no one journals now, and replays a journal left
 * in use.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { KeywardError } from '../errors.js';
import { fsyncDir, openOwnFile, problemOf } from '../lib/files.js';
import { flock, LOCK_EX, LOCK_NB, LOCK_UN, statWithoutTimes } from '../lib/libc.js';
import type { AuditRecord } from './events.js';

/** The header page. */
const HEADER = 4096;
/** Room for entries after it: ~1,500 lines of the log between two fsyncs of the segment. */
export const JOURNAL_ROOM = 1 << 20;
const SIZE = HEADER + JOURNAL_ROOM;
const FILE_MAGIC = Buffer.from('KWJ1');
const ENTRY_MAGIC = Buffer.from('KWJE');
/** magic 4, generation 8, counter 8, segment 4, offset 8, length 4, check 16. */
const ENTRY_HEAD = 52;
const IN_USE = 1;

export const journalPath = (dir: string): string => path.join(dir, 'journal');

/** Compares the journal's bytes: the log's lines and their framing, public as the segment is. */
// eslint-disable-next-line no-restricted-syntax -- public bytes, as said
const same = (a: Buffer, b: Buffer): boolean => a.equals(b);

const check = (head: Buffer, data: Buffer): Buffer =>
  createHash('sha256').update(head).update(data).digest().subarray(0, 16);

interface Entry {
  counter: bigint;
  segment: number;
  offset: number;
  data: Buffer;
}

/** What a replay did: bytes put back into the segment, or why it could not. */
export interface Replayed {
  record: AuditRecord;
  /** Bytes written into the segment (0 when it could not replay). */
  restored: number;
  /** Set when what was found is a break of the log (audit.gap): the agent then locks. */
  gap?: string;
}

/** The journal a writer holds: open, flocked, in use under its own generation. */
export class Journal {
  private pos = HEADER;
  private counter = 0n;
  private readonly gen = randomBytes(8);
  private readonly head = Buffer.alloc(ENTRY_HEAD);

  private constructor(
    private readonly file: string,
    private readonly fd: number,
    private readonly ino: bigint,
    private readonly dev: bigint,
  ) {}

  /**
   * Opens the journal of a log's directory for this writer, after replaying what a writer before
   * left in use into the current segment (`segment`, at `segmentPath`). Undefined when another
   * writer holds it. A file at the path that is not a journal of the right size is moved aside
   * (journal.damaged-TIME, never deleted) and a new one made.
   */
  static open(
    dir: string,
    segment: number,
    segmentPath: string,
    replay = true,
  ): { journal: Journal | undefined; replayed: Replayed | undefined } {
    const file = journalPath(dir);
    const found = openIfThere(file, dir);
    let replayed = found.aside;
    let fd = found.fd;
    if (fd !== undefined && !flock(fd, LOCK_EX | LOCK_NB)) {
      // Only the agent journals, and one agent runs for a home: a process that holds the
      // journal's lock as the agent begins is not keyward's. Its file is set aside and the
      // agent makes its own (found in review: the agent had gone on without a journal, and
      // without checking the path, for as long as it ran).
      fs.closeSync(fd);
      fd = undefined;
      replayed = setAside(file, dir, 'another process held its lock as the agent began');
    }
    if (fd !== undefined && !replay) {
      // Found in place of this writer's own journal as it ran: not its to replay.
      fs.closeSync(fd);
      fd = undefined;
      replayed = setAside(file, dir, 'another file took the journal’s place while the agent ran');
    }
    if (fd !== undefined) {
      const r = replayHeld(fd, file, dir, segment, segmentPath);
      replayed = r.replayed;
      if (r.movedAside) {
        fs.closeSync(fd);
        fd = undefined;
      }
    }
    if (fd === undefined) {
      fd = makeJournal(file, dir);
      // No room for a journal (a full disk, a quota), or its path taken as it was made: this
      // writer fsyncs the segment instead, as every other writer does, for as long as it runs.
      if (fd === undefined) return { journal: undefined, replayed };
    }
    const id = statWithoutTimes(fd);
    if (id === undefined) throw new Error('the journal vanished as it was opened');
    const j = new Journal(file, fd, id.ino, id.dev);
    j.markInUse(true);
    return { journal: j, replayed };
  }

  /** Whether the path still names this journal (no times asked: see statWithoutTimes). */
  still(): boolean {
    const now = statWithoutTimes(this.file);
    return (
      now !== undefined &&
      now.isFile &&
      now.nlink === 1 &&
      now.ino === this.ino &&
      now.dev === this.dev &&
      now.size === BigInt(SIZE)
    );
  }

  /**
   * Writes an entry for bytes appended to a segment at offset (not yet durable: the caller
   * fdatasyncs the descriptor). syncSegment: called first when the journal is full and wraps,
   * so that no entry written over was still needed.
   */
  write(segment: number, offset: number, data: Buffer, syncSegment: () => void): number {
    const room = ENTRY_HEAD + data.length;
    if (room > JOURNAL_ROOM) {
      // A batch larger than the journal: durable in the segment itself.
      syncSegment();
      return -1;
    }
    if (this.pos + room > SIZE) {
      syncSegment();
      this.pos = HEADER;
    }
    const h = this.head;
    ENTRY_MAGIC.copy(h, 0);
    this.gen.copy(h, 4);
    h.writeBigUInt64LE(this.counter, 12);
    h.writeUInt32LE(segment, 20);
    h.writeBigUInt64LE(BigInt(offset), 24);
    h.writeUInt32LE(data.length, 32);
    check(h.subarray(0, 36), data).copy(h, 36);
    // One system call for both (a short write, never seen on a local file, is finished after).
    const n = fs.writevSync(this.fd, [h, data], this.pos);
    if (n < room) writeAll(this.fd, Buffer.concat([h, data]).subarray(n), this.pos + n);
    this.pos += room;
    this.counter += 1n;
    return this.fd;
  }

  /**
   * The end of this writer's use (the agent's stop), after the caller fsynced the segment: the
   * journal is marked not in use, so the next writer has nothing to replay.
   */
  close(): void {
    try {
      this.markInUse(false);
    } finally {
      flock(this.fd, LOCK_UN);
      fs.closeSync(this.fd);
    }
  }

  private markInUse(inUse: boolean): void {
    const header = Buffer.alloc(16);
    FILE_MAGIC.copy(header, 0);
    header[4] = inUse ? IN_USE : 0;
    this.gen.copy(header, 8);
    writeAll(this.fd, header, 0);
    fs.fdatasyncSync(this.fd);
  }
}

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
      const header = Buffer.alloc(5);
      fs.readSync(fd, header, 0, 5, 0);
      header[4] = 0;
      writeAll(fd, header, 0);
      fs.fdatasyncSync(fd);
    }
    return r.replayed;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The journal, open and read-write; none when there is none. Anything but a regular file at its
 * path (a link, a FIFO) is moved aside, as a damaged journal is, and counts as none (`aside`
 * says so, for the log).
 */
function openIfThere(file: string, dir: string): { fd?: number; aside?: Replayed } {
  let fd: number;
  try {
    fd = openOwnFile(file, fs.constants.O_RDWR);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    // A link, a FIFO, a directory, a file it may not open (found in review: a directory there
    // stopped the agent's start): whatever it is, it is not a journal to use.
    const why =
      e instanceof KeywardError
        ? e.message
        : `it could not be opened (${(e as NodeJS.ErrnoException).code ?? 'error'})`;
    return { aside: setAside(file, dir, why) };
  }
  // Before a byte is read or written: the user's own file, private, of a journal's size, and
  // linked nowhere else (a hard link from outside the log's directory would have the agent
  // write the log's lines into that file: found in review).
  const st = fs.fstatSync(fd);
  const problem =
    problemOf(st, 'file') ??
    (st.nlink !== 1
      ? `it has ${st.nlink} names (a hard link)`
      : st.size !== SIZE
        ? `it is ${st.size} bytes, not ${SIZE}`
        : undefined);
  if (problem === undefined) return { fd };
  fs.closeSync(fd);
  return { aside: setAside(file, dir, problem) };
}

/** Moves the file at the journal's path aside, never deleting it, and says so for the log. */
function setAside(file: string, dir: string, why: string): Replayed {
  const name = `journal.damaged-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(3).toString('hex')}`;
  fs.renameSync(file, path.join(dir, name));
  return {
    restored: 0,
    record: {
      type: 'audit.recovered',
      decision: 'info',
      reason: `the journal was not replayed: ${why}; it is kept as ${name}`,
      details: { journal: name },
    },
  };
}

/**
 * Makes a journal: a new file (O_EXCL, never through a link) filled with zeros, fsynced, locked,
 * then renamed into place and the directory fsynced. The descriptor returned is that file's, kept
 * from its making: the path is never opened again (found in review: a reopen by path after the
 * rename could be raced by a hard link renamed over it, and the header written into a file
 * outside the log's directory). Undefined when it could not be made, or the path names another
 * file once it is in place (then never written to).
 */
function makeJournal(file: string, dir: string): number | undefined {
  const tmp = path.join(dir, `.journal.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  let fd: number;
  try {
    fd = fs.openSync(
      tmp,
      fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW,
      0o600,
    );
  } catch {
    return undefined;
  }
  try {
    // Zeros from one small buffer, written again and again: a buffer of the journal's size
    // stayed in the agent's memory until a collection.
    const zeros = Buffer.alloc(HEADER);
    for (let at = 0; at < SIZE; at += HEADER) writeAll(fd, zeros, at);
    fs.fsyncSync(fd);
    if (!flock(fd, LOCK_EX | LOCK_NB)) throw new Error('a new journal was locked by another');
    fs.renameSync(tmp, file);
    fsyncDir(dir);
  } catch {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    return undefined;
  }
  const mine = statWithoutTimes(fd);
  const named = statWithoutTimes(file);
  if (
    mine === undefined ||
    named === undefined ||
    named.ino !== mine.ino ||
    named.dev !== mine.dev ||
    named.nlink !== 1
  ) {
    fs.closeSync(fd);
    return undefined;
  }
  return fd;
}

function writeAll(fd: number, data: Buffer, at: number): void {
  let off = 0;
  while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off, at + off);
}

/**
 * Reads the journal held (flocked) at fd and, when a writer left it in use, puts back into the
 * segment what its entries hold and the segment lost. A journal that can't be read as one, or
 * whose entries disagree with the segment, is moved aside as evidence (never deleted).
 */
function replayHeld(
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
  // costs one small read.
  const header = Buffer.alloc(HEADER);
  const got = fs.readSync(fd, header, 0, HEADER, 0);
  if (got === HEADER && same(header.subarray(0, 4), FILE_MAGIC) && header[4] !== IN_USE)
    return notInUse;
  const buf = Buffer.alloc(SIZE);
  const n = readAll(fd, buf);
  if (n !== SIZE) return aside(`it is ${n} bytes, not ${SIZE}`);
  if (!same(buf.subarray(0, 4), FILE_MAGIC)) {
    // A journal made but never used is all zeros: nothing to replay.
    if (buf.subarray(0, HEADER).every((b) => b === 0)) return notInUse;
    return aside('its header is not a journal’s');
  }
  if (buf[4] !== IN_USE) return notInUse;
  const gen = buf.subarray(8, 16);
  const chain = chainOf(entriesOf(buf, gen), segment);
  if (chain.length === 0) return { replayed: undefined, inUse: true, movedAside: false };
  const put = putBack(segmentPath, chain);
  if (put.refused !== undefined) return aside(put.refused);
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
