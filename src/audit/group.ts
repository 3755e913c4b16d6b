/**
 * Group commit for the agent, the long-running writer of the audit log (docs/AUDIT.md).
 */
import type { AuditRecord } from './events.js';
import type { AuditLog, Head } from './log.js';

/** How many fast appends in a row say that fsyncs are fast. */
const RECENT = 16;
/** A slow append up to this many times blockingBelowMs may be a hiccup; longer, it is not. */
const HICCUP = 5;

interface Waiter {
  record: AuditRecord;
  resolve: (h: Head) => void;
  reject: (e: unknown) => void;
}

/**
 * Group commit for a long-running writer (the agent): record() resolves once the entry is
 * durable. Records that arrive while a batch is being written and fsynced go into the next
 * batch, so N concurrent writers cost far fewer than N fsyncs.
 */
export class GroupCommitter {
  private queue: Waiter[] = [];
  private running = false;
  /** The last entry this writer made: the log must still hold it at the next batch. */
  private last: Head | undefined;
  /** Told when a batch found the log cut behind this writer (and recorded it). */
  onGap: ((reason: string) => void) | undefined;
  /** Called when the system log did not take the copies of `missed` entries of a batch. */
  onUnshipped: ((missed: number) => void) | undefined;
  /** How many batches (so fsyncs) were written: for tests and the benchmark. */
  batches = 0;
  /** Appends since the last failed one (all of them, when none failed). */
  private sinceFailure = 0;
  /** Whether each of the last RECENT appends took blockingBelowMs or more (a ring). */
  private readonly slow: boolean[] = [];
  /** Whether the log is on a local disk file system (asked once). */
  private local: boolean | undefined;

  /**
   * blockingBelowMs: how fast the last RECENT appends must have been for a batch's fsync to
   * block the thread (1 ms: an fsync of a local disk takes 0.1-0.5; a network or busy disk,
   * milliseconds, and then it never blocks). One slow append among RECENT, under HICCUP times
   * the limit, is a local disk's hiccup (under load, ~3% of fsyncs here pass 1 ms) and is let
   * through, though never the append right after it; a second, a longer one, or any failure
   * sends batches to the pool until RECENT appends have followed. now: the clock appends are
   * timed by (a test's own, which moves only when it says a disk was slow).
   */
  constructor(
    private readonly log: AuditLog,
    private readonly blockingBelowMs = 1,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The last entry this writer made (the agent's lock checks the log still holds it). */
  get lastWritten(): Head | undefined {
    return this.last;
  }

  /**
   * Forgets the last entry this writer made: the lock found it cut and records that itself (the
   * next batch then builds on the log as it is, and remembers its own last entry again).
   */
  forgetLast(): void {
    this.last = undefined;
  }

  record(record: AuditRecord): Promise<Head> {
    return new Promise((resolve, reject) => {
      this.queue.push({ record, resolve, reject });
      if (!this.running) {
        this.running = true;
        setImmediate(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0);
      this.batches += 1;
      const started = this.now();
      // A batch on a local disk, while appends take well under a millisecond: its fsync on this
      // thread. The pool's two wake-ups cost ~70-90 us, more than the wait they free: whatever
      // arrives meanwhile is read after it and goes into the next batch, as it would through the
      // pool; a lone record gains, and so do concurrent writers (docs/PERFORMANCE.md,
      // 2026-12-07, fifteenth session). A network or FUSE file system, a disk slow twice in the
      // last RECENT appends, or one that failed in them, goes to the pool.
      const blocking =
        this.sinceFailure >= RECENT &&
        this.slowCount() <= 1 &&
        !this.slow[this.slow.length - 1] &&
        (this.local ??= this.log.onLocalDisk());
      let took = Number.POSITIVE_INFINITY;
      try {
        const head = await this.log.appendAsync(
          batch.map((w) => w.record),
          this.last,
          blocking,
        );
        took = this.now() - started;
        this.last = head;
        // Before any waiter goes on: the agent locks, so nothing is released after a cut.
        if (head.gap !== undefined) this.onGap?.(head.gap);
        // And nothing is released whose entry the system log did not take, shipping on: a
        // count of what it missed is a file any process of the user can remove (ship.ts).
        const missed = this.log.ship(head);
        if (missed > 0) this.onUnshipped?.(missed);
        for (const w of batch) w.resolve(head);
      } catch (e) {
        for (const w of batch) w.reject(e);
      } finally {
        // A failed append, a second slow one in RECENT, or one slow past a hiccup's length
        // (HICCUP times the limit): the next RECENT go to the pool, whatever their speed.
        this.noteSpeed(took >= this.blockingBelowMs);
        const failed = !Number.isFinite(took) || took >= HICCUP * this.blockingBelowMs;
        this.sinceFailure = failed || this.slowCount() >= 2 ? 0 : this.sinceFailure + 1;
      }
    }
    this.running = false;
  }

  /** The last RECENT appends' speeds, as a ring. */
  private noteSpeed(wasSlow: boolean): void {
    this.slow.push(wasSlow);
    if (this.slow.length > RECENT) this.slow.shift();
  }

  /** How many of the last RECENT appends were slow. */
  private slowCount(): number {
    return this.slow.filter(Boolean).length;
  }
}
