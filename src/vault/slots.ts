/**
 * The key slots of vault.kw: wrapping the data key under a passphrase or the OS keyring's key,
 * and unwrapping it (docs/FORMAT.md, "Key slots"). The slot format is the same in both versions.
 */
import { AuthError, UsageError } from '../errors.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import {
  kdfInBounds,
  open,
  passphraseKek,
  passphraseKekAsync,
  randomSecureKey,
  seal,
  SALT_BYTES,
  type KdfParams,
  type Rng,
} from './crypto.js';
import {
  ALG_ARGON2ID13,
  corruptError,
  parsePassphraseSlot,
  passphraseSlotParams,
  SLOT_KEYRING,
  SLOT_PASSPHRASE,
  slotAd,
  type Slot,
} from './format.js';
import { keyringFetch, keyringStore } from './keyring.js';

/** How to open the vault. The passphrase stays the caller's to free. */
/**
 * Told right before argon2id runs for a passphrase, with its cost; what it returns is called
 * when the derivation ends (the CLI's "deriving key…" line on a terminal).
 */
export type OnDerive = (kdf: KdfParams) => (() => void) | undefined;

export type Unlock =
  | { passphrase: SecureBuffer; onDerive?: OnDerive | undefined }
  | { keyring: true }
  /** A key-encryption key already derived for one passphrase slot (openAsync); taken over. */
  | { derived: { slotIndex: number; kek: SecureBuffer } };

