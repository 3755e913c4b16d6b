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
   * and, for a journaling writer, opens its own. The record says what was put back.
   */
  replayOnce(segment: number, segmentPath: string): Replayed | undefined {
    if (this.seen) return undefined;
    this.seen = true;
    if (!this.journals) return replayJournal(this.dir, segment, segmentPath);
    const reopen = this.reopen;
    this.reopen = false;
    const { journal, replayed } = Journal.open(this.dir, segment, segmentPath, !reopen);
    this.journal = journal;
    if (!reopen) return replayed;
    // No one but this writer touches its journal while it runs. Another file at its path (or
    // none) is a break of the log: another writer could have replayed that file meanwhile, and
    // undone a cut this writer would have found (found in review). Recorded as one; the agent
    // locks.
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

  /** A batch begins: nothing of it is written yet. */
  begin(): void {
    this.lastWrite = undefined;
  }

  /** A batch's lines went to the segment at offset, not yet durable. */
  wrote(segment: number, offset: number, data: Buffer): void {
    this.lastWrite = { segment, offset, data };
  }

  /**
   * Makes the batch just written durable: through the journal (an fdatasync of a file that does
   * not grow), or else by the segment's own fsync. blocking: on this thread, not the pool's.
   */
  async durable(segment: number, blocking: boolean): Promise<void> {
    const journal = this.entry();
    if (journal === 'durable') return;
    if (blocking) {
      if (journal === undefined) this.files.sync(segment);
      else
        try {
          fs.fdatasyncSync(journal);
        } catch (e) {
          throw unwritable(e);
        }
      return;
    }
    // fsync flushes the file, whichever descriptor asks: one trip to the thread pool.
    const { fd, own } =
      journal === undefined ? this.files.syncTarget(segment) : { fd: journal, own: false };
    try {
      await new Promise<void>((resolve, reject) =>
        (journal === undefined ? fs.fsync : fs.fdatasync)(fd, (e) =>
          e ? reject(unwritable(e)) : resolve(),
        ),
      );
    } finally {
      if (own) fs.closeSync(fd);
    }
  }

  /**
   * Writes the batch's lines to the journal, when this writer holds one: returns the descriptor
   * to fdatasync; 'durable' when the segment was fsynced instead (the journal replaced under
   * the writer, or a batch too large for it); undefined without a journal.
   */
  private entry(): number | 'durable' | undefined {
    const w = this.lastWrite;
    this.lastWrite = undefined;
    const j = this.journal;
    if (j === undefined || w === undefined) return undefined;
    try {
      if (!j.still()) {
        // Removed or replaced under the writer: this batch is made durable in the segment, and
        // the next batch makes a new journal (whatever is at the path then is set aside).
        this.files.sync(w.segment);
        this.segment = undefined;
        this.journal = undefined;
        this.seen = false;
        this.reopen = true;
        j.close();
        return 'durable';
      }
      // A journal full wraps, and a batch larger than it is not journaled: the segment's entries
      // there were needed only until the segment is fsynced, which is done first.
      const fd = j.write(w.segment, w.offset, w.data, () => this.files.sync(w.segment));
      if (fd < 0) return 'durable';
      this.segment = w.segment;
      return fd;
    } catch (e) {
      throw unwritable(e);
    }
  }

  /**
   * The writer's end (agent stop): the segment durable first; only then is the journal not
   * needed, and marked so. If the fsync fails, the journal stays in use, for the next writer to
   * replay. Call before the segment is closed.
   */
  close(): void {
    const j = this.journal;
    this.journal = undefined;
    if (j === undefined) return;
    try {
      if (this.segment !== undefined) this.files.sync(this.segment);
      j.close();
    } catch {
      // Left in use: the next writer replays it.
    }
  }
}
