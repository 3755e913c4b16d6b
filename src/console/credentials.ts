/**
 * The WebAuthn credentials registered for this vault, kept in the vault itself as keyward's own
 * record `@console/webauthn` (encrypted and authenticated with everything else): a process of the
 * same user can't add a credential of its own by writing a file. Public keys, ids, counters and
 * names only; nothing here is secret, but all of it is trusted.
 */
import { randomBytes } from 'node:crypto';
import { IntegrityError, KeywardError } from '../errors.js';
import { secureFree, secureTake } from '../lib/secure.js';
import { printable } from '../lib/text.js';
import type { AuditRecord } from '../audit/index.js';
import type { Vault } from '../vault/index.js';

export const WEBAUTHN_RECORD = '@console/webauthn';
export const MAX_CREDENTIALS = 32;
const NAME_MAX = 64;

export interface StoredCredential {
  /** base64url, as the authenticator gave it. */
  id: string;
  /** The COSE public key, base64url. */
  publicKey: string;
  counter: number;
  transports: string[];
  name: string;
  created: string;
  lastUsed: string | null;
}

export interface CredentialRecord {
  version: 1;
  /** The WebAuthn user handle for this vault (random, base64url): the same for every credential. */
  userId: string;
  credentials: StoredCredential[];
}

export function readCredentials(v: Vault): CredentialRecord {
  const raw = v.revealInternal(WEBAUTHN_RECORD);
  if (!raw) return { version: 1, userId: randomBytes(16).toString('base64url'), credentials: [] };
  try {
    // Public keys and names only: nothing secret becomes a string here.
    const r = JSON.parse(raw.toString('utf8')) as CredentialRecord;
    if (r.version !== 1 || typeof r.userId !== 'string' || !Array.isArray(r.credentials))
      throw new Error('shape');
    for (const c of r.credentials)
      if (
        typeof c.id !== 'string' ||
        typeof c.publicKey !== 'string' ||
        typeof c.counter !== 'number' ||
        typeof c.name !== 'string' ||
        !Array.isArray(c.transports)
      )
        throw new Error('shape');
    return r;
  } catch {
    throw new IntegrityError(
      'VAULT_CORRUPT',
      'the WebAuthn credentials kept in the vault are damaged',
    );
  } finally {
    secureFree(raw);
  }
}

export function writeCredentials(v: Vault, r: CredentialRecord): void {
  v.setInternal(WEBAUTHN_RECORD, secureTake(Buffer.from(JSON.stringify(r), 'utf8')));
}

export function hasCredentials(v: Vault): boolean {
  return v.internalNames(WEBAUTHN_RECORD).length > 0 && readCredentials(v).credentials.length > 0;
}

/** A credential's name as a person gives it: printable, 1 to 64 characters. */
export function checkCredentialName(name: unknown): string {
  if (
    typeof name !== 'string' ||
    name.length === 0 ||
    name.length > NAME_MAX ||
    [...name].some((ch) => (ch.codePointAt(0) ?? 0) < 0x20 || ch === '\u007f')
  )
    throw new KeywardError('USAGE', 'a credential name is 1 to 64 printable characters');
  return name;
}

/** The credential with this id, or a not-found error naming it safely. */
export function findCredential(r: CredentialRecord, id: string): StoredCredential {
  const c = r.credentials.find((x) => x.id === id);
  if (!c)
    throw new KeywardError('REQUEST_NOT_FOUND', `no WebAuthn credential ${printable(id, 100)}`, {
      hint: 'keyward console credentials lists them',
    });
  return c;
}

/** What `keyward console credentials` and the console show: no public key bytes. */
export function describeCredentials(r: CredentialRecord): Array<Record<string, unknown>> {
  return r.credentials.map((c) => ({
    id: c.id,
    name: c.name,
    created: c.created,
    lastUsed: c.lastUsed,
    transports: c.transports,
  }));
}

/**
 * Renames or removes one credential (not found: REQUEST_NOT_FOUND), in the vault, through the
 * agent's locked write; returns the audit record of it for the caller to complete and record.
 */
export async function changeCredential(
  write: <T>(fn: (v: Vault) => { result: T; save: boolean }) => Promise<T>,
  id: string,
  op: 'rename' | 'revoke',
  name: string,
): Promise<AuditRecord & { details: Record<string, string> }> {
  await write((v) => {
    const r = readCredentials(v);
    const cred = findCredential(r, id);
    if (op === 'rename') cred.name = name;
    else r.credentials = r.credentials.filter((k) => k !== cred);
    writeCredentials(v, r);
    return { result: undefined, save: true };
  });
  return {
    type: 'console.credential',
    decision: 'info',
    reason: op === 'rename' ? 'renamed' : 'revoked',
    details: { action: op, credential: id, ...(op === 'rename' ? { name } : {}) },
  };
}
