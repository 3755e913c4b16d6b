/**
 * vault.kw version 2, the record log, byte by byte (docs/FORMAT.md). Structure only: the keys
 * and the decryption are in records.ts.
 *
 * A header, then frames, each one record written (a put or a delete), appended under the vault
 * lock. A write appends; it never rewrites what is there, so its cost does not grow with the
 * vault. Every length is checked before it is used: malformed bytes end in VAULT_CORRUPT.
 */
import type { IntegrityError } from '../errors.js';
import { blake2b256, KEY_ID_BYTES, NONCE_BYTES, TAG_BYTES } from './crypto.js';
import {
  corruptError,
  encodeSlots,
  MAGIC,
  readSlots,
  VAULT_ID_BYTES,
  type Slot,
} from './format.js';

export const LOG_VERSION = 2;
const MAX_SLOTS = 8;
const FIXED_HEADER = MAGIC.length + 1 + VAULT_ID_BYTES + KEY_ID_BYTES + 8 + 1; // 49
export const HEADER_SUM_BYTES = 32;
export const NAME_TAG_BYTES = 16;
/** flags (1) || name tag (16) || meta length (2) */
export const FRAME_FIXED = 1 + NAME_TAG_BYTES + 2;
export const BOX_OVERHEAD = NONCE_BYTES + TAG_BYTES;
/** The largest value (16 MiB) and its box, with room for the meta box. */
const FRAME_MAX = 16 * 1024 * 1024 + 64 * 1024;

export const KIND_PUT = 1;
export const KIND_DELETE = 2;
/**
 * A rewrite's first frame: no record, only its place in the chain, so that every file has a
 * frame that authenticates its header (a header alone has nothing but an unkeyed checksum).
 */
export const KIND_MARK = 3;
/** Generations stay exact as JS numbers (and far from u64's end). */
const MAX_BASE = 2n ** 53n;
/** Set on the last frame of a save: frames after the last one so marked were never committed. */
export const FLAG_COMMIT = 0x80;

export interface LogHeader {
  vaultId: Buffer;
  keyId: Buffer;
  /** The generation the file started at: frame i (from 0) has sequence number base + i + 1. */
  base: bigint;
  slots: Slot[];
  /** BLAKE2b-256 of the header's bytes: what the first frame chains to. */
  sum: Buffer;
  /** Header bytes including the sum. */
  length: number;
}

/** Where the committed frames of a file are; frames are read through these offsets. */
export interface LogLayout {
  header: LogHeader;
  /** Offset of each committed frame's length field. */
  starts: number[];
  /**
   * End of the last committed frame: the file's length unless a write was cut short (bytes
   * after it never committed: ignored, and cut by the next writer).
   */
  end: number;
}

export function encodeLogHeader(p: {
  vaultId: Buffer;
  keyId: Buffer;
  base: bigint;
  slots: readonly Slot[];
}): Buffer {
  const fixed = Buffer.alloc(FIXED_HEADER);
  MAGIC.copy(fixed, 0);
  fixed.writeUInt8(LOG_VERSION, MAGIC.length);
  p.vaultId.copy(fixed, 8);
  p.keyId.copy(fixed, 24);
  fixed.writeBigUInt64BE(p.base, 40);
  fixed.writeUInt8(p.slots.length, 48);
  const body = Buffer.concat([fixed, ...encodeSlots(p.slots)]);
  return Buffer.concat([body, blake2b256(body)]);
}

function truncated(what: string): IntegrityError {
  return corruptError(`vault file is truncated (in ${what})`);
}

export function parseLogHeader(bytes: Buffer): LogHeader {
  if (bytes.length < FIXED_HEADER + HEADER_SUM_BYTES) throw truncated('header');
  const vaultId = Buffer.from(bytes.subarray(8, 24));
  const keyId = Buffer.from(bytes.subarray(24, 40));
  const base = bytes.readBigUInt64BE(40);
  if (base > MAX_BASE) throw corruptError(`vault header has an impossible generation (${base})`);
  const count = bytes.readUInt8(48);
  if (count < 1 || count > MAX_SLOTS) throw corruptError(`vault has ${count} key slots`);
  const { slots, end: pos } = readSlots(bytes, FIXED_HEADER, count, () => truncated('key slot'));
  if (pos + HEADER_SUM_BYTES > bytes.length) throw truncated('header checksum');
  const sum = blake2b256(bytes.subarray(0, pos));
  // eslint-disable-next-line no-restricted-syntax -- a checksum over public bytes
  if (!sum.equals(bytes.subarray(pos, pos + HEADER_SUM_BYTES))) {
    throw corruptError('vault header is damaged (checksum mismatch)');
  }
  return { vaultId, keyId, base, slots, sum, length: pos + HEADER_SUM_BYTES };
}

/**
 * The header and the committed frames. A last frame cut short, or frames after the last commit
 * mark, are a write that was interrupted (its writer was killed before it returned): they are
 * not part of the vault, and the next writer cuts them off.
 */
export function parseLog(bytes: Buffer): LogLayout {
  const header = parseLogHeader(bytes);
  const starts: number[] = [];
  let pos = header.length;
  let end = pos;
  let pending = 0;
  while (pos + 4 <= bytes.length) {
    const len = bytes.readUInt32BE(pos);
    if (len < FRAME_FIXED + BOX_OVERHEAD || len > FRAME_MAX) {
      // Zeros to the end are blocks a crash left allocated but unwritten: not committed.
      if (isZero(bytes, pos)) break;
      throw corruptError(`vault frame at byte ${pos} has an impossible length (${len})`);
    }
    if (pos + 4 + len > bytes.length) break; // cut short
    starts.push(pos);
    pending++;
    pos += 4 + len;
    if ((bytes.readUInt8(starts[starts.length - 1]! + 4) & FLAG_COMMIT) !== 0) {
      end = pos;
      pending = 0;
    }
  }
  if (pending > 0) starts.length -= pending;
  // Every rewrite starts with a mark frame, so a file without a committed frame is not one
  // keyward wrote: its header would be authenticated by nothing.
  if (starts.length === 0) throw corruptError('vault.kw has a header and no committed record');
  return { header, starts, end };
}

