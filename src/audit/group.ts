/**
 * Group commit for the agent, the long-running writer of the audit log (docs/AUDIT.md).
 */
import type { AuditRecord } from './events.js';
import type { AuditLog, Head } from './log.js';

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
  /** How many batches (so fsyncs) were written: for tests and the benchmark. */
  batches = 0;

  constructor(private readonly log: AuditLog) {}

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
      try {
        const head = await this.log.appendAsync(
          batch.map((w) => w.record),
          this.last,
        );
        this.last = head;
        // Before any waiter goes on: the agent locks, so nothing is released after a cut.
        if (head.gap !== undefined) this.onGap?.(head.gap);
        for (const w of batch) w.resolve(head);
        // After the waiters: shipping never delays a release.
        this.log.ship(head);
      } catch (e) {
        for (const w of batch) w.reject(e);
      }
    }
    this.running = false;
  }
}
