/**
 * `keyward audit verify` (docs/AUDIT.md, "Verification"). Reports the first bad entry and why;
 * never throws on malformed input.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { SecureBuffer } from '../lib/secure.js';
import { asciiBytes, scanLine, typeIs, ZERO_HASH } from './entry.js';
import { sha256Public } from '../lib/openssl.js';
import { EpochKeys, TagChecker } from './keys.js';
import { segmentName } from './state.js';
import { readOwnFile } from '../lib/files.js';

/**
 * How far the epoch may rise from one entry to the next, and past 0 at the log's first entry.
 * A writer advances it at most twice per append (an hour passed; a rotation), more only after
 * crashes between the state and the line; this bounds the keys a forged epoch makes the
 * verifier derive (0.35 us each here) before its MAC can be checked.
 */
export const MAX_EPOCH_STEP = 10_000;
/**
 * The highest epoch a segment verified on its own (--path) may start at: over a thousand years
 * of hourly epochs, and at most ~4 s of keys to derive. Without it, a file whose first line
 * claims epoch 9,999,999,999 kept the verifier deriving keys for about an hour.
 */
export const MAX_STANDALONE_EPOCH = 10_000_000;
const ZERO_BYTES = Buffer.alloc(32);

export interface Checkpoint {
  seq: number;
  hash: string;
}

export interface VerifyOptions {
  /** The seed S: with it every MAC is checked; without it only the chain. */
  seed?: SecureBuffer | undefined;
  /** Sealed heads (the checkpoint file's, the vault's): the log must reach and hold each. */
  checkpoints?: readonly Checkpoint[] | undefined;
  /**
   * Whether an `audit.acknowledged` entry is the person's (the vault's record); without it every
   * one is taken as it is (no vault to ask).
   */
  acknowledged?: ((seq: number, hash: string) => boolean) | undefined;
  /** 'libsodium': every MAC checked as writers make them, not through OpenSSL (tests). */
  tagCheck?: 'libsodium' | undefined;
  onProgress?: ((bytesDone: number, bytesTotal: number) => void) | undefined;
}

