/**
 * The audit key's seed out of the vault and back (`audit key export`, `audit verify --key`):
 * 64 hex digits, written and read in secure memory, never as a string.
 */
import fs from 'node:fs';
import { IntegrityError, KeywardError } from '../errors.js';
import { writeQr } from '../lib/qr.js';
import {
  readFdToSecure,
  secureAlloc,
  secureFree,
  writeAllSync,
  type SecureBuffer,
} from '../lib/secure.js';
import type { Vault } from '../vault/index.js';
import { seedOf } from './vault-keys.js';

/** The seed as 64 hex digits in secure memory (no trailing newline). The caller frees it. */
function seedHex(v: Vault): SecureBuffer {
  const seed = seedOf(v);
  const hex = secureAlloc(seed.length * 2);
  const digits = '0123456789abcdef';
  for (let i = 0; i < seed.length; i++) {
    const b = seed[i] ?? 0;
    hex[2 * i] = digits.charCodeAt(b >> 4);
    hex[2 * i + 1] = digits.charCodeAt(b & 15);
  }
  secureFree(seed);
  return hex;
}

/** `audit key export`: writes the seed as hex to fd from secure memory, then wipes it. */
export function writeSeedHex(v: Vault, fd: number): void {
  const hex = seedHex(v);
  try {
    writeAllSync(fd, hex);
    writeAllSync(fd, Buffer.from('\n'));
  } finally {
    secureFree(hex);
  }
}

/** `audit key export --qr`: the same hex as a QR code (src/lib/qr.ts). */
export function writeSeedQr(v: Vault, fd: number): void {
  const hex = seedHex(v);
  try {
    writeQr(hex, fd);
  } finally {
    secureFree(hex);
  }
}

/** Reads an exported seed (64 hex digits) from a private file into secure memory. */
export function readSeedFile(file: string): SecureBuffer {
  const fd = fs.openSync(file, 'r');
  let raw: SecureBuffer | undefined;
  try {
    const st = fs.fstatSync(fd);
    if ((st.mode & 0o077) !== 0) {
      throw new IntegrityError(
        'INSECURE_PERMISSIONS',
        `refusing the key file ${file}: others can read it`,
        { hint: `chmod 600 '${file}'` },
      );
    }
    raw = readFdToSecure(fd, 256);
    const seed = secureAlloc(32);
    let n = 0;
    const val = (c: number): number =>
      c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
    for (let i = 0; i + 1 < raw.length && n < 32; i += 2) {
      const hi = val(raw[i] ?? 0);
      const lo = val(raw[i + 1] ?? 0);
      if (hi < 0 || lo < 0) break;
      seed[n++] = (hi << 4) | lo;
    }
    if (n !== 32) {
      secureFree(seed);
      throw new KeywardError(
        'USAGE',
        `the key file ${file} does not hold a 64-digit hex audit key`,
      );
    }
    return seed;
  } catch (e) {
    if (e instanceof RangeError)
      throw new KeywardError('USAGE', `the key file ${file} is too large`);
    throw e;
  } finally {
    secureFree(raw);
    fs.closeSync(fd);
  }
}
