/**
 * The journal's file (journal.ts): its layout, and how a file found at its path is checked or
 * set aside. Shared by the writer that holds a journal and by the replay (journal-replay.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { KeywardError } from '../errors.js';
import { openOwnFile, problemOf } from '../lib/files.js';
import type { AuditRecord } from './events.js';
/** The header page. */
export const HEADER = 4096;
/** Room for entries after it: ~1,500 lines of the log between two fsyncs of the segment. */
export const JOURNAL_ROOM = 1 << 20;
export const SIZE = HEADER + JOURNAL_ROOM;
export const FILE_MAGIC = Buffer.from('KWJ1');
export const ENTRY_MAGIC = Buffer.from('KWJE');
/** magic 4, generation 8, counter 8, segment 4, offset 8, length 4, check 16. */
export const ENTRY_HEAD = 52;
export const IN_USE = 1;

export const journalPath = (dir: string): string => path.join(dir, 'journal');

/** Compares the journal's bytes: the log's lines and their framing, public as the segment is. */
// eslint-disable-next-line no-restricted-syntax -- public bytes, as said
export const same = (a: Buffer, b: Buffer): boolean => a.equals(b);

export const check = (head: Buffer, data: Buffer): Buffer =>
  createHash('sha256').update(head).update(data).digest().subarray(0, 16);

export interface Entry {
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
  /**
   * Set when what was found is a break of the log (audit.gap): a journal that held lines the
   * segment lacks and could not be put back, or the agent's journal replaced while it ran. The
   * writer sets it on its head: the agent locks, the CLI warns.
   */
  gap?: string;
}

/**
 * The journal, open and read-write; none when there is none. Anything but a regular file at its
 * path (a link, a FIFO) is moved aside, as a damaged journal is, and counts as none (`aside`
 * says so, for the log).
 */
export function openIfThere(file: string, dir: string): { fd?: number; aside?: Replayed } {
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

/**
 * Moves the file at the journal's path aside, never deleting it, and says so for the log.
 * asBreak: the journal held lines the segment lacks and could not be put back (the segment
 * contradicts it, is missing, or ends before it): a break of the log (audit.gap; the agent
 * locks), not a note (found in review: it was recorded as audit.recovered, and sealed over).
 */
export function setAside(file: string, dir: string, why: string, asBreak = false): Replayed {
  const name = `journal.damaged-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(3).toString('hex')}`;
  fs.renameSync(file, path.join(dir, name));
  const reason = `the journal was not replayed: ${why}; it is kept as ${name}`;
  return {
    restored: 0,
    ...(asBreak ? { gap: reason } : {}),
    record: {
      type: asBreak ? 'audit.gap' : 'audit.recovered',
      decision: asBreak ? 'error' : 'info',
      reason,
      details: asBreak ? { checkpoint: 'journal', journal: name } : { journal: name },
    },
  };
}

export function writeAll(fd: number, data: Buffer, at: number): void {
  let off = 0;
  while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off, at + off);
}
