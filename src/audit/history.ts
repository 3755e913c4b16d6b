/**
 * Questions about what the log already holds, read from its end without a key: the hash at a
 * seq (checkpoints), and the breaks recorded since the last acknowledgement.
 */
import { parseLine } from './entry.js';
import { scanBack } from './tail.js';
import { listSegments } from './verify.js';

/** The hash of the entry at seq, looked for from the end; undefined when there is none. */
export function hashAt(dir: string, seq: number): string | undefined {
  let found: string | undefined;
  for (const file of listSegments(dir).reverse()) {
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
export function unacknowledgedGaps(dir: string): number[] {
  const gaps: number[] = [];
  for (const file of listSegments(dir).reverse()) {
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
