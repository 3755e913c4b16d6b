/**
 * The chain as a writer checks it before it builds on the log (docs/AUDIT.md, "Checkpoints,
 * breaks and acknowledgement"): that what is there now follows from an entry it knows, line by
 * line (each seq one more, each prev the hash of the line before), across rotations. No key: the
 * epoch key is in the state file, which any process of the user can read, so a MAC says nothing
 * of who wrote a line; the links to an entry a writer knows do.
 */
import fs from 'node:fs';
import { openOwnFile } from '../lib/files.js';
import { asciiBytes, lineHash, scanLine, typeIs } from './entry.js';
import { segmentName } from './state.js';
import { scanBackLines } from './tail.js';
import { inPlace, listSegments, segmentNumber } from './verify.js';

/** Rotations behind a long-running writer's back past which its segment is not taken as reached. */
export const MAX_ROTATIONS_BEHIND = 1000;

const ROTATED = asciiBytes('audit.rotated');

/** A line's prev, as hex. */
const prevOf = (line: Buffer, prevAt: number) => line.toString('latin1', prevAt, prevAt + 64);

/**
 * What a long-running writer reads after its own last entry at most (others' lines, in all
 * segments): more has no honest writer between two of its batches, and is a break.
 */
export const MAX_BYTES_AFTER = 64 * 1024 * 1024;

/**
 * A file's bytes from offset on, to its last newline (a torn end is not a line yet); undefined
 * past `most` bytes.
 */
function linesFrom(file: string, offset: number, most: number): Buffer | undefined {
  let fd: number;
  try {
    fd = openOwnFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return Buffer.alloc(0);
    throw e;
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size <= offset) return Buffer.alloc(0);
    if (size - offset > most) return undefined;
    const buf = Buffer.alloc(size - offset);
    const n = fs.readSync(fd, buf, 0, buf.length, offset);
    return buf.subarray(0, buf.lastIndexOf(0x0a, n - 1) + 1);
  } finally {
    fs.closeSync(fd);
  }
}

/** Why the chain does not follow on; stateChanged: the state names a segment it can't lead to. */
export interface ChainBreak {
  reason: string;
  stateChanged: boolean;
}

/**
 * Why what follows a writer's last entry (`from`: its segment, seq, hash and where its line
 * ends) up to the end of segment `to` (the one the state names) does not follow from it, or
 * undefined when it does: every line after it links to the one before, and each segment before
 * `to` ends with its rotation entry. A line someone appended that links to anything else (a
 * forged history they mean to put in place of the writer's later) is a break, as is a state
 * that names a segment no rotation leads to.
 */
export function chainsOn(
  pathOf: (segment: number) => string,
  from: { segment: number; seq: number; hash: string; end: number },
  to: number,
): ChainBreak | undefined {
  const where = `the agent's last entry (seq ${from.seq}, in ${segmentName(from.segment)})`;
  if (to < from.segment || to - from.segment > MAX_ROTATIONS_BEHIND)
    return {
      reason: `the audit state named ${segmentName(to)}, which no rotation leads to from ${where}: the state file was changed`,
      stateChanged: true,
    };
  let seq = from.seq;
  let hash = from.hash;
  let rotated = false;
  let budget = MAX_BYTES_AFTER;
  for (let k = from.segment; k <= to; k++) {
    if (k > from.segment && !rotated)
      return {
        reason: `the audit state named ${segmentName(to)}, but ${segmentName(k - 1)} does not end with the rotation to ${segmentName(k)} after ${where}: the state file was changed`,
        stateChanged: true,
      };
    const bytes = linesFrom(pathOf(k), k === from.segment ? from.end : 0, budget);
    if (bytes === undefined)
      return {
        reason: `more than ${MAX_BYTES_AFTER / (1024 * 1024)} MiB were put after ${where} since its last batch: not a log it builds on`,
        stateChanged: false,
      };
    budget -= bytes.length;
    rotated = false;
    for (let start = 0; start < bytes.length;) {
      const end = bytes.indexOf(0x0a, start);
      const line = bytes.subarray(start, end);
      start = end + 1;
      const v = scanLine(line);
      if (!v)
        return {
          reason: `a malformed line follows ${where} in ${segmentName(k)}`,
          stateChanged: false,
        };
      if (v.seq !== seq + 1 || prevOf(line, v.prevAt) !== hash)
        return {
          reason: `the entry at seq ${v.seq} in ${segmentName(k)} does not link to seq ${seq} before it, which follows from ${where}: a line was put there that chains to something else`,
          stateChanged: false,
        };
      seq = v.seq;
      hash = lineHash(line);
      rotated = typeIs(line, v, ROTATED);
    }
  }
  return undefined;
}

