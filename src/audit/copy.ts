/**
 * `audit verify --against FILE`: the local log against a copy shipped off the machine (a
 * collector's file of RFC 5424 lines, or `journalctl -o json`). The copy is untrusted input, and
 * any process of the machine could put lines into it (`logger -t keyward`; for journald, any
 * process of the user): so a line counts only in keyward's exact shape, two different entries at
 * one seq are a finding (a rollback rewritten past, or a forgery: never "the last one wins"), a
 * line that looks like keyward's and can't be read is listed (its seq, if its entry is here, is
 * then "not in the copy"), and a copy with no entry at all is no evidence: an error. Forged lines
 * can make the check fail (seqs "missing here"); they can't make a deleted or changed entry pass
 * while the copy holds its real line.
 */
import fs from 'node:fs';
import { KeywardError } from '../errors.js';
import { SD_ID } from './ship.js';

/** What a copy off the machine says against the local log. */
export interface CopyComparison {
  /** Entries (distinct seqs) the copy holds. */
  inCopy: number;
  /** Seqs the copy holds that the local log does not: deleted here. */
  missingLocally: number[];
  /** Seqs whose hash differs between the copy and the local log: changed here. */
  changed: number[];
  /** Local entries the copy lacks (not shipped, or dropped on the way). */
  notShipped: number[];
  /** Seqs the copy holds two or more different entries for. */
  conflicting: number[];
  /** Lines (1-based) that look like keyward's entries and can't be read. */
  unreadable: number[];
  /** journald entries another user's process wrote (its _UID), not counted. */
  foreign: number;
}

export interface Copy {
  /** Every hash the copy gives each seq (more than one: a conflict). */
  entries: Map<number, Set<string>>;
  unreadable: number[];
  foreign: number;
  /** Lines read. */
  lines: number;
}

/** The longest line looked at (a line past it is read as its first part). */
const MAX_LINE = 64 * 1024;
const SD_OPEN = `[${SD_ID} `;
/** keyward's structured data, exactly as formatSyslog writes it: all six parameters, in order. */
const SD_ENTRY =
  /^\[keyward@32473 seq="([1-9]\d{0,14})" type="[a-z_]{1,20}\.[a-z_]{1,20}" epoch="(?:0|[1-9]\d{0,9})" decision="(?:allow|deny|error|info)" hash="([0-9a-f]{64})" prev="[0-9a-f]{64}"\]/;
const SD_DROPPED = /^\[keyward@32473 dropped="\d{1,15}"\]/;
const SEQ = /^[1-9]\d{0,14}$/;
const HEX64 = /^[0-9a-f]{64}$/;

function add(copy: Copy, seq: number, hash: string): void {
  const set = copy.entries.get(seq) ?? new Set<string>();
  set.add(hash);
  copy.entries.set(seq, set);
}

/** One line of the copy into copy (lineNo is 1-based). */
function readLine(copy: Copy, raw: string, lineNo: number, uid: number | undefined): void {
  // A byte-order mark, a record separator (json-seq), spaces and a CR around the line.
  let from0 = 0;
  while (raw.charCodeAt(from0) === 0xfeff || raw.charCodeAt(from0) === 0x1e) from0 += 1;
  const line = raw.slice(from0).trim();
  const at = line.indexOf(SD_OPEN);
  if (at >= 0) {
    // The bracket's own text only: nothing past it is scanned again for each candidate.
    const sd = line.slice(at, at + 400);
    const m = SD_ENTRY.exec(sd);
    if (m) add(copy, Number(m[1]), m[2] ?? '');
    else if (!SD_DROPPED.test(sd)) copy.unreadable.push(lineNo);
    return;
  }
  if (!line.startsWith('{') || !line.includes('"KEYWARD_')) return;
  let o: unknown;
  try {
    o = JSON.parse(line);
  } catch {
    copy.unreadable.push(lineNo);
    return;
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) {
    copy.unreadable.push(lineNo);
    return;
  }
  const r = o as Record<string, unknown>;
  if (r['KEYWARD_DROPPED'] !== undefined && r['KEYWARD_SEQ'] === undefined) return;
  const seq = r['KEYWARD_SEQ'];
  const hash = r['KEYWARD_HASH'];
  if (
    r['SYSLOG_IDENTIFIER'] !== 'keyward' ||
    typeof seq !== 'string' ||
    !SEQ.test(seq) ||
    typeof hash !== 'string' ||
    !HEX64.test(hash)
  ) {
    copy.unreadable.push(lineNo);
    return;
  }
  // journald's _UID is its own (trusted) field: another user's process is not keyward's.
  const from = r['_UID'];
  if (uid !== undefined && from !== undefined && from !== String(uid)) {
    copy.foreign += 1;
    return;
  }
  add(copy, Number(seq), hash);
}

