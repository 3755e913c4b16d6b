/**
 * The vault: open with a passphrase or the keyring, list, reveal, set, remove, change the
 * passphrase, rekey. Writes go through records.ts under an exclusive lock: a save appends its
 * records to vault.kw (format 2), or replaces the file atomically when it must be rewritten.
 */
import { sodium } from '../lib/sodium.js';
import { UsageError } from '../errors.js';
import { hardenProcess } from '../lib/libc.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import { backupSealer, type BackupSealer } from './backup-key.js';
import {
  deriveSubkey,
  KDF_DEFAULT,
  keyIdOf,
  open,
  randomSecureKey,
  seal,
  systemRng,
  type KdfParams,
  type Rng,
} from './crypto.js';
import {
  corruptError,
  recordAd,
  secretNotFound,
  SLOT_KEYRING,
  SLOT_PASSPHRASE,
  stateAd,
  type Slot,
} from './format.js';
import {
  headerFacts,
  readVaultFile,
  type HeaderFacts,
  unsaved,
  type VaultFile,
  type VaultPaths,
} from './file.js';
import { eachValue } from './record-values.js';
import { Records, sizeOf, type Entry, type RecordKeys } from './records.js';
import { releasedRecords, replacedValues, rereadFile, type Replaced } from './refresh.js';
import {
  derivedUnlock,
  passphraseOpens,
  passphraseOpensAsync,
  rewrapSlots,
  storeKeyringKey,
  unwrapSlots,
  wrapPassphraseSlot,
  type Opened,
  type Unlock,
} from './slots.js';
import { readIndex } from './v1.js';
import { assertValueSize } from './values.js';

export type { Unlock } from './slots.js';
export type { Replaced } from './refresh.js';
import { assertValidName } from '../lib/names.js';

export interface EntryMeta {
  name: string;
  created: string;
  updated: string;
  size: number;
}

export class Vault {
  private closed = false;
  private readonly subkeys = new Map<'index' | 'secrets' | 'state' | 'nameTag', SecureBuffer>();
  private readonly keys: RecordKeys;
  private records: Records;

  private constructor(
    readonly paths: VaultPaths,
    private readonly vaultId: Buffer,
    private slots: Slot[],
    private dk: SecureBuffer,
    private opened: Opened,
    private readonly rng: Rng,
  ) {
    this.keys = {
      vaultId,
      index: () => this.subkey('index'),
      secrets: () => this.subkey('secrets'),
      tag: () => this.subkey('nameTag'),
    };
    this.records = Records.empty(this.keys);
  }

  /** A new, empty vault in memory (generation 0); initVault saves it. Takes ownership of the keys. */
  static create(
    paths: VaultPaths,
    vaultId: Buffer,
    slots: Slot[],
    dk: SecureBuffer,
    opened: Opened,
    rng: Rng,
  ): Vault {
    return new Vault(paths, vaultId, slots, dk, opened, rng);
  }

  /**
   * Vault.open with the passphrase's argon2id on libuv's thread pool, so a daemon keeps serving
   * while it runs (the agent's unlock). The rest is Vault.open itself.
   */
  static async openAsync(paths: VaultPaths, unlock: Unlock, rng: Rng = systemRng): Promise<Vault> {
    if (!('passphrase' in unlock)) return Vault.open(paths, unlock, rng);
    hardenProcess();
    const p = headerFacts(readVaultFile(paths).bytes);
    return Vault.open(paths, await derivedUnlock(p, unlock.passphrase), rng);
  }

  /**
   * Opens the vault (docs/FORMAT.md, "Reading order"). 'all' authenticates every record: what
   * reads and the agent use. 'lazy' authenticates the file's last record and then each record as
   * it is asked for, so a write costs the same at any vault size: what withVaultWrite uses. A
   * call that needs every record (list, compaction, rekey) reads and checks them all first.
   */
  static open(
    paths: VaultPaths,
    unlock: Unlock,
    rng: Rng = systemRng,
    mode: 'all' | 'lazy' = 'all',
  ): Vault {
    // The process is about to hold the vault's keys (a keyring unlock reads no passphrase).
    hardenProcess();
    const file = readVaultFile(paths);
    const p = headerFacts(file.bytes);
    const { dk, opened } = unwrapSlots(p, unlock);
    let v: Vault | undefined;
    try {
      // eslint-disable-next-line no-restricted-syntax -- the key id is published in the header
      if (!keyIdOf(dk).equals(p.keyId)) throw corruptError('vault key id does not match its key');
      v = new Vault(paths, p.vaultId, p.slots, dk, opened, rng);
      v.records = v.readRecords(file, p, mode);
      return v;
    } catch (e) {
      if (v) v.close();
      else {
        secureFree(dk);
        secureFree(opened.kek);
      }
      throw e;
    }
  }

