/**
 * `keyward audit verify` (docs/AUDIT.md, "Verification"). Reports the first bad entry and why;
 * never throws on malformed input.
 */
import fs from 'node:fs';
import path from 'node:path';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import { parseLine, ZERO_HASH, type ParsedLine } from './entry.js';
import { epochZeroKey, macOk, nextEpochKey } from './keys.js';
import { segmentName } from './state.js';

/** An epoch may not jump further than this between two entries (bounds the verifier's work). */
const MAX_EPOCH_STEP = 1_000_000;

export interface Checkpoint {
  seq: number;
  hash: string;
}

export interface VerifyOptions {
  /** The seed S: with it every MAC is checked; without it only the chain. */
  seed?: SecureBuffer | undefined;
  /** Sealed heads (the checkpoint file's, the vault's): the log must reach and hold each. */
  checkpoints?: readonly Checkpoint[] | undefined;
  onProgress?: ((bytesDone: number, bytesTotal: number) => void) | undefined;
}

export interface Finding {
  file: string;
  line: number;
  seq?: number;
  reason: string;
}

/** A break a writer found and recorded (audit.gap), and whether a person acknowledged it since. */
export interface RecordedGap {
  seq: number;
  acknowledged: boolean;
}

export type VerifyResult =
  | {
      ok: true;
      entries: number;
      headSeq: number;
      headHash: string;
      macsChecked: boolean;
      segments: number;
      gaps: RecordedGap[];
    }
  | { ok: false; entries: number; finding: Finding; macsChecked: boolean; gaps: RecordedGap[] };

/** The segment files of a log directory, in order. Gaps are reported by verifySegments. */
export function listSegments(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => /^log-\d{6}\.jsonl$/.test(n))
    .sort()
    .map((n) => path.join(dir, n));
}

class EpochKeys {
  private epoch = 0;
  private key: SecureBuffer;
  constructor(seed: SecureBuffer) {
    this.key = epochZeroKey(seed);
  }
  at(epoch: number): SecureBuffer {
    while (this.epoch < epoch) {
      const next = nextEpochKey(this.key);
      secureFree(this.key);
      this.key = next;
      this.epoch += 1;
    }
    return this.key;
  }
  free(): void {
    secureFree(this.key);
  }
}

/**
 * Verifies segments in order. `standalone` verifies one file on its own (--path): its first
 * entry's prev and seq are taken as given unless it is the log's first entry.
 */
