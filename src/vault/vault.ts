/**
 * The vault: open with a passphrase or the keyring, list, reveal, set, remove, change the
 * passphrase, rekey. Every write replaces vault.kw atomically under an exclusive lock.
 */
import fs from 'node:fs';
import path from 'node:path';
import { sodium } from '../lib/sodium.js';
import { AuthError, IntegrityError, KeywardError, UsageError } from '../errors.js';
import {
  assertPrivate,
  ensurePrivateDir,
  sweepTempFiles,
  withFileLock,
  writeFileAtomic,
} from '../lib/files.js';
import { hardenProcess } from '../lib/libc.js';
import { secureAlloc, secureEqual, secureFree, type SecureBuffer } from '../lib/secure.js';
import {
  deriveSubkey,
  KDF_DEFAULT,
  kdfInBounds,
  keyIdOf,
  open,
  openInto,
  passphraseKek,
  passphraseKekAsync,
  randomSecureKey,
  SALT_BYTES,
  seal,
  systemRng,
  type KdfParams,
  type Rng,
} from './crypto.js';
import {
  ALG_ARGON2ID13,
  corruptError,
  encodeHeader,
  encodeVault,
  parsePassphraseSlot,
  parseVault,
  passphraseSlotParams,
  recordAd,
  SLOT_KEYRING,
  SLOT_PASSPHRASE,
  slotAd,
  VAULT_ID_BYTES,
  type ParsedVault,
  type Slot,
} from './format.js';
import { keyringFetch, keyringStore } from './keyring.js';
import { assertValidName } from '../lib/names.js';

export const VALUE_MAX_BYTES = 16 * 1024 * 1024;
const LOCK_TIMEOUT_MS = 10_000;

export interface VaultPaths {
  home: string;
  file: string;
  lock: string;
}

export function vaultPaths(home: string): VaultPaths {
  return { home, file: path.join(home, 'vault.kw'), lock: path.join(home, 'vault.lock') };
}

export interface EntryMeta {
  name: string;
  created: string;
  updated: string;
  size: number;
}

interface IndexEntry extends EntryMeta {
  id: string;
}

/** How to open the vault. The passphrase stays the caller's to free. */
export type Unlock =
  | { passphrase: SecureBuffer }
  | { keyring: true }
  /** A key-encryption key already derived for one passphrase slot (openAsync); taken over. */
  | { derived: { slotIndex: number; kek: SecureBuffer } };

export interface InitOptions {
  kdf?: KdfParams;
  keyring?: boolean;
  /** Move an existing vault aside (vault.kw.bak-TIME) and create a new one. */
  force?: boolean;
  rng?: Rng;
  now?: () => Date;
  /** Runs on the new vault before its first save (keyward's own records go in here). */
  setup?: (v: Vault) => void;
  /** Runs after the first save, with the vault still open (the audit log starts here). */
  afterSave?: (v: Vault) => void;
}

export interface InitResult {
  created: boolean;
  backup?: string;
  vaultId: string;
}

function notFound(paths: VaultPaths): KeywardError {
  return new KeywardError('VAULT_NOT_FOUND', `no vault yet (${paths.file})`, {
    hint: 'create one with: keyward init',
  });
}

/** Refuses (exit 3) when there is no vault yet: for commands that mean nothing before init. */
export function requireVault(paths: VaultPaths): void {
  if (!vaultExists(paths)) throw notFound(paths);
}

/** Fails closed unless the vault directory and file are private to this user. */
function checkPlaces(paths: VaultPaths): void {
  assertPrivate(paths.home, 'dir');
  assertPrivate(paths.file, 'file');
}

export function vaultExists(paths: VaultPaths): boolean {
  return fs.existsSync(paths.file);
}

function wrapPassphraseSlot(
  vaultId: Buffer,
  dk: SecureBuffer,
  passphrase: SecureBuffer,
  kdf: KdfParams,
  rng: Rng,
): { slot: Slot; kek: SecureBuffer } {
  const salt = Buffer.alloc(SALT_BYTES);
  rng(salt);
  const params = passphraseSlotParams(kdf, salt);
  const kek = passphraseKek(passphrase, salt, kdf);
  const wrapped = seal(kek, dk, slotAd(vaultId, SLOT_PASSPHRASE, params), rng);
  return { slot: { type: SLOT_PASSPHRASE, body: Buffer.concat([params, wrapped]) }, kek };
}

