/**
 * The optional OS keyring slot (docs/FORMAT.md, "Key slots", type 2).
 *
 * The keyring holds a random 32-byte key that unwraps the data key. What this buys and costs is
 * in docs/THREAT-MODEL.md: on Linux the Secret Service gives any process of the user the item
 * while the keyring is unlocked, so a keyring vault at rest is only as safe as that keyring.
 *
 * @napi-rs/keyring returns secrets as a plain JS array of numbers; we copy it into secure memory
 * at once and overwrite the array. The copy inside the keyring library and D-Bus is outside
 * keyward's reach; that residual is documented.
 */
import { createRequire } from 'node:module';
import { KeywardError } from '../errors.js';
import { secureTake, type SecureBuffer } from '../lib/secure.js';

const SERVICE = 'keyward';

interface KeyringEntry {
  setSecret(secret: Uint8Array): void;
  getSecret(): number[] | Uint8Array | null;
  deleteCredential(): boolean;
}
type EntryCtor = new (
  service: string,
  account: string,
  options?: { linux?: { store?: 'secret-service' | 'keyutils' } },
) => KeyringEntry;

let entryCtor: EntryCtor | undefined;

function entry(vaultId: Buffer): KeyringEntry {
  if (!entryCtor) {
    // Loaded only on the keyring path: most invocations never touch the native module.
    const require = createRequire(import.meta.url);
    entryCtor = (require('@napi-rs/keyring') as { Entry: EntryCtor }).Entry;
  }
  // The Secret Service only: without one, the library would fall back, silently, to the kernel's
  // keyring (keyutils), where the key is any process of the user's to read, outlives the Secret
  // Service's lock, and went in even where the store then failed (found in review).
  return new entryCtor(SERVICE, `vault-${vaultId.toString('hex')}`, {
    linux: { store: 'secret-service' },
  });
}

function unavailable(e: unknown): KeywardError {
  const detail = e instanceof Error ? e.message : 'unknown error';
  return new KeywardError('KEYRING_UNAVAILABLE', `the OS keyring is not available (${detail})`, {
    hint: 'start or unlock your keyring (Secret Service, Keychain), or use the passphrase',
    cause: e,
  });
}

export function keyringStore(vaultId: Buffer, kek: SecureBuffer): void {
  try {
    // The library needs a Uint8Array it can read; a secure buffer is one, so no copy is made here.
    entry(vaultId).setSecret(kek);
  } catch (e) {
    throw unavailable(e);
  }
}

/** The keyring's key for this vault, or undefined when the keyring has none. */
export function keyringFetch(vaultId: Buffer): SecureBuffer | undefined {
  let got: number[] | Uint8Array | null;
  try {
    got = entry(vaultId).getSecret();
  } catch (e) {
    throw unavailable(e);
  }
  if (got === null || got === undefined) return undefined;
  return secureTake(got);
}

export function keyringDelete(vaultId: Buffer): boolean {
  try {
    return entry(vaultId).deleteCredential();
  } catch {
    return false;
  }
}
