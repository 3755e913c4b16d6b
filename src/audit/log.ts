/**
 * Appending to the audit log (docs/AUDIT.md). An append returns only after its lines are
 * fsynced: callers release a secret after append returns, never before (rule 4).
 */
import fs from 'node:fs';
import path from 'node:path';
import {
  assertPrivate,
  ensurePrivateDir,
  fsyncDir,
  withFileLock,
  withFileLockAsync,
} from '../lib/files.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import { encodeLine, parseLine, ZERO_HASH } from './entry.js';
import { gapRecord } from './checkpoint.js';
import { readShipFile, Shipper, type ShipConfig, type ShippedEntry } from './ship.js';
import { listSegments } from './verify.js';
import type { Actor, AuditRecord } from './events.js';
import { epochZeroKey, nextEpochKey, sealBody, sha256 } from './keys.js';
import {
  auditPaths,
  readState,
  segmentName,
  unavailable,
  writeState,
  type AuditPaths,
  type AuditState,
} from './state.js';

export interface AuditOptions {
  /** Rotate a segment past this size (default 16 MiB). */
  segmentMaxBytes?: number;
  /** Rotate a segment whose first entry is older than this (default 30 days). */
  segmentMaxAgeMs?: number;
  /** Advance the epoch key at least this often (default 1 hour). */
  epochMs?: number;
  now?: () => Date;
}

const DEFAULTS = {
  segmentMaxBytes: 16 * 1024 * 1024,
  segmentMaxAgeMs: 30 * 24 * 3600 * 1000,
  epochMs: 3600 * 1000,
};
const LOCK_TIMEOUT_MS = 10_000;
const TAIL_WINDOW = 256 * 1024;

export interface Head {
  seq: number;
  hash: string;
  segment: number;
  /** Where the last line ends in its segment, and its length with the newline (when written). */
  end?: number;
  length?: number;
  /** Set when this append found the log cut behind the writer and recorded it (audit.gap). */
  gap?: string;
  /** What this append wrote, as the system log gets it (ship.ts). */
  written?: ShippedEntry[];
}

let selfActor: Actor | undefined;

/** This process, as an actor: what the CLI in direct mode records. */
export function currentProcessActor(): Actor {
  if (!selfActor) {
    let exe: string | undefined;
    try {
      exe = fs.readlinkSync('/proc/self/exe');
    } catch {
      exe = undefined;
    }
    selfActor = {
      uid: process.getuid?.() ?? -1,
      pid: process.pid,
      ...(exe === undefined ? {} : { exe }),
      // keyward never takes a secret on its command line, so argv is safe to record.
      cmdline: process.argv.slice(1),
      cwd: process.cwd(),
    };
  }
  return selfActor;
}

interface Tail {
  size: number;
  lastLine: string | undefined;
  tornBytes: number;
}

function readTail(file: string): Tail {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      return { size: 0, lastLine: undefined, tornBytes: 0 };
    throw e;
  }
  try {
    const size = fs.fstatSync(fd).size;
    const len = Math.min(size, TAIL_WINDOW);
    const buf = Buffer.alloc(len);
    fs.readSync(fd, buf, 0, len, size - len);
    const lastNl = buf.lastIndexOf(0x0a);
    const tornBytes = lastNl === -1 ? (len === size ? size : 0) : len - lastNl - 1;
    if (lastNl === -1) return { size, lastLine: undefined, tornBytes };
    const prevNl = buf.lastIndexOf(0x0a, lastNl - 1);
    return { size, lastLine: buf.subarray(prevNl + 1, lastNl).toString('utf8'), tornBytes };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Calls visit with each complete line of file, last first, until it returns true. Reads from the
 * end in chunks, so finding a recent entry costs what is after it, not the whole segment.
 */
function scanBack(file: string, visit: (line: string) => boolean): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return false;
  }
  // The newline that ends the line before the last one of b (never a negative offset, which
  // would count from the end).
  const before = (b: Buffer) => (b.length >= 2 ? b.lastIndexOf(0x0a, b.length - 2) : -1);
  const text = (b: Buffer) => {
    const t = b.toString('utf8');
    return t.endsWith('\n') ? t.slice(0, -1) : t;
  };
  try {
    let end = fs.fstatSync(fd).size;
    let carry = Buffer.alloc(0);
    const CHUNK = 64 * 1024;
    while (end > 0) {
      const start = Math.max(0, end - CHUNK);
      const chunk = Buffer.alloc(end - start);
      fs.readSync(fd, chunk, 0, chunk.length, start);
      let buf = Buffer.concat([chunk, carry]);
      // A line is whole once the newline before it is in: or at the very start of the file.
      for (let nl = before(buf); nl >= 0; nl = before(buf)) {
        const line = text(buf.subarray(nl + 1));
        if (line && visit(line)) return true;
        buf = buf.subarray(0, nl + 1);
      }
      if (start === 0) {
        const line = text(buf);
        return line !== '' && visit(line);
      }
      carry = buf;
      end = start;
    }
    return false;
  } finally {
    fs.closeSync(fd);
  }
}