/**
 * What chainsOn finds after a long-running writer's last entry (`after`), when anyone wrote
 * since: the segment it wrote in is another size (`size`, its lstat's) or the state names
 * another segment. Undefined when no one did, or it all links on.
 */
export function breakAfter(
  pathOf: (segment: number) => string,
  after: { segment: number; seq: number; hash: string; end?: number | undefined },
  size: bigint | undefined,
  segment: number,
): ChainBreak | undefined {
  if (after.end === undefined) return undefined;
  if (segment === after.segment && size !== undefined && Number(size) === after.end)
    return undefined;
  return chainsOn(pathOf, { ...after, end: after.end }, segment);
}

/**
 * The hash of the entry at seq, reached from the log's last entry through the links (each line's
 * prev is the hash of the line before it, each seq one less): `found` is that hash, or undefined
 * when the walk reached no entry at seq (a shorter log); `broken` says where a link failed
 * before it, or names a segment out of place (segmentsOutOfPlace). Hashes every line from the
 * end back to seq.
 */
export function chainBackTo(
  dir: string,
  seq: number,
  head: number,
): { found?: string; broken?: string } {
  const odd = segmentsOutOfPlace(dir, head);
  if (odd !== undefined) return { broken: odd };
  let want: { seq: number; hash: string } | undefined;
  let out: { found?: string; broken?: string } = {};
  // From the segment the head is in (the state's): a file numbered past it is no part of the log.
  const files = listSegments(dir).filter((f) => segmentNumber(f) <= head);
  const last = files.at(-1);
  for (const file of files.reverse()) {
    // Bytes after the head's last line end (a writer killed mid-line, or one writing now) are
    // no line yet: the next append cuts them and says so; they are no break.
    const done = scanBackLines(
      file,
      (line) => {
        const v = scanLine(line);
        if (!v) {
          out = { broken: `a malformed line in ${file.split('/').at(-1) ?? file}` };
          return true;
        }
        const hash = lineHash(line);
        if (want && (v.seq !== want.seq || hash !== want.hash)) {
          out = {
            broken: `the entry at seq ${want.seq + 1} does not link to the entry before it (seq ${v.seq} is there, another line)`,
          };
          return true;
        }
        if (v.seq === seq) {
          out = { found: hash };
          return true;
        }
        if (v.seq < seq) return true;
        want = { seq: v.seq - 1, hash: prevOf(line, v.prevAt) };
        return false;
      },
      file === last,
    );
    if (done) break;
  }
  return out;
}

/**
 * Why the log's directory is not segments 1 to `head` (the one the state names; it may not exist
 * yet, right after a rotation), or undefined: a file past it, or out of its place, is no part of
 * the log a writer seals, and readers that start from the highest file would read it as one.
 */
export function segmentsOutOfPlace(dir: string, head: number): string | undefined {
  const files = listSegments(dir);
  const n = inPlace(files);
  const name = (f: string | undefined) => (f ?? '').split('/').at(-1) ?? '';
  if (n > head)
    return `the log's directory holds ${name(files[head])}, past ${segmentName(head)}, which the audit state names`;
  if (n < files.length)
    return `the log's directory holds ${name(files[n])} where ${segmentName(n + 1)} belongs`;
  return undefined;
}
