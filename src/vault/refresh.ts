/**
 * Re-reading vault.kw under the data key already held (Vault.refresh): the file must still be
 * this vault, under this key, at no older a generation; and the released values whose records it
 * replaced or removed are opened as they were, since whoever received one may still hold them.
 */
import { AuthError, IntegrityError } from '../errors.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import { keyIdOf, open } from './crypto.js';
import { corruptError, recordAd } from './format.js';
import {
  headerFacts,
  readVaultFile,
  type HeaderFacts,
  type VaultFile,
  type VaultPaths,
} from './file.js';
import { parseLog, type LogLayout } from './log-format.js';
import type { Entry, RecordKeys, Records } from './records.js';

/** A released secret's value as it was before a refresh replaced or removed its record. */
export interface Replaced {
  name: string;
  /** The replaced record's id (public). */
  id: string;
  value: SecureBuffer;
}

/** A released secret's record as it was before the re-read. */
export interface Released {
  name: string;
  was: Entry;
}

/** The records of the secrets in keep (keyward's own records aside) as records holds them. */
export function releasedRecords(records: Records, keep: Iterable<string>): Released[] {
  const before: Released[] = [];
  for (const name of keep) {
    const was = name.startsWith('@') ? undefined : records.get(name, true);
    if (was) before.push({ name, was });
  }
  return before;
}

/**
 * vault.kw read again for a vault open under dk, its records at `current`'s generation: refused
 * when the file is another vault, under another key, or of an older generation.
 */
export function rereadFile(
  paths: VaultPaths,
  vaultId: Buffer,
  dk: SecureBuffer,
  current: Records,
): { file: VaultFile; p: HeaderFacts; layout: LogLayout | undefined } {
  const file = readVaultFile(paths);
  const p = headerFacts(file.bytes);
  // eslint-disable-next-line no-restricted-syntax -- ids are public
  if (!p.vaultId.equals(vaultId) || !p.keyId.equals(keyIdOf(dk))) {
    throw new AuthError('KEYRING_KEY_MISMATCH', 'the vault was rekeyed or replaced; unlock again', {
      hint: 'keyward unlock',
    });
  }
  const layout = p.v1 ? undefined : parseLog(file.bytes);
  const generation = layout
    ? layout.header.base + BigInt(layout.starts.length)
    : (p.v1?.generation ?? 0n);
  if (generation < current.generation) {
    // An older vault file put back under the open one: secrets removed or rotated since would
    // come back. The caller locks; a fresh unlock reads the file as it is, on purpose.
    throw new IntegrityError('VAULT_CORRUPT', 'the vault file went back to an older generation', {
      hint: 'check who replaced vault.kw, then keyward unlock',
    });
  }
  return { file, p, layout };
}

/**
 * The values of the released records in before that records (re-read) replaced or removed, as
 * they were (secure memory: the caller frees them).
 */
export function replacedValues(keys: RecordKeys, records: Records, before: Released[]): Replaced[] {
  const replaced: Replaced[] = [];
  try {
    for (const { name, was } of before) {
      const now = records.get(name);
      // eslint-disable-next-line no-restricted-syntax -- ids are public
      if (now && now.id.equals(was.id)) continue;
      const value = open(keys.secrets(), was.box, recordAd(keys.vaultId, was.id, was.name));
      if (!value) throw corruptError(`vault record of ${name} failed authentication`);
      replaced.push({ name, id: was.id.toString('hex'), value });
    }
  } catch (e) {
    for (const r of replaced) secureFree(r.value);
    throw e;
  }
  return replaced;
}
