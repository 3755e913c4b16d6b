/**
 * Operator API keys (docs/OPERATORS.md, "API keys"), kept in the vault as keyward's own record
 * `@operators/keys` (encrypted and authenticated with everything else): adding one takes the
 * passphrase, and a process of the same user can't add its own by writing a file.
 *
 * A key is `kwop_` + 16 hex digits (its id, public: how it is found and named in the log) + `_` +
 * 43 base64url characters (32 random bytes). Only the SHA-256 of that last part is stored: the key
 * is shown once, at creation, and never again. A hash, not a slow KDF: the key is random, so the
 * hash can't be guessed backwards, and checking it costs nothing an attacker could use.
 */
import { IntegrityError, KeywardError } from '../errors.js';
import {
  randomBytes,
  secretSha256,
  secureAlloc,
  secureEqual,
  secureFree,
  secureRandom,
  secureTake,
  writeValueSync,
  type SecureBuffer,
} from '../lib/secure.js';
import type { Vault } from '../vault/index.js';
import type { OperatorIdentity } from './types.js';

export const KEYS_RECORD = '@operators/keys';
export const MAX_KEYS = 256;
const PREFIX = 'kwop_';
const ID_HEX = 16;
const SECRET_CHARS = 43;
/** The whole key's length: prefix, id, separator, secret. */
export const KEY_LENGTH = PREFIX.length + ID_HEX + 1 + SECRET_CHARS;
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

export interface StoredKey {
  id: string;
  name: string;
  groups: string[];
  /** SHA-256 of the secret part, hex. */
  hash: string;
  created: string;
  /** The operator id it stands for (the holder's OIDC id), when not key:NAME. */
  as?: string;
}

