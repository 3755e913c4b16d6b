/**
 * An independent reader of `vault.kw`, versions 2 and 1, written from docs/FORMAT.md alone, as an
 * auditor would: libsodium (sodium-native) is called directly and nothing is shared with src/.
 * Each step names the part of FORMAT.md it follows. It exists to check the committed vectors
 * (test/vectors/vault/, test/vectors/vault-v1/) against the document, not against keyward's code.
 *
 * Every failure is a VaultFailure with the error code FORMAT.md gives ("Reading order and what
 * each failure means") and a reason saying which documented check refused the file, and where.
 */
import crypto from 'node:crypto';
import { createRequire } from 'node:module';

/** The few libsodium calls FORMAT.md names, typed here so no declaration is shared with src/. */
type B = Buffer;
interface Sodium {
  crypto_pwhash(out: B, passwd: B, salt: B, ops: number, mem: number, alg: number): void;
  crypto_pwhash_ALG_ARGON2ID13: number;
  crypto_generichash(out: B, input: B, key?: B): void;
  crypto_kdf_derive_from_key(out: B, id: number, ctx: B, key: B): void;
  crypto_aead_xchacha20poly1305_ietf_decrypt(m: B, n: null, c: B, ad: B, iv: B, k: B): number;
}
const sodium = createRequire(import.meta.url)('sodium-native') as Sodium;

export type VaultCode = 'VAULT_CORRUPT' | 'VAULT_BAD_PASSPHRASE' | 'VAULT_UNSUPPORTED_VERSION';

/** Why a file was refused: one value per documented check. */
export type VaultReason =
  | 'not-a-vault' // step 1: fewer than 8 bytes, or not the magic
  | 'unsupported-version' // step 2
  | 'checksum' // step 3: header_sum (v2) or the whole-file checksum (v1)
  | 'structure' // step 3: a field out of bounds, an impossible length
  | 'no-committed-frame' // v2 "The mark": nothing but an unkeyed checksum vouches for the header
  | 'kdf-bounds' // "Key slots": opslimit / memlimit outside the allowed range
  | 'no-slot-opens' // step 4
  | 'key-id' // step 5: key_id is not subkey 6 of DK
  | 'meta-box' // step 5 (v2): a frame's meta box fails: "the chain"
  | 'name-tag' // step 5 (v2): a frame's name tag is not its name's
  | 'delete-missing' // step 5 (v2): a delete names a record that isn't there
  | 'live-count' // step 5 (v2): a frame's live count is wrong
  | 'last-value-box' // step 5 (v2): the last frame's value box fails on its own
  | 'value-box' // a live record's value box fails (v2: covered by the chain already)
  | 'index-box' // step 5 (v1): the index fails to decrypt
  | 'record-count' // step 5 (v1): record_count differs from the index entries
  | 'value-record'; // step 5 (v1): a value record fails to decrypt

export class VaultFailure extends Error {
  constructor(
    readonly code: VaultCode,
    readonly reason: VaultReason,
    readonly detail: string,
    /** v2: the index (from 0) of the frame where the check failed. */
    readonly frame?: number,
  ) {
    super(`${code} (${reason}): ${detail}`);
  }
}
const corrupt = (reason: VaultReason, detail: string, frame?: number) =>
  new VaultFailure('VAULT_CORRUPT', reason, detail, frame);

/** A v2 put: `frame` is the index (from 0) of the frame whose value box holds its value. */
export type Record2 = {
  name: string;
  recordId: B;
  created: bigint;
  updated: bigint;
  frame: number;
};
/**
 * A v2 frame: `offset` is its length field's in the file; `body` its bytes after the length
 * field (what the next frame's `prev` hashes).
 */
export type Frame = { offset: number; flags: number; kind: 'put' | 'delete' | 'mark'; body: B } & {
  nameTag: B;
  metaBox: B;
  valueBox: B;
};
export interface Opened {
  version: 1 | 2;
  vaultId: Buffer;
  /** name -> value (UTF-8), the live records. */
  entries: Map<string, string>;
  /** v2 only: base, every frame read (committed or not), how many are committed, live records. */
  base?: bigint;
  frames?: Frame[];
  committed?: number;
  records?: Map<string, Record2>;
  /** v2: every put read, in order (older versions of a name included). */
  puts?: Record2[];
  /** The subkeys of DK (test data: the auditor may reopen a box by hand). */
  keys: Subkeys;
}

// ---- primitives, as the preamble of FORMAT.md defines them ----

