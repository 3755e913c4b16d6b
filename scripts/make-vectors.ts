/**
 * Makes test/vectors/vault/ (docs/FORMAT.md, "Test vectors") from a seeded random source, so the
 * same code always makes the same bytes: test/vectors.test.ts regenerates them and compares,
 * which pins the format to the byte. test/vectors/vault-v1/ holds format 1 files made by keyward
 * before format 2, kept as they are (never regenerated): the migration reads them.
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
import { BATCH_KEY_MS, BodySealer } from '../src/audit/body.js';

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

function makeVault(
  dir: string,
  seed: string,
  values: Record<string, string>,
  remove: string[] = [],
  later: Record<string, string> = {},
): Buffer {
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
  for (const name of remove) v.remove(name, FIXED_TIME);
  v.save();
  if (Object.keys(later).length > 0) {
    // A second save: new values (new record ids) for the same names.
    for (const [name, value] of Object.entries(later)) v.set(name, secret(value), FIXED_TIME);
    v.save();
  }
  v.close();
  const bytes = fs.readFileSync(p.file);
  fs.rmSync(home, { recursive: true, force: true });
  return bytes;
}

function flip(b: Buffer, at: number, mask: number): void {
  b.writeUInt8(b.readUInt8(at) ^ mask, at);
}

/** The header's checksum recomputed after an edit, as an attacker who changes the file would. */
function resum(b: Buffer): Buffer {
  const out = Buffer.from(b);
  const h = headerLength(out);
  blake2b256(out.subarray(0, h - 32)).copy(out, h - 32);
  return out;
}

function headerLength(b: Buffer): number {
  let pos = 49;
  for (let i = 0; i < b.readUInt8(48); i++) pos += 3 + b.readUInt16BE(pos + 1);
  return pos + 32;
}

/** Each frame's offset and length (with its length field), walked like the parser does. */
function frames(b: Buffer): Array<{ start: number; len: number }> {
  const out: Array<{ start: number; len: number }> = [];
  for (let pos = headerLength(b); pos + 4 <= b.length;) {
    const len = 4 + b.readUInt32BE(pos);
    out.push({ start: pos, len });
    pos += len;
  }
  return out;
}

