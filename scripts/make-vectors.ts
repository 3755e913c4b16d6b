/**
 * Makes test/vectors/vault/ (docs/FORMAT.md, "Test vectors") from a seeded random source, so the
 * same code always makes the same bytes: test/vectors.test.ts regenerates them and compares,
 * which pins the format to the byte.
 *
 *   npm run vectors            writes test/vectors/vault/
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sodium from 'sodium-native';
import { secureTake } from '../src/lib/secure.js';
import { initVault, Vault, vaultPaths, type Rng } from '../src/vault/index.js';
import { blake2b256 } from '../src/vault/crypto.js';
import { encodeLine, ZERO_HASH } from '../src/audit/entry.js';
import { epochKeyFromSeed } from '../src/audit/keys.js';

export const PASSPHRASE = 'correct horse battery staple';
const FIXED_TIME = new Date('2026-11-22T12:00:00.000Z');
const MIN_KDF = { opsLimit: 1, memLimitKiB: 8 * 1024 };

export interface VectorSpec {
  file: string;
  passphrase: string;
  expect: { ok: true; entries: Record<string, string> } | { ok: false; code: string };
  note: string;
}

/** BLAKE2b-256(seed || counter), chained: deterministic, and never used outside vectors. */
function seededRng(seed: string): Rng {
  let counter = 0;
  return (out) => {
    let filled = 0;
    while (filled < out.length) {
      const block = Buffer.alloc(32);
      const ctr = Buffer.alloc(4);
      ctr.writeUInt32BE(counter++, 0);
      sodium.crypto_generichash(block, Buffer.concat([Buffer.from(seed), ctr]));
      const n = Math.min(32, out.length - filled);
      block.copy(Buffer.from(out.buffer, out.byteOffset, out.length), filled, 0, n);
      filled += n;
    }
  };
}

function secret(s: string): ReturnType<typeof secureTake> {
  return secureTake(Buffer.from(s, 'utf8'));
}

function makeVault(dir: string, seed: string, values: Record<string, string>): Buffer {
  const home = fs.mkdtempSync(path.join(dir, '.work-'));
  fs.chmodSync(home, 0o700);
  const p = vaultPaths(home);
  const rng = seededRng(seed);
  const pass = secret(PASSPHRASE);
  initVault(p, pass, { kdf: MIN_KDF, rng, now: () => FIXED_TIME });
  const v = Vault.open(p, { passphrase: pass }, rng);
  for (const [name, value] of Object.entries(values)) {
    const b = secret(value);
    v.set(name, b, FIXED_TIME);
  }
  v.save();
  v.close();
  const bytes = fs.readFileSync(p.file);
  fs.rmSync(home, { recursive: true, force: true });
  return bytes;
}

function flip(b: Buffer, at: number, mask: number): void {
  b.writeUInt8(b.readUInt8(at) ^ mask, at);
}

function rechecksum(b: Buffer): Buffer {
  const out = Buffer.from(b);
  blake2b256(out.subarray(0, out.length - 32)).copy(out, out.length - 32);
  return out;
}

/** Offsets of the structure after the header, found by walking it like the parser does. */
function layout(b: Buffer): { records: Array<{ start: number; len: number }>; slotStart: number } {
  let pos = 49;
  const slotStart = pos;
  const slots = b.readUInt8(48);
  for (let i = 0; i < slots; i++) pos += 3 + b.readUInt16BE(pos + 1);
  pos += 4 + b.readUInt32BE(pos);
  const count = b.readUInt32BE(pos);
  pos += 4;
  const records: Array<{ start: number; len: number }> = [];
  for (let i = 0; i < count; i++) {
    const len = b.readUInt32BE(pos);
    records.push({ start: pos, len: 4 + len });
    pos += 4 + len;
  }
  return { records, slotStart };
}

export function makeVectors(dir: string): VectorSpec[] {
  fs.mkdirSync(dir, { recursive: true });
  const values = { 'api/token': 's3cr3t-value', db_password: 'hunter2-but-longer' };
  const basic = makeVault(dir, 'basic', values);
  const empty = makeVault(dir, 'empty', {});
  const files: Record<string, Buffer> = { 'basic.kwv': basic, 'empty.kwv': empty };

  const { records, slotStart } = layout(basic);
  const r0 = records[0];
  const r1 = records[1];
  if (!r0 || !r1) throw new Error('basic vector has fewer than two records');

  const flippedValue = Buffer.from(basic);
  flip(flippedValue, r0.start + 4 + 30, 0x01); // inside the ciphertext of the first record
  files['flipped-value.kwv'] = rechecksum(flippedValue);

  const flippedByte = Buffer.from(basic);
  flip(flippedByte, r1.start + 10, 0x80);
  files['flipped-byte.kwv'] = flippedByte;

  files['truncated.kwv'] = basic.subarray(0, basic.length - 100);

  const swapped = Buffer.concat([
    basic.subarray(0, r0.start),
    basic.subarray(r1.start, r1.start + r1.len),
    basic.subarray(r0.start, r0.start + r0.len),
    basic.subarray(r1.start + r1.len),
  ]);
  files['swapped.kwv'] = rechecksum(swapped);

  const weakened = Buffer.from(basic);
  weakened.writeUInt32BE(2, slotStart + 3 + 1); // type(1) len(2) alg(1) then opslimit
  files['weakened-kdf.kwv'] = rechecksum(weakened);

  const v2 = Buffer.from(basic);
  v2[7] = 2;
  files['version-2.kwv'] = rechecksum(v2);

  const junk = Buffer.alloc(300);
  seededRng('junk')(junk);
  files['not-a-vault.kwv'] = junk;

  for (const [name, bytes] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), bytes);

  const specs: VectorSpec[] = [
    {
      file: 'basic.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: true, entries: values },
      note: 'two secrets',
    },
    {
      file: 'empty.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: true, entries: {} },
      note: 'no entries',
    },
    {
      file: 'basic.kwv',
      passphrase: 'not the passphrase',
      expect: { ok: false, code: 'VAULT_BAD_PASSPHRASE' },
      note: 'wrong passphrase',
    },
    {
      file: 'flipped-value.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: false, code: 'VAULT_CORRUPT' },
      note: 'a ciphertext byte flipped, checksum recomputed: the record fails authentication',
    },
    {
      file: 'flipped-byte.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: false, code: 'VAULT_CORRUPT' },
      note: 'a byte flipped, checksum left: checksum mismatch',
    },
    {
      file: 'truncated.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: false, code: 'VAULT_CORRUPT' },
      note: 'the last 100 bytes cut',
    },
    {
      file: 'swapped.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: false, code: 'VAULT_CORRUPT' },
      note: 'the two value records swapped, checksum recomputed: names are bound as AD',
    },
    {
      file: 'weakened-kdf.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: false, code: 'VAULT_BAD_PASSPHRASE' },
      note: 'opslimit lowered, checksum recomputed: the wrap binds the KDF parameters',
    },
    {
      file: 'version-2.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: false, code: 'VAULT_UNSUPPORTED_VERSION' },
      note: 'unknown version',
    },
    {
      file: 'not-a-vault.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: false, code: 'VAULT_CORRUPT' },
      note: 'random bytes',
    },
  ];
  fs.writeFileSync(path.join(dir, 'vectors.json'), `${JSON.stringify(specs, null, 2)}\n`);
  return specs;
}

