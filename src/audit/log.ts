/**
 * Appending to the audit log (docs/AUDIT.md). An append returns only after its lines are
 * fsynced: callers release a secret after append returns, never before (rule 4).
 */
import fs from 'node:fs';
import path from 'node:path';
import { onLocalDisk } from '../lib/file-systems.js';
import { fsyncDir, HeldLock, withFileLock, withFileLockAsync } from '../lib/files.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import type { Checkpoint } from './verify.js';
import { encodeBatch } from './batch.js';
import { breakAfter, chainBackTo } from './chain.js';
import { cutBehindRecord, strayRecord } from './checkpoint.js';
import { Shipper, type ShipConfig, type ShippedEntry } from './ship.js';
import { cutTorn, firstLineTime, headOfSegment, lineStillThere, type Tail } from './tail.js';
import { hashAt, unacknowledgedGapLines, unacknowledgedGaps, type GapLine } from './history.js';
import type { AuditRecord } from './events.js';
import { appendAt, SegmentFiles, segmentStamp } from './segment-files.js';
import { JournalUse } from './journal-use.js';
import { statWithoutTimes, type FileIdentity } from '../lib/libc.js';
import { BodySealer } from './body.js';
import {
  DEFAULTS,
  checkFollows,
  knownHead,
  lastLineOf,
  LOCK_TIMEOUT_MS,
  tailEndingIn,
  movedRecord,
  writtenAlone,
  stampOf,
  type AuditOptions,
  type Head,
  type Known,
  type KnownHead,
  type SegmentSeen,
} from './log-types.js';

export type { AuditOptions, Head } from './log-types.js';
import { checkBox, replaceBoxKey, type BoxGap, type BoxTrust } from './box.js';
import { nextEpochKey } from './keys.js';
import {
  auditPaths,
  checkAuditDir,
  readState,
  HeldState,
  readStateHeld,
  segmentName,
  startLog,
  unwritable,
  writeState,
  type AuditPaths,
  type AuditState,
} from './state.js';

export class AuditLog {
  readonly paths: AuditPaths;
  private readonly o: Required<Omit<AuditOptions, 'now'>> & { now: () => Date };
  private readonly shipper: Shipper;
  /** What this writer knows of the log since it last wrote, while the files' stamps hold. */
  private known: Known | undefined;
  private boxTrust: (() => BoxTrust | undefined) | undefined;
  /** A keeping writer's lock file, held open. */
  private lock: HeldLock | undefined;
  /** The segment this writer appends to, held open (closed by forget()). */
  private readonly files = new SegmentFiles((n) => this.segmentPath(n));
  /** Seals bodies under a batch key it renews every second (body.ts); forget() frees it. */
  private readonly sealer = new BodySealer();
  /** The agent's journal, or a replay of one left in use (journal.ts). */
  private readonly journal: JournalUse;

  constructor(home: string, options: AuditOptions = {}) {
    this.paths = auditPaths(home);
    this.o = { ...DEFAULTS, now: () => new Date(), ...options };
    this.shipper = new Shipper(this.paths, this.o.shipWaitMs);
    this.journal = new JournalUse(this.paths.dir, this.files, this.o.journal);
  }

  segmentPath(n: number): string {
    return path.join(this.paths.dir, segmentName(n));
  }

  /** Whether this home has an audit log (its state file). */
  exists(): boolean {
    return fs.existsSync(this.paths.state);
  }

  /** Starts the log for a new vault (startLog, state.ts). */
  create(seed: SecureBuffer, boxPublicKey: Buffer): string | undefined {
    return startLog(this.paths, seed, boxPublicKey, this.o.now());
  }

