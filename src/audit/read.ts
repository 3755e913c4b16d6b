/** Reading the log's entries: `audit export`, `audit tail`, `audit verify --against`. */
import fs from 'node:fs';
import { readOwnFile } from '../lib/files.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import type { Vault } from '../vault/index.js';
import { BodyOpener } from './body.js';
import { compareWithCopy, readCopy, type CopyComparison } from './copy.js';
import { parseLine } from './entry.js';
import { boxPublicOf } from './keys.js';
import { auditPaths } from './state.js';
import { logSegments } from './verify.js';
import { BOX_SECRET } from './vault-keys.js';

export interface ReadEntry {
  seq: number;
  time: string;
  type: string;
  epoch: number;
  hash: string;
  /** The decrypted body, when the vault was open. */
  body?: unknown;
  line: string;
}

/**
 * Which entries readEntries returns: the last `last` (the newest within `maxBytes` of log lines),
 * or those after seq `after` (the oldest within `maxBytes`); at least one when there is one.
 * Only those are opened.
 */
export interface EntrySelection {
  last?: number;
  after?: number;
  maxBytes?: number;
}

/** How many entries from the start of `list` fit in `max` bytes of log lines (at least one). */
function fitting(list: ReadonlyArray<{ line: string }>, max: number): number {
  let bytes = 0;
  const n = list.findIndex((e, i) => (bytes += e.line.length + 1) > max && i > 0);
  return n < 0 ? list.length : n;
}

/**
 * The entries of the log in order (all, or a selection); bodies opened when a vault is given.
 * Malformed lines are skipped.
 */
export function readEntries(
  home: string,
  v?: Vault,
  onProgress?: (done: number, total: number) => void,
  which: EntrySelection = {},
): ReadEntry[] {
  let out: Array<ReadEntry & { sealed: string }> = [];
  const files = logSegments(auditPaths(home).dir);
  const total = files.reduce((n, f) => n + fs.statSync(f).size, 0);
  let done = 0;
  for (const f of files) {
    const text = readOwnFile(f).toString('utf8');
    for (const line of text.split('\n')) {
      const e = parseLine(line);
      if (!e) continue;
      const { seq, time, type, epoch, hash } = e;
      out.push({ seq, time, type, epoch, hash, line, sealed: e.body });
    }
    done += Buffer.byteLength(text);
    onProgress?.(done, total);
  }
  const max = which.maxBytes;
  if (which.last !== undefined) {
    out = out.slice(Math.max(0, out.length - which.last));
    // The newest entries within max bytes.
    if (max !== undefined) out = out.slice(out.length - fitting([...out].reverse(), max));
  }
  if (which.after !== undefined) {
    const after = which.after;
    out = out.filter((e) => e.seq > after);
    // The oldest entries within max bytes.
    if (max !== undefined) out = out.slice(0, fitting(out, max));
  }
  const bodies = v
    ? openBodies(
        v,
        out.map((e) => e.sealed),
      )
    : undefined;
  if (!bodies) return out.map(({ sealed: _sealed, ...entry }) => entry);
  return out.map(({ sealed: _sealed, ...entry }, i) => ({
    ...entry,
    body: bodies[i] ?? '(body does not open with this vault)',
  }));
}

/**
 * Entries' bodies (base64, as the lines hold them) opened with the vault's box keys, the current
 * one and those it replaced: each parsed, or undefined when none opens it; undefined for all
 * when the vault holds no box key.
 */
export function openBodies(v: Vault, sealed: readonly string[]): Array<unknown> | undefined {
  const keys: Array<{ publicKey: Buffer; secretKey: SecureBuffer }> = [];
  for (const n of [BOX_SECRET, ...v.internalNames(`${BOX_SECRET}.`)]) {
    const sk = v.revealInternal(n as `@${string}`);
    if (sk) keys.push({ publicKey: boxPublicOf(sk), secretKey: sk });
  }
  if (keys.length === 0) return undefined;
  const opener = new BodyOpener(keys);
  try {
    return sealed.map((b) => {
      const plain = opener.open(Buffer.from(b, 'base64'));
      if (!plain) return undefined;
      // A body sealed to the public box key by anyone: not JSON is no body.
      try {
        return JSON.parse(plain.toString('utf8')) as unknown;
      } catch {
        return undefined;
      }
    });
  } finally {
    opener.close();
    for (const k of keys) secureFree(k.secretKey);
  }
}

/** `audit verify --against FILE`: the local log against a copy shipped off the machine. */
export function verifyAgainst(home: string, copyFile: string): CopyComparison {
  // The copy first: a file that is no copy is said before the local log is read.
  const copy = readCopy(copyFile);
  const local = new Map<number, string>();
  for (const e of readEntries(home)) local.set(e.seq, e.hash);
  return compareWithCopy(local, copy);
}