export interface Finding {
  file: string;
  line: number;
  seq?: number;
  reason: string;
  /** The log does not extend a checkpoint (a cut): a break `audit acknowledge` can cover, where
   * a broken link or MAC is not one. */
  checkpoint?: true;
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
  | {
      ok: false;
      entries: number;
      finding: Finding;
      macsChecked: boolean;
      gaps: RecordedGap[];
      /** The log's last entry, when the whole chain was read (a checkpoint's finding). */
      headSeq?: number;
      headHash?: string;
    };

/** A segment file's number, from its name (log-N.jsonl). */
export const segmentNumber = (file: string): number => Number(path.basename(file).slice(4, -6));

/** The segment files of a log directory, in order. Gaps are reported by verifySegments. */
export function listSegments(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  // Every name a writer could make, however many digits (segmentName pads to six, no more):
  // a file past log-999999 is listed, and, like any name that is not the next segment's, found.
  return names
    .filter((n) => /^log-\d+\.jsonl$/.test(n))
    .map((n) => ({ n, at: Number(n.slice(4, -6)) }))
    .sort((a, b) => a.at - b.at || (a.n < b.n ? -1 : a.n > b.n ? 1 : 0))
    .map(({ n }) => path.join(dir, n));
}

/**
 * The log's segments as writers made them: log-000001 on, each the next, up to the first file
 * out of place (a copy put past the log, a name no writer makes). What is past it is a break
 * that verify and a sealing writer report (chain.ts); these questions are about the log.
 */
export function logSegments(dir: string): string[] {
  const files = listSegments(dir);
  return files.slice(0, inPlace(files));
}

/** How many of listed segment files, from the first, are log-000001 on, each the next. */
export function inPlace(files: readonly string[]): number {
  const n = files.findIndex((f, i) => !f.endsWith(`/${segmentName(i + 1)}`));
  return n < 0 ? files.length : n;
}

/** Hex digit values by byte; -1 for anything else (only lowercase reaches here: scanLine). */
const HEX = Int8Array.from({ length: 256 }, (_, c) =>
  c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x61 + 10 : -1,
);

/** 64 hex digits of line at `at`, decoded into out (32 bytes). */
function unhex(line: Uint8Array, at: number, out: Buffer): Buffer {
  for (let i = 0; i < 32; i++)
    out[i] = ((HEX[line[at + 2 * i] ?? 0] ?? 0) << 4) | (HEX[line[at + 2 * i + 1] ?? 0] ?? 0);
  return out;
}

const ROTATED = asciiBytes('audit.rotated');
const GAP = asciiBytes('audit.gap');
const ACKNOWLEDGED = asciiBytes('audit.acknowledged');

/** The entry before the current one, as far as the next needs it. */
interface Prior {
  seq: number;
  epoch: number;
  rotated: boolean;
  hash: Buffer;
}

/**
 * Verifies segments in order. `standalone` verifies one file on its own (--path): its first
 * entry's prev and seq are taken as given unless it is the log's first entry.
 *
 * The walk is over the files' bytes: each line is checked in place (scanLine), its MAC and
 * hash computed on a view of it, so the cost per entry is the two hashes and little else.
 */
export function verifySegments(
  files: readonly string[],
  opts: VerifyOptions = {},
  standalone = false,
): VerifyResult {
  const keys = opts.seed ? new EpochKeys(opts.seed) : undefined;
  let tags: TagChecker | undefined;
  // Whatever happens in the walk (a finding, an exception), the keys and states go.
  try {
    tags = keys ? TagChecker.create(opts.tagCheck !== 'libsodium') : undefined;
    return walk(files, opts, standalone, keys, tags);
  } finally {
    tags?.free();
    keys?.free();
  }
}

function walk(
  files: readonly string[],
  opts: VerifyOptions,
  standalone: boolean,
  keys: EpochKeys | undefined,
  tags: TagChecker | undefined,
): VerifyResult {
  // Tags are checked under one epoch's key at a time: set again when the epoch moves.
  let tagEpoch = -1;
  const macsChecked = keys !== undefined;
  let entries = 0;
  let prev: Prior | undefined;
  // Two hash buffers in turn: the current entry's, and its predecessor's.
  const hashes = [Buffer.alloc(32), Buffer.alloc(32)] as const;
  const prevBytes = Buffer.alloc(32);
  const tag = Buffer.alloc(32);
  const checkpoints = standalone ? [] : [...(opts.checkpoints ?? [])];
  const atCheckpoint = new Map<number, string>();
  const wanted = new Set(checkpoints.map((c) => c.seq));
  const gaps: RecordedGap[] = [];
  const total = files.reduce(
    (n, f) => n + (fs.statSync(f, { throwIfNoEntry: false })?.size ?? 0),
    0,
  );
  let done = 0;
  const fail = (
    file: string,
    line: number,
    reason: string,
    seq?: number,
    checkpoint?: true,
  ): VerifyResult => {
    const finding: Finding =
      seq === undefined ? { file, line, reason } : { file, line, seq, reason };
    if (!checkpoint) return { ok: false, entries, finding, macsChecked, gaps };
    finding.checkpoint = true;
    // Read whole: what `audit acknowledge --head` names.
    const headSeq = prev?.seq ?? 0;
    const headHash = prev ? prev.hash.toString('hex') : ZERO_HASH;
    return { ok: false, entries, finding, macsChecked, gaps, headSeq, headHash };
  };
  for (const [i, file] of files.entries()) {
    const base = path.basename(file);
    if (!standalone && base !== segmentName(i + 1)) {
      return fail(base, 0, `segment ${segmentName(i + 1)} is missing (found ${base})`);
    }
    const bytes = readOwnFile(file);
    if (bytes.length > 0 && bytes[bytes.length - 1] !== 0x0a) {
      let lines = 1;
      for (let at = bytes.indexOf(0x0a); at >= 0; at = bytes.indexOf(0x0a, at + 1)) lines++;
      return fail(base, lines, 'the last line is torn (no newline)');
    }
    if (!standalone && i < files.length - 1 && bytes.length === 0)
      return fail(base, 0, 'a closed segment is empty');
    for (let start = 0, j = 0; start < bytes.length; j++) {
      const end = bytes.indexOf(0x0a, start);
      const line = bytes.subarray(start, end);
      const last = end === bytes.length - 1;
      start = end + 1;
      const lineNo = j + 1;
      const e = scanLine(line);
      if (!e)
        return fail(base, lineNo, 'not a well-formed audit entry', prev ? prev.seq + 1 : undefined);
      const linkedTo = unhex(line, e.prevAt, prevBytes);
      if (prev === undefined && (!standalone || e.seq === 1)) {
        if (e.seq !== 1)
          return fail(
            base,
            lineNo,
            `the log starts at seq ${e.seq}, not 1 (entries before it are missing)`,
            e.seq,
          );
        // eslint-disable-next-line no-restricted-syntax -- hashes of public lines
        if (!linkedTo.equals(ZERO_BYTES))
          return fail(base, lineNo, 'the first entry does not start the chain', e.seq);
        if (e.epoch > MAX_EPOCH_STEP)
          return fail(base, lineNo, `epoch ${e.epoch} at the first entry`, e.seq);
      }
      // A segment on its own, its first entry taken as given: its epoch is bounded all the same.
      if (prev === undefined && e.epoch > MAX_STANDALONE_EPOCH)
        return fail(
          base,
          lineNo,
          `epoch ${e.epoch} at the segment's first entry (more than ${MAX_STANDALONE_EPOCH.toLocaleString('en-US')}: no log reaches it)`,
          e.seq,
        );
      if (prev) {
        if (e.seq !== prev.seq + 1)
          return fail(
            base,
            lineNo,
            `seq ${e.seq} follows seq ${prev.seq} (an entry is missing, reordered or inserted)`,
            e.seq,
          );
        // eslint-disable-next-line no-restricted-syntax -- hashes of public lines
        if (!linkedTo.equals(prev.hash))
          return fail(
            base,
            lineNo,
            "prev does not match the previous entry's hash (an entry was changed, removed or reordered)",
            e.seq,
          );
        if (e.epoch < prev.epoch || e.epoch - prev.epoch > MAX_EPOCH_STEP)
          return fail(base, lineNo, `epoch ${e.epoch} after epoch ${prev.epoch}`, e.seq);
        if (prev.rotated && j !== 0)
          return fail(base, lineNo, 'entries follow a rotation entry in the same segment', e.seq);
      }
      if (keys && tags && e.epoch !== tagEpoch) {
        tags.setKey(keys.at(e.epoch));
        tagEpoch = e.epoch;
      }
      if (tags && !tags.ok(line.subarray(0, e.signedEnd), unhex(line, e.macAt, tag))) {
        return fail(
          base,
          lineNo,
          'the MAC does not verify (the entry was changed or forged)',
          e.seq,
        );
      }
      const rotated = typeIs(line, e, ROTATED);
      if (!standalone && last && i < files.length - 1 && !rotated) {
        return fail(base, lineNo, 'a closed segment does not end with its rotation entry', e.seq);
      }
      // SHA-256 of the (public) line, through OpenSSL (lib/openssl.ts says why).
      const hash = sha256Public(line, prev?.hash === hashes[0] ? hashes[1] : hashes[0]);
      // Breaks recorded by writers are reported every time, until a person acknowledges them.
      if (typeIs(line, e, GAP)) gaps.push({ seq: e.seq, acknowledged: false });
      if (typeIs(line, e, ACKNOWLEDGED)) {
        if (opts.acknowledged && !opts.acknowledged(e.seq, hash.toString('hex')))
          return fail(
            base,
            lineNo,
            'an audit.acknowledged entry not made with this vault (acknowledging takes the passphrase; a process that can write the log wrote this one)',
            e.seq,
          );
        for (const g of gaps) g.acknowledged = true;
      }
      if (wanted.has(e.seq)) atCheckpoint.set(e.seq, hash.toString('hex'));
      // One record of the previous entry, rewritten in place (no allocation per line).
      if (prev) {
        prev.seq = e.seq;
        prev.epoch = e.epoch;
        prev.rotated = rotated;
        prev.hash = hash;
      } else prev = { seq: e.seq, epoch: e.epoch, rotated, hash };
      entries += 1;
    }
    done += bytes.length;
    opts.onProgress?.(done, total);
  }
  for (const cp of checkpoints.sort((x, y) => y.seq - x.seq)) {
    if (!prev || prev.seq < cp.seq) {
      const last = files.at(-1);
      return fail(
        last ? path.basename(last) : '(none)',
        0,
        `the log ends at seq ${prev?.seq ?? 0} but the checkpoint sealed in the vault says seq ${cp.seq}: entries were deleted from the end`,
        undefined,
        true,
      );
    }
    // The hash at the checkpoint's seq, taken on the way.
    if (atCheckpoint.get(cp.seq) !== cp.hash) {
      return fail(
        '(checkpoint)',
        0,
        `the entry at seq ${cp.seq} differs from the one the vault's checkpoint sealed: the log was changed at or before it (cut there and written again, or rewritten from an earlier entry), and no entry up to it can be vouched for`,
        cp.seq,
        true,
      );
    }
  }
  return {
    ok: true,
    entries,
    headSeq: prev?.seq ?? 0,
    headHash: prev ? prev.hash.toString('hex') : ZERO_HASH,
    macsChecked,
    segments: files.length,
    gaps,
  };
}