/** `BLAKE2b-256(x)`: crypto_generichash, 32-byte output, no key. */
export function blake2b256(x: Buffer): Buffer {
  const out = Buffer.alloc(32);
  sodium.crypto_generichash(out, x);
  return out;
}

/** XChaCha20-Poly1305 open of `nonce (24) || ciphertext`; null when authentication fails. */
export function openBox(box: Buffer, key: Buffer, ad: Buffer): Buffer | null {
  if (box.length < 24 + 16) return null;
  const out = Buffer.alloc(box.length - 24 - 16);
  const [nonce, ciphertext] = [box.subarray(0, 24), box.subarray(24)];
  try {
    sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(out, null, ciphertext, ad, nonce, key);
    return out;
  } catch {
    return null;
  }
}

// Big-endian integers ("All integers are big-endian").
const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const u64 = (n: bigint) => Buffer.from(n.toString(16).padStart(16, '0'), 'hex');
const ascii = (s: string) => Buffer.from(s, 'latin1');
const same = (a: Buffer, b: Buffer) => a.length === b.length && crypto.timingSafeEqual(a, b);

// ---- "Keys" ----

/** The subkeys of DK, `crypto_kdf_derive_from_key(id, ctx = "keyward1")`: id 1 index key, id 2 secrets key, id 6 key id (16 bytes), id 7 name tag key (length: 32). */
export type Subkeys = { index: B; secrets: B; keyId: B; nameTag: B };
export function subkeys(dk: Buffer): Subkeys {
  const derive = (id: number, len: number) => {
    const out = Buffer.alloc(len);
    sodium.crypto_kdf_derive_from_key(out, id, ascii('keyward1'), dk);
    return out;
  };
  return {
    index: derive(1, 32),
    secrets: derive(2, 32),
    keyId: derive(6, 16),
    nameTag: derive(7, 32),
  };
}

/** `name_tag = BLAKE2b-128(key = subkey 7, name)`. */
export function nameTag(key: Buffer, name: Buffer): Buffer {
  const out = Buffer.alloc(16);
  sodium.crypto_generichash(out, name, key);
  return out;
}

/** The value box's AD: `"keyward secret v1" || vault_id || record_id || u16 name_len || name`. */
export function valueAd(vaultId: Buffer, recordId: Buffer, name: Buffer): Buffer {
  return Buffer.concat([ascii('keyward secret v1'), vaultId, recordId, u16(name.length), name]);
}

// ---- the header, common to both versions (offsets 0..49, then the key slots) ----

/** A key slot; `offset` is its type byte's. */
export type Slot = { offset: number; type: number; body: B };
/** `counter` is v2's `base` or v1's `generation`; `end` the offset just after the last slot. */
export type Header = { version: number; vaultId: B; keyId: B; counter: bigint; slots: Slot[] } & {
  end: number;
};

/** Steps 1 to 3 of "Reading order" for the fixed part and the slots (the checksums are apart). */
export function readHeader(file: Buffer): Header {
  // Step 1: fewer than 8 bytes, or not the magic "KEYWARD".
  if (file.length < 8 || !file.subarray(0, 7).equals(ascii('KEYWARD'))) {
    throw corrupt('not-a-vault', 'not a keyward vault');
  }
  // Step 2: a version byte other than 1 or 2.
  const version = file[7]!;
  if (version !== 1 && version !== 2) {
    const code = 'VAULT_UNSUPPORTED_VERSION';
    throw new VaultFailure(code, 'unsupported-version', `version byte ${version}`);
  }
  // Step 3, structure: vault_id (16) at 8, key_id (16) at 24, u64 at 40, slot_count at 48.
  if (file.length < 49) throw corrupt('structure', 'header shorter than 49 bytes');
  const n = file[48]!;
  if (n < 1 || n > 8) throw corrupt('structure', `slot_count ${n} outside 1..8`);
  const slots: Slot[] = [];
  let pos = 49;
  for (let i = 0; i < n; i++) {
    // "N key slots: type (u8) || body_len (u16) || body"
    if (pos + 3 > file.length) throw corrupt('structure', 'key slot out of bounds');
    const type = file[pos]!;
    const len = file.readUInt16BE(pos + 1);
    if (pos + 3 + len > file.length) throw corrupt('structure', 'key slot body out of bounds');
    slots.push({ offset: pos, type, body: file.subarray(pos + 3, pos + 3 + len) });
    pos += 3 + len;
  }
  const [vaultId, keyId, counter] = [
    file.subarray(8, 24),
    file.subarray(24, 40),
    file.readBigUInt64BE(40),
  ];
  return { version, vaultId, keyId, counter, slots, end: pos };
}