  /**
   * Appends records durably (written and fsynced) and returns the new head. `follows`: the
   * first line written must link to that entry (the segment's last line when it is read under
   * the lock), or nothing is written (AUDIT_CHAIN_BROKEN): what the new lines' hashes commit to
   * is then that entry's history, whatever the files hold later.
   */
  append(records: readonly AuditRecord[], follows?: Checkpoint): Head {
    this.checkDir();
    const head = withFileLock(this.paths.lock, LOCK_TIMEOUT_MS, () => {
      const h = this.writeLocked(records, undefined, undefined, follows);
      this.files.sync(h.segment);
      return h;
    });
    // Durable first; then the copy off the machine, without waiting.
    this.ship(head);
    if (head.alone) throw writtenAlone(head);
    return head;
  }

  /**
   * The shipping in force for this writer: what the agent set from the policy it holds, else
   * what the last `policy apply` left in audit/ship.
   */
  shipping(): ShipConfig {
    return this.shipper.config();
  }

  /** The agent ships by its policy, whatever audit/ship says. */
  setShipping(cfg: ShipConfig): void {
    this.shipper.setConfig(cfg);
  }

  /** Ships what an append wrote, if shipping is on; how many were not taken. Never throws. */
  ship(head: Head): number {
    return this.shipper.shipWritten(head.written);
  }

  /**
   * The same, without blocking the event loop on the fsync. Used by GroupCommitter: while one
   * batch waits for its fsync, the next batch gathers, so concurrent writers share fsyncs.
   * blocking: the fsync on this thread instead, the next batch gathering after it
   * (GroupCommitter asks it while fsyncs are fast: the pool's wake-ups cost more).
   */
  async appendAsync(
    records: readonly AuditRecord[],
    expect?: Head,
    blocking = false,
  ): Promise<Head> {
    this.checkDir();
    const locked = <T>(fn: () => Promise<T>) =>
      this.o.keep
        ? (this.lock ??= new HeldLock(this.paths.lock)).with(LOCK_TIMEOUT_MS, fn)
        : withFileLockAsync(this.paths.lock, LOCK_TIMEOUT_MS, fn);
    return locked(async () => {
      // A long-running writer knows the last line it wrote: it must still be there, as it was.
      // If not, the log was cut behind it; the first line of this batch says so.
      // The segment's statx (no times), once: the check that the line is still there and the head's stamp
      // below both use it (under the same lock, a moment apart).
      const seen = expect && { segment: expect.segment, stat: this.segmentStat(expect.segment) };
      const cut =
        expect && !this.stillThere(expect, seen?.stat)
          ? cutBehindRecord(expect, this.head())
          : undefined;
      const head = this.writeLocked(
        cut ? [cut.record, ...records] : records,
        cut ? undefined : seen,
        cut ? undefined : expect,
      );
      if (cut) head.gap = cut.reason;
      const broken = await this.journal.durable(head.segment, blocking);
      // Set before any waiter goes on: the agent locks first (group.ts).
      if (broken !== undefined) head.gap ??= broken;
      return head;
    });
  }

  /** Whether the log's directory is on a local disk's file system (lib/file-systems.ts). */
  onLocalDisk(): boolean {
    return onLocalDisk(this.paths.dir);
  }

  /** The log's directory is there and private (one lstat: this runs at every batch). */
  private checkDir(): void {
    checkAuditDir(this.paths.dir);
  }

  /**
   * The vault's box keys, for a writer that holds the vault: every append checks that the state
   * names the vault's key before it seals a body to it (undefined: no vault to check against).
   */
  trustBoxKeys(keys: (() => BoxTrust | undefined) | undefined): void {
    this.boxTrust = keys;
  }

  /** Under the lock, before anything is sealed: the state names the vault's box key (box.ts). */
  private boxChecked(st: AuditState): BoxGap | undefined {
    const checked = checkBox(this.boxTrust?.(), st, this.paths);
    if (checked.wrote) this.stateWritten(st);
    return checked.gap;
  }

