/**
 * The key that opens a backup made "to the vault" (docs/BACKUP.md, "Encryption"). A backup is an
 * age file; its file key is wrapped, in a stanza of keyward's own type, under subkey 8 of the
 * vault's data key. The stanza carries the vault's passphrase slots, so the passphrase alone opens
 * it on a machine that has nothing else: argon2id unwraps the data key from a slot (as opening
 * the vault does), subkey 8 unwraps the file key, and the same derivation then opens the vault
 * inside the backup without a second argon2id.
 */
import { IntegrityError, KeywardError } from '../errors.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import { deriveSubkey, keyIdOf, open, seal, type Rng } from './crypto.js';
import { encodeSlots, readSlots, SLOT_PASSPHRASE, type Slot } from './format.js';
import { unwrapSlots, type Opened, type Unlock } from './slots.js';

/** The stanza's first argument: its type, in age's "name/..." style for third-party stanzas. */
export const BACKUP_STANZA = 'keyward.dev/vault';
const FILE_KEY_BYTES = 16;
const MAX_SLOTS = 8;

function ad(vaultId: Buffer): Buffer {
  return Buffer.concat([Buffer.from('keyward-backup 1', 'ascii'), vaultId]);
}

function damaged(why: string): IntegrityError {
  return new IntegrityError('BACKUP_CORRUPT', `the backup's keyward stanza is damaged: ${why}`);
}

/** What wraps a backup's file key after the vault is closed; free() wipes its key. */
export interface BackupSealer {
  stanza(fileKey: Uint8Array): { args: string[]; body: Buffer };
  free(): void;
}

/**
 * The stanza: args [type, vault id hex, key id hex]; body = u8 count, then per passphrase slot
 * u8 type, u16 length, slot body; then the file key sealed (XChaCha20-Poly1305) under subkey 8.
 * The sealer keeps its own copy of subkey 8 (age asks for the stanza once the file key exists,
 * after the vault's session has ended) until free().
 */
export function backupSealer(
  vaultId: Buffer,
  slots: readonly Slot[],
  dk: SecureBuffer,
  rng: Rng,
): BackupSealer {
  const kept = slots.filter((s) => s.type === SLOT_PASSPHRASE);
  if (kept.length === 0)
    throw new KeywardError('USAGE', 'this vault has no passphrase slot to encrypt a backup to', {
      hint: 'set a passphrase with keyward passwd, or back up to a recipient with --recipient',
    });
  const slotBytes = Buffer.concat([Buffer.of(kept.length), ...encodeSlots(kept)]);
  const args = [BACKUP_STANZA, vaultId.toString('hex'), keyIdOf(dk).toString('hex')];
  let key: SecureBuffer | undefined = deriveSubkey(dk, 'backup');
  return {
    stanza(fileKey) {
      if (!key) throw new Error('the backup sealer was freed');
      return { args, body: Buffer.concat([slotBytes, seal(key, fileKey, ad(vaultId), rng)]) };
    },
    free() {
      secureFree(key);
      key = undefined;
    },
  };
}

/**
 * Opens a backup stanza with the passphrase (or a derivation already made). Returns the file key
 * in secure memory (the caller frees it once age has used it) and the derivation that opened a
 * slot, to open the vault inside the backup with. A wrong passphrase is VAULT_BAD_PASSPHRASE.
 */
export function openBackupStanza(
  args: readonly string[],
  body: Uint8Array,
  unlock: Unlock,
): { fileKey: SecureBuffer; opened: Opened; vaultId: string } {
  const [, idHex, keyIdHex] = args;
  if (
    args.length !== 3 ||
    !/^[0-9a-f]{32}$/.test(idHex ?? '') ||
    !/^[0-9a-f]{32}$/.test(keyIdHex ?? '')
  )
    throw damaged('its arguments are not a vault id and a key id');
  const vaultId = Buffer.from(idHex ?? '', 'hex');
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (b.length < 1) throw damaged('its body is empty');
  const count = b.readUInt8(0);
  if (count < 1 || count > MAX_SLOTS) throw damaged(`it holds ${count} key slots`);
  const { slots, end } = readSlots(b, 1, count, () => damaged('a key slot is cut short'));
  const wrapped = b.subarray(end);
  const { dk, opened } = unwrapSlots({ vaultId, slots }, unlock);
  let key: SecureBuffer | undefined;
  try {
    if (keyIdOf(dk).toString('hex') !== keyIdHex) throw damaged('its key id is not the data key');
    key = deriveSubkey(dk, 'backup');
    const fk = open(key, wrapped, ad(vaultId));
    if (!fk || fk.length !== FILE_KEY_BYTES) {
      secureFree(fk);
      throw damaged('its file key does not open under the vault key');
    }
    const fileKey = secureAlloc(FILE_KEY_BYTES);
    fileKey.set(fk);
    secureFree(fk);
    return { fileKey, opened, vaultId: idHex ?? '' };
  } catch (e) {
    secureFree(opened.kek);
    throw e;
  } finally {
    secureFree(key);
    secureFree(dk);
  }
}
