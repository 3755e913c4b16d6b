/**
 * One audit line (docs/AUDIT.md, "Entry line"). Lines are attacker-controlled input to the
 * verifier: they are matched against the one canonical shape byte by byte, never by
 * JSON.parse, so a malformed line is a reported finding and never an exception.
 */
import type { SecureBuffer } from '../lib/secure.js';
import { sha256Public } from '../lib/openssl.js';
import { mac } from './keys.js';

export const ZERO_HASH = '0'.repeat(64);

export interface EntryFields {
  seq: number;
  time: string;
  type: string;
  epoch: number;
  prev: string;
  body: string; // base64 of the sealed body
}

export interface ParsedLine extends EntryFields {
  /** The bytes the MAC covers. */
  signed: Buffer;
  mac: Buffer;
  /** SHA-256 of the whole line (without the newline), hex: the next entry's prev. */
  hash: string;
}

function signedPart(f: EntryFields): string {
  return (
    `{"v":1,"seq":${f.seq},"time":${JSON.stringify(f.time)},"type":${JSON.stringify(f.type)},` +
    `"epoch":${f.epoch},"prev":"${f.prev}","body":"${f.body}"`
  );
}

/** The chain hash of a line without its newline (the next entry's prev), hex: public bytes. */
export function lineHash(line: Uint8Array): string {
  return sha256Public(line, Buffer.alloc(32)).toString('hex');
}

const MAC_OPEN = ',"mac":"';
/** The MAC's bytes, read out as hex at once (public). */
const scratch = Buffer.alloc(32);
const CLOSE = '"}\n';

/**
 * The line's bytes, with its newline, and its hash (of the line without the newline). The text
 * is encoded once: the MAC is taken over the first part of the buffer, its hex written after it,
 * and the chain hash taken over the whole (lineHash).
 */
export function encodeLineBytes(
  f: EntryFields,
  key: SecureBuffer,
): { bytes: Buffer; hash: string } {
  const signed = signedPart(f);
  const n = Buffer.byteLength(signed, 'utf8');
  // Every byte is written below (public bytes: a slice of Node's pool will do, unzeroed).
  const bytes = Buffer.allocUnsafe(n + MAC_OPEN.length + 64 + CLOSE.length);
  bytes.write(signed, 0, 'utf8');
  let at = n + bytes.write(MAC_OPEN, n, 'latin1');
  at += bytes.write(mac(key, bytes.subarray(0, n), scratch).toString('hex'), at, 'latin1');
  at += bytes.write(CLOSE, at, 'latin1');
  const hash = lineHash(bytes.subarray(0, at - 1));
  return { bytes, hash };
}

/** The line (without newline) and its hash. */
export function encodeLine(f: EntryFields, key: SecureBuffer): { line: string; hash: string } {
  const { bytes, hash } = encodeLineBytes(f, key);
  return { line: bytes.toString('utf8', 0, bytes.length - 1), hash };
}

/**
 * Where the fields of a canonical line are (byte offsets into it), with its numbers read.
 * The grammar is docs/AUDIT.md's, checked byte by byte (no regex, no copy, no string): the
 * verifier runs this on every line of the log.
 */
export interface LineView {
  seq: number;
  epoch: number;
  timeAt: number;
  typeAt: number;
  typeEnd: number;
  prevAt: number;
  bodyAt: number;
  bodyEnd: number;
  /** The signed part is bytes [0, signedEnd). */
  signedEnd: number;
  macAt: number;
}

/** An ASCII string's bytes (the grammar's literals, event types). */
export const asciiBytes = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));
const HEAD = asciiBytes('{"v":1,"seq":');
const TIME = asciiBytes(',"time":"');
const TYPE = asciiBytes('","type":"');
const EPOCH = asciiBytes('","epoch":');
const PREV = asciiBytes(',"prev":"');
const BODY = asciiBytes('","body":"');
const MAC = asciiBytes(',"mac":"');
const TAIL = asciiBytes('"}');
/** The time's shape: D is a digit, anything else itself. */
const TIME_SHAPE = asciiBytes('DDDD-DD-DDTDD:DD:DD.DDDZ');
const D = 0x44;

/** at + l.length when l is at at, else -1. */
function literal(b: Uint8Array, at: number, l: Uint8Array): number {
  if (at < 0 || at + l.length > b.length) return -1;
  for (let i = 0; i < l.length; i++) if (b[at + i] !== l[i]) return -1;
  return at + l.length;
}

/** Character classes by byte, one bit each: a table lookup per byte on the verifier's path. */
const DIGIT = 1;
const LOWER_HEX = 2;
const TYPE_CHAR = 4;
const BASE64 = 8;
const CLASS = Uint8Array.from({ length: 257 }, (_, c) => {
  const digit = c >= 0x30 && c <= 0x39;
  const lower = c >= 0x61 && c <= 0x7a;
  return (
    (digit ? DIGIT | LOWER_HEX | BASE64 : 0) |
    (c >= 0x61 && c <= 0x66 ? LOWER_HEX : 0) |
    (lower || c === 0x5f ? TYPE_CHAR : 0) |
    (lower || (c >= 0x41 && c <= 0x5a) || c === 0x2b || c === 0x2f ? BASE64 : 0)
  );
});
/** The class bits of b[i]; 0 past the end (index 256 is no byte's). */
const classOf = (b: Uint8Array, i: number): number => CLASS[b[i] ?? 256] ?? 0;
const isDigit = (b: Uint8Array, i: number): boolean => (classOf(b, i) & DIGIT) !== 0;