export function verifySegments(
  files: readonly string[],
  opts: VerifyOptions = {},
  standalone = false,
): VerifyResult {
  const keys = opts.seed ? new EpochKeys(opts.seed) : undefined;
  const macsChecked = keys !== undefined;
  let entries = 0;
  let prev: ParsedLine | undefined;
  const gaps: RecordedGap[] = [];
  const total = files.reduce(
    (n, f) => n + (fs.statSync(f, { throwIfNoEntry: false })?.size ?? 0),
    0,
  );
  let done = 0;
  const fail = (file: string, line: number, reason: string, seq?: number): VerifyResult => {
    keys?.free();
    const finding: Finding =
      seq === undefined ? { file, line, reason } : { file, line, seq, reason };
    return { ok: false, entries, finding, macsChecked, gaps };
  };
  try {
    for (const [i, file] of files.entries()) {
      const base = path.basename(file);
      if (!standalone && base !== segmentName(i + 1)) {
        return fail(base, 0, `segment ${segmentName(i + 1)} is missing (found ${base})`);
      }
      const text = fs.readFileSync(file, 'utf8');
      if (text.length > 0 && !text.endsWith('\n'))
        return fail(base, text.split('\n').length, 'the last line is torn (no newline)');
      const lines = text.length === 0 ? [] : text.slice(0, -1).split('\n');
      if (!standalone && i < files.length - 1 && lines.length === 0)
        return fail(base, 0, 'a closed segment is empty');
      for (const [j, raw] of lines.entries()) {
        const lineNo = j + 1;
        const e = parseLine(raw);
        if (!e)
          return fail(
            base,
            lineNo,
            'not a well-formed audit entry',
            prev ? prev.seq + 1 : undefined,
          );
        const first = prev === undefined;
        if (first && (!standalone || e.seq === 1)) {
          if (e.seq !== 1)
            return fail(
              base,
              lineNo,
              `the log starts at seq ${e.seq}, not 1 (entries before it are missing)`,
              e.seq,
            );
          if (e.prev !== ZERO_HASH)
            return fail(base, lineNo, 'the first entry does not start the chain', e.seq);
        }
        if (prev) {
          if (e.seq !== prev.seq + 1)
            return fail(
              base,
              lineNo,
              `seq ${e.seq} follows seq ${prev.seq} (an entry is missing, reordered or inserted)`,
              e.seq,
            );
          if (e.prev !== prev.hash)
            return fail(
              base,
              lineNo,
              "prev does not match the previous entry's hash (an entry was changed, removed or reordered)",
              e.seq,
            );
          if (e.epoch < prev.epoch || e.epoch - prev.epoch > MAX_EPOCH_STEP)
            return fail(base, lineNo, `epoch ${e.epoch} after epoch ${prev.epoch}`, e.seq);
          if (prev.type === 'audit.rotated' && j !== 0)
            return fail(base, lineNo, 'entries follow a rotation entry in the same segment', e.seq);
        }
        if (keys && !macOk(keys.at(e.epoch), e.signed, e.mac)) {
          return fail(
            base,
            lineNo,
            'the MAC does not verify (the entry was changed or forged)',
            e.seq,
          );
        }
        if (
          !standalone &&
          j === lines.length - 1 &&
          i < files.length - 1 &&
          e.type !== 'audit.rotated'
        ) {
          return fail(base, lineNo, 'a closed segment does not end with its rotation entry', e.seq);
        }
        // Breaks recorded by writers are reported every time, until a person acknowledges them.
        if (e.type === 'audit.gap') gaps.push({ seq: e.seq, acknowledged: false });
        if (e.type === 'audit.acknowledged') for (const g of gaps) g.acknowledged = true;
        prev = e;
        entries += 1;
      }
      done += Buffer.byteLength(text);
      opts.onProgress?.(done, total);
    }
    for (const cp of [...(opts.checkpoints ?? [])].sort((x, y) => y.seq - x.seq)) {
      if (standalone) break;
      if (!prev || prev.seq < cp.seq) {
        const last = files.at(-1);
        return fail(
          last ? path.basename(last) : '(none)',
          0,
          `the log ends at seq ${prev?.seq ?? 0} but the checkpoint sealed in the vault says seq ${cp.seq}: entries were deleted from the end`,
        );
      }
      // The hash at the checkpoint's seq is checked by walking again only when needed.
      const at = findSeq(files, cp.seq);
      if (at !== cp.hash) {
        return fail(
          '(checkpoint)',
          0,
          `the entry at seq ${cp.seq} differs from the one the vault's checkpoint sealed (the log was cut there and written again)`,
          cp.seq,
        );
      }
    }
    keys?.free();
    return {
      ok: true,
      entries,
      headSeq: prev?.seq ?? 0,
      headHash: prev?.hash ?? ZERO_HASH,
      macsChecked,
      segments: files.length,
      gaps,
    };
  } catch (e) {
    keys?.free();
    throw e;
  }
}

function findSeq(files: readonly string[], seq: number): string | undefined {
  for (let i = files.length - 1; i >= 0; i--) {
    const f = files[i];
    if (f === undefined) continue;
    for (const raw of fs.readFileSync(f, 'utf8').split('\n')) {
      const e = parseLine(raw);
      if (e?.seq === seq) return e.hash;
    }
  }
  return undefined;
}