/** The copy's lines, as text, from a file read in chunks (its size does not bound memory). */
function* linesOf(fd: number): Generator<string> {
  const buf = Buffer.alloc(1024 * 1024);
  let parts: Buffer[] = [];
  let held = 0;
  const take = (b: Buffer) => {
    if (held >= MAX_LINE) return;
    const part = b.subarray(0, MAX_LINE - held);
    parts.push(Buffer.from(part));
    held += part.length;
  };
  for (;;) {
    const n = fs.readSync(fd, buf, 0, buf.length, null);
    if (n === 0) break;
    let start = 0;
    for (let nl = buf.indexOf(0x0a, start); nl >= 0 && nl < n; nl = buf.indexOf(0x0a, start)) {
      take(buf.subarray(start, nl));
      yield Buffer.concat(parts).toString('utf8');
      parts = [];
      held = 0;
      start = nl + 1;
    }
    take(buf.subarray(start, n));
  }
  if (held > 0) yield Buffer.concat(parts).toString('utf8');
}

/**
 * The copy in file: a regular file or a pipe (`--against /dev/stdin`). A copy with no entry at
 * all is no evidence of anything: an error, not a pass.
 */
export function readCopy(file: string, uid = process.getuid?.()): Copy {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new KeywardError('USAGE', `the copy ${file} can't be read (${code})`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() && !st.isFIFO())
      throw new KeywardError('USAGE', `the copy ${file} is not a file or a pipe`);
    const copy = parseLines(linesOf(fd), uid);
    if (copy.entries.size === 0)
      throw new KeywardError(
        'USAGE',
        `the copy ${file} holds no keyward audit entry (${copy.lines} lines read${copy.unreadable.length > 0 ? `, ${copy.unreadable.length} like keyward's that can't be read` : ''})`,
        { hint: "give the collector's file of RFC 5424 lines, or `journalctl -o json` output" },
      );
    return copy;
  } catch (e) {
    if (e instanceof KeywardError) throw e;
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new KeywardError('USAGE', `the copy ${file} can't be read (${code})`);
  } finally {
    fs.closeSync(fd);
  }
}

/** The entries of a copy given as lines of text. */
export function parseLines(lines: Iterable<string>, uid = process.getuid?.()): Copy {
  const copy: Copy = { entries: new Map(), unreadable: [], foreign: 0, lines: 0 };
  for (const line of lines) readLine(copy, line, ++copy.lines, uid);
  return copy;
}

export function compareWithCopy(local: ReadonlyMap<number, string>, copy: Copy): CopyComparison {
  const missingLocally: number[] = [];
  const changed: number[] = [];
  const conflicting: number[] = [];
  for (const [seq, hashes] of copy.entries) {
    if (hashes.size > 1) conflicting.push(seq);
    const here = local.get(seq);
    if (here === undefined) missingLocally.push(seq);
    else if (!hashes.has(here)) changed.push(seq);
  }
  const notShipped = [...local.keys()].filter((s) => !copy.entries.has(s));
  const byNumber = (a: number, b: number) => a - b;
  return {
    inCopy: copy.entries.size,
    missingLocally: missingLocally.sort(byNumber),
    changed: changed.sort(byNumber),
    notShipped: notShipped.sort(byNumber),
    conflicting: conflicting.sort(byNumber),
    unreadable: copy.unreadable,
    foreign: copy.foreign,
  };
}