function wrapKeyringSlot(vaultId: Buffer, dk: SecureBuffer, kek: SecureBuffer, rng: Rng): Slot {
  const wrapped = seal(kek, dk, slotAd(vaultId, SLOT_KEYRING, Buffer.alloc(0)), rng);
  return { type: SLOT_KEYRING, body: wrapped };
}

function readVaultFile(paths: VaultPaths): Buffer {
  checkPlaces(paths);
  let fd: number;
  try {
    fd = fs.openSync(paths.file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(paths);
    throw e;
  }
  try {
    return fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Header facts anyone with read access can see; no passphrase needed. */
export interface VaultHeaderInfo {
  path: string;
  version: number;
  vaultId: string;
  keyId: string;
  generation: number;
  slots: Array<{ type: 'passphrase'; kdf: KdfParams } | { type: 'keyring' } | { type: 'unknown' }>;
  bytes: number;
}

export function readHeaderInfo(paths: VaultPaths): VaultHeaderInfo {
  const bytes = readVaultFile(paths);
  const p = parseVault(bytes);
  return {
    path: paths.file,
    version: p.version,
    vaultId: p.vaultId.toString('hex'),
    keyId: p.keyId.toString('hex'),
    generation: Number(p.generation),
    slots: p.slots.map((s) => {
      if (s.type === SLOT_PASSPHRASE) {
        const ps = parsePassphraseSlot(s.body);
        return {
          type: 'passphrase' as const,
          kdf: { opsLimit: ps.opsLimit, memLimitKiB: ps.memLimitKiB },
        };
      }
      return s.type === SLOT_KEYRING ? { type: 'keyring' as const } : { type: 'unknown' as const };
    }),
    bytes: bytes.length,
  };
}

/** Which slot opened the vault, and its key-encryption key (kept to rewrap at rekey). */
interface Opened {
  slotIndex: number;
  kek: SecureBuffer;
}

function wrongPassphrase(): AuthError {
  return new AuthError('VAULT_BAD_PASSPHRASE', 'wrong passphrase', {
    hint: 'nothing was changed; try again (Caps Lock?)',
  });
}

/** A passphrase slot's parameters, refused when out of bounds (a weakened or damaged header). */
function passphraseSlot(s: { body: Buffer }): ReturnType<typeof parsePassphraseSlot> {
  const ps = parsePassphraseSlot(s.body);
  if (ps.alg !== ALG_ARGON2ID13 || !kdfInBounds(ps)) {
    throw corruptError(
      `passphrase slot has unsupported parameters (alg ${ps.alg}, ops ${ps.opsLimit}, mem ${ps.memLimitKiB} KiB)`,
    );
  }
  return ps;
}

function unwrapSlots(p: ParsedVault, unlock: Unlock): { dk: SecureBuffer; opened: Opened } {
  if ('derived' in unlock) {
    const { slotIndex, kek } = unlock.derived;
    const s = p.slots[slotIndex];
    const dk =
      s?.type === SLOT_PASSPHRASE
        ? open(
            kek,
            passphraseSlot(s).wrapped,
            slotAd(p.vaultId, SLOT_PASSPHRASE, passphraseSlot(s).params),
          )
        : undefined;
    if (dk) return { dk, opened: { slotIndex, kek } };
    secureFree(kek);
    // The file changed between the derivation and now (a passwd), or the key is wrong.
    throw wrongPassphrase();
  }
  if ('passphrase' in unlock) {
    for (const [i, s] of p.slots.entries()) {
      if (s.type !== SLOT_PASSPHRASE) continue;
      const ps = passphraseSlot(s);
      const kek = passphraseKek(unlock.passphrase, ps.salt, ps);
      const dk = open(kek, ps.wrapped, slotAd(p.vaultId, SLOT_PASSPHRASE, ps.params));
      if (dk) return { dk, opened: { slotIndex: i, kek } };
      secureFree(kek);
    }
    throw wrongPassphrase();
  }
  const i = p.slots.findIndex((s) => s.type === SLOT_KEYRING);
  const slot = p.slots[i];
  if (!slot) {
    throw new UsageError('USAGE', 'this vault has no keyring slot', {
      hint: 'use the passphrase (--passphrase-file or the terminal)',
    });
  }
  const kek = keyringFetch(p.vaultId);
  if (!kek) {
    throw new AuthError('KEYRING_KEY_MISMATCH', 'the OS keyring has no key for this vault', {
      hint: 'use the passphrase; it always opens the vault',
    });
  }
  const dk = open(kek, slot.body, slotAd(p.vaultId, SLOT_KEYRING, Buffer.alloc(0)));
  if (!dk) {
    secureFree(kek);
    throw new AuthError('KEYRING_KEY_MISMATCH', "the OS keyring's key does not open this vault", {
      hint: 'use the passphrase; it always opens the vault',
    });
  }
  return { dk, opened: { slotIndex: i, kek } };
}

function parseIndex(plain: SecureBuffer): IndexEntry[] {
  // The index holds names and metadata, never secret values: turning it into a string is allowed.
  let doc: unknown;
  try {
    doc = JSON.parse(plain.toString('utf8'));
  } catch {
    throw corruptError('vault index is not valid JSON');
  }
  const entries = (doc as { entries?: unknown } | null)?.entries;
  if (!Array.isArray(entries)) throw corruptError('vault index has no entry list');
  return entries.map((e: unknown) => {
    const x = e as Partial<IndexEntry> | null;
    if (
      typeof x?.name !== 'string' ||
      typeof x.id !== 'string' ||
      !/^[0-9a-f]{32}$/.test(x.id) ||
      typeof x.created !== 'string' ||
      typeof x.updated !== 'string' ||
      typeof x.size !== 'number'
    ) {
      throw corruptError('vault index has a malformed entry');
    }
    return { name: x.name, id: x.id, created: x.created, updated: x.updated, size: x.size };
  });
}

/** Decrypts and parses the index under dk, and checks it names as many entries as there are records. */
function readIndex(dk: SecureBuffer, p: ParsedVault): IndexEntry[] {
  const indexKey = deriveSubkey(dk, 'index');
  const plain = open(indexKey, p.indexRecord, p.header);
  secureFree(indexKey);
  if (!plain) throw corruptError('vault index failed authentication (tampered or damaged)');
  let entries: IndexEntry[];
  try {
    entries = parseIndex(plain);
  } finally {
    secureFree(plain);
  }
  if (entries.length !== p.records.length) {
    throw corruptError(
      `vault index lists ${entries.length} entries but the file has ${p.records.length}`,
    );
  }
  return entries;
}

function encodeIndex(entries: readonly IndexEntry[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      entries: entries.map((e) => ({
        name: e.name,
        id: e.id,
        created: e.created,
        updated: e.updated,
        size: e.size,
      })),
    }),
    'utf8',
  );
}

export class Vault {
  private closed = false;
  private readonly subkeys = new Map<'secrets' | 'state', SecureBuffer>();

  private constructor(
    readonly paths: VaultPaths,
    private readonly vaultId: Buffer,
    private generation: bigint,
    private slots: Slot[],
    private entries: IndexEntry[],
    private records: Buffer[],
    private dk: SecureBuffer,
    private opened: Opened,
    private readonly rng: Rng,
  ) {}

  /** A new, empty vault in memory (generation 0); initVault saves it. Takes ownership of the keys. */
  static create(
    paths: VaultPaths,
    vaultId: Buffer,
    slots: Slot[],
    dk: SecureBuffer,
    opened: Opened,
    rng: Rng,
  ): Vault {
    return new Vault(paths, vaultId, 0n, slots, [], [], dk, opened, rng);
  }

  /**
   * Vault.open with the passphrase's argon2id on libuv's thread pool, so a daemon keeps serving
   * while it runs (the agent's unlock). The rest is Vault.open itself.
   */
  static async openAsync(paths: VaultPaths, unlock: Unlock, rng: Rng = systemRng): Promise<Vault> {
    if (!('passphrase' in unlock)) return Vault.open(paths, unlock, rng);
    hardenProcess();
    const p = parseVault(readVaultFile(paths));
    for (const [slotIndex, s] of p.slots.entries()) {
      if (s.type !== SLOT_PASSPHRASE) continue;
      const ps = passphraseSlot(s);
      const kek = await passphraseKekAsync(unlock.passphrase, ps.salt, ps);
      const dk = open(kek, ps.wrapped, slotAd(p.vaultId, SLOT_PASSPHRASE, ps.params));
      if (!dk) {
        secureFree(kek);
        continue;
      }
      secureFree(dk);
      return Vault.open(paths, { derived: { slotIndex, kek } }, rng);
    }
    throw wrongPassphrase();
  }

  /** Opens and verifies every record (docs/FORMAT.md, "Reading order"). */
  static open(paths: VaultPaths, unlock: Unlock, rng: Rng = systemRng): Vault {
    // The process is about to hold the vault's keys (a keyring unlock reads no passphrase).
    hardenProcess();
    const p = parseVault(readVaultFile(paths));
    const { dk, opened } = unwrapSlots(p, unlock);
    try {
      // eslint-disable-next-line no-restricted-syntax -- the key id is published in the header
      if (!keyIdOf(dk).equals(p.keyId)) throw corruptError('vault key id does not match its key');
      const entries = readIndex(dk, p);
      const v = new Vault(
        paths,
        p.vaultId,
        p.generation,
        p.slots,
        entries,
        p.records,
        dk,
        opened,
        rng,
      );
      v.verifyRecords();
      return v;
    } catch (e) {
      secureFree(dk);
      secureFree(opened.kek);
      throw e;
    }
  }

  private verifyRecords(): void {
    this.eachRecord(this.subkey('secrets'), () => undefined);
  }

  /**
   * Opens every record under key, in order, into one secure scratch buffer (zeroed after each):
   * a vault of any size costs one secure allocation here, not one per record (each holds memory
   * mappings until the garbage collector runs, and a process has 65,530 of them).
   */
  private eachRecord(key: SecureBuffer, fn: (i: number, plain: SecureBuffer, ad: Buffer) => void) {
    const longest = this.records.reduce((m, r) => Math.max(m, r.length), 0);
    const scratch = secureAlloc(longest);
    try {
      for (const [i, e] of this.entries.entries()) {
        const ad = this.adOf(e);
        const len = openInto(key, this.records[i] ?? Buffer.alloc(0), ad, scratch);
        if (len === undefined)
          throw corruptError(`vault record ${i + 1} failed authentication (tampered or damaged)`);
        try {
          fn(i, scratch.subarray(0, len) as SecureBuffer, ad);
        } finally {
          scratch.fill(0, 0, len);
        }
      }
    } finally {
      secureFree(scratch);
    }
  }

  /** A subkey of the data key, derived once while the vault is open (dropped with the key). */
  private subkey(purpose: 'secrets' | 'state'): SecureBuffer {
    let k = this.subkeys.get(purpose);
    if (!k) {
      k = deriveSubkey(this.dk, purpose);
      this.subkeys.set(purpose, k);
    }
    return k;
  }

  private dropSubkeys(): void {
    for (const k of this.subkeys.values()) secureFree(k);
    this.subkeys.clear();
  }

  private adOf(e: IndexEntry): Buffer {
    return recordAd(this.vaultId, Buffer.from(e.id, 'hex'), e.name);
  }

  private live(): void {
    if (this.closed) throw new Error('vault used after close');
  }

  /** The vault file's generation this object reflects (it grows with every save). */
  get fileGeneration(): bigint {
    return this.generation;
  }

  get id(): string {
    return this.vaultId.toString('hex');
  }

  list(): EntryMeta[] {
    this.live();
    return this.entries
      .filter((e) => !isInternal(e.name))
      .map(({ name, created, updated, size }) => ({ name, created, updated, size }));
  }

  /**
   * The id of name's current record (a new one with every write of it), or undefined: lets a
   * holder of something derived from the value know when it is out of date.
   */
  recordId(name: string): string | undefined {
    return this.entries[this.indexOf(name)]?.id;
  }

  has(name: string): boolean {
    return this.entries.some((e) => e.name === name);
  }

  /** Throws SECRET_NOT_FOUND unless name exists: check before recording an action on it. */
  assertHas(name: string): void {
    if (!this.has(name)) throw secretNotFound(name);
  }

  /** Names of keyward's own records under a prefix (e.g. '@audit/'). */
  internalNames(prefix: `@${string}`): string[] {
    return this.entries.filter((e) => e.name.startsWith(prefix)).map((e) => e.name);
  }

  /**
   * A user secret's value in secure memory; the caller must secureFree it as soon as it is written
   * out. keyward's own records (@key/, @audit/, @totp/) are not secrets a name can reach: they
   * fail INVALID_NAME here, whatever a policy glob says (revealInternal reads them).
   */
  reveal(name: string): SecureBuffer {
    assertValidName(name);
    return this.decrypt(name);
  }

  private decrypt(name: string): SecureBuffer {
    this.live();
    const i = this.indexOf(name);
    const e = this.entries[i];
    if (!e) throw secretNotFound(name);
    const plain = open(this.subkey('secrets'), this.records[i] ?? Buffer.alloc(0), this.adOf(e));
    if (!plain) throw corruptError(`vault record of ${name} failed authentication`);
    return plain;
  }

  private indexOf(name: string): number {
    return this.entries.findIndex((e) => e.name === name);
  }

  /** Stores value under name (value stays the caller's to free). Call save() to persist. */
  set(name: string, value: SecureBuffer, now = new Date()): 'created' | 'updated' {
    assertValidName(name);
    return this.store(name, value, now);
  }

  /** keyward's own records (names starting with @): never listed, never readable by `read`. */
  setInternal(name: `@${string}`, value: SecureBuffer, now = new Date()): void {
    assertValidName(name.slice(1));
    this.store(name, value, now);
  }

  revealInternal(name: `@${string}`): SecureBuffer | undefined {
    return this.has(name) ? this.decrypt(name) : undefined;
  }

  /** Seals keyward state (audit checkpoints, agent state) under the state subkey. */
  sealState(label: string, plaintext: Uint8Array): Buffer {
    this.live();
    return seal(this.subkey('state'), plaintext, stateAd(this.vaultId, label), this.rng);
  }

  /**
   * A keyed hash of public data (MCP tool-definition pins): BLAKE2b-256 keyed with a key derived
   * from the state subkey and the label. Someone who can edit files but not open the vault can't
   * make a pin match a changed definition.
   */
  mac(label: string, data: Uint8Array): Buffer {
    this.live();
    const key = secureAlloc(32);
    try {
      sodium.crypto_generichash(
        key,
        Buffer.from(`keyward mac ${label}`, 'utf8'),
        this.subkey('state'),
      );
      const out = Buffer.alloc(32);
      sodium.crypto_generichash(out, data, key);
      return out;
    } finally {
      secureFree(key);
    }
  }

  /** Opens what sealState sealed under the same label, or undefined when it does not verify. */
  openState(label: string, record: Uint8Array): SecureBuffer | undefined {
    this.live();
    return open(this.subkey('state'), record, stateAd(this.vaultId, label));
  }

  private store(name: string, value: SecureBuffer, now: Date): 'created' | 'updated' {
    this.live();
    assertValueSize(value.length);
    const id = Buffer.alloc(16);
    this.rng(id);
    const at = now.toISOString();
    const old = this.entries[this.indexOf(name)];
    const entry: IndexEntry = {
      name,
      id: id.toString('hex'),
      created: old?.created ?? at,
      updated: at,
      size: value.length,
    };
    const record = seal(this.subkey('secrets'), value, this.adOf(entry), this.rng);
    this.removeEntry(name);
    const at2 = this.entries.findIndex((e) => e.name > name);
    const pos = at2 === -1 ? this.entries.length : at2;
    this.entries.splice(pos, 0, entry);
    this.records.splice(pos, 0, record);
    return old ? 'updated' : 'created';
  }

  private removeEntry(name: string): boolean {
    const i = this.indexOf(name);
    if (i === -1) return false;
    this.entries.splice(i, 1);
    this.records.splice(i, 1);
    return true;
  }

  remove(name: string): void {
    this.live();
    if (!this.removeEntry(name)) throw secretNotFound(name);
  }

  /** Rewraps the data key under a new passphrase (new salt). Call save() to persist. */
  changePassphrase(newPassphrase: SecureBuffer, kdf: KdfParams = KDF_DEFAULT): void {
    this.live();
    const { slot, kek } = wrapPassphraseSlot(this.vaultId, this.dk, newPassphrase, kdf, this.rng);
    const keep = this.slots.filter((s) => s.type !== SLOT_PASSPHRASE);
    this.slots = [slot, ...keep];
    secureFree(this.opened.kek);
    this.opened = { slotIndex: 0, kek };
  }

  /**
   * Draws a new data key and re-encrypts every record under it. Only a vault opened with the
   * passphrase can be rekeyed (its slot is rewrapped with the key derived at open). A keyring slot
   * is rewrapped when the keyring answers, and dropped (reported) when it does not.
   * Call save() to persist; until then the file on disk is the old one, whole.
   */
  rekey(): { keyringSlot: 'kept' | 'dropped' | 'none' } {
    this.live();
    const openedSlot = this.slots[this.opened.slotIndex];
    if (openedSlot?.type !== SLOT_PASSPHRASE) {
      throw new UsageError('USAGE', 'rekey needs the passphrase', {
        hint: 'run keyward rekey with --passphrase-file or on a terminal',
      });
    }
    const newDk = randomSecureKey(this.rng);
    const newKey = deriveSubkey(newDk, 'secrets');
    const records: Buffer[] = [];
    try {
      this.eachRecord(this.subkey('secrets'), (_i, plain, ad) => {
        records.push(seal(newKey, plain, ad, this.rng));
      });
    } catch (e) {
      secureFree(newDk);
      throw e;
    } finally {
      secureFree(newKey);
    }
    const ps = parsePassphraseSlot(openedSlot.body);
    const passSlot: Slot = {
      type: SLOT_PASSPHRASE,
      body: Buffer.concat([
        ps.params,
        seal(this.opened.kek, newDk, slotAd(this.vaultId, SLOT_PASSPHRASE, ps.params), this.rng),
      ]),
    };
    let keyringSlot: 'kept' | 'dropped' | 'none' = 'none';
    const slots: Slot[] = [passSlot];
    if (this.slots.some((s) => s.type === SLOT_KEYRING)) {
      keyringSlot = 'dropped';
      let kek: SecureBuffer | undefined;
      try {
        kek = keyringFetch(this.vaultId);
      } catch {
        kek = undefined;
      }
      if (kek) {
        slots.push(wrapKeyringSlot(this.vaultId, newDk, kek, this.rng));
        secureFree(kek);
        keyringSlot = 'kept';
      }
    }
    this.dropSubkeys();
    secureFree(this.dk);
    this.dk = newDk;
    this.records = records;
    this.slots = slots;
    this.opened = { slotIndex: 0, kek: this.opened.kek };
    return { keyringSlot };
  }

  /**
   * Called first thing in save(): the audit log puts its head into the vault there (a checkpoint
   * no deletion of the audit directory takes away).
   */
  beforeSave: (() => void) | undefined;
  /** Called once save() has written the file. */
  afterSave: (() => void) | undefined;

  /** Writes the vault atomically. The caller must hold the vault lock (withVaultWrite does). */
  save(): void {
    this.live();
    this.beforeSave?.();
    const before = this.generation;
    this.generation += 1n;
    try {
      this.writeGeneration();
    } catch (e) {
      // Not written: the file is still the generation before, and so is this vault.
      this.generation = before;
      throw e;
    }
    this.afterSave?.();
  }

  private writeGeneration(): void {
    const header = encodeHeader({
      vaultId: this.vaultId,
      keyId: keyIdOf(this.dk),
      generation: this.generation,
      slots: this.slots,
    });
    const indexKey = deriveSubkey(this.dk, 'index');
    let indexRecord: Buffer;
    try {
      indexRecord = seal(indexKey, encodeIndex(this.entries), header, this.rng);
    } finally {
      secureFree(indexKey);
    }
    writeFileAtomic(this.paths.file, encodeVault(header, indexRecord, this.records));
  }

  /**
   * Re-reads vault.kw with the data key already held (another process wrote it: `secret set`
   * while the agent is unlocked). The file must still be under this key: after a rekey the
   * holder has to unlock again. Every record is verified, as at open.
   */
  refresh(): void {
    this.live();
    const p = parseVault(readVaultFile(this.paths));
    // eslint-disable-next-line no-restricted-syntax -- ids are public
    if (!p.vaultId.equals(this.vaultId) || !p.keyId.equals(keyIdOf(this.dk))) {
      throw new AuthError(
        'KEYRING_KEY_MISMATCH',
        'the vault was rekeyed or replaced; unlock again',
        { hint: 'keyward unlock' },
      );
    }
    if (p.generation < this.generation) {
      // An older vault file put back under the open one: secrets removed or rotated since would
      // come back. The caller locks; a fresh unlock reads the file as it is, on purpose.
      throw new IntegrityError('VAULT_CORRUPT', 'the vault file went back to an older generation', {
        hint: 'check who replaced vault.kw, then keyward unlock',
      });
    }
    const entries = readIndex(this.dk, p);
    const before = { entries: this.entries, records: this.records };
    this.entries = entries;
    this.records = p.records;
    try {
      this.verifyRecords();
    } catch (e) {
      this.entries = before.entries;
      this.records = before.records;
      throw e;
    }
    this.slots = p.slots;
    this.generation = p.generation;
  }

  /** The passphrase slots a passphrase is checked against (well-formed and in bounds). */
  private checkableSlots(): Array<ReturnType<typeof parsePassphraseSlot>> {
    this.live();
    return this.slots
      .filter((slot) => slot.type === SLOT_PASSPHRASE)
      .map((slot) => parsePassphraseSlot(slot.body))
      .filter((ps) => ps.alg === ALG_ARGON2ID13 && kdfInBounds(ps));
  }

  /** Whether kek (for slot ps) unwraps the data key; frees kek. */
  private kekOpens(kek: SecureBuffer, ps: ReturnType<typeof parsePassphraseSlot>): boolean {
    const dk = open(kek, ps.wrapped, slotAd(this.vaultId, SLOT_PASSPHRASE, ps.params));
    secureFree(kek);
    secureFree(dk);
    return dk !== undefined;
  }

  /**
   * checkPassphrase with argon2id on libuv's thread pool (the agent: approvals and console
   * logins don't stall other clients). The caller keeps passphrase alive until it resolves.
   */
  async checkPassphraseAsync(passphrase: SecureBuffer): Promise<boolean> {
    for (const ps of this.checkableSlots())
      if (this.kekOpens(await passphraseKekAsync(passphrase, ps.salt, ps), ps)) return true;
    return false;
  }

  /** Whether a passphrase opens this vault (an approval factor). Runs argon2id; changes nothing. */
  checkPassphrase(passphrase: SecureBuffer): boolean {
    for (const ps of this.checkableSlots())
      if (this.kekOpens(passphraseKek(passphrase, ps.salt, ps), ps)) return true;
    return false;
  }

  /** Wipes the keys. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.dropSubkeys();
    secureFree(this.dk);
    secureFree(this.opened.kek);
  }
}

const isInternal = (name: string) => name.startsWith('@');

function stateAd(vaultId: Buffer, label: string): Buffer {
  return Buffer.concat([
    Buffer.from('keyward state v1', 'ascii'),
    vaultId,
    Buffer.from(label, 'utf8'),
  ]);
}

function secretNotFound(name: string): KeywardError {
  return new KeywardError('SECRET_NOT_FOUND', `no secret named ${name}`, {
    hint: 'see the names with: keyward secret list',
  });
}

export function assertValueSize(n: number): void {
  if (n === 0) {
    throw new UsageError('INVALID_VALUE', 'the secret value is empty', {
      hint: 'pipe the value on standard input, e.g.: printf %s "$TOKEN" | keyward secret set NAME',
    });
  }
  if (n > VALUE_MAX_BYTES) {
    throw new UsageError(
      'INVALID_VALUE',
      `the secret value is larger than ${VALUE_MAX_BYTES} bytes`,
      {
        hint: 'keyward keeps credentials, not files; store a key to the file instead',
      },
    );
  }
}

/** Opens the vault for reading, runs fn, and wipes the keys. */
export function withVaultRead<T>(paths: VaultPaths, unlock: Unlock, fn: (v: Vault) => T): T {
  const v = Vault.open(paths, unlock);
  try {
    return fn(v);
  } finally {
    v.close();
  }
}

/**
 * Opens the vault under its exclusive lock, runs fn (which calls save() to persist), and wipes
 * the keys. Temp files of writers that were killed are swept first.
 */
export function withVaultWrite<T>(paths: VaultPaths, unlock: Unlock, fn: (v: Vault) => T): T {
  checkPlaces(paths);
  if (!vaultExists(paths)) throw notFound(paths);
  return withFileLock(paths.lock, LOCK_TIMEOUT_MS, () => {
    sweepTempFiles(paths.file);
    return withVaultRead(paths, unlock, fn);
  });
}

/** Creates a vault. With one present, does nothing (created: false) unless force is set. */
export function initVault(
  paths: VaultPaths,
  passphrase: SecureBuffer,
  opts: InitOptions = {},
): InitResult {
  const rng = opts.rng ?? systemRng;
  const kdf = opts.kdf ?? KDF_DEFAULT;
  const now = opts.now ?? (() => new Date());
  if (!kdfInBounds(kdf)) throw new UsageError('USAGE', 'KDF parameters out of range');
  ensurePrivateDir(paths.home);
  assertPrivate(paths.file, 'file');
  return withFileLock(paths.lock, LOCK_TIMEOUT_MS, () => {
    sweepTempFiles(paths.file);
    let backup: string | undefined;
    if (vaultExists(paths)) {
      if (!opts.force) return { created: false, vaultId: readHeaderInfo(paths).vaultId };
      backup = `${paths.file}.bak-${now().toISOString().replace(/[:.]/g, '-')}`;
      fs.renameSync(paths.file, backup);
    }
    const vaultId = Buffer.alloc(VAULT_ID_BYTES);
    rng(vaultId);
    const dk = randomSecureKey(rng);
    const { slot, kek } = wrapPassphraseSlot(vaultId, dk, passphrase, kdf, rng);
    const slots = [slot];
    let v: Vault | undefined;
    try {
      if (opts.keyring) {
        const kk = randomSecureKey(rng);
        try {
          slots.push(wrapKeyringSlot(vaultId, dk, kk, rng));
          keyringStore(vaultId, kk);
        } finally {
          secureFree(kk);
        }
      }
      v = Vault.create(paths, vaultId, slots, dk, { slotIndex: 0, kek }, rng);
      opts.setup?.(v);
      v.save();
    } catch (e) {
      if (v) v.close();
      else {
        secureFree(dk);
        secureFree(kek);
      }
      throw e;
    }
    const result: InitResult =
      backup === undefined
        ? { created: true, vaultId: vaultId.toString('hex') }
        : { created: true, backup, vaultId: vaultId.toString('hex') };
    opts.afterSave?.(v);
    v.close();
    return result;
  });
}

/** Two secure buffers hold the same passphrase (constant time). */
export function samePassphrase(a: SecureBuffer, b: SecureBuffer): boolean {
  return secureEqual(a, b);
}
