/**
 * A backup's encryption (docs/BACKUP.md, "Encryption"): the age format (the age-encryption
 * package, interoperable with the age command), to the vault's passphrase by a stanza of
 * keyward's own (src/vault/backup-key.ts) or to age X25519 recipients.
 */
import { Decrypter, Encrypter, Stanza, type Identity } from 'age-encryption';
import { AuthError, IntegrityError, KeywardError, UsageError } from '../errors.js';
import {
  BACKUP_STANZA,
  openBackupStanza,
  unwrapX25519,
  type BackupSealer,
  type Unlock,
} from '../vault/index.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import { isContainer } from './container.js';

const AGE_MAGIC = Buffer.from('age-encryption.org/v1\n', 'ascii');
/** age's native X25519 recipient: "age1" and 58 bech32 characters. */
const RECIPIENT = /^age1[02-9ac-hj-np-z]{58}$/;

/** The derivation that opened a backup's stanza: it opens the vault inside, too. */
export type Opened = Extract<Unlock, { derived: unknown }>['derived'];

export function checkRecipient(r: string): string {
  if (RECIPIENT.test(r)) return r;
  // Never echoed: what was given may be a secret key pasted by mistake.
  const secret = /^age-secret-key-/i.test(r);
  throw new UsageError(
    'USAGE',
    secret
      ? 'a --recipient value is an age secret key, not a recipient: it was not used or shown; keep it off command lines'
      : 'a --recipient value is not an age X25519 recipient',
    {
      hint: 'a recipient looks like age1 followed by 58 letters and digits: age-keygen -y KEYFILE prints it',
    },
  );
}
export async function encryptBackup(
  container: Uint8Array,
  to: { sealer: BackupSealer } | { recipients: readonly string[] },
): Promise<Uint8Array> {
  const e = new Encrypter();
  if ('sealer' in to) {
    const { sealer } = to;
    e.addRecipient({
      wrapFileKey(fileKey: Uint8Array) {
        const s = sealer.stanza(fileKey);
        return [new Stanza(s.args, s.body)];
      },
    });
  } else {
    for (const r of to.recipients) e.addRecipient(checkRecipient(r));
  }
  return e.encrypt(container);
}

function corrupt(why: string): IntegrityError {
  return new IntegrityError('BACKUP_CORRUPT', `the backup is damaged: ${why}`, {
    hint: 'nothing was restored; use another copy of the backup',
  });
}

/**
 * What made the backup's bytes: the vault's passphrase (its stanza: only someone who knew the
 * passphrase), age recipients (anyone with a recipient's public key), or nothing (a plain
 * container: anyone). Only the first vouches for the manifest's date and origin.
 */
export type SealedBy = 'passphrase' | 'recipient' | 'plain';

/**
 * The container inside a backup. A container given as it is (what `age -d` gives back from a
 * recipient backup) is returned unchanged. An age file is opened with the age identities given
 * (`--identity`: X25519 stanzas), or else with keyward's stanza and the passphrase `unlock()`
 * reads (once, when the stanza is found). Returns the derivation that opened keyward's stanza,
 * if any: the caller owns its key (the vault takes it, or the caller frees it).
 */
export async function decryptBackup(
  bytes: Uint8Array,
  unlock: () => Unlock,
  identities: readonly SecureBuffer[] = [],
): Promise<{ container: Uint8Array; sealedBy: SealedBy; opened?: Opened; vaultId?: string }> {
  if (isContainer(bytes)) return { container: bytes, sealedBy: 'plain' };
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // eslint-disable-next-line no-restricted-syntax -- the magic is public
  if (!b.subarray(0, AGE_MAGIC.length).equals(AGE_MAGIC))
    throw corrupt('it is neither an age file nor a keyward backup container');
  let found: { opened: Opened; vaultId: string } | undefined;
  let fileKey: SecureBuffer | undefined;
  let recipients = 0;
  const identity: Identity = {
    unwrapFileKey(stanzas: Stanza[]) {
      recipients = stanzas.filter((s) => s.args[0] === 'X25519').length;
      if (identities.length > 0) {
        for (const s of stanzas)
          for (const id of identities) {
            fileKey = unwrapX25519(id, s.args, s.body);
            if (fileKey) return fileKey;
          }
        if (recipients === 0)
          throw new UsageError(
            'USAGE',
            "this backup is encrypted to the vault's passphrase, not to age recipients",
            { hint: 'restore it without --identity (it asks the passphrase)' },
          );
        throw new AuthError(
          'BACKUP_IDENTITY_MISMATCH',
          `no identity given is a recipient of this backup (it has ${recipients} X25519 recipient${recipients === 1 ? '' : 's'})`,
          {
            hint: 'give the identity file whose public key (age-keygen -y FILE) the backup was made to',
          },
        );
      }
      const s = stanzas.find((x) => x.args[0] === BACKUP_STANZA);
      if (!s) return null;
      const r = openBackupStanza(s.args, s.body, unlock());
      found = { opened: r.opened, vaultId: r.vaultId };
      fileKey = r.fileKey;
      return r.fileKey;
    },
  };
  const d = new Decrypter();
  d.addIdentity(identity);
  try {
    const container = await d.decrypt(b);
    return found
      ? { container, sealedBy: 'passphrase', opened: found.opened, vaultId: found.vaultId }
      : { container, sealedBy: 'recipient' };
  } catch (e) {
    if (found) secureFree(found.opened.kek);
    if (e instanceof KeywardError) throw e;
    if (found === undefined && recipients > 0)
      throw new UsageError(
        'USAGE',
        `this backup is encrypted to ${recipients} age recipient${recipients === 1 ? '' : 's'}, not to the vault's passphrase`,
        {
          hint: 'give the recipient key: keyward restore --input FILE --identity KEYFILE (or age -d -i KEYFILE, then restore what it gives)',
        },
      );
    throw corrupt(e instanceof Error ? e.message : 'age could not decrypt it');
  } finally {
    secureFree(fileKey);
  }
}