  /**
   * Checks the state's box key now (trustBoxKeys), recording a wrong one before anything else
   * is written: a command that holds the vault does this when it begins. Returns the break's
   * reason when there was one.
   */
  checkBoxKey(): string | undefined {
    if (this.boxTrust === undefined) return undefined;
    this.checkDir();
    const found = withFileLock(this.paths.lock, LOCK_TIMEOUT_MS, () => {
      try {
        const st = this.currentState();
        const replayed = this.journal.replayOnce(st.segment, this.segmentPath(st.segment));
        const box = this.boxChecked(st);
        if (box === undefined && replayed === undefined) return undefined;
        const head = this.appendLocked(
          st,
          [replayed?.record, box?.record].filter((r) => r !== undefined),
        );
        this.files.sync(head.segment);
        const reason = replayed?.gap ?? box?.reason ?? head.gap;
        return reason === undefined ? { head } : { head, reason };
      } catch (e) {
        this.forget();
        throw unwritable(e);
      } finally {
        if (!this.o.keep) this.forget();
      }
    });
    if (found) this.ship(found.head);
    return found?.reason;
  }

  /** Under the lock: recover, evolve, rotate, write. The caller makes the last write durable. */
  private writeLocked(
    records: readonly AuditRecord[],
    seen?: SegmentSeen,
    after?: Head,
    follows?: Checkpoint,
  ): Head {
    this.journal.begin();
    try {
      const st = this.currentState();
      const replayed = this.journal.replayOnce(st.segment, this.segmentPath(st.segment));
      // Lines put back into the segment: what was seen of it before is not what it is now.
      const seenNow = replayed !== undefined && replayed.restored > 0 ? undefined : seen;
      // A long-running writer builds only on what follows from its own last entry (chain.ts);
      // else it records the break first, putting back a state that names a segment no rotation
      // leads to, and the agent locks.
      const b =
        after && breakAfter((n) => this.segmentPath(n), after, seenNow?.stat?.size, st.segment);
      const stray = after && b && strayRecord(after, b.reason);
      if (b?.stateChanged && after) {
        st.segment = after.segment;
        writeState(this.paths, st);
        this.stateWritten(st);
      }
      const box = this.boxChecked(st);
      const first = [replayed?.record, stray?.record, box?.record].filter((r) => r !== undefined);
      // With `follows`, none of the caller's records goes behind what this write found first:
      // those alone (no `follows`: lines put back pass it), then refused (review).
      const alone = follows !== undefined && first.length > 0;
      const batch = alone ? first : [...first, ...records];
      const head = this.appendLocked(st, batch, seenNow, alone ? undefined : follows);
      const gap = replayed?.gap ?? stray?.reason ?? box?.reason;
      if (gap !== undefined) head.gap = gap;
      if (!this.o.keep) this.forget();
      if (alone) head.alone = true;
      return head;
    } catch (e) {
      this.forget();
      throw unwritable(e);
    }
  }

  /**
   * The state file's contents, read again only when its stamp changed since this writer last
   * read or wrote it (any other writer's change, a restore, a rekey). Under the lock.
   */
  private currentState(): AuditState {
    // The stamp is taken before the read: a change in between is read again next time.
    const stamp = stampOf(this.paths.state);
    if (this.known?.held.still(stamp, this.known.st)) return this.known.st;
    this.forget();
    // The stamp of the file read, and its descriptor, held: the bytes compared at the next
    // batches are that file's, and the path's stamp says whether it still names it.
    const read = readStateHeld(this.paths);
    this.known = { st: read.st, held: new HeldState(read.stamp, read.fd) };
    return read.st;
  }

  /** After this writer replaced the state file with st. */
  private stateWritten(st: AuditState): void {
    if (this.known?.st === st) this.known.held.rewritten(this.paths.state);
  }

  /** Drops what this writer knew of the log: wipes the epoch key, closes the segment. */
  forget(): void {
    if (this.known) {
      secureFree(this.known.st.key);
      this.known.held.close();
    }
    this.known = undefined;
    this.files.close();
    this.sealer.close();
  }

  /** The end of a long-running writer (agent stop). */
  close(): void {
    this.journal.close();
    this.forget();
    this.lock?.close();
    this.lock = undefined;
  }

