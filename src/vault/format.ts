/**
 * vault.kw version 1, byte by byte (docs/FORMAT.md), and what version 2 shares with it (the
 * magic, the key slots, the value records' associated data). Structure only: no keys here.
 * keyward reads version 1 to migrate it; every save writes version 2 (log-format.ts).
 *
 * The file is attacker-controlled input (anyone who can write the directory, a bad backup, a
 * damaged disk). Every length is checked before it is used, so malformed bytes end in a
 * VAULT_CORRUPT IntegrityError and never in a RangeError or a huge allocation.
 */
import { IntegrityError, KeywardError } from '../errors.js';
import {
  blake2b256,
  KEY_ID_BYTES,
  NONCE_BYTES,
  SALT_BYTES,
  TAG_BYTES,
  type KdfParams,
} from './crypto.js';

export const MAGIC = Buffer.from('KEYWARD', 'ascii');
export const VERSION = 1;
export const VAULT_ID_BYTES = 16;
export const CHECKSUM_BYTES = 32;
const MAX_SLOTS = 8;
const FIXED_HEADER = MAGIC.length + 1 + VAULT_ID_BYTES + KEY_ID_BYTES + 8 + 1; // 49

export const SLOT_PASSPHRASE = 1;
export const SLOT_KEYRING = 2;
export const ALG_ARGON2ID13 = 1;
export const WRAPPED_BYTES = 32 + TAG_BYTES;
/** The shortest sealed record of format 1: its nonce and tag around nothing. */
const SEALED_MIN = NONCE_BYTES + TAG_BYTES;
const PASSPHRASE_PARAMS_BYTES = 1 + 4 + 4 + SALT_BYTES; // 25
export const PASSPHRASE_SLOT_BYTES = PASSPHRASE_PARAMS_BYTES + NONCE_BYTES + WRAPPED_BYTES; // 97
export const KEYRING_SLOT_BYTES = NONCE_BYTES + WRAPPED_BYTES; // 72

export interface Slot {
  type: number;
  body: Buffer;
}

export interface ParsedVault {
  version: number;
  vaultId: Buffer;
  keyId: Buffer;
  generation: bigint;
  slots: Slot[];
  /** Every header byte: the associated data of the index record. */
  header: Buffer;
  indexRecord: Buffer;
  records: Buffer[];
}

export interface PassphraseSlot extends KdfParams {
  alg: number;
  salt: Buffer;
  /** The AD of the wrap: binds the slot's parameters to the vault. */
  params: Buffer;
  wrapped: Buffer; // nonce || ciphertext
}

function corrupt(
  message: string,
  opts = { hint: 'restore vault.kw from a backup; keyward did not change the file' },
): IntegrityError {
  return new IntegrityError('VAULT_CORRUPT', message, opts);
}

/**
 * The format version of a vault file (1 or 2), after its magic bytes: a file that isn't a vault
 * is VAULT_CORRUPT, a version this keyward doesn't read VAULT_UNSUPPORTED_VERSION.
 */
export function formatVersion(bytes: Buffer): 1 | 2 {
  // eslint-disable-next-line no-restricted-syntax -- the magic is public
  if (bytes.length < MAGIC.length + 1 || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw corrupt('not a keyward vault (bad magic bytes)');
  }
  const version = bytes.readUInt8(MAGIC.length);
  if (version !== 1 && version !== 2) {
    throw new IntegrityError(
      'VAULT_UNSUPPORTED_VERSION',
      `vault format version ${version} is not supported (this keyward reads versions 1 and 2)`,
      { hint: 'a newer keyward wrote this vault; upgrade keyward to open it' },
    );
  }
  return version;
}