function firstLineTime(file: string): number | undefined {
  try {
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const buf = Buffer.alloc(4096);
      const n = fs.readSync(fd, buf, 0, buf.length, 0);
      const m = /"time":"([^"]+)"/.exec(buf.subarray(0, n).toString('utf8'));
      return m?.[1] === undefined ? undefined : Date.parse(m[1]);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

export class AuditLog {
  readonly paths: AuditPaths;
  private readonly o: Required<Omit<AuditOptions, 'now'>> & { now: () => Date };
  private readonly shipper: Shipper;
  private shipOverride: ShipConfig | undefined;

  constructor(home: string, options: AuditOptions = {}) {
    this.paths = auditPaths(home);
    this.o = { ...DEFAULTS, now: () => new Date(), ...options };
    this.shipper = new Shipper(this.paths);
  }

  segmentPath(n: number): string {
    return path.join(this.paths.dir, segmentName(n));
  }

  /** Whether this home has an audit log (its state file). */
  exists(): boolean {
    return fs.existsSync(this.paths.state);
  }

  /**
   * Starts the log for a new vault: epoch 0 from the seed, no entries yet. Any log already in the
   * directory is moved aside first (audit.bak-TIME), never deleted.
   */
  create(seed: SecureBuffer, boxPublicKey: Buffer): string | undefined {
    let moved: string | undefined;
    if (fs.existsSync(this.paths.dir)) {
      moved = `${this.paths.dir}.bak-${this.o.now().toISOString().replace(/[:.]/g, '-')}`;
      fs.renameSync(this.paths.dir, moved);
    }
    ensurePrivateDir(this.paths.dir);
    const key = epochZeroKey(seed);
    try {
      writeState(this.paths, {
        epoch: 0,
        epochStartMs: this.o.now().getTime(),
        segment: 1,
        key,
        boxPublicKey,
      });
    } finally {
      secureFree(key);
    }
    return moved;
  }

  /** Appends records durably (written and fsynced) and returns the new head. */
  append(records: readonly AuditRecord[]): Head {
    this.checkDir();
    const head = withFileLock(this.paths.lock, LOCK_TIMEOUT_MS, () => {
      const h = this.writeLocked(records);
      fsyncFile(this.segmentPath(h.segment));
      return h;
    });
    // Durable first; then the copy off the machine, without waiting.
    this.ship(head);
    return head;
  }

  /**
   * The shipping in force for this writer: what the agent set from the policy it holds, else
   * what the last `policy apply` left in audit/ship.
   */
  shipping(): ShipConfig {
    return this.shipOverride ?? readShipFile(this.paths);
  }

  /** The agent ships by its policy, whatever audit/ship says. */
  setShipping(cfg: ShipConfig): void {
    this.shipOverride = cfg;
  }

  /** Sends what an append wrote to the system log, if shipping is on. Never throws. */
  ship(head: Head): void {
    if (!head.written || head.written.length === 0) return;
    try {
      this.shipper.ship(this.shipping(), head.written);
    } catch {
      // The local log holds the entries durably; the copy is best effort.
    }
  }