export interface AuditVectorSpec {
  file: string;
  seedFile: string;
  expect: { ok: true; entries: number } | { ok: false; line: number; reason: string };
  note: string;
}

/**
 * docs/AUDIT.md vectors: a three-entry log over two epochs, MACed under keys derived from a fixed
 * seed, with fixed bodies (the bodies' encryption is random by design and is tested elsewhere).
 */
export function makeAuditVectors(dir: string): AuditVectorSpec[] {
  fs.mkdirSync(dir, { recursive: true });
  const seedBytes = Buffer.from(Array.from({ length: 32 }, (_, i) => i + 1));
  const otherBytes = Buffer.from(Array.from({ length: 32 }, (_, i) => 255 - i));
  const rows = [
    { type: 'vault.init', epoch: 0, body: 'Ym9keSBvbmU=' },
    { type: 'secret.read', epoch: 0, body: 'Ym9keSB0d28=' },
    { type: 'vault.lock', epoch: 1, body: 'Ym9keSB0aHJlZQ==' },
  ];
  const chain = (seedSrc: Buffer): string[] => {
    const seed = secureTake(Buffer.from(seedSrc));
    let prev = ZERO_HASH;
    return rows.map((r, i) => {
      const key = epochKeyFromSeed(seed, r.epoch);
      const e = encodeLine(
        {
          seq: i + 1,
          time: `2026-11-22T12:00:0${i}.000Z`,
          type: r.type,
          epoch: r.epoch,
          prev,
          body: r.body,
        },
        key,
      );
      prev = e.hash;
      return e.line;
    });
  };
  const good = chain(seedBytes);
  const write = (name: string, ls: string[]) =>
    fs.writeFileSync(path.join(dir, name), `${ls.join('\n')}\n`);
  fs.writeFileSync(path.join(dir, 'seed.hex'), `${seedBytes.toString('hex')}\n`);
  write('good.jsonl', good);
  write('flipped-type.jsonl', [
    good[0] ?? '',
    (good[1] ?? '').replace('secret.read', 'secret.rm'),
    good[2] ?? '',
  ]);
  write('swapped.jsonl', [good[0] ?? '', good[2] ?? '', good[1] ?? '']);
  write('first-removed.jsonl', good.slice(1));
  write('other-key.jsonl', chain(otherBytes));
  const specs: AuditVectorSpec[] = [
    {
      file: 'good.jsonl',
      seedFile: 'seed.hex',
      expect: { ok: true, entries: 3 },
      note: 'three entries over epochs 0, 0, 1',
    },
    {
      file: 'flipped-type.jsonl',
      seedFile: 'seed.hex',
      expect: { ok: false, line: 2, reason: 'MAC' },
      note: 'the type of entry 2 changed',
    },
    {
      file: 'swapped.jsonl',
      seedFile: 'seed.hex',
      expect: { ok: false, line: 2, reason: 'seq 3 follows seq 1' },
      note: 'entries 2 and 3 swapped',
    },
    {
      file: 'first-removed.jsonl',
      seedFile: 'seed.hex',
      expect: { ok: false, line: 1, reason: 'starts at seq 2' },
      note: 'entry 1 removed',
    },
    {
      file: 'other-key.jsonl',
      seedFile: 'seed.hex',
      expect: { ok: false, line: 1, reason: 'MAC' },
      note: 'a valid chain under another seed',
    },
  ];
  fs.writeFileSync(path.join(dir, 'vectors.json'), `${JSON.stringify(specs, null, 2)}\n`);
  return specs;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const out = path.resolve(here, '../../test/vectors/vault');
  const specs = makeVectors(out);
  const auditOut = path.resolve(here, '../../test/vectors/audit');
  const audit = makeAuditVectors(auditOut);
  process.stdout.write(
    `wrote ${specs.length} vault vectors to ${out} and ${audit.length} audit vectors to ${auditOut}\n`,
  );
}
