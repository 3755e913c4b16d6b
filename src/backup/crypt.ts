/**
 * A backup's encryption (docs/BACKUP.md, "Encryption"): the age format (the age-encryption
 * package, interoperable with the age command), to the vault's passphrase by a stanza of
 * keyward's own (src/vault/backup-key.ts) or to age X25519 recipients.
 */
import { Decrypter, Encrypter, Stanza, type Identity } from 'age-encryption';
import { IntegrityError, KeywardError, UsageError } from '../errors.js';
import { BACKUP_STANZA, openBackupStanza, type BackupSealer, type Unlock } from '../vault/index.js';
import { secureFree } from '../lib/secure.js';
import { isContainer } from './container.js';

const AGE_MAGIC = Buffer.from('age-encryption.org/v1\n', 'ascii');
/** age's native X25519 recipient: "age1" and 58 bech32 characters. */
const RECIPIENT = /^age1[02-9ac-hj-np-z]{58}$/;

/** The derivation that opened a backup's stanza: it opens the vault inside, too. */
export type Opened = Extract<Unlock, { derived: unknown }>['derived'];

export function checkRecipient(r: string): string {
  if (!RECIPIENT.test(r))
    throw new UsageError(
      'USAGE',
      `not an age X25519 recipient: ${JSON.stringify(r.slice(0, 80))}`,
      {
        hint: 'a recipient looks like age1 followed by 58 letters and digits (age-keygen -y KEYFILE prints one)',
      },
    );
  return r;
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
 * The container inside a backup. A container given as it is (what `age -d` gives back from a
 * recipient backup) is returned unchanged; an age file with keyward's stanza is opened with the
 * passphrase `unlock()` reads (once, when the stanza is found). Returns the derivation that
 * opened it, if any: the caller owns its key (the vault takes it, or the caller frees it).
 */
export async function decryptBackup(
  bytes: Uint8Array,
  unlock: () => Unlock,
): Promise<{ container: Uint8Array; opened?: Opened; vaultId?: string }> {
  if (isContainer(bytes)) return { container: bytes };
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // eslint-disable-next-line no-restricted-syntax -- the magic is public
  if (!b.subarray(0, AGE_MAGIC.length).equals(AGE_MAGIC))
    throw corrupt('it is neither an age file nor a keyward backup container');
  let found: { opened: Opened; vaultId: string; free: () => void } | undefined;
  let recipients = 0;
  const identity: Identity = {
    unwrapFileKey(stanzas: Stanza[]) {
      recipients = stanzas.filter((s) => s.args[0] === 'X25519').length;
      const s = stanzas.find((x) => x.args[0] === BACKUP_STANZA);
      if (!s) return null;
      const r = openBackupStanza(s.args, s.body, unlock());
      found = {
        opened: r.opened,
        vaultId: r.vaultId,
        free: () => secureFree(r.fileKey),
      };
      return r.fileKey;
    },
  };
  const d = new Decrypter();
  d.addIdentity(identity);
  try {
    const container = await d.decrypt(b);
    return found ? { container, opened: found.opened, vaultId: found.vaultId } : { container };
  } catch (e) {
    if (found) secureFree(found.opened.kek);
    if (e instanceof KeywardError) throw e;
    if (found === undefined && recipients > 0)
      throw new UsageError(
        'USAGE',
        `this backup is encrypted to ${recipients} age recipient${recipients === 1 ? '' : 's'}, not to the vault's passphrase`,
        {
          hint: 'decrypt it with the recipient key: age -d -i KEYFILE -o backup.plain BACKUP, then keyward restore --input backup.plain',
        },
      );
    throw corrupt(e instanceof Error ? e.message : 'age could not decrypt it');
  } finally {
    found?.free();
  }
}