/**
 * "Key slots", step 4 and the key_id check of step 5: unwrap DK with the passphrase.
 * `adVersion` is the version byte in the wrap's AD: FORMAT.md says it is the slot format's,
 * version 1, in both file versions ("their wraps' AD names version 1, the slot format").
 */
export function unwrapDk(h: Header, passphrase: string, adVersion = 1): Buffer {
  for (const slot of h.slots) {
    // Type 2 (keyring) needs KEK_k from the OS keyring, which a file alone does not hold.
    if (slot.type !== 1) continue;
    // Type 1, 97 bytes: alg (u8) || opslimit (u32) || memlimit KiB (u32) || salt (16) ||
    // nonce (24) || wrapped DK (48).
    const b = slot.body;
    if (b.length !== 97) throw corrupt('structure', `passphrase slot of ${b.length} bytes`);
    const alg = b[0]!;
    const ops = b.readUInt32BE(1);
    const memKiB = b.readUInt32BE(5);
    const salt = b.subarray(9, 25);
    // "A reader refuses (exit 8) a passphrase slot with opslimit outside 1..32 or memlimit
    // outside 8 MiB..4 GiB" (the code is not named; exit 8 is VAULT_CORRUPT's).
    if (alg !== 1) throw corrupt('structure', `passphrase slot alg ${alg}`);
    if (ops < 1 || ops > 32 || memKiB < 8 * 1024 || memKiB > 4 * 1024 * 1024) {
      throw corrupt('kdf-bounds', `opslimit ${ops}, memlimit ${memKiB} KiB`);
    }
    // KEK_p = crypto_pwhash(passphrase, salt, opslimit, memlimit, argon2id13); memlimit in bytes.
    const [kek, pass] = [Buffer.alloc(32), Buffer.from(passphrase, 'utf8')];
    sodium.crypto_pwhash(kek, pass, salt, ops, memKiB * 1024, sodium.crypto_pwhash_ALG_ARGON2ID13);
    // AD = "KEYWARD" || version || vault_id || type || alg || opslimit || memlimit || salt.
    const versionIdType = Buffer.from([adVersion, ...h.vaultId, slot.type]);
    const ad = Buffer.concat([ascii('KEYWARD'), versionIdType, b.subarray(0, 25)]);
    const dk = openBox(b.subarray(25, 97), kek, ad);
    if (dk === null || dk.length !== 32) continue;
    // Step 5: key_id must be subkey 6 of the unwrapped DK.
    if (!same(subkeys(dk).keyId, h.keyId)) throw corrupt('key-id', 'key_id is not subkey 6 of DK');
    return dk;
  }
  throw new VaultFailure('VAULT_BAD_PASSPHRASE', 'no-slot-opens', 'no key slot opens');
}

/** Opens a vault file of either version. */
export function openVault(file: Buffer, passphrase: string): Opened {
  const h = readHeader(file);
  return h.version === 2 ? openV2(file, h, passphrase) : openV1(file, h, passphrase);
}

// ---- version 2: the record log ----

/** The frames after the header, split by their lengths ("Commits and torn writes"). */
export function splitFrames(file: Buffer, start: number): Frame[] {
  const frames: Frame[] = [];
  let pos = start;
  while (pos < file.length) {
    // Fewer than 4 bytes left, or a length past the end: a frame cut short, ignored.
    if (pos + 4 > file.length) break;
    const len = file.readUInt32BE(pos);
    // Zeros from where a frame length is expected to the end of the file: ignored.
    if (len === 0 && file.subarray(pos).every((x) => x === 0)) break;
    if (pos + 4 + len > file.length) break;
    // A frame holds at least flags (1), name_tag (16), meta_len (2) and a meta box (24 + 16).
    // Any shorter length is "any other impossible length": VAULT_CORRUPT.
    if (len < 1 + 16 + 2 + 40) throw corrupt('structure', `impossible frame length ${len}`);
    const body = file.subarray(pos + 4, pos + 4 + len);
    const flags = body[0]!;
    const kindNo = flags & 0x7f;
    const kind = kindNo === 1 ? 'put' : kindNo === 2 ? 'delete' : kindNo === 3 ? 'mark' : null;
    if (kind === null) throw corrupt('structure', `frame kind ${kindNo}`, frames.length);
    const metaLen = body.readUInt16BE(17);
    if (metaLen < 40 || 19 + metaLen > len) {
      throw corrupt('structure', `meta_len ${metaLen} out of bounds`, frames.length);
    }
    // flags (1) || name_tag (16) || meta_len (2) || meta box (meta_len) || value box (the rest)
    const [nameTag, valueBox] = [body.subarray(1, 17), body.subarray(19 + metaLen)];
    const metaBox = body.subarray(19, 19 + metaLen);
    frames.push({ offset: pos, flags, kind, nameTag, metaBox, valueBox, body });
    pos += 4 + len;
  }
  return frames;
}

