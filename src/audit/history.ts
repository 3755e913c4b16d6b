/**
 * Questions about what the log already holds, read from its end without a key: the hash at a
 * seq (checkpoints), and the breaks recorded since the last acknowledgement.
 */
import { sha256Public } from '../lib/openssl.js';
import { parseLine, scanLine } from './entry.js';
import { scanBackFor, scanBackLines } from './tail.js';
import { listSegments } from './verify.js';

/** The hash of the entry at seq, looked for from the end; undefined when there is none. */
export function hashAt(dir: string, seq: number): string | undefined {
  let found: string | undefined;
  for (const file of listSegments(dir).reverse()) {
    let passed = false;
    // Every line's shape is checked in place (a malformed one is passed over) and only the one
    // at seq hashed: the walk back to a checkpoint at lock and unlock covers every entry since.
    scanBackLines(file, (line) => {
      const v = scanLine(line);
      if (!v) return false;
      if (v.seq === seq) found = sha256Public(line, Buffer.alloc(32)).toString('hex');
      passed = v.seq <= seq;
      return passed;
    });
    if (passed) break;
  }
  return found;
}

/** What every line of an `audit.*` type holds (the types are in the clear). */
const AUDIT_TYPE = Buffer.from('"type":"audit.', 'latin1');

/**
 * The seqs of recorded breaks (`audit.gap`) since the last acknowledgement, oldest first.
 * The types are in the clear, so this needs no key.
 */
export function unacknowledgedGaps(dir: string): number[] {
  const gaps: number[] = [];
  for (const file of listSegments(dir).reverse()) {
    const stop = scanBackFor(file, AUDIT_TYPE, (line) => {
      const e = parseLine(line);
      if (e?.type === 'audit.acknowledged') return true;
      if (e?.type === 'audit.gap') gaps.push(e.seq);
      return false;
    });
    if (stop) break;
  }
  return gaps.reverse();
}