function isZero(bytes: Buffer, from: number): boolean {
  for (let i = from; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** A frame's parts, as subarrays of the file's bytes. */
export interface FrameView {
  kind: number;
  tag: Buffer;
  /** flags || tag: bound into the meta box's associated data. */
  fixed: Buffer;
  metaBox: Buffer;
  valueBox: Buffer;
  /** Everything after the length field: what the next frame chains to. */
  body: Buffer;
}

export function frameAt(bytes: Buffer, start: number): FrameView {
  const len = bytes.readUInt32BE(start);
  const body = bytes.subarray(start + 4, start + 4 + len);
  const flags = body.readUInt8(0);
  const metaLen = body.readUInt16BE(1 + NAME_TAG_BYTES);
  if (FRAME_FIXED + metaLen > body.length || metaLen < BOX_OVERHEAD) {
    throw corruptError(`vault frame at byte ${start} has an impossible meta length`);
  }
  const valueBox = body.subarray(FRAME_FIXED + metaLen);
  const kind = flags & 0x7f;
  if (kind !== KIND_PUT && kind !== KIND_DELETE && kind !== KIND_MARK) {
    throw corruptError(`vault frame at byte ${start} has an unknown kind (${kind})`);
  }
  const shapeOk = kind === KIND_PUT ? valueBox.length > BOX_OVERHEAD : valueBox.length === 0;
  if (!shapeOk) throw corruptError(`vault frame at byte ${start} has the wrong shape for its kind`);
  return {
    kind,
    tag: body.subarray(1, 1 + NAME_TAG_BYTES),
    fixed: body.subarray(0, 1 + NAME_TAG_BYTES),
    metaBox: body.subarray(FRAME_FIXED, FRAME_FIXED + metaLen),
    valueBox,
    body,
  };
}

/** One frame: length || flags || tag || meta length || meta box || value box. */
export function encodeFrame(flags: number, tag: Buffer, metaBox: Buffer, valueBox: Buffer): Buffer {
  const out = Buffer.alloc(4 + FRAME_FIXED + metaBox.length + valueBox.length);
  out.writeUInt32BE(out.length - 4, 0);
  out.writeUInt8(flags, 4);
  tag.copy(out, 5);
  out.writeUInt16BE(metaBox.length, 5 + NAME_TAG_BYTES);
  metaBox.copy(out, 4 + FRAME_FIXED);
  valueBox.copy(out, 4 + FRAME_FIXED + metaBox.length);
  return out;
}

/** The meta box's associated data: the frame's place in the chain and its unencrypted fields. */
export function frameAd(vaultId: Buffer, seq: bigint, prev: Buffer, fixed: Buffer): Buffer {
  const s = Buffer.alloc(8);
  s.writeBigUInt64BE(seq, 0);
  return Buffer.concat([Buffer.from('keyward frame v2', 'ascii'), vaultId, s, prev, fixed]);
}

/** A record's metadata, as the meta box holds it. */
export interface Meta {
  name: string;
  /** put: the value box's record id (16 bytes, new at every write of the value) */
  id?: Buffer;
  created?: number;
  /** put: the time of the write; delete: the time of the removal */
  at: number;
  /** Live records after this frame (a writer learns the count from the last frame alone). */
  live: number;
}

/** put: u16 name length || name || id (16) || u64 created || u64 updated || u32 live;
 *  delete: u16 name length || name || u64 at || u32 live (times in ms since 1970). */
export function encodeMeta(kind: number, m: Meta): Buffer {
  const name = Buffer.from(m.name, 'utf8');
  const put = kind === KIND_PUT;
  const out = Buffer.alloc(2 + name.length + (put ? 16 + 8 + 8 : 8) + 4);
  let pos = out.writeUInt16BE(name.length, 0);
  pos += name.copy(out, pos);
  if (put) {
    pos += (m.id ?? Buffer.alloc(16)).copy(out, pos);
    pos = out.writeBigUInt64BE(BigInt(m.created ?? m.at), pos);
  }
  pos = out.writeBigUInt64BE(BigInt(m.at), pos);
  out.writeUInt32BE(m.live, pos);
  return out;
}

export function decodeMeta(kind: number, plain: Buffer): Meta {
  const bad = () => corruptError('vault frame has a malformed meta record');
  if (plain.length < 2) throw bad();
  const nameLen = plain.readUInt16BE(0);
  const want = 2 + nameLen + (kind === KIND_PUT ? 16 + 8 + 8 : 8) + 4;
  if (plain.length !== want) throw bad();
  let pos = 2 + nameLen;
  const name = plain.toString('utf8', 2, pos);
  if (kind === KIND_PUT) {
    const id = Buffer.from(plain.subarray(pos, pos + 16));
    const created = Number(plain.readBigUInt64BE(pos + 16));
    const at = Number(plain.readBigUInt64BE(pos + 24));
    return { name, id, created, at, live: plain.readUInt32BE(pos + 32) };
  }
  const at = Number(plain.readBigUInt64BE(pos));
  pos += 8;
  return { name, at, live: plain.readUInt32BE(pos) };
}