  /** The segment's head as this writer left it, or read again (knownHead, log-types.ts). */
  private headKnown(segment: number, given?: SegmentSeen): KnownHead {
    return knownHead(
      this.known?.seg,
      segment,
      given,
      (n) => this.segmentStat(n),
      (n) => this.headOf(n),
    );
  }

  /** Points new bodies at a new box public key (audit rekey), under the log's lock. */
  replaceBoxKey(publicKey: Buffer): void {
    withFileLock(this.paths.lock, LOCK_TIMEOUT_MS, () => replaceBoxKey(this.paths, publicKey));
  }

  /** Whether the line a writer wrote (seq, hash, where it ended) is still in its segment. */
  private stillThere(h: Head, seen?: FileIdentity): boolean {
    return lineStillThere(this.files.held(h.segment, seen), this.segmentPath(h.segment), h);
  }

  /** The segment's identity, without its times (undefined when there is none). */
  private segmentStat(segment: number): FileIdentity | undefined {
    return statWithoutTimes(this.segmentPath(segment));
  }

  /** The hash of the entry at seq, looked for from the end; undefined when there is none. */
  hashAt(seq: number): string | undefined {
    return hashAt(this.paths.dir, seq);
  }

  /**
   * The hash at seq reached from the head (in segment `head`) through the links, or where a link
   * failed, or a segment out of place (chain.ts).
   */
  chainBackTo(seq: number, head: number): { found?: string; broken?: string } {
    return chainBackTo(this.paths.dir, seq, head);
  }

  /** The seqs of recorded breaks (`audit.gap`) since the last acknowledgement, oldest first. */
  unacknowledgedGaps(): number[] {
    return unacknowledgedGaps(this.paths.dir);
  }

  /** The same, with each entry's sealed body (what it found, opened with the vault). */
  unacknowledgedGapLines(upTo?: number): GapLine[] {
    return unacknowledgedGapLines(this.paths.dir, upTo);
  }

  /** The last entry's sequence and hash, without writing. */
  head(): Head {
    const st = readState(this.paths);
    secureFree(st.key);
    return this.headOf(st.segment).head;
  }

  private headOf(segment: number): { head: Head; tail: Tail } {
    return headOfSegment((n) => this.segmentPath(n), segment);
  }

  private evolve(st: AuditState, nextSegment: boolean): void {
    const next = nextEpochKey(st.key);
    secureFree(st.key);
    st.key = next;
    st.epoch += 1;
    st.epochStartMs = this.o.now().getTime();
    if (nextSegment) st.segment += 1;
    writeState(this.paths, st);
    this.stateWritten(st);
  }

