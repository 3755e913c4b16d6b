/**
 * Writing vault.kw's record log (docs/FORMAT.md): frames encoded and chained, and appended to the
 * file this process last saw, fsynced, a write cut short taken back. records.ts decides what to
 * write and when; this file writes it.
 */
import fs from 'node:fs';
import { openOwnFile, type FileId } from '../lib/files.js';
import { sodium } from '../lib/sodium.js';
import type { IntegrityError } from '../errors.js';
import type { SecureBuffer } from '../lib/secure.js';
import { blake2b256, seal, type Rng } from './crypto.js';
import { corruptError, type Slot } from './format.js';
import type { KIND_DELETE } from './log-format.js';
import {
  encodeFrame,
  encodeLogHeader,
  encodeMeta,
  FLAG_COMMIT,
  frameAd,
  KIND_MARK,
  KIND_PUT,
  NAME_TAG_BYTES,
} from './log-format.js';
import type { Entry, RecordKeys } from './records.js';

/** The file as this process last saw or wrote it: an append goes only to that file. */
export interface Disk {
  dev: bigint;
  ino: bigint;
  /** Its length then (committed frames, and any write cut short after them). */
  size: number;
  /** Where its committed frames end. */
  end: number;
  base: bigint;
  sum: Buffer;
}

export interface Pending {
  kind: typeof KIND_PUT | typeof KIND_DELETE | typeof KIND_MARK;
  name: string;
  entry?: Entry;
  /** Time of a removal (ms). */
  at: number;
  /** Live records after this one. */
  live: number;
}

export function nameTag(tagKey: SecureBuffer, name: string): Buffer {
  const out = Buffer.alloc(NAME_TAG_BYTES);
  sodium.crypto_generichash(out, Buffer.from(name, 'utf8'), tagKey);
  return out;
}

function changedUnderLock(): IntegrityError {
  return corruptError('vault.kw changed while this process held the vault lock', {
    hint: 'another program writes vault.kw without keyward; nothing was written',
  });
}

/**
 * A whole new vault.kw: its header, then a mark (even a vault with no record has a frame that
 * authenticates the header), then every entry, at the sequence numbers from base.
 */
export function encodeRewrite(
  keys: RecordKeys,
  entries: readonly Entry[],
  base: bigint,
  h: { keyId: Buffer; slots: readonly Slot[] },
  rng: Rng,
): { header: Buffer; sum: Buffer; chunks: Buffer[]; seq: bigint; prev: Buffer } {
  const header = encodeLogHeader({ vaultId: keys.vaultId, keyId: h.keyId, base, slots: h.slots });
  const sum = Buffer.from(header.subarray(header.length - 32));
  const mark: Pending = { kind: KIND_MARK, name: '', at: 0, live: 0 };
  const items = entries.map((e, i): Pending => ({
    kind: KIND_PUT,
    name: e.name,
    entry: e,
    at: e.updated,
    live: i + 1,
  }));
  return { header, sum, ...encodeFrames(keys, [mark, ...items], base, sum, rng) };
}

/**
 * The file a save wrote (`written`), once it is in place: the path must still name it, or the
 * save fails (a file renamed over vault.kw, or its removal, after the save's checks).
 */
export function stillNamed<T extends FileId>(file: string, written: T): T {
  const named = fs.statSync(file, { throwIfNoEntry: false, bigint: true });
  if (named?.dev !== written.dev || named.ino !== written.ino)
    throw corruptError('vault.kw was replaced or removed while this change was saved to it', {
      hint: 'another program writes vault.kw without keyward; the file there now may not hold the change (keyward secret list)',
    });
  return written;
}

/** Frames for items, chained from prev at the sequence numbers after seq; the last commits. */
export function encodeFrames(
  keys: RecordKeys,
  items: readonly Pending[],
  seq: bigint,
  prev: Buffer,
  rng: Rng,
): { chunks: Buffer[]; seq: bigint; prev: Buffer } {
  const chunks: Buffer[] = [];
  for (const [i, p] of items.entries()) {
    seq += 1n;
    const flags = p.kind | (i === items.length - 1 ? FLAG_COMMIT : 0);
    const tag = nameTag(keys.tag(), p.name);
    const fixed = Buffer.concat([Buffer.from([flags]), tag]);
    const e = p.entry;
    const meta = e
      ? encodeMeta(KIND_PUT, {
          name: p.name,
          id: e.id,
          created: e.created,
          at: e.updated,
          live: p.live,
        })
      : encodeMeta(p.kind, { name: p.name, at: p.at, live: p.live });
    const ad = frameAd(keys.vaultId, seq, prev, fixed);
    const frame = encodeFrame(
      flags,
      tag,
      seal(keys.index(), meta, ad, rng),
      e?.box ?? Buffer.alloc(0),
    );
    prev = blake2b256(frame.subarray(4));
    chunks.push(frame);
  }
  return { chunks, seq, prev };
}

/**
 * Appends `data` (committed frames) to `file` at `disk.end`, fsynced: only to the file this process
 * last saw (same device, inode and length), a longer one cut back to its committed end first, and
 * the bytes taken back if the write fails. Updates disk.
 */
export function appendFrames(file: string, disk: Disk, data: Buffer): void {
  const end = disk.end;
  const fd = openOwnFile(file, fs.constants.O_WRONLY);
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    if (st.dev !== disk.dev || st.ino !== disk.ino || st.size !== BigInt(disk.size))
      throw changedUnderLock();
    // A write cut short by a killed writer is not part of the vault: it goes.
    if (st.size > end) fs.ftruncateSync(fd, end);
    try {
      let off = 0;
      while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off, end + off);
      fs.fsyncSync(fd);
    } catch (e) {
      try {
        fs.ftruncateSync(fd, end);
      } catch {
        // The bytes stay: a frame cut short is cut by the next writer, but whole frames whose
        // last commits them are the vault's from now on (the error says the change may be saved).
      }
      throw e;
    }
    // A file renamed over vault.kw, or its removal, while this wrote: the frames went to a file
    // that is no longer the vault's, and the change is not saved.
    stillNamed(file, st);
  } finally {
    fs.closeSync(fd);
  }
  disk.size = end + data.length;
  disk.end = disk.size;
}