/** A cursor over `b`; running past its end is a structure out of bounds (step 3). */
function cursor(b: Buffer, what: string, frame?: number) {
  let pos = 0;
  const take = (n: number) => {
    if (pos + n > b.length) throw corrupt('structure', `${what} out of bounds`, frame);
    return b.subarray((pos += n) - n, pos);
  };
  const [u16, u32] = [() => take(2).readUInt16BE(), () => take(4).readUInt32BE()];
  return { take, u16, u32, u64: () => take(8).readBigUInt64BE(), left: () => b.length - pos };
}

function openV2(file: Buffer, h: Header, passphrase: string): Opened {
  // Step 3: header_sum = BLAKE2b-256(every preceding byte), right after the slots.
  if (h.end + 32 > file.length) throw corrupt('structure', 'no header_sum');
  const headerSum = file.subarray(h.end, h.end + 32);
  if (!same(blake2b256(file.subarray(0, h.end)), headerSum)) {
    throw corrupt('checksum', 'header_sum mismatch');
  }
  // "base (u64, at most 2^53)".
  if (h.counter > 2n ** 53n) throw corrupt('structure', 'base above 2^53');
  // "Commits and torn writes": frames after the last commit mark (0x80) are ignored.
  // "The mark": a file with no committed frame is refused.
  const frames = splitFrames(file, h.end + 32);
  let committed = 0;
  frames.forEach((f, i) => {
    if (f.flags & 0x80) committed = i + 1;
  });
  if (committed === 0) throw corrupt('no-committed-frame', 'no frame authenticates the header');

  // Step 4: unwrap DK; step 5: key_id.
  const dk = unwrapDk(h, passphrase);
  const k = subkeys(dk);

  // Step 5, "The chain": every committed frame's meta box, in order.
  const records = new Map<string, Record2>();
  const puts: Record2[] = [];
  let prev: Buffer = headerSum; // "header_sum for the first frame"
  for (let i = 0; i < committed; i++) {
    const f = frames[i]!;
    const seq = h.counter + BigInt(i) + 1n; // seq = base + i + 1
    // frame_ad = "keyward frame v2" || vault_id || u64 seq || prev (32) || flags || name_tag
    const seqPrevFlags = Buffer.concat([u64(seq), prev, Buffer.from([f.flags])]);
    const ad = Buffer.concat([ascii('keyward frame v2'), h.vaultId, seqPrevFlags, f.nameTag]);
    const meta = openBox(f.metaBox, k.index, ad);
    if (meta === null) throw corrupt('meta-box', `frame ${i} (seq ${seq}): meta box fails`, i);
    const r = cursor(meta, `frame ${i}: meta`, i);
    const name = r.take(r.u16());
    // "a frame's name tag isn't its name's" (a mark's tag is the empty name's).
    if (!same(nameTag(k.nameTag, name), f.nameTag)) {
      throw corrupt('name-tag', `frame ${i}: name tag is not its name's`, i);
    }
    const key = name.toString('latin1');
    if (f.kind === 'put') {
      // put: u16 name_len || name || record_id (16) || u64 created || u64 updated || u32 live
      const recordId = Buffer.from(r.take(16));
      const created = r.u64();
      const updated = r.u64();
      const rec = { name: key, recordId, created, updated, frame: i };
      records.set(key, rec);
      puts.push(rec);
      if (f.valueBox.length < 24 + 16) throw corrupt('structure', 'put without a value box', i);
    } else if (f.kind === 'delete') {
      // delete: u16 name_len || name || u64 removed_at || u32 live
      r.u64();
      if (!records.delete(key)) {
        throw corrupt('delete-missing', `frame ${i}: deletes a record that isn't there`, i);
      }
    } else {
      // mark: u16 0 || u64 0 || u32 live
      if (name.length !== 0 || r.u64() !== 0n) throw corrupt('structure', 'mark with data', i);
    }
    const live = r.u32();
    if (r.left() !== 0) throw corrupt('structure', `frame ${i}: meta too long`, i);
    // "value box (put only; empty for a delete)"; a mark holds no record either.
    if (f.kind !== 'put' && f.valueBox.length !== 0) {
      throw corrupt('structure', `frame ${i}: a ${f.kind} with a value box`, i);
    }
    // "live = the number of live records after this frame".
    if (live !== records.size) {
      throw corrupt('live-count', `frame ${i}: live ${live}, counted ${records.size}`, i);
    }
    // prev = BLAKE2b-256 of the previous frame's bytes after its length field.
    prev = blake2b256(f.body);
  }

  // "The last frame's value box, which no later frame covers, is checked on its own."
  const open = (rec: Record2, reason: 'last-value-box' | 'value-box') => {
    const ad = valueAd(h.vaultId, rec.recordId, ascii(rec.name));
    const value = openBox(frames[rec.frame]!.valueBox, k.secrets, ad);
    if (value === null) throw corrupt(reason, `frame ${rec.frame}: value box fails`, rec.frame);
    return value;
  };
  // A put in the last frame is the newest put, and still live: nothing after it deletes it.
  if (frames[committed - 1]!.kind === 'put') open(puts[puts.length - 1]!, 'last-value-box');
  // The live records' values (the chain already vouches for every earlier frame's bytes).
  const entries = new Map<string, string>();
  for (const rec of records.values())
    entries.set(rec.name, open(rec, 'value-box').toString('utf8'));
  const { vaultId, counter: base } = h;
  return { version: 2, vaultId, entries, base, frames, committed, records, puts, keys: k };
}