  private appendLocked(
    st: AuditState,
    records: readonly AuditRecord[],
    seen?: SegmentSeen,
    follows?: Checkpoint,
  ): Head {
    const now = this.o.now();
    const segment = st.segment;
    const known = this.headKnown(segment, seen);
    let { head, tail, first } = known;
    checkFollows(head, follows);
    const pending: AuditRecord[] = [];
    if (tail.tornBytes > 0) {
      // A writer died mid-line. Cut the torn bytes and say so in the log itself: never silently.
      pending.push(cutTorn(this.segmentPath(st.segment), tail, segmentName(st.segment)));
      tail = { ...tail, size: tail.size - tail.tornBytes, tornBytes: 0 };
    }
    let rotation: ShippedEntry[] = [];
    /** The write that landed elsewhere than the checks saw (appendAt), and what it followed. */
    let moved: { reason: string; after: Head } | undefined;
    const lastWasRotation = tail.lastLine !== undefined && known.lastType === 'audit.rotated';
    if (lastWasRotation) {
      // The closing entry is written but the state did not advance (a crash in between).
      this.evolve(st, true);
      head = { ...head, segment: st.segment };
    } else {
      if (now.getTime() - st.epochStartMs >= this.o.epochMs) this.evolve(st, false);
      first ??= { time: firstLineTime(this.segmentPath(st.segment)) };
      const started = first.time;
      const tooOld = started !== undefined && now.getTime() - started >= this.o.segmentMaxAgeMs;
      if (tail.size >= this.o.segmentMaxBytes || tooOld) {
        const next = segmentName(st.segment + 1);
        const reason = tooOld ? 'segment age limit' : 'segment size limit';
        const closing: AuditRecord = {
          type: 'audit.rotated',
          decision: 'info',
          reason,
          details: { next },
        };
        const before = head;
        head = this.writeLines(st, head, tail.size, lastLineOf(head, tail), [closing]);
        this.files.sync(st.segment);
        rotation = head.written ?? [];
        if (head.gap !== undefined) moved = { reason: head.gap, after: before };
        this.evolve(st, true);
        head = { seq: head.seq, hash: head.hash, segment: st.segment, written: [] };
      }
    }
    const same = st.segment === segment;
    const h = this.writeLines(
      st,
      head,
      // A segment this batch begins (a rotation) is empty.
      same ? tail.size : 0,
      same ? lastLineOf(head, tail) : undefined,
      [...pending, ...records],
      same ? first : undefined,
      // Nothing written since headKnown's statx: the segment is still the file it saw.
      same && rotation.length === 0 && pending.length === 0 ? known.seen : undefined,
    );
    if (h.gap !== undefined) moved ??= { reason: h.gap, after: head };
    if (moved === undefined) return { ...h, written: [...rotation, ...(h.written ?? [])] };
    // Another process changed the segment between the checks and the write (appendAt): the
    // batch stands after what it left, made durable as it is, then the break is recorded after
    // it, and the agent locks before anything of the batch is released (head.gap).
    this.files.sync(st.segment);
    const by = this.o.keep ? 'the agent' : 'a keyward command';
    const gap = movedRecord(moved.after, moved.reason, by);
    const g = this.writeLines(st, h, h.end ?? 0, lastLineOf(h), [gap]);
    const written = [...rotation, ...(h.written ?? []), ...(g.written ?? [])];
    return { ...g, gap: moved.reason, moved: moved.reason, written };
  }

  /**
   * Writes records after head, at byte `at` of st's segment, after the line `before`: the end
   * and the last line the writer read under the lock (appendAt). The head it gives has `gap`
   * when the lines landed elsewhere.
   */
  private writeLines(
    st: AuditState,
    head: Head,
    at: number,
    before: { hash: string; length: number } | undefined,
    records: readonly AuditRecord[],
    first?: { time: number | undefined },
    seen?: FileIdentity,
  ): Head {
    const time = this.o.now().toISOString();
    const { lines, written, seq, hash } = encodeBatch(records, head, time, st, this.sealer);
    const { fd, created } = this.files.open(st.segment, seen);
    let wrote: ReturnType<typeof appendAt>;
    try {
      const data = lines.length === 1 ? (lines[0] as Buffer) : Buffer.concat(lines);
      wrote = appendAt(this.segmentPath(st.segment), fd, data, at, before);
      this.journal.wrote(st.segment, wrote.end - data.length, data);
    } catch (e) {
      this.forget();
      throw e;
    }
    if (created) fsyncDir(this.paths.dir);
    const last = lines.at(-1);
    if (last !== undefined && this.known?.st === st) {
      // What the next append would read back from the file, while its stamp stays this one.
      this.known.seg = {
        segment: st.segment,
        stamp: segmentStamp(wrote.stat),
        head: { seq, hash, segment: st.segment },
        tail: tailEndingIn(wrote.end, last),
        lastType: records.at(-1)?.type ?? '',
        first: created ? { time: Date.parse(time) } : first,
      };
    }
    return {
      seq,
      hash,
      segment: st.segment,
      written,
      ...(last === undefined ? {} : { end: wrote.end, length: last.length }),
      ...(wrote.moved === undefined ? {} : { gap: wrote.moved }),
    };
  }
}
