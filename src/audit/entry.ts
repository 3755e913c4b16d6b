/**
 * One audit line (docs/AUDIT.md, "Entry line"). Lines are attacker-controlled input to the
 * verifier: they are matched against the one canonical shape by a strict pattern, never by
 * JSON.parse, so a malformed line is a reported finding and never an exception.
 */
import type { SecureBuffer } from '../lib/secure.js';
import { mac, sha256 } from './keys.js';

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

/** The line (without newline) and its hash. */
export function encodeLine(f: EntryFields, key: SecureBuffer): { line: string; hash: string } {
  const signed = signedPart(f);
  const line = `${signed},"mac":"${mac(key, Buffer.from(signed, 'utf8')).toString('hex')}"}`;
  return { line, hash: sha256(Buffer.from(line, 'utf8')).toString('hex') };
}

const LINE_RE =
  /^(\{"v":1,"seq":([1-9][0-9]{0,14}),"time":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z)","type":"([a-z_]{1,20}\.[a-z_]{1,20})","epoch":(0|[1-9][0-9]{0,9}),"prev":"([0-9a-f]{64})","body":"([A-Za-z0-9+/]*={0,2})"),"mac":"([0-9a-f]{64})"\}$/;

/** The fields of a canonical line, or undefined when the line is not one. */
export function parseLine(line: string): ParsedLine | undefined {
  const m = LINE_RE.exec(line);
  if (!m) return undefined;
  const [, signed, seq, time, type, epoch, prev, body, tag] = m;
  if (signed === undefined || tag === undefined) return undefined;
  return {
    seq: Number(seq),
    time: time ?? '',
    type: type ?? '',
    epoch: Number(epoch),
    prev: prev ?? '',
    body: body ?? '',
    signed: Buffer.from(signed, 'utf8'),
    mac: Buffer.from(tag, 'hex'),
    hash: sha256(Buffer.from(line, 'utf8')).toString('hex'),
  };
}
