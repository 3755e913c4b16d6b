/**
 * OpenSSH private key files (PROTOCOL.key in OpenSSH's sources): `openssh-key-v1`, plain or
 * encrypted with bcrypt_pbkdf and AES (ctr, cbc, gcm). The file's bytes, the decoded body, the
 * derived key and the decrypted section all live in secure memory; ciphertext is public.
 */
import crypto from 'node:crypto';
import { sodium } from '../lib/sodium.js';
import { AuthError, KeywardError } from '../errors.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import { bcryptPbkdf } from './bcrypt.js';
import { SigningKey } from './key.js';
import { samePublic, SshReader } from './wire.js';

const BEGIN = '-----BEGIN OPENSSH PRIVATE KEY-----';
const END = '-----END OPENSSH PRIVATE KEY-----';
const MAGIC = 'openssh-key-v1\0';
/** OpenSSH writes 16 (ssh-keygen -a); far more would only stall the import. */
const MAX_ROUNDS = 4096;

interface Cipher {
  node: string;
  keyLen: number;
  ivLen: number;
  block: number;
  tagLen: number;
}

const CIPHERS: Record<string, Cipher> = {
  'aes256-ctr': { node: 'aes-256-ctr', keyLen: 32, ivLen: 16, block: 16, tagLen: 0 },
  'aes192-ctr': { node: 'aes-192-ctr', keyLen: 24, ivLen: 16, block: 16, tagLen: 0 },
  'aes128-ctr': { node: 'aes-128-ctr', keyLen: 16, ivLen: 16, block: 16, tagLen: 0 },
  'aes256-cbc': { node: 'aes-256-cbc', keyLen: 32, ivLen: 16, block: 16, tagLen: 0 },
  'aes192-cbc': { node: 'aes-192-cbc', keyLen: 24, ivLen: 16, block: 16, tagLen: 0 },
  'aes128-cbc': { node: 'aes-128-cbc', keyLen: 16, ivLen: 16, block: 16, tagLen: 0 },
  'aes256-gcm@openssh.com': { node: 'aes-256-gcm', keyLen: 32, ivLen: 12, block: 16, tagLen: 16 },
  'aes128-gcm@openssh.com': { node: 'aes-128-gcm', keyLen: 16, ivLen: 12, block: 16, tagLen: 16 },
};

function notAKeyFile(why: string): KeywardError {
  return new KeywardError('USAGE', `not an OpenSSH private key file: ${why}`, {
    hint: 'keyward imports files ssh-keygen writes (BEGIN OPENSSH PRIVATE KEY); convert others with ssh-keygen -p -f FILE',
  });
}

const B64: Int16Array = (() => {
  const t = new Int16Array(256).fill(-1);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  for (let i = 0; i < 64; i++) t[alphabet.charCodeAt(i)] = i;
  return t;
})();

/** Base64 from bytes to secure memory (no string holds the text), whitespace skipped. */
export function base64ToSecure(src: Uint8Array): SecureBuffer {
  let n = 0;
  for (const c of src) if ((B64[c] ?? -1) >= 0) n++;
  const out = secureAlloc(Math.floor((n * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (const c of src) {
    if (c === 0x3d) break; // '='
    const v = B64[c] ?? -1;
    if (v < 0) {
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) continue;
      secureFree(out);
      throw notAKeyFile('bad base64');
    }
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >>> bits) & 0xff;
    }
  }
  if (o !== out.length) {
    secureFree(out);
    throw notAKeyFile('bad base64 length');
  }
  return out;
}

export interface KeyFile {
  /** Whether the file asks for a passphrase. */
  encrypted: boolean;
  publicBlob: Buffer;
}

function decode(file: SecureBuffer): SecureBuffer {
  const start = file.indexOf(BEGIN);
  const end = file.indexOf(END);
  if (start < 0 || end < start) {
    if (file.indexOf('-----BEGIN ') >= 0)
      throw notAKeyFile('this is a PEM key (RSA, EC or PKCS#8 format)');
    throw notAKeyFile('no BEGIN OPENSSH PRIVATE KEY line');
  }
  const body = base64ToSecure(file.subarray(start + BEGIN.length, end));
  if (
    body.length < MAGIC.length ||
    !samePublic(body.subarray(0, MAGIC.length), Buffer.from(MAGIC, 'latin1'))
  ) {
    secureFree(body);
    throw notAKeyFile('bad magic');
  }
  return body;
}