export function wrapPassphraseSlot(
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

export function wrapKeyringSlot(
  vaultId: Buffer,
  dk: SecureBuffer,
  kek: SecureBuffer,
  rng: Rng,
): Slot {
  const wrapped = seal(kek, dk, slotAd(vaultId, SLOT_KEYRING, Buffer.alloc(0)), rng);
  return { type: SLOT_KEYRING, body: wrapped };
}

/** Which slot opened the vault, and its key-encryption key (kept to rewrap at rekey). */
export interface Opened {
  slotIndex: number;
  kek: SecureBuffer;
}

export function wrongPassphrase(): AuthError {
  return new AuthError('VAULT_BAD_PASSPHRASE', 'wrong passphrase', {
    hint: 'nothing was changed; try again (Caps Lock?)',
  });
}

/** A passphrase slot's parameters, refused when out of bounds (a weakened or damaged header). */
export function passphraseSlot(s: { body: Buffer }): ReturnType<typeof parsePassphraseSlot> {
  const ps = parsePassphraseSlot(s.body);
  if (ps.alg !== ALG_ARGON2ID13 || !kdfInBounds(ps)) {
    throw corruptError(
      `passphrase slot has unsupported parameters (alg ${ps.alg}, ops ${ps.opsLimit}, mem ${ps.memLimitKiB} KiB)`,
    );
  }
  return ps;
}

/**
 * The key-encryption key of the passphrase slot a passphrase opens, derived with argon2id on
 * libuv's thread pool (Vault.openAsync): an unlock Vault.open takes over.
 */
export async function derivedUnlock(
  p: { vaultId: Buffer; slots: Slot[] },
  passphrase: SecureBuffer,
): Promise<Unlock> {
  for (const [slotIndex, s] of p.slots.entries()) {
    if (s.type !== SLOT_PASSPHRASE) continue;
    const ps = passphraseSlot(s);
    const kek = await passphraseKekAsync(passphrase, ps.salt, ps);
    const dk = open(kek, ps.wrapped, slotAd(p.vaultId, SLOT_PASSPHRASE, ps.params));
    if (!dk) {
      secureFree(kek);
      continue;
    }
    secureFree(dk);
    return { derived: { slotIndex, kek } };
  }
  throw wrongPassphrase();
}

export function unwrapSlots(
  p: { vaultId: Buffer; slots: Slot[] },
  unlock: Unlock,
): { dk: SecureBuffer; opened: Opened } {
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
      const done = unlock.onDerive?.(ps);
      let kek: SecureBuffer;
      try {
        kek = passphraseKek(unlock.passphrase, ps.salt, ps);
      } finally {
        done?.();
      }
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

/**
 * The slots of a rekeyed vault: its passphrase slot (the one it was opened with, `kek` derived at
 * open) wrapping the new data key, and a keyring slot, under a new keyring key, when the vault had
 * one and the keyring holds its key now; when it does not, the slot is dropped and that is said.
 */
export function rewrapSlots(
  vaultId: Buffer,
  passphraseBody: Buffer,
  kek: SecureBuffer,
  newDk: SecureBuffer,
  hadKeyring: boolean,
  rng: Rng,
): { slots: Slot[]; keyringSlot: 'kept' | 'dropped' | 'none'; keyringKey?: SecureBuffer } {
  const ps = parsePassphraseSlot(passphraseBody);
  const slots: Slot[] = [
    {
      type: SLOT_PASSPHRASE,
      body: Buffer.concat([
        ps.params,
        seal(kek, newDk, slotAd(vaultId, SLOT_PASSPHRASE, ps.params), rng),
      ]),
    },
  ];
  if (!hadKeyring) return { slots, keyringSlot: 'none' };
  // The slot is kept only where the keyring still holds a key for the vault (a person who deleted
  // the item asked for the slot to go), and it is kept under a new key: a process that read the old
  // one while the keyring was open must not open this vault, or a later copy of it, with it (found
  // in review). The new key is returned, for the keyring once the file is on disk (storeKeyringKey,
  // rekeyVault): a write that fails before the file is in place leaves the old file, which the
  // keyring's old key still opens (found in test: stored first, a failed write left a keyring
  // that opened nothing). A process killed between the two leaves a keyring that opens nothing,
  // and the passphrase opens the vault.
  let held: SecureBuffer | undefined;
  try {
    held = keyringFetch(vaultId);
  } catch {
    held = undefined;
  }
  if (!held) return { slots, keyringSlot: 'dropped' };
  secureFree(held);
  const fresh = randomSecureKey(rng);
  try {
    slots.push(wrapKeyringSlot(vaultId, newDk, fresh, rng));
  } catch (e) {
    secureFree(fresh);
    throw e;
  }
  return { slots, keyringSlot: 'kept', keyringKey: fresh };
}

/**
 * Gives the keyring the key a rekeyed vault's keyring slot opens with (rewrapSlots), once that
 * vault is written; false when the keyring refused it (its old key then opens nothing, and the
 * passphrase opens the vault, as always). Frees the key.
 */
export function storeKeyringKey(vaultId: Buffer, key: SecureBuffer): boolean {
  try {
    keyringStore(vaultId, key);
    return true;
  } catch {
    return false;
  } finally {
    secureFree(key);
  }
}

/** The passphrase slots a passphrase is checked against (well-formed and in bounds). */
function checkableSlots(slots: readonly Slot[]): Array<ReturnType<typeof parsePassphraseSlot>> {
  return slots
    .filter((slot) => slot.type === SLOT_PASSPHRASE)
    .map((slot) => parsePassphraseSlot(slot.body))
    .filter((ps) => ps.alg === ALG_ARGON2ID13 && kdfInBounds(ps));
}

/** Whether kek (for slot ps) unwraps the data key; frees kek. */
function kekOpens(
  vaultId: Buffer,
  kek: SecureBuffer,
  ps: ReturnType<typeof parsePassphraseSlot>,
): boolean {
  const dk = open(kek, ps.wrapped, slotAd(vaultId, SLOT_PASSPHRASE, ps.params));
  secureFree(kek);
  secureFree(dk);
  return dk !== undefined;
}

/** Whether a passphrase opens one of these slots (argon2id on this thread); changes nothing. */
export function passphraseOpens(
  vaultId: Buffer,
  slots: readonly Slot[],
  passphrase: SecureBuffer,
): boolean {
  for (const ps of checkableSlots(slots))
    if (kekOpens(vaultId, passphraseKek(passphrase, ps.salt, ps), ps)) return true;
  return false;
}

/** passphraseOpens with argon2id on libuv's thread pool. */
export async function passphraseOpensAsync(
  vaultId: Buffer,
  slots: readonly Slot[],
  passphrase: SecureBuffer,
): Promise<boolean> {
  for (const ps of checkableSlots(slots))
    if (kekOpens(vaultId, await passphraseKekAsync(passphrase, ps.salt, ps), ps)) return true;
  return false;
}