  /**
   * The same, without blocking the event loop on the fsync. Used by GroupCommitter: while one
   * batch waits for its fsync, the next batch gathers, so concurrent writers share fsyncs.
   */
  async appendAsync(records: readonly AuditRecord[], expect?: Head): Promise<Head> {
    this.checkDir();
    return withFileLockAsync(this.paths.lock, LOCK_TIMEOUT_MS, async () => {
      // A long-running writer knows the last line it wrote: it must still be there, as it was.
      // If not, the log was cut behind it; the first line of this batch says so.
      const cut = expect && !this.stillThere(expect) ? this.cutBehind(expect) : undefined;
      const head = this.writeLocked(cut ? [cut.record, ...records] : records);
      if (cut) head.gap = cut.reason;
      // fsync flushes the file, whichever descriptor asks.
      const fh = await fs.promises.open(this.segmentPath(head.segment), 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      return head;
    });
  }

  private checkDir(): void {
    assertPrivate(this.paths.dir, 'dir');
    if (!fs.existsSync(this.paths.dir)) {
      throw unavailable(`no audit log at ${this.paths.dir}`, 'run: keyward audit init');
    }
  }

  /** Under the lock: recover, evolve, rotate, write. The caller makes the last write durable. */
  private writeLocked(records: readonly AuditRecord[]): Head {
    const st = readState(this.paths);
    try {
      return this.appendLocked(st, records);
    } finally {
      secureFree(st.key);
    }
  }

  /** Points new bodies at a new box public key (audit rekey), under the log's lock. */
  replaceBoxKey(publicKey: Buffer): void {
    withFileLock(this.paths.lock, LOCK_TIMEOUT_MS, () => {
      const st = readState(this.paths);
      try {
        writeState(this.paths, { ...st, boxPublicKey: publicKey });
      } finally {
        secureFree(st.key);
      }
    });
  }

  /** Whether the line a writer wrote (seq, hash, where it ended) is still in its segment. */
  private stillThere(h: Head): boolean {
    if (h.end === undefined || h.length === undefined) return true;
    let fd: number;
    try {
      fd = fs.openSync(
        this.segmentPath(h.segment),
        fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW,
      );
    } catch {
      return false;
    }
    try {
      const buf = Buffer.alloc(h.length);
      const n = fs.readSync(fd, buf, 0, h.length, h.end - h.length);
      if (n !== h.length || buf[h.length - 1] !== 0x0a) return false;
      return sha256(buf.subarray(0, h.length - 1)).toString('hex') === h.hash;
    } finally {
      fs.closeSync(fd);
    }
  }

  private cutBehind(expected: Head): { record: AuditRecord; reason: string } {
    const st = readState(this.paths);
    secureFree(st.key);
    const now = this.headOf(st.segment).head;
    const b = {
      checkpoint: { seq: expected.seq, hash: expected.hash, where: 'agent' as const },
      found: { seq: now.seq, hash: now.hash },
      reason:
        now.seq < expected.seq
          ? `the log ends at seq ${now.seq}, but the agent wrote seq ${expected.seq}: ${expected.seq - now.seq} entries are missing`
          : `the entry at seq ${expected.seq} is not the one the agent wrote: the log was cut there and written again`,
    };
    return { record: gapRecord(b, 'the agent'), reason: b.reason };
  }

  /** The hash of the entry at seq, looked for from the end; undefined when there is none. */
  hashAt(seq: number): string | undefined {
    let found: string | undefined;
    for (const file of listSegments(this.paths.dir).reverse()) {
      let passed = false;
      scanBack(file, (line) => {
        const e = parseLine(line);
        if (!e) return false;
        if (e.seq === seq) found = e.hash;
        passed = e.seq <= seq;
        return passed;
      });
      if (passed) break;
    }
    return found;
  }

  /**
   * The seqs of recorded breaks (`audit.gap`) since the last acknowledgement, oldest first.
   * The types are in the clear, so this needs no key.
   */
  unacknowledgedGaps(): number[] {
    const gaps: number[] = [];
    for (const file of listSegments(this.paths.dir).reverse()) {
      const stop = scanBack(file, (line) => {
        if (!line.includes('"type":"audit.')) return false;
        const e = parseLine(line);
        if (e?.type === 'audit.acknowledged') return true;
        if (e?.type === 'audit.gap') gaps.push(e.seq);
        return false;
      });
      if (stop) break;
    }
    return gaps.reverse();
  }

  /** The last entry's sequence and hash, without writing. */
  head(): Head {
    const st = readState(this.paths);
    secureFree(st.key);
    return this.headOf(st.segment).head;
  }

  private headOf(segment: number): { head: Head; tail: Tail } {
    const tail = readTail(this.segmentPath(segment));
    if (tail.lastLine !== undefined) {
      const p = parseLine(tail.lastLine);
      if (!p) {
        throw unavailable(
          `the last entry of ${segmentName(segment)} is malformed, so nothing can be chained to it`,
          'run: keyward audit verify',
        );
      }
      return { head: { seq: p.seq, hash: p.hash, segment }, tail };
    }
    if (segment > 1) return { head: { ...this.headOf(segment - 1).head, segment }, tail };
    return { head: { seq: 0, hash: ZERO_HASH, segment }, tail };
  }

  private evolve(st: AuditState, nextSegment: boolean): void {
    const next = nextEpochKey(st.key);
    secureFree(st.key);
    st.key = next;
    st.epoch += 1;
    st.epochStartMs = this.o.now().getTime();
    if (nextSegment) st.segment += 1;
    writeState(this.paths, st);
  }

  private appendLocked(st: AuditState, records: readonly AuditRecord[]): Head {
    const now = this.o.now();
    let { head, tail } = this.headOf(st.segment);
    const pending: AuditRecord[] = [];
    if (tail.tornBytes > 0) {
      // A writer died mid-line. Cut the torn bytes and say so in the log itself: never silently.
      const file = this.segmentPath(st.segment);
      const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
      try {
        const cut = Buffer.alloc(tail.tornBytes);
        fs.readSync(fd, cut, 0, cut.length, tail.size - tail.tornBytes);
        fs.ftruncateSync(fd, tail.size - tail.tornBytes);
        fs.fsyncSync(fd);
        pending.push({
          type: 'audit.recovered',
          decision: 'info',
          reason: 'a torn last entry was cut at start-up',
          details: {
            segment: segmentName(st.segment),
            cutBytes: cut.length,
            cutSha256: sha256(cut).toString('hex'),
          },
        });
      } finally {
        fs.closeSync(fd);
      }
      tail = { ...tail, size: tail.size - tail.tornBytes, tornBytes: 0 };
    }
    let rotation: ShippedEntry[] = [];
    const lastWasRotation =
      tail.lastLine !== undefined && parseLine(tail.lastLine)?.type === 'audit.rotated';
    if (lastWasRotation) {
      // The closing entry is written but the state did not advance (a crash in between).
      this.evolve(st, true);
      head = { ...head, segment: st.segment };
    } else {
      if (now.getTime() - st.epochStartMs >= this.o.epochMs) this.evolve(st, false);
      const started = firstLineTime(this.segmentPath(st.segment));
      const tooOld = started !== undefined && now.getTime() - started >= this.o.segmentMaxAgeMs;
      if (tail.size >= this.o.segmentMaxBytes || tooOld) {
        const next = segmentName(st.segment + 1);
        head = this.writeLines(st, head, [
          {
            type: 'audit.rotated',
            decision: 'info',
            reason: tooOld ? 'segment age limit' : 'segment size limit',
            details: { next },
          },
        ]);
        fsyncFile(this.segmentPath(st.segment));
        rotation = head.written ?? [];
        this.evolve(st, true);
        head = { ...head, segment: st.segment, written: [] };
      }
    }
    const h = this.writeLines(st, head, [...pending, ...records]);
    return { ...h, written: [...rotation, ...(h.written ?? [])] };
  }

  private writeLines(st: AuditState, head: Head, records: readonly AuditRecord[]): Head {
    let { seq, hash } = head;
    const time = this.o.now().toISOString();
    const lines: string[] = [];
    const written: ShippedEntry[] = [];
    for (const r of records) {
      const body = {
        actor: r.actor ?? currentProcessActor(),
        target: r.target ?? null,
        decision: r.decision ?? 'info',
        reason: r.reason ?? null,
        details: r.details ?? {},
      };
      seq += 1;
      const sealed = sealBody(Buffer.from(JSON.stringify(body), 'utf8'), st.boxPublicKey).toString(
        'base64',
      );
      const e = encodeLine(
        { seq, time, type: r.type, epoch: st.epoch, prev: hash, body: sealed },
        st.key,
      );
      lines.push(`${e.line}\n`);
      written.push({
        seq,
        time,
        type: r.type,
        epoch: st.epoch,
        decision: body.decision,
        hash: e.hash,
        prev: hash,
      });
      hash = e.hash;
    }
    const file = this.segmentPath(st.segment);
    const created = !fs.existsSync(file);
    let end: number;
    const fd = fs.openSync(
      file,
      fs.constants.O_WRONLY |
        fs.constants.O_APPEND |
        fs.constants.O_CREAT |
        fs.constants.O_NOFOLLOW,
      0o600,
    );
    try {
      const data = Buffer.from(lines.join(''), 'utf8');
      let off = 0;
      while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off);
      end = fs.fstatSync(fd).size;
    } finally {
      fs.closeSync(fd);
    }
    if (created) fsyncDir(this.paths.dir);
    const last = lines.at(-1);
    return {
      seq,
      hash,
      segment: st.segment,
      written,
      ...(last === undefined ? {} : { end, length: Buffer.byteLength(last, 'utf8') }),
    };
  }
}

function fsyncFile(file: string): void {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

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