// ---- version 1 (read for migration) ----

type IndexEntry = { name: string; id: string; created: string; updated: string; size: number };

function openV1(file: Buffer, h: Header, passphrase: string): Opened {
  // Step 3: checksum = BLAKE2b-256(every preceding byte), the file's last 32 bytes.
  if (file.length < h.end + 4 + 4 + 32) throw corrupt('structure', 'file too short');
  const body = file.subarray(0, file.length - 32);
  if (!same(blake2b256(body), file.subarray(file.length - 32))) {
    throw corrupt('checksum', 'checksum mismatch');
  }
  const header = file.subarray(0, h.end); // "`header` below is every byte up to here"
  const c = cursor(body.subarray(h.end), 'record');
  // index_len (u32), then the index record: nonce (24) || ciphertext.
  const indexBox = c.take(c.u32());
  // record_count M (u32), then M value records: len (u32) || nonce (24) || ciphertext.
  const count = c.u32();
  const boxes: Buffer[] = [];
  for (let i = 0; i < count; i++) boxes.push(c.take(c.u32()));
  if (c.left() !== 0) throw corrupt('structure', 'bytes after the value records');

  // Step 4, and key_id (step 5).
  const k = subkeys(unwrapDk(h, passphrase));

  // Step 5: the index, AD = header.
  const json = openBox(indexBox, k.index, header);
  if (json === null) throw corrupt('index-box', 'index fails to decrypt');
  // "UTF-8 JSON, keys in this order, no whitespace": the text is its canonical serialization.
  const text = json.toString('utf8');
  let index: { entries: IndexEntry[] };
  try {
    index = JSON.parse(text) as { entries: IndexEntry[] };
    const canonical = JSON.stringify({
      entries: index.entries.map(({ name, id, created, updated, size }) => {
        return { name, id, created, updated, size };
      }),
    });
    if (canonical !== text) throw new Error('not canonical');
  } catch {
    throw corrupt('structure', 'the index is not JSON in the documented form');
  }
  // "Entries are sorted by name" (by bytes: names are ASCII).
  const names = index.entries.map((e) => e.name);
  if (names.some((n, i) => i > 0 && Buffer.compare(ascii(names[i - 1]!), ascii(n)) >= 0)) {
    throw corrupt('structure', 'index entries not sorted by name');
  }
  // "record_count M (u32), equal to the number of index entries".
  if (count !== index.entries.length) {
    throw corrupt('record-count', `record_count ${count}, ${index.entries.length} entries`);
  }
  // "value records follow in the same order"; AD binds vault_id, entry_id and the name.
  const entries = new Map<string, string>();
  index.entries.forEach((e, i) => {
    const name = ascii(e.name);
    const value = openBox(boxes[i]!, k.secrets, valueAd(h.vaultId, Buffer.from(e.id, 'hex'), name));
    if (value === null) throw corrupt('value-record', `value record ${i} fails to decrypt`);
    if (value.length !== e.size) throw corrupt('structure', `value record ${i}: size differs`);
    entries.set(e.name, value.toString('utf8'));
  });
  return { version: 1, vaultId: h.vaultId, entries, keys: k };
}
