/**
 * The agent's journal (docs/AUDIT.md, "The journal"): where the agent makes a batch durable.
 *
 * An append that grows a file makes its fsync write the inode too (the size); the journal is a
 * file of fixed size, written over, so its fdatasync writes only the entry's blocks: a fifth to
 * two fifths more batches a second here (docs/PERFORMANCE.md). The agent appends each batch's lines to the
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
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDir } from '../lib/files.js';
import {
  flock,
  LOCK_EX,
  LOCK_NB,
  LOCK_UN,
  renameNoReplace,
  statWithoutTimes,
} from '../lib/libc.js';
import {
  check,
  ENTRY_HEAD,
  ENTRY_MAGIC,
  FILE_MAGIC,
  HEADER,
  IN_USE,
  JOURNAL_ROOM,
  journalPath,
  openIfThere,
  setAside,
  SIZE,
  writeAll,
  type Replayed,
} from './journal-file.js';
import { replayHeld } from './journal-replay.js';

export { JOURNAL_ROOM, journalPath, type Replayed } from './journal-file.js';
export { replayJournal } from './journal-replay.js';

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
      let r: ReturnType<typeof replayHeld>;
      try {
        r = replayHeld(fd, file, dir, segment, segmentPath);
      } catch (e) {
        // Its lock let go with it: the next batch tries again (found in review: a failed
        // replay had kept the lock, and no writer could replay it while this one ran).
        fs.closeSync(fd);
        throw e;
      }
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
    try {
      const id = statWithoutTimes(fd);
      if (id === undefined) throw new Error('the journal vanished as it was opened');
      const j = new Journal(file, fd, id.ino, id.dev);
      if (!j.still()) {
        // The path names another file (or this one under two names) once it is in place: never
        // written to; this writer fsyncs the segment instead, for as long as it runs.
        fs.closeSync(fd);
        return { journal: undefined, replayed };
      }
      j.markInUse(true);
      return { journal: j, replayed };
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
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
  write(
    segment: number,
    offset: number,
    data: Buffer,
    syncSegment: () => void,
  ): number | undefined {
    const room = ENTRY_HEAD + data.length;
    if (room > JOURNAL_ROOM) {
      // A batch larger than the journal: durable in the segment itself (undefined says so).
      syncSegment();
      return undefined;
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

  /** Gives the journal up without marking it (a write or sync of it failed): left in use. */
  abandon(): void {
    flock(this.fd, LOCK_UN);
    fs.closeSync(this.fd);
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
 * Makes a journal: a new file (O_EXCL, never through a link) filled with zeros, fsynced, locked,
 * then renamed into place and the directory fsynced. The descriptor returned is that file's, kept
 * from its making: the path is never opened again (found in review: a reopen by path after the
 * rename could be raced by a hard link renamed over it, and the header written into a file
 * outside the log's directory). Undefined when it could not be made; whether the path still
 * names it once it is in place, Journal.open asks (still()) before a byte is written.
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
    // Never over a file that appeared at the path since it was set aside or found missing: that
    // file is kept, and this writer goes on without a journal (found in review).
    renameNoReplace(tmp, file);
    fsyncDir(dir);
  } catch {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    return undefined;
  }
  return fd;
}