export function makeVectors(dir: string): VectorSpec[] {
  fs.mkdirSync(dir, { recursive: true });
  const values = { 'api/token': 's3cr3t-value', db_password: 'hunter2-but-longer' };
  const basic = makeVault(dir, 'basic', values);
  const empty = makeVault(dir, 'empty', {});
  const removed = makeVault(dir, 'removed', { ...values, 'old/key': 'gone-now' }, ['old/key']);
  const files: Record<string, Buffer> = {
    'basic.kwv': basic,
    'empty.kwv': empty,
    'removed.kwv': removed,
  };

  // The mark frame every rewrite starts with (init's), then the save's two frames.
  const [mark, f0, f1] = frames(basic);
  if (!mark || !f0 || !f1) throw new Error('basic vector has fewer than three frames');

  const flippedValue = Buffer.from(basic);
  flip(flippedValue, f0.start + f0.len - 5, 0x01); // in the value box of the first frame
  files['flipped-value.kwv'] = flippedValue;

  const flippedLast = Buffer.from(basic);
  flip(flippedLast, f1.start + f1.len - 5, 0x01); // in the value box of the last frame
  files['flipped-last-value.kwv'] = flippedLast;

  const flippedHeader = Buffer.from(basic);
  flip(flippedHeader, 10, 0x80); // in the vault id, checksum left
  files['flipped-header.kwv'] = flippedHeader;

  files['truncated.kwv'] = basic.subarray(0, basic.length - 100);

  files['swapped.kwv'] = Buffer.concat([
    basic.subarray(0, f0.start),
    basic.subarray(f1.start, f1.start + f1.len),
    basic.subarray(f0.start, f0.start + f0.len),
  ]);

  files['first-removed.kwv'] = Buffer.concat([
    basic.subarray(0, f0.start),
    basic.subarray(f1.start),
  ]);

  files['header-only.kwv'] = resum(basic.subarray(0, mark.start));

  const weakened = Buffer.from(basic);
  weakened.writeUInt32BE(2, 49 + 3 + 1); // slot 1: type(1) len(2) alg(1) then opslimit
  files['weakened-kdf.kwv'] = resum(weakened);

  // A memlimit no reader accepts (4 TiB): refused before any work is done, whatever the passphrase.
  const absurd = Buffer.from(basic);
  absurd.writeUInt32BE(0xffffffff, 49 + 3 + 1 + 4); // slot 1: type, len, alg, opslimit, then memlimit
  files['kdf-out-of-range.kwv'] = resum(absurd);

  const v3 = Buffer.from(basic);
  v3[7] = 3;
  files['version-3.kwv'] = resum(v3);

  // The same name written in two saves (same length values, so the frames are the same size).
  const resaved = makeVault(dir, 'resaved', { 'api/token': 'old-value-1234' }, [], {
    'api/token': 'new-value-5678',
  });
  files['resaved.kwv'] = resaved;
  const [, older, newer] = frames(resaved);
  if (!older || !newer) throw new Error('resaved vector has fewer than three frames');
  const valueBox = (f: { start: number; len: number }) =>
    f.start + 4 + 1 + 16 + 2 + resaved.readUInt16BE(f.start + 4 + 1 + 16);
  const spliced = Buffer.from(resaved);
  resaved.copy(spliced, valueBox(newer), valueBox(older), older.start + older.len);
  files['spliced.kwv'] = spliced;
  files['replayed.kwv'] = Buffer.concat([
    resaved.subarray(0, newer.start),
    resaved.subarray(older.start, older.start + older.len),
  ]);

  const junk = Buffer.alloc(300);
  seededRng('junk')(junk);
  files['not-a-vault.kwv'] = junk;

  for (const [name, bytes] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), bytes);

  const fail = (file: string, code: string, note: string): VectorSpec => ({
    file,
    passphrase: PASSPHRASE,
    expect: { ok: false, code },
    note,
  });
  const specs: VectorSpec[] = [
    {
      file: 'basic.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: true, entries: values },
      note: "two secrets, written in one save: init's mark frame, then two frames, the second marked as the commit",
    },
    {
      file: 'empty.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: true, entries: {} },
      note: 'no entries',
    },
    {
      file: 'removed.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: true, entries: values },
      note: 'three secrets set and one removed in one save: the mark, then four frames, the last a delete',
    },
    {
      file: 'truncated.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: true, entries: {} },
      note: 'the last 100 bytes cut: the save never committed, so the vault is as before it',
    },
    {
      file: 'basic.kwv',
      passphrase: 'not the passphrase',
      expect: { ok: false, code: 'VAULT_BAD_PASSPHRASE' },
      note: 'wrong passphrase',
    },
    fail(
      'flipped-value.kwv',
      'VAULT_CORRUPT',
      "a byte of the first frame's value flipped: the next frame's chain no longer matches",
    ),
    fail(
      'flipped-last-value.kwv',
      'VAULT_CORRUPT',
      "a byte of the last frame's value flipped: its value box fails authentication",
    ),
    fail('flipped-header.kwv', 'VAULT_CORRUPT', 'a header byte flipped, checksum left'),
    fail('swapped.kwv', 'VAULT_CORRUPT', 'the two frames swapped: each is bound to its place'),
    fail('first-removed.kwv', 'VAULT_CORRUPT', "the save's first frame removed: the chain breaks"),
    fail(
      'header-only.kwv',
      'VAULT_CORRUPT',
      'the header alone, checksum recomputed: no frame authenticates it, so it is refused',
    ),
    fail(
      'weakened-kdf.kwv',
      'VAULT_BAD_PASSPHRASE',
      'opslimit lowered, checksum recomputed: the wrap binds the KDF parameters',
    ),
    fail(
      'kdf-out-of-range.kwv',
      'VAULT_CORRUPT',
      'memlimit set to 2^32-1 KiB, checksum recomputed: outside the bounds a reader accepts, refused before the KDF runs',
    ),
    {
      file: 'resaved.kwv',
      passphrase: PASSPHRASE,
      expect: { ok: true, entries: { 'api/token': 'new-value-5678' } },
      note: 'api/token written in one save, then rewritten in a second: the newer value is read',
    },
    fail(
      'spliced.kwv',
      'VAULT_CORRUPT',
      "resaved.kwv with the older value box of api/token spliced into the newer frame: the newer frame's meta names another record id",
    ),
    fail(
      'replayed.kwv',
      'VAULT_CORRUPT',
      'resaved.kwv with its last frame replaced by the older frame of the same name: bound to another place and predecessor',
    ),
    fail('version-3.kwv', 'VAULT_UNSUPPORTED_VERSION', 'unknown version'),
    fail('not-a-vault.kwv', 'VAULT_CORRUPT', 'random bytes'),
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
  type Row = { type: string; epoch: number; body: string };
  /** One MACed line: the key of its epoch, derived from the seed as docs/AUDIT.md says. */
  const entry = (seedSrc: Buffer, r: Row, seq: number, prev: string) =>
    encodeLine(
      {
        seq,
        time: `2026-11-22T12:00:0${seq - 1}.000Z`,
        type: r.type,
        epoch: r.epoch,
        prev,
        body: r.body,
      },
      epochKeyFromSeed(secureTake(Buffer.from(seedSrc)), r.epoch),
    );
  const chain = (seedSrc: Buffer, of: Row[] = rows): string[] => {
    let prev = ZERO_HASH;
    return of.map((r, i) => {
      const e = entry(seedSrc, r, i + 1, prev);
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
  // A well-formed entry 2, MACed with the right key, inserted after entry 1: the entry that was
  // entry 2 no longer follows it.
  const head = entry(seedBytes, rows[0] ?? { type: '', epoch: 0, body: '' }, 1, ZERO_HASH);
  const forged = entry(seedBytes, { type: 'secret.rm', epoch: 0, body: 'Zm9yZ2Vk' }, 2, head.hash);
  write('inserted.jsonl', [head.line, forged.line, good[1] ?? '', good[2] ?? '']);
  // Epochs 0, 1, 0, each line MACed with its own epoch's key and chained: the epoch went back.
  write(
    'epoch-back.jsonl',
    chain(
      seedBytes,
      [rows[0], rows[2], rows[1]].filter((r): r is Row => r !== undefined),
    ),
  );
  // Epochs 0, 0, 10,002: every MAC and link valid, but the epoch rose by more than 10,000.
  write(
    'epoch-leap.jsonl',
    chain(seedBytes, [
      rows[0] ?? { type: '', epoch: 0, body: '' },
      rows[1] ?? { type: '', epoch: 0, body: '' },
      { type: 'vault.lock', epoch: 10_002, body: 'bGVhcA==' },
    ]),
  );
  /** A log that fails verification at `line`, for a reason that includes `reason`. */
  const broken = (file: string, line: number, reason: string, note: string): AuditVectorSpec => ({
    file,
    seedFile: 'seed.hex',
    expect: { ok: false, line, reason },
    note,
  });
  const specs: AuditVectorSpec[] = [
    {
      file: 'good.jsonl',
      seedFile: 'seed.hex',
      expect: { ok: true, entries: 3 },
      note: 'three entries over epochs 0, 0, 1',
    },
    broken('flipped-type.jsonl', 2, 'MAC', 'the type of entry 2 changed'),
    broken('swapped.jsonl', 2, 'seq 3 follows seq 1', 'entries 2 and 3 swapped'),
    broken('first-removed.jsonl', 1, 'starts at seq 2', 'entry 1 removed'),
    broken(
      'inserted.jsonl',
      3,
      'seq 2 follows seq 2',
      'an entry MACed with the right key inserted after entry 1',
    ),
    broken('epoch-back.jsonl', 3, 'epoch 0 after', 'epochs 0, 1, 0, every MAC and link valid'),
    broken(
      'epoch-leap.jsonl',
      3,
      'epoch 10002 after epoch 0',
      'epochs 0, 0, 10,002, every MAC and link valid: a rise of more than 10,000',
    ),
    broken('other-key.jsonl', 1, 'MAC', 'a valid chain under another seed'),
  ];
  fs.writeFileSync(path.join(dir, 'vectors.json'), `${JSON.stringify(specs, null, 2)}\n`);
  makeBodyVectors(dir);
  return specs;
}

/**
 * docs/AUDIT.md "Bodies": batch-form bodies made by the writer's own sealer, its randomness
 * replaced by a counter's BLAKE2b so the bytes are fixed. Two bodies share a batch key, the third
 * comes after the key aged out.
 */
function makeBodyVectors(dir: string): void {
  const boxSeed = Buffer.from(Array.from({ length: 32 }, (_, i) => 0x40 + i));
  const pk = Buffer.alloc(32);
  const sk = Buffer.alloc(32);
  sodium.crypto_box_seed_keypair(pk, sk, boxSeed);
  let counter = 0;
  const entropy = (b: Uint8Array) => {
    const c = Buffer.alloc(8);
    c.writeUInt32LE((counter += 1), 0);
    const full = Buffer.alloc(64);
    sodium.crypto_generichash(full, c);
    b.set(full.subarray(0, b.length));
  };
  let now = 0;
  const sealer = new BodySealer(() => now, entropy);
  const plains = [
    '{"actor":{"uid":1000,"pid":4242},"target":"db/password","decision":"allow","reason":null,"details":{}}',
    '{"actor":{"uid":1000,"pid":4243},"target":"db/password","decision":"deny","reason":"rule no","details":{}}',
    '{"actor":{"uid":1000,"pid":4244},"target":null,"decision":"info","reason":null,"details":{}}',
  ];
  const bodies = plains.map((plain, i) => {
    if (i === 2) now += BATCH_KEY_MS;
    return { plain, body: sealer.seal(Buffer.from(plain, 'utf8'), pk).toString('base64') };
  });
  sealer.close();
  const spec = {
    note: 'batch-form bodies (docs/AUDIT.md, "Bodies"): the first two share one ephemeral key',
    boxSecretKey: sk.toString('hex'),
    boxPublicKey: pk.toString('hex'),
    bodies,
  };
  fs.writeFileSync(path.join(dir, 'bodies.json'), `${JSON.stringify(spec, null, 2)}\n`);
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