/** A number of 1..max digits with no leading zero (a lone 0 only when zeroOk); its end, or -1. */
function number(b: Uint8Array, at: number, max: number, zeroOk: boolean): number {
  if (at < 0 || !isDigit(b, at)) return -1;
  if (b[at] === 0x30) return zeroOk ? at + 1 : -1;
  let end = at + 1;
  while (end - at < max && isDigit(b, end)) end++;
  return end;
}

function digitsValue(b: Uint8Array, from: number, to: number): number {
  let v = 0;
  for (let i = from; i < to; i++) v = v * 10 + ((b[i] ?? 0) - 0x30);
  return v;
}

/** 64 lowercase hex digits at at: their end, or -1. */
function hex64(b: Uint8Array, at: number): number {
  if (at < 0 || at + 64 > b.length) return -1;
  for (let i = at; i < at + 64; i++) if ((classOf(b, i) & LOWER_HEX) === 0) return -1;
  return at + 64;
}

/** The one canonical shape of a line (without its newline), or undefined. */
export function scanLine(b: Uint8Array): LineView | undefined {
  const seqAt = literal(b, 0, HEAD);
  const seqEnd = number(b, seqAt, 15, false);
  const timeAt = literal(b, seqEnd, TIME);
  if (timeAt < 0 || timeAt + TIME_SHAPE.length > b.length) return undefined;
  for (let i = 0; i < TIME_SHAPE.length; i++) {
    const want = TIME_SHAPE[i];
    const c = b[timeAt + i];
    if (want === D ? !isDigit(b, timeAt + i) : c !== want) return undefined;
  }
  const typeAt = literal(b, timeAt + TIME_SHAPE.length, TYPE);
  if (typeAt < 0) return undefined;
  let dot = typeAt;
  while (dot - typeAt < 20 && (classOf(b, dot) & TYPE_CHAR) !== 0) dot++;
  if (dot === typeAt || b[dot] !== 0x2e) return undefined;
  let typeEnd = dot + 1;
  while (typeEnd - dot - 1 < 20 && (classOf(b, typeEnd) & TYPE_CHAR) !== 0) typeEnd++;
  if (typeEnd === dot + 1) return undefined;
  const epochAt = literal(b, typeEnd, EPOCH);
  const epochEnd = number(b, epochAt, 10, true);
  const prevAt = literal(b, epochEnd, PREV);
  const bodyAt = literal(b, hex64(b, prevAt), BODY);
  if (bodyAt < 0) return undefined;
  // The body is most of a line: find its closing quote natively, then check what it encloses
  // in one bounded loop (the verifier's hottest byte loop).
  const quote = b.indexOf(0x22, bodyAt);
  if (quote < 0) return undefined;
  let bodyEnd = bodyAt;
  while (bodyEnd < quote && ((CLASS[b[bodyEnd] as number] as number) & BASE64) !== 0) bodyEnd++;
  for (let pad = 0; pad < 2 && b[bodyEnd] === 0x3d; pad++) bodyEnd++;
  if (bodyEnd !== quote) return undefined;
  const signedEnd = bodyEnd + 1;
  const macAt = literal(b, signedEnd, MAC);
  const end = literal(b, hex64(b, macAt), TAIL);
  if (end !== b.length) return undefined;
  return {
    seq: digitsValue(b, seqAt, seqEnd),
    epoch: digitsValue(b, epochAt, epochEnd),
    timeAt,
    typeAt,
    typeEnd,
    prevAt,
    bodyAt,
    bodyEnd,
    signedEnd,
    macAt,
  };
}

/** Whether the scanned line's type is exactly `type` (its ASCII bytes). */
export function typeIs(line: Uint8Array, v: LineView, type: Uint8Array): boolean {
  if (v.typeEnd - v.typeAt !== type.length) return false;
  for (let i = 0; i < type.length; i++) if (line[v.typeAt + i] !== type[i]) return false;
  return true;
}

/** The fields of a canonical line, or undefined when the line is not one. */
export function parseLine(line: string): ParsedLine | undefined {
  const b = Buffer.from(line, 'utf8');
  const v = scanLine(b);
  if (!v) return undefined;
  return {
    seq: v.seq,
    time: b.toString('latin1', v.timeAt, v.timeAt + TIME_SHAPE.length),
    type: b.toString('latin1', v.typeAt, v.typeEnd),
    epoch: v.epoch,
    prev: b.toString('latin1', v.prevAt, v.prevAt + 64),
    body: b.toString('latin1', v.bodyAt, v.bodyEnd),
    signed: b.subarray(0, v.signedEnd),
    mac: Buffer.from(b.toString('latin1', v.macAt, v.macAt + 64), 'hex'),
    hash: lineHash(b),
  };
}