  /** The records of a file whose header was read into p (format 1: every record checked). */
  private readRecords(file: VaultFile, p: HeaderFacts, mode: 'all' | 'lazy' = 'all'): Records {
    if (!p.v1) return Records.fromLog(this.keys, file.bytes, file.stat, mode);
    const entries = readIndex(this.dk, p.v1);
    eachValue(this.vaultId, entries, this.subkey('secrets'), () => undefined);
    return Records.fromV1(this.keys, p.v1.generation, entries);
  }

  /** A subkey of the data key, derived once while the vault is open (dropped with the key). */
  private subkey(purpose: 'index' | 'secrets' | 'state' | 'nameTag'): SecureBuffer {
    this.live();
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

  private live(): void {
    if (this.closed) throw new Error('vault used after close');
  }

  /** The vault file's generation this object reflects (it grows with every save). */
  get fileGeneration(): bigint {
    return this.records.generation;
  }

  get id(): string {
    return this.vaultId.toString('hex');
  }

  list(): EntryMeta[] {
    this.live();
    return this.records
      .all()
      .filter((e) => !isInternal(e.name))
      .map((e) => ({
        name: e.name,
        created: new Date(e.created).toISOString(),
        updated: new Date(e.updated).toISOString(),
        size: sizeOf(e),
      }));
  }

  /**
   * The id of name's current record (a new one with every write of it), or undefined: lets a
   * holder of something derived from the value know when it is out of date.
   */
  recordId(name: string): string | undefined {
    this.live();
    return this.records.get(name)?.id.toString('hex');
  }

  has(name: string): boolean {
    this.live();
    return this.records.get(name) !== undefined;
  }

  /** Throws SECRET_NOT_FOUND unless name exists: check before recording an action on it. */
  assertHas(name: string): void {
    if (!this.has(name)) throw secretNotFound(name);
  }

  /** Names of keyward's own records under a prefix (e.g. '@audit/'). */
  internalNames(prefix: `@${string}`): string[] {
    this.live();
    return this.records
      .all()
      .filter((e) => e.name.startsWith(prefix))
      .map((e) => e.name);
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
    const e = this.records.get(name, true);
    if (!e) throw secretNotFound(name);
    const plain = open(this.subkey('secrets'), e.box, recordAd(this.vaultId, e.id, e.name));
    if (!plain) throw corruptError(`vault record of ${name} failed authentication`);
    return plain;
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
  /** What wraps a backup's file key for this vault's passphrase (backup-key.ts); free() it. */
  backupSealer(): BackupSealer {
    this.live();
    return backupSealer(this.vaultId, this.slots, this.dk, this.rng);
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
    const at = now.getTime();
    const old = this.records.get(name);
    const box = seal(this.subkey('secrets'), value, recordAd(this.vaultId, id, name), this.rng);
    this.records.put({ name, id, created: old?.created ?? at, updated: at, box });
    return old ? 'updated' : 'created';
  }

  remove(name: string, now = new Date()): void {
    this.live();
    if (!this.records.delete(name, now.getTime())) throw secretNotFound(name);
  }

  /** Rewraps the data key under a new passphrase (new salt). Call save() to persist. */
  changePassphrase(newPassphrase: SecureBuffer, kdf: KdfParams = KDF_DEFAULT): void {
    this.live();
    const { slot, kek } = wrapPassphraseSlot(this.vaultId, this.dk, newPassphrase, kdf, this.rng);
    const keep = this.slots.filter((s) => s.type !== SLOT_PASSPHRASE);
    this.slots = [slot, ...keep];
    secureFree(this.opened.kek);
    this.opened = { slotIndex: 0, kek };
    this.records.headerChanged();
  }

  /**
   * Draws a new data key and re-encrypts every record under it. Only a vault opened with the
   * passphrase can be rekeyed (its slot is rewrapped with the key derived at open). A keyring slot
   * is rewrapped under a new keyring key when the keyring holds one, and dropped (reported) when
   * it does not.
   * Call save() to persist; until then the file on disk is the old one, whole. Then, for a slot
   * kept, give the keyring its new key (giveKeyringKey); the caller frees it if the save failed.
   */
  rekey(): { keyringSlot: 'kept' | 'dropped' | 'none'; keyringKey?: SecureBuffer } {
    this.live();
    const openedSlot = this.slots[this.opened.slotIndex];
    if (openedSlot?.type !== SLOT_PASSPHRASE) {
      throw new UsageError('USAGE', 'rekey needs the passphrase', {
        hint: 'run keyward rekey with --passphrase-file or on a terminal',
      });
    }
    const newDk = randomSecureKey(this.rng);
    const newKey = deriveSubkey(newDk, 'secrets');
    const entries: Entry[] = [];
    try {
      eachValue(this.vaultId, this.records.all(), this.subkey('secrets'), (e, plain, ad) => {
        entries.push({ ...e, box: seal(newKey, plain, ad, this.rng) });
      });
    } catch (e) {
      secureFree(newDk);
      throw e;
    } finally {
      secureFree(newKey);
    }
    let rewrapped: ReturnType<typeof rewrapSlots>;
    try {
      rewrapped = rewrapSlots(
        this.vaultId,
        openedSlot.body,
        this.opened.kek,
        newDk,
        this.slots.some((x) => x.type === SLOT_KEYRING),
        this.rng,
      );
    } catch (e) {
      // Found in review: the new data key was left to a collection.
      secureFree(newDk);
      throw e;
    }
    const { slots, keyringSlot, keyringKey } = rewrapped;
    this.dropSubkeys();
    secureFree(this.dk);
    this.dk = newDk;
    this.records.replaceAll(entries);
    this.slots = slots;
    this.opened = { slotIndex: 0, kek: this.opened.kek };
    return { keyringSlot, ...(keyringKey === undefined ? {} : { keyringKey }) };
  }

  /** After a rekey's save: the keyring gets its slot's new key (storeKeyringKey); frees it. */
  giveKeyringKey(key: SecureBuffer): boolean {
    return storeKeyringKey(this.vaultId, key);
  }

  /**
   * Whether vault.kw on disk is under this vault's data key now: after a save that threw, whether
   * the file was put in place all the same (a failure after its rename). False when it can't be
   * read.
   */
  fileUnderThisKey(): boolean {
    try {
      // eslint-disable-next-line no-restricted-syntax -- key ids are public
      return headerFacts(readVaultFile(this.paths).bytes).keyId.equals(keyIdOf(this.dk));
    } catch {
      return false;
    }
  }

  /**
   * Called first thing in save(): the audit log puts its head into the vault there (a checkpoint
   * no deletion of the audit directory takes away).
   */
  beforeSave: (() => void) | undefined;
  /** vault.kw as this vault last read or wrote it: its inode and length. */
  fileWritten(): { ino: bigint; size: number } | undefined {
    return this.records.written();
  }

  /** Called once save() has written the file. */
  afterSave: (() => void) | undefined;

  /**
   * Persists the changes: appended to vault.kw, or the file rewritten atomically when due
   * (records.ts). The caller must hold the vault lock (withVaultWrite does). On failure the file
   * is as it was, and so is this vault's generation.
   */
  save(): void {
    this.live();
    this.beforeSave?.();
    try {
      this.records.save(this.paths.file, { keyId: keyIdOf(this.dk), slots: this.slots }, this.rng);
    } catch (e) {
      throw unsaved(e);
    }
    this.afterSave?.();
  }

  /**
   * Re-reads vault.kw with the data key already held (another process wrote it: `secret set`
   * while the agent is unlocked). The file must still be under this key: after a rekey the
   * holder has to unlock again. What was appended since this vault last saw the file is
   * authenticated record by record; anything else is read and checked in full, as at open.
   *
   * `keep` names secrets whose values were released (the agent's leak scans look for them):
   * returned are the values of those whose record the new file replaced or removed, as they
   * were (secure memory: the caller frees them), since whoever received one may still hold it.
   */
  refresh(keep: Iterable<string> = []): Replaced[] {
    this.live();
    // The records as they are now (a refresh may update the same object in place).
    const before = releasedRecords(this.records, keep);
    const { file, p, layout } = rereadFile(this.paths, this.vaultId, this.dk, this.records);
    this.records = layout
      ? this.records.refreshed(file.bytes, file.stat, layout)
      : this.readRecords(file, p);
    this.slots = p.slots;
    return replacedValues(this.keys, this.records, before);
  }
  /**
   * checkPassphrase with argon2id on libuv's thread pool (the agent: approvals and console
   * logins don't stall other clients). The caller keeps passphrase alive until it resolves.
   */
  async checkPassphraseAsync(passphrase: SecureBuffer): Promise<boolean> {
    this.live();
    return passphraseOpensAsync(this.vaultId, this.slots, passphrase);
  }

  /** Whether a passphrase opens this vault (an approval factor). Runs argon2id; changes nothing. */
  checkPassphrase(passphrase: SecureBuffer): boolean {
    this.live();
    return passphraseOpens(this.vaultId, this.slots, passphrase);
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