/** What the file says about itself before any passphrase is asked. */
export function inspectKeyFile(file: SecureBuffer): KeyFile {
  const body = decode(file);
  try {
    const r = new SshReader(body.subarray(MAGIC.length));
    const cipher = r.text();
    r.text();
    r.string();
    if (r.u32() !== 1) throw notAKeyFile('keyward imports files with exactly one key');
    return { encrypted: cipher !== 'none', publicBlob: Buffer.from(r.string()) };
  } finally {
    secureFree(body);
  }
}

/**
 * The key and its comment from an OpenSSH private key file. `passphrase` is asked only when the
 * file is encrypted; the caller owns (and frees) what it returns.
 */
export function readKeyFile(
  file: SecureBuffer,
  passphrase: () => SecureBuffer,
): { key: SigningKey; comment: string } {
  const body = decode(file);
  let section: SecureBuffer | undefined;
  try {
    const r = new SshReader(body.subarray(MAGIC.length));
    const cipherName = r.text();
    const kdf = r.text();
    const kdfOptions = r.string();
    if (r.u32() !== 1) throw notAKeyFile('keyward imports files with exactly one key');
    const publicBlob = Buffer.from(r.string());
    const encrypted = r.string();
    if (cipherName === 'none') {
      if (kdf !== 'none') throw notAKeyFile(`kdf ${kdf} without a cipher`);
      section = secureAlloc(encrypted.length);
      section.set(encrypted);
    } else {
      const cipher = CIPHERS[cipherName];
      if (!cipher)
        throw new KeywardError(
          'USAGE',
          `the key file is encrypted with ${cipherName}, which keyward does not read`,
          {
            hint: 'reencrypt it first: ssh-keygen -p -Z aes256-ctr -f FILE',
          },
        );
      if (kdf !== 'bcrypt') throw notAKeyFile(`unknown kdf ${kdf}`);
      const o = new SshReader(kdfOptions);
      const salt = o.string();
      const rounds = o.u32();
      if (salt.length === 0 || rounds < 1 || rounds > MAX_ROUNDS)
        throw notAKeyFile(`bcrypt rounds ${rounds} out of range (1..${MAX_ROUNDS})`);
      const tag = cipher.tagLen ? r.rest() : Buffer.alloc(0);
      if (tag.length !== cipher.tagLen || encrypted.length % cipher.block !== 0)
        throw notAKeyFile('bad encrypted section length');
      const pass = passphrase();
      const keyIv = secureAlloc(cipher.keyLen + cipher.ivLen);
      try {
        if (pass.length === 0)
          throw new AuthError('VAULT_BAD_PASSPHRASE', 'the key file needs its passphrase');
        bcryptPbkdf(pass, salt, rounds, keyIv);
        section = decrypt(cipher, keyIv, encrypted, tag);
      } finally {
        secureFree(pass);
        secureFree(keyIv);
      }
    }
    const s = new SshReader(section);
    const check1 = s.u32();
    const check2 = s.u32();
    if (check1 !== check2) {
      throw new AuthError('VAULT_BAD_PASSPHRASE', 'wrong passphrase for the key file');
    }
    const key = SigningKey.read(s);
    try {
      const comment = s.text();
      const pad = s.rest();
      for (let i = 0; i < pad.length; i++)
        if (pad[i] !== ((i + 1) & 0xff)) throw notAKeyFile('bad padding');
      if (!samePublic(key.publicBlob, publicBlob))
        throw notAKeyFile('the public key does not match the private key');
      return { key, comment };
    } catch (e) {
      key.wipe();
      throw e;
    }
  } finally {
    secureFree(body);
    secureFree(section);
  }
}

function decrypt(cipher: Cipher, keyIv: SecureBuffer, ct: Buffer, tag: Buffer): SecureBuffer {
  const d = crypto.createDecipheriv(
    cipher.node,
    keyIv.subarray(0, cipher.keyLen),
    keyIv.subarray(cipher.keyLen),
  ) as crypto.DecipherGCM;
  d.setAutoPadding(false);
  if (cipher.tagLen) d.setAuthTag(tag);
  const out = secureAlloc(ct.length);
  let o = 0;
  // Node hands plaintext back in buffers it allocates: copy each into secure memory and zero it.
  const take = (chunk: Buffer) => {
    out.set(chunk, o);
    o += chunk.length;
    sodium.sodium_memzero(chunk);
  };
  try {
    take(d.update(ct));
    take(d.final());
  } catch {
    secureFree(out);
    throw new AuthError('VAULT_BAD_PASSPHRASE', 'wrong passphrase for the key file');
  }
  return out;
}
