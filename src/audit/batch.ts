/**
 * A batch of records as audit lines (docs/AUDIT.md, "Entry line"): each body sealed to the box
 * key, each line MACed with the epoch key and chained to the one before. Public bytes out; the
 * writer (log.ts) puts them in the segment.
 */
import type { AuditRecord } from './events.js';
import { currentProcessActor } from './actor.js';
import type { BodySealer } from './body.js';
import { encodeLineBytes } from './entry.js';
import type { ShippedEntry } from './ship.js';
import type { AuditState } from './state.js';

export interface EncodedBatch {
  /** Each line's bytes, with its newline. */
  lines: Buffer[];
  /** What the system log is sent of each (ship.ts). */
  written: ShippedEntry[];
  /** The last line's seq and hash: the new head. */
  seq: number;
  hash: string;
}

/** The lines of records, chained after `after`, at `time` (ISO), in the state's epoch. */
export function encodeBatch(
  records: readonly AuditRecord[],
  after: { seq: number; hash: string },
  time: string,
  st: AuditState,
  sealer: BodySealer,
): EncodedBatch {
  let { seq, hash } = after;
  const lines: Buffer[] = [];
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
    const sealed = sealer
      .seal(Buffer.from(JSON.stringify(body), 'utf8'), st.boxPublicKey)
      .toString('base64');
    const e = encodeLineBytes(
      { seq, time, type: r.type, epoch: st.epoch, prev: hash, body: sealed },
      st.key,
    );
    lines.push(e.bytes);
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
  return { lines, written, seq, hash };
}