/** A bounds-checked reader over attacker-controlled bytes. */
class Reader {
  private pos: number;
  constructor(
    private readonly buf: Buffer,
    start = 0,
    private readonly end = buf.length,
  ) {
    this.pos = start;
  }
  get offset(): number {
    return this.pos;
  }
  take(n: number, what: string): Buffer {
    if (n < 0 || this.pos + n > this.end) throw corrupt(`vault file is truncated (in ${what})`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  u8(what: string): number {
    return this.take(1, what).readUInt8(0);
  }
  u16(what: string): number {
    return this.take(2, what).readUInt16BE(0);
  }
  u32(what: string): number {
    return this.take(4, what).readUInt32BE(0);
  }
  u64(what: string): bigint {
    return this.take(8, what).readBigUInt64BE(0);
  }
  atEnd(): boolean {
    return this.pos === this.end;
  }
}

/** Steps 1 to 3 of "Reading order" in docs/FORMAT.md. */
export function parseVault(bytes: Buffer): ParsedVault {
  const version = formatVersion(bytes);
  if (version !== VERSION) throw corrupt(`expected a format ${VERSION} vault`);
  if (bytes.length < FIXED_HEADER + CHECKSUM_BYTES) throw corrupt('vault file is truncated');
  const bodyEnd = bytes.length - CHECKSUM_BYTES;
  const expected = blake2b256(bytes.subarray(0, bodyEnd));
  // eslint-disable-next-line no-restricted-syntax -- the checksum is public, over public bytes
  if (!expected.equals(bytes.subarray(bodyEnd))) {
    throw corrupt('vault file is damaged or truncated (checksum mismatch)');
  }
  const r = new Reader(bytes, MAGIC.length + 1, bodyEnd);
  const vaultId = Buffer.from(r.take(VAULT_ID_BYTES, 'vault id'));
  const keyId = Buffer.from(r.take(KEY_ID_BYTES, 'key id'));
  const generation = r.u64('generation');
  const slotCount = r.u8('slot count');
  if (slotCount < 1 || slotCount > MAX_SLOTS) throw corrupt(`vault has ${slotCount} key slots`);
  const slots: Slot[] = [];
  for (let i = 0; i < slotCount; i++) {
    const type = r.u8('slot type');
    const len = r.u16('slot length');
    slots.push({ type, body: Buffer.from(r.take(len, 'key slot')) });
  }
  const header = Buffer.from(bytes.subarray(0, r.offset));
  const indexRecord = Buffer.from(r.take(r.u32('index length'), 'index'));
  if (indexRecord.length < SEALED_MIN)
    throw corrupt('vault index is shorter than its nonce and tag');
  const count = r.u32('record count');
  // Each record is its length and at least a nonce and a tag: a count the bytes left can't hold
  // is refused before anything is made of it (found in review: four bytes a record, each made a
  // Buffer, took a process to its heap's limit before any key was used).
  if (count > (bodyEnd - r.offset) / (4 + SEALED_MIN))
    throw corrupt(`vault file's record count (${count}) is more than its bytes hold`);
  const records: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const len = r.u32('record length');
    if (len < SEALED_MIN)
      throw corrupt(`vault record ${i + 1} is ${len} bytes, shorter than its nonce and tag`);
    records.push(Buffer.from(r.take(len, 'value record')));
  }
  if (!r.atEnd()) throw corrupt('vault file has trailing bytes');
  return { version, vaultId, keyId, generation, slots, header, indexRecord, records };
}

/** Key slots as the version 2 header (and a backup's stanza) hold them: u8 type, u16 length, body. */
export function encodeSlots(slots: readonly Slot[]): Buffer[] {
  return slots.flatMap((s) => {
    const h = Buffer.alloc(3);
    h.writeUInt8(s.type, 0);
    h.writeUInt16BE(s.body.length, 1);
    return [h, s.body];
  });
}

/** `count` slots encoded so from `start`; `short` makes the error for bytes that end early. */
export function readSlots(
  bytes: Buffer,
  start: number,
  count: number,
  short: () => Error,
): { slots: Slot[]; end: number } {
  const slots: Slot[] = [];
  let pos = start;
  for (let i = 0; i < count; i++) {
    if (pos + 3 > bytes.length) throw short();
    const type = bytes.readUInt8(pos);
    const len = bytes.readUInt16BE(pos + 1);
    if (pos + 3 + len > bytes.length) throw short();
    slots.push({ type, body: Buffer.from(bytes.subarray(pos + 3, pos + 3 + len)) });
    pos += 3 + len;
  }
  return { slots, end: pos };
}

/** The wrap's associated data for a slot: ties it to this vault and to its own parameters. */
export function slotAd(vaultId: Buffer, type: number, params: Buffer): Buffer {
  return Buffer.concat([MAGIC, Buffer.from([VERSION]), vaultId, Buffer.from([type]), params]);
}

export function parsePassphraseSlot(body: Buffer): PassphraseSlot {
  if (body.length !== PASSPHRASE_SLOT_BYTES) throw corrupt('passphrase slot has the wrong size');
  const r = new Reader(body);
  const alg = r.u8('slot');
  const opsLimit = r.u32('slot');
  const memLimitKiB = r.u32('slot');
  const salt = r.take(SALT_BYTES, 'slot');
  const params = body.subarray(0, PASSPHRASE_PARAMS_BYTES);
  const wrapped = body.subarray(PASSPHRASE_PARAMS_BYTES);
  return { alg, opsLimit, memLimitKiB, salt, params, wrapped };
}

export function passphraseSlotParams(p: KdfParams, salt: Uint8Array): Buffer {
  const b = Buffer.alloc(PASSPHRASE_PARAMS_BYTES);
  b.writeUInt8(ALG_ARGON2ID13, 0);
  b.writeUInt32BE(p.opsLimit, 1);
  b.writeUInt32BE(p.memLimitKiB, 5);
  Buffer.from(salt).copy(b, 9);
  return b;
}

/** AD of a value record: binds the ciphertext to its vault, its entry id and its name. */
export function recordAd(vaultId: Buffer, entryId: Buffer, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(n.length, 0);
  return Buffer.concat([Buffer.from('keyward secret v1', 'ascii'), vaultId, entryId, len, n]);
}

export { corrupt as corruptError };

/** The associated data of a state record the vault seals for others (sealState). */
export function stateAd(vaultId: Buffer, label: string): Buffer {
  return Buffer.concat([
    Buffer.from('keyward state v1', 'ascii'),
    vaultId,
    Buffer.from(label, 'utf8'),
  ]);
}

export function secretNotFound(name: string): KeywardError {
  return new KeywardError('SECRET_NOT_FOUND', `no secret named ${name}`, {
    hint: 'see the names with: keyward secret list',
  });
}