interface KeyRecord {
  version: 1;
  keys: StoredKey[];
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function checkKeyName(name: string): string {
  if (!NAME_RE.test(name))
    throw new KeywardError('INVALID_NAME', 'a key name is letters, digits, . _ - (at most 64)');
  return name;
}

/**
 * An operator id a key stands for (--as): printable, 1 to 256 characters, never `key:...` (which
 * names keys themselves).
 */
export function checkOperatorId(id: string): string {
  if (
    id.length === 0 ||
    id.length > 256 ||
    id.startsWith('key:') ||
    [...id].some((c) => (c.codePointAt(0) ?? 0) < 0x20 || c === '\u007f')
  )
    throw new KeywardError(
      'USAGE',
      "--as takes the operator id the key stands for (the holder's id at the identity provider): 1 to 256 printable characters, not key:...",
    );
  return id;
}

/** Group names as an IdP gives them: printable, 1 to 128 characters; 1 to 32 of them. */
export function checkGroups(groups: readonly string[]): string[] {
  const printable = (g: string) =>
    g.length > 0 && g.length <= 128 && ![...g].some((c) => (c.codePointAt(0) ?? 0) < 0x20);
  if (groups.length === 0 || groups.length > 32 || !groups.every(printable))
    throw new KeywardError('USAGE', 'give 1 to 32 groups, each 1 to 128 printable characters', {
      hint: 'keyward operator key create NAME --groups sre-team',
    });
  return [...new Set(groups)];
}

export function readKeys(v: Vault): StoredKey[] {
  const raw = v.revealInternal(KEYS_RECORD);
  if (!raw) return [];
  try {
    // Ids, names, groups and hashes: nothing secret becomes a string here.
    const r = JSON.parse(raw.toString('utf8')) as KeyRecord;
    if (r.version !== 1 || !Array.isArray(r.keys)) throw new Error('shape');
    for (const k of r.keys)
      if (
        typeof k.id !== 'string' ||
        !/^[0-9a-f]{16}$/.test(k.id) ||
        typeof k.name !== 'string' ||
        typeof k.hash !== 'string' ||
        !/^[0-9a-f]{64}$/.test(k.hash) ||
        !Array.isArray(k.groups) ||
        !k.groups.every((g) => typeof g === 'string') ||
        (k.as !== undefined && typeof k.as !== 'string')
      )
        throw new Error('shape');
    return r.keys;
  } catch {
    throw new IntegrityError(
      'VAULT_CORRUPT',
      'the operator API keys kept in the vault are damaged',
    );
  } finally {
    secureFree(raw);
  }
}

function writeKeys(v: Vault, keys: StoredKey[]): void {
  const record: KeyRecord = { version: 1, keys };
  v.setInternal(KEYS_RECORD, secureTake(Buffer.from(JSON.stringify(record), 'utf8')));
}

/**
 * Adds a key named `name` for `groups` to the open vault (the caller saves it) and returns the
 * key, in secure memory, for the caller to show once and free.
 */
export function createKey(
  v: Vault,
  name: string,
  groups: readonly string[],
  now: Date,
  as?: string,
): { key: SecureBuffer; stored: StoredKey } {
  checkKeyName(name);
  if (as !== undefined) checkOperatorId(as);
  const keys = readKeys(v);
  if (keys.some((k) => k.name === name))
    throw new KeywardError('USAGE', `an operator key named ${name} exists already`, {
      hint: `keyward operator key revoke ${name} first, or choose another name`,
    });
  if (keys.length >= MAX_KEYS)
    throw new KeywardError('USAGE', `at most ${MAX_KEYS} operator keys: revoke one first`);
  const id = randomBytes(ID_HEX / 2).toString('hex');
  const key = secureAlloc(KEY_LENGTH);
  const random = secureRandom(SECRET_CHARS);
  try {
    key.write(`${PREFIX}${id}_`, 0, 'latin1');
    // 43 characters of 64 each: 258 bits, each drawn uniformly (a byte mod 64 is uniform).
    for (let i = 0; i < SECRET_CHARS; i++)
      key[PREFIX.length + ID_HEX + 1 + i] = B64URL.charCodeAt((random[i] ?? 0) & 63);
    const secret = key.subarray(PREFIX.length + ID_HEX + 1);
    const stored: StoredKey = {
      id,
      name,
      groups: checkGroups(groups),
      hash: secretSha256(secret).toString('hex'),
      created: now.toISOString(),
      ...(as !== undefined ? { as } : {}),
    };
    writeKeys(v, [...keys, stored]);
    return { key, stored };
  } catch (e) {
    secureFree(key);
    throw e;
  } finally {
    secureFree(random);
  }
}

/** Removes the key named `name` (the caller saves); not found: an error naming it. */
export function revokeKey(v: Vault, name: string): StoredKey {
  const keys = readKeys(v);
  const k = keys.find((x) => x.name === name);
  if (!k)
    throw new KeywardError('SECRET_NOT_FOUND', `no operator key named ${checkKeyName(name)}`, {
      hint: 'keyward operator key list',
    });
  writeKeys(
    v,
    keys.filter((x) => x !== k),
  );
  return k;
}

/**
 * The operator a presented key names, or undefined when it names none (malformed, unknown id,
 * wrong secret, revoked). The key is read in place and not freed here.
 */
export function checkKey(v: Vault, presented: SecureBuffer): OperatorIdentity | undefined {
  const key = withoutNewline(presented);
  if (key.length !== KEY_LENGTH || latin1(key, 0, PREFIX.length) !== PREFIX) return undefined;
  // The id is public (it is in the log); the secret part is never made a string.
  const id = latin1(key, PREFIX.length, PREFIX.length + ID_HEX);
  if (!/^[0-9a-f]{16}$/.test(id) || key[PREFIX.length + ID_HEX] !== 0x5f) return undefined;
  const stored = readKeys(v).find((k) => k.id === id);
  if (!stored) return undefined;
  const hash = secretSha256(key.subarray(PREFIX.length + ID_HEX + 1));
  const want = Buffer.from(stored.hash, 'hex');
  if (!secureEqual(hash, want)) return undefined;
  return keyOperator(stored);
}

/**
 * The operator a stored key stands for: `key:NAME`, or the id given with --as (its holder's
 * identity at the provider, so that one person counts once in two-person control).
 */
export function keyOperator(k: StoredKey): OperatorIdentity {
  return { id: k.as ?? `key:${k.name}`, method: 'key', groups: [...k.groups], keyId: k.id };
}

/** Public bytes of a key (its prefix and id) as text. */
const latin1 = (b: Uint8Array, from: number, to: number): string =>
  Buffer.from(b.buffer, b.byteOffset + from, to - from).toString('latin1');

/** A key as a file holds it: one trailing newline (or CR LF) is not part of it. A view. */
function withoutNewline(key: Uint8Array): Uint8Array {
  let end = key.length;
  if (key[end - 1] === 0x0a) end -= 1;
  if (key[end - 1] === 0x0d) end -= 1;
  return key.subarray(0, end);
}

/** The id of a presented key (public), for the log when it is refused; undefined if malformed. */
export function keyIdOf(presented: SecureBuffer): string | undefined {
  const key = withoutNewline(presented);
  if (key.length !== KEY_LENGTH) return undefined;
  const id = latin1(key, PREFIX.length, PREFIX.length + ID_HEX);
  return /^[0-9a-f]{16}$/.test(id) ? id : undefined;
}

/**
 * Writes a new key and a newline to fd (shown once), and frees it; no fd: only frees it. A key
 * that could not be shown whole (the reader went away, no space) is OUTPUT_FAILED: it exists,
 * and nobody has it.
 */
export function showKeyOnce(key: SecureBuffer, fd: number | undefined, name = ''): void {
  try {
    if (fd === undefined) return;
    let why: string;
    try {
      if (writeValueSync(fd, key) && writeValueSync(fd, Buffer.from('\n'))) return;
      why = 'the reader went away';
    } catch (e) {
      if (!(e instanceof KeywardError)) throw e;
      why = e.message;
    }
    throw new KeywardError('OUTPUT_FAILED', `the new key ${name} was not shown (${why})`, {
      hint: `nobody has it: revoke it (keyward operator key revoke ${name}) and create another`,
    });
  } finally {
    secureFree(key);
  }
}
