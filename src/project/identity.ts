/**
 * This vault's project identity (docs/PROJECT-FILES.md, "Identities"): an X25519 secret kept in
 * the vault as keyward's own record `@project/identity`, made on first use. Its public half, an
 * age recipient (`age1...`), is what teammates seal project files to.
 */
import type { AuditRecord } from '../audit/index.js';
import { UsageError } from '../errors.js';
import { secureEqual, secureFree, secureRandom, type SecureBuffer } from '../lib/secure.js';
import { readAgeIdentities, type Vault } from '../vault/index.js';
import { encodeRecipient, publicKeyOf } from './age.js';
import { OpenedProject, parseProject, sealProject } from './file.js';

export const IDENTITY_RECORD = '@project/identity';

/**
 * The identity (the caller frees it), made and stored when the vault has none and `create` says
 * so (the caller saves the vault); undefined when it has none and may not make one.
 */
export function projectIdentity(v: Vault, create: boolean): SecureBuffer | undefined {
  const held = v.revealInternal(IDENTITY_RECORD);
  if (held || !create) return held;
  const made = secureRandom(32);
  v.setInternal(IDENTITY_RECORD, made);
  return made;
}

/** This vault's recipient (`age1...`), the identity made if need be (see projectIdentity). */
export function projectRecipient(v: Vault, create: boolean): string | undefined {
  const id = projectIdentity(v, create);
  if (!id) return undefined;
  try {
    return encodeRecipient(publicKeyOf(id));
  } finally {
    secureFree(id);
  }
}

/**
 * This vault's recipient for `seal` and `project identity`: the identity is made if the vault
 * has none, and then the vault saved and the making recorded (project.identity).
 */
export function ownRecipient(v: Vault, audit: { record(r: AuditRecord): unknown }): string {
  const had = v.revealInternal(IDENTITY_RECORD);
  secureFree(had);
  const r = projectRecipient(v, true) ?? '';
  if (!had) {
    v.save();
    audit.record({ type: 'project.identity', decision: 'info', reason: 'created' });
  }
  return r;
}

/**
 * The text of `sealed` sealed again to `recipients`, opened with this vault's identity: a new
 * data key, new nonces, the same names and values. Undefined when this vault's identity is not
 * one of the file's recipients. A tampered file is PROJECT_TAMPERED before anything is sealed.
 */
export function resealProject(
  v: Vault,
  sealed: Uint8Array,
  recipients: readonly string[],
): string | undefined {
  const id = v.revealInternal(IDENTITY_RECORD);
  if (!id) return undefined;
  let opened: OpenedProject | undefined;
  const entries: Array<{ name: string; value: SecureBuffer }> = [];
  try {
    opened = OpenedProject.open(parseProject(sealed), id);
    if (!opened) return undefined;
    for (const name of opened.names)
      entries.push({ name, value: opened.value(name) as SecureBuffer });
    return sealProject(opened.project, entries, recipients);
  } finally {
    for (const e of entries) secureFree(e.value);
    opened?.close();
    secureFree(id);
  }
}

/**
 * Makes an age identity file's key (AGE-SECRET-KEY-1..., mode 0600) this vault's project
 * identity: a CI system's, made with age-keygen. The vault is saved and the import recorded.
 * A vault that has another identity keeps it: replacing it would shut this vault out of every
 * file sealed to it.
 */
export function importIdentity(
  v: Vault,
  file: string,
  audit: { record(r: AuditRecord): unknown },
): string {
  const keys = readAgeIdentities(file);
  const had = v.revealInternal(IDENTITY_RECORD);
  try {
    if (keys.length !== 1)
      throw new UsageError('USAGE', `${file} holds ${keys.length} identities; give a file of one`);
    const key = keys[0] as SecureBuffer;
    const recipient = encodeRecipient(publicKeyOf(key));
    if (had) {
      if (secureEqual(had, key)) return recipient;
      throw new UsageError('USAGE', 'this vault has a project identity already; it is kept', {
        hint: 'an identity is imported into a vault that has none (keyward init a new home for CI)',
      });
    }
    v.setInternal(IDENTITY_RECORD, key);
    v.save();
    audit.record({ type: 'project.identity', decision: 'info', reason: 'imported' });
    return recipient;
  } finally {
    for (const k of keys) secureFree(k);
    secureFree(had);
  }
}

/**
 * The project name of a sealed file this vault opens (its MAC verified with the data key its
 * identity unwraps); undefined for any other file, damaged or not this vault's.
 */
export function verifiedProject(v: Vault, sealed: Uint8Array): string | undefined {
  const id = v.revealInternal(IDENTITY_RECORD);
  if (!id) return undefined;
  try {
    const opened = OpenedProject.open(parseProject(sealed), id);
    opened?.close();
    return opened?.project;
  } catch {
    return undefined;
  } finally {
    secureFree(id);
  }
}
