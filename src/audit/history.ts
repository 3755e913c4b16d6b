/**
 * Questions about what the log already holds, read from its end without a key: the hash at a
 * seq (checkpoints), and the breaks recorded since the last acknowledgement.
 */
import fs from 'node:fs';
import { lineHash, parseLine, scanLine } from './entry.js';
import { stampFrom } from './segment-files.js';
import { scanBackFor, scanBackLines } from './tail.js';
import { logSegments } from './verify.js';

/** The hash of the entry at seq, looked for from the end; undefined when there is none. */
export function hashAt(dir: string, seq: number): string | undefined {
  let found: string | undefined;
  for (const file of logSegments(dir).reverse()) {
    let passed = false;
    // Every line's shape is checked in place (a malformed one is passed over) and only the one
    // at seq hashed: the walk back to a checkpoint at lock and unlock covers every entry since.
    scanBackLines(file, (line) => {
      const v = scanLine(line);
      if (!v) return false;
      if (v.seq === seq) found = lineHash(line);
      passed = v.seq <= seq;
      return passed;
    });
    if (passed) break;
  }
  return found;
}

/** What every line of an `audit.*` type holds (the types are in the clear). */
const AUDIT_TYPE = Buffer.from('"type":"audit.', 'latin1');

/** A recorded break: its seq and its sealed body (base64: public bytes). */
export interface GapLine {
  seq: number;
  body: string;
}

/** What one segment holds of breaks: whether it has an acknowledgement, and the gaps after it. */
interface SegmentBreaks {
  acknowledged: boolean;
  /** `audit.gap` entries after the segment's last acknowledgement (all if none), in order. */
  gaps: GapLine[];
}

function breaksIn(file: string): SegmentBreaks {
  const gaps: GapLine[] = [];
  const acknowledged = scanBackFor(file, AUDIT_TYPE, (line) => {
    const e = parseLine(line);
    if (e?.type === 'audit.acknowledged') return true;
    if (e?.type === 'audit.gap') gaps.push({ seq: e.seq, body: e.body });
    return false;
  });
  return { acknowledged, gaps: gaps.reverse() };
}

/**
 * What closed segments (all but the last) hold of breaks, by path, while the file's stamp (device,
 * inode, size, modification and change times) holds: a long-running process (the agent, at every
 * lock and unlock) reads a rotated segment once, not at every search through the whole log. Any
 * write to a segment moves its change time, which its owner can't set back.
 */
const closedBreaks = new Map<string, { stamp: string; breaks: SegmentBreaks }>();

function closedSegmentBreaks(file: string): SegmentBreaks {
  // The stamp is taken before the read: a change in between is read again next time.
  const st = fs.lstatSync(file, { bigint: true, throwIfNoEntry: false });
  const stamp = st ? stampFrom(st) : '-';
  const known = closedBreaks.get(file);
  if (known && known.stamp === stamp) return known.breaks;
  const breaks = breaksIn(file);
  if (st?.isFile()) closedBreaks.set(file, { stamp, breaks });
  else closedBreaks.delete(file);
  return breaks;
}

/**
 * The seqs of recorded breaks (`audit.gap`) since the last acknowledgement, oldest first.
 * The types are in the clear, so this needs no key.
 */
export function unacknowledgedGaps(dir: string): number[] {
  return unacknowledgedGapLines(dir).map((g) => g.seq);
}

/** The recorded breaks since the last acknowledgement, oldest first, with their sealed bodies. */
export function unacknowledgedGapLines(dir: string, upTo?: number): GapLine[] {
  const found: GapLine[][] = [];
  const all = logSegments(dir);
  // The log's own segments, up to the head's: a file past it is no part of what is sealed.
  const files = upTo === undefined ? all : all.slice(0, upTo);
  for (let i = files.length - 1; i >= 0; i--) {
    const file = files[i] as string;
    const b = i === files.length - 1 ? breaksIn(file) : closedSegmentBreaks(file);
    found.push(b.gaps);
    if (b.acknowledged) break;
  }
  return found.reverse().flat();
}
