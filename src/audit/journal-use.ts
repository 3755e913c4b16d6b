/**
 * A writer's use of the journal (journal.ts), for log.ts: the replay at its first batch, the
 * entry of each batch, and the end. Only a writer with AuditOptions.journal (the agent) holds
 * one; every other writer only replays one left in use.
 */
import fs from 'node:fs';
import { Journal, replayJournal, type Replayed } from './journal.js';
import type { SegmentFiles } from './segment-files.js';
import { unwritable } from './state.js';

export class JournalUse {
  /** The journal this writer holds, once its first batch opened it. */
  private journal: Journal | undefined;
  /** A journal no longer written (a write or sync of it failed), held until close(). */
  private retired: Journal | undefined;
  /** Whether this writer has looked for a journal to replay (once, at its first batch). */
  private seen = false;
  /** The journal was replaced under this writer: the next one it opens replays nothing. */
  private reopen = false;
  /** The segment this writer's journal has entries for, not yet fsynced. */
  private segment: number | undefined;
  /** The last lines a batch wrote, and where, not yet durable: what the journal's entry holds. */
  private lastWrite: { segment: number; offset: number; data: Buffer } | undefined;

  constructor(
    private readonly dir: string,
    private readonly files: SegmentFiles,
    private readonly journals: boolean,
  ) {}

  /**
   * At a writer's first batch, under the lock: replays a journal a writer before left in use,
   * and, for a journaling writer, opens its own. The record says what was put back. Counted as
   * done only once it succeeded: a replay that failed is tried again at the next batch, which
   * fails too until it succeeds (found in review: a failed one was never tried again).
   */
  replayOnce(segment: number, segmentPath: string): Replayed | undefined {
    if (this.seen) return undefined;
    if (!this.journals) {
      const r = replayJournal(this.dir, segment, segmentPath);
      this.seen = true;
      return r;
    }
    const { journal, replayed } = Journal.open(this.dir, segment, segmentPath, !this.reopen);
    this.seen = true;
    this.journal = journal;
    if (!this.reopen) return replayed;
    this.reopen = false;
    const kept = replayed?.record.details?.['journal'];
    const reason = `the audit journal was removed or replaced while the agent ran${typeof kept === 'string' ? ` (what took its place is kept as ${kept})` : ''}`;
    return {
      restored: 0,
      gap: reason,
      record: {
        type: 'audit.gap',
        decision: 'error',
        reason,
        details: { checkpoint: 'journal', ...(typeof kept === 'string' ? { journal: kept } : {}) },
      },
    };
  }

  /**
   * A batch begins: nothing of it is written yet. Lines a batch before wrote to the segment and
   * never journaled (it failed between the two) are fsynced in the segment first: the journal's
   * chain of entries has a hole there, and no replay would reach past it (found in review).
   */
  begin(): void {
    const w = this.lastWrite;
    this.lastWrite = undefined;
    if (w !== undefined && this.journal !== undefined) this.files.sync(w.segment);
  }

  /** A batch's lines went to the segment at offset, not yet durable. */
  wrote(segment: number, offset: number, data: Buffer): void {
    this.lastWrite = { segment, offset, data };
  }

  /**
   * Makes the batch just written durable: through the journal (an fdatasync of a file that does
   * not grow), or else by the segment's own fsync. blocking: on this thread, not the pool's.
   * Returns a break to record (the journal removed or replaced under the writer): the caller
   * sets it on the head, so the agent locks before any waiter of this batch goes on.
   */
  async durable(segment: number, blocking: boolean): Promise<string | undefined> {
    const journal = this.entry();
    if (typeof journal === 'object') return journal.gap;
    try {
      if (blocking) {
        if (journal === undefined) this.files.sync(segment);
        else fs.fdatasyncSync(journal);
        return undefined;
      }
      // fsync flushes the file, whichever descriptor asks: one trip to the thread pool.
      const { fd, own } =
        journal === undefined ? this.files.syncTarget(segment) : { fd: journal, own: false };
      try {
        await new Promise<void>((resolve, reject) =>
          (journal === undefined ? fs.fsync : fs.fdatasync)(fd, (e) => (e ? reject(e) : resolve())),
        );
      } finally {
        if (own) fs.closeSync(fd);
      }
      return undefined;
    } catch (e) {
      // A failed fdatasync may leave the journal's page marked clean and not on the disk: this
      // writer stops journaling (its batches fsync the segment from now on).
      if (journal !== undefined) this.stopJournaling();
      throw unwritable(e);
    }
  }

  /**
   * Writes the batch's lines (lastWrite) to the journal, when this writer holds one: returns the
   * descriptor to fdatasync; `durable` when the segment was fsynced instead (a batch too large
   * for the journal, or the journal removed or replaced under the writer: then with the break
   * as `gap`); undefined without a journal.
   */
  private entry(): number | { durable: true; gap?: string } | undefined {
    const w = this.lastWrite;
    this.lastWrite = undefined;
    const j = this.journal;
    if (j === undefined || w === undefined) return undefined;
    try {
      if (!j.still()) {
        // No one but this writer touches its journal while it runs. Another file at its path
        // (or none) is a break of the log: another writer could have replayed that file and
        // undone a cut this writer would have found (found in review). This batch is made
        // durable in the segment, and is a break: the agent locks before any of its waiters
        // goes on. The next batch sets aside what is at the path, records the break, and makes
        // a new journal.
        this.files.sync(w.segment);
        this.segment = undefined;
        this.journal = undefined;
        this.seen = false;
        this.reopen = true;
        j.close();
        return {
          durable: true,
          gap: 'the audit journal was removed or replaced while the agent ran',
        };
      }
      // A journal full wraps, and a batch larger than it is not journaled: the segment's entries
      // there were needed only until the segment is fsynced, which is done first.
      const fd = j.write(w.segment, w.offset, w.data, () => this.files.sync(w.segment));
      if (fd === undefined) return { durable: true };
      this.segment = w.segment;
      return fd;
    } catch (e) {
      // The entry may be half written: the batch is made durable in the segment if it can be,
      // and this writer stops journaling.
      this.stopJournaling(w.segment);
      throw unwritable(e);
    }
  }

  /**
   * After a journal's write or sync failed: the segment fsynced, the journal no longer written.
   * It stays open and locked, in use as it is (no other writer replays it while this one runs),
   * and close() ends it as it ends one in use.
   */
  private stopJournaling(segment = this.segment): void {
    this.retired ??= this.journal;
    this.journal = undefined;
    try {
      if (segment !== undefined) this.files.sync(segment);
    } catch {
      // The segment's own fsync failing too: the batch fails, as any failed append does.
    }
  }

  /**
   * The writer's end (agent stop): the segment durable first; only then is the journal not
   * needed, and marked so. If the fsync fails, the journal stays in use, for the next writer to
   * replay. Call before the segment is closed.
   */
  close(): void {
    const j = this.journal ?? this.retired;
    this.journal = undefined;
    this.retired = undefined;
    if (j === undefined) return;
    let synced = false;
    try {
      if (this.segment !== undefined) this.files.sync(this.segment);
      synced = true;
    } catch {
      // Left in use, unmarked: the next writer replays it.
    }
    if (!synced) {
      j.abandon();
      return;
    }
    try {
      j.close();
    } catch {
      // Its mark not written: left in use, and the next writer finds nothing to put back.
    }
  }
}
