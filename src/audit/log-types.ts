/** The audit writer's options, and what it knows between appends and when it may trust it (log.ts). */
import fs from 'node:fs';
import { IntegrityError } from '../errors.js';
import type { FileIdentity } from '../lib/libc.js';
import { parseLine } from './entry.js';
import type { ShippedEntry } from './ship.js';
import { segmentStamp, stampFrom } from './segment-files.js';
import type { AuditState, HeldState } from './state.js';
import type { Tail } from './tail.js';
import { gapRecord } from './checkpoint.js';
import type { AuditRecord } from './events.js';
import type { Checkpoint } from './verify.js';

export interface AuditOptions {
  /** Rotate a segment past this size (default 16 MiB). */
  segmentMaxBytes?: number;
  /** Rotate a segment whose first entry is older than this (default 30 days). */
  segmentMaxAgeMs?: number;
  /** Advance the epoch key at least this often (default 1 hour). */
  epochMs?: number;
  now?: () => Date;
  /**
   * A long-running writer (the agent): keeps the state (the epoch key in secure memory) and the
   * current segment open between appends, and trusts them only while the files' stamps say no
   * one else changed them, checked under the lock each time. close() wipes and closes them.
   */
  keep?: boolean;
  /**
   * Make batches durable through the journal (journal.ts) rather than an fsync of the segment:
   * for the agent alone, the one writer that holds the journal while it runs.
   */
  journal?: boolean;
  /**
   * How long an entry's copy may wait for room in the system log's queue when shipping is on
   * (default 0: not at all). The agent's waits: it locks when a copy is still not taken.
   */
  shipWaitMs?: number;
}

export const DEFAULTS = {
  keep: false,
  journal: false,
  shipWaitMs: 0,
  segmentMaxBytes: 16 * 1024 * 1024,
  segmentMaxAgeMs: 30 * 24 * 3600 * 1000,
  epochMs: 3600 * 1000,
};
export const LOCK_TIMEOUT_MS = 10_000;

export interface Head {
  seq: number;
  hash: string;
  segment: number;
  /** Where the last line ends in its segment, and its length with the newline (when written). */
  end?: number;
  length?: number;
  /** Set when this append found the log cut behind the writer and recorded it (audit.gap). */
  gap?: string;
  /** Set when another process changed the segment while this append wrote to it (appendAt). */
  moved?: string;
  /** Set when a write with `follows` wrote only what it found first (writtenAlone). */
  alone?: true;
  /** What this append wrote, as the system log gets it (ship.ts). */
  written?: ShippedEntry[];
}

/** A segment's identity (no times) taken under the lock, to be used again in the same append. */
export interface SegmentSeen {
  segment: number;
  stat: FileIdentity | undefined;
}

/**
 * A writer's knowledge of the log: the state (epoch key included, in secure memory) and its
 * segment's head, each with the stamp of the file it came from. Used only under the lock and only
 * while the file's stamp is unchanged: anything another writer does to a file through write(2)
 * or rename changes its stamp, and the file is read again, exactly as without this. A write
 * through a shared mapping may change no stamp: the state's bytes are compared at every batch
 * through a descriptor held on the file (HeldState), and the segment's last line is read back
 * (tail.ts, lineStillThere).
 */
export interface Known {
  st: AuditState;
  /** The state file st was read from, held: its stamp and bytes checked at each batch. */
  held: HeldState;
  seg?: {
    segment: number;
    stamp: string;
    head: Head;
    tail: Tail;
    /** The type of the last line (this writer's): not parsed again at the next append. */
    lastType: string;
    first: { time: number | undefined } | undefined;
  };
}

export function stampOf(file: string): string | undefined {
  const s = fs.lstatSync(file, { bigint: true, throwIfNoEntry: false });
  return s === undefined ? undefined : stampFrom(s);
}

/** A segment's head, and whether it came from what the writer knew (`seen`) or from the file. */
export interface KnownHead {
  head: Head;
  tail: Tail;
  lastType: string | undefined;
  first: { time: number | undefined } | undefined;
  /** The segment's identity, when it showed the file as this writer left it. */
  seen?: FileIdentity;
}

/**
 * The segment's head as this writer left it (`seg`), when the segment's stamp says no one has
 * written to it, cut it or replaced it since; else read from the file. given: a statx of the
 * segment already taken under the same lock.
 */
export function knownHead(
  seg: Known['seg'],
  segment: number,
  given: SegmentSeen | undefined,
  statOf: (segment: number) => FileIdentity | undefined,
  read: (segment: number) => { head: Head; tail: Tail },
): KnownHead {
  const seen =
    seg?.segment === segment
      ? given?.segment === segment && given.stat !== undefined
        ? given.stat
        : statOf(segment)
      : undefined;
  if (seg && seen && seg.stamp === segmentStamp(seen))
    return {
      head: { ...seg.head },
      tail: { ...seg.tail },
      lastType: seg.lastType,
      first: seg.first,
      seen,
    };
  const r = read(segment);
  const lastType = r.tail.lastLine === undefined ? undefined : parseLine(r.tail.lastLine)?.type;
  return { ...r, lastType, first: undefined };
}

/**
 * The line a batch follows, as appendAt checks it after the write: the head's own line, with its
 * length (a head just written), or the tail's last line, which is the head's (a head read back).
 */
export function lastLineOf(head: Head, tail?: Tail): LineBefore | undefined {
  if (tail?.lastBytes !== undefined)
    return { hash: head.hash, length: tail.lastBytes.length, bytes: tail.lastBytes };
  if (tail !== undefined)
    return tail.lastLine === undefined
      ? undefined
      : { hash: head.hash, length: Buffer.byteLength(tail.lastLine) + 1 };
  return head.length === undefined ? undefined : { hash: head.hash, length: head.length };
}

/** The line a batch follows: its hash and length, and its bytes when the writer wrote it. */
export interface LineBefore {
  hash: string;
  length: number;
  bytes?: Buffer;
}

/**
 * The record of a segment changed between a writer's checks and its write (appendAt): the
 * entry its batch was built on is the last one the writer saw, whatever is before it now.
 */
export function movedRecord(built: Head, reason: string, by: string): AuditRecord {
  const at = { seq: built.seq, hash: built.hash };
  return gapRecord({ checkpoint: { ...at, where: 'agent' }, found: at, kind: 'cut', reason }, by);
}

/** A batch that must follow the entry `follows` (AuditLog.append) finds the log's head is it. */
export function checkFollows(head: Head, follows: Checkpoint | undefined): void {
  if (follows !== undefined && (head.seq !== follows.seq || head.hash !== follows.hash))
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `nothing written: the log's last entry is seq ${head.seq}, not the one checked (seq ${follows.seq}): it changed meanwhile`,
      { hint: 'keep a copy of the log as evidence; run keyward audit verify' },
    );
}

/**
 * Why nothing of a caller's that names the entry it `follows` was written: the write found the
 * log changed first (a break, or lines put back from the journal) and recorded that alone.
 */
export function writtenAlone(head: Head): IntegrityError {
  return new IntegrityError(
    'AUDIT_CHAIN_BROKEN',
    `nothing written: the log changed since it was checked (${head.gap ?? 'lines put back from the journal, or set aside'}); that is recorded, to seq ${head.seq}`,
    { hint: 'run keyward audit verify again and look at what it reports' },
  );
}

/** The tail of a segment of `size` bytes that ends in `line` (with its newline), just written. */
export function tailEndingIn(size: number, line: Buffer): Tail {
  const lastLine = line.toString('utf8', 0, line.length - 1);
  return { size, lastLine, tornBytes: 0, lastBytes: line };
}
