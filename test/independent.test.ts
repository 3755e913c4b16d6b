/**
 * The committed vectors, checked against the documents rather than against keyward's own code
 * (issue 23, section 2). test/independent/ holds a reader of vault.kw (docs/FORMAT.md) and a
 * verifier of the audit log (docs/AUDIT.md) written from those pages alone: sodium-native called
 * directly, nothing imported from src/ or scripts/. Every vector must give its expected outcome,
 * and every refusal must come from the check the documents name for it. Test data only: values
 * are compared, never printed.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ROOT } from './helpers.js';
import { boxPublicKey, epochKey, lineHash, openBatchBody, verifyLog } from './independent/audit.js';
import {
  blake2b256,
  openBox,
  openVault,
  readHeader,
  unwrapDk,
  valueAd,
  VaultFailure,
  type Opened,
  type VaultReason,
} from './independent/vault.js';

const VAULT = path.join(ROOT, 'test/vectors/vault');
const VAULT_V1 = path.join(ROOT, 'test/vectors/vault-v1');
const AUDIT = path.join(ROOT, 'test/vectors/audit');
const PASS = 'correct horse battery staple';

interface VaultVector {
  file: string;
  passphrase: string;
  expect: { ok: true; entries: Record<string, string> } | { ok: false; code: string };
  note: string;
}
const readJson = <T>(file: string): T => JSON.parse(fs.readFileSync(file, 'utf8')) as T;
const read = (dir: string, file: string) => fs.readFileSync(path.join(dir, file));

/** Opens a vector; a VaultFailure is returned, anything else thrown (a bug in the reader). */
function attempt(dir: string, file: string, passphrase: string): Opened | VaultFailure {
  try {
    return openVault(read(dir, file), passphrase);
  } catch (e) {
    if (e instanceof VaultFailure) return e;
    throw e;
  }
}
function mustOpen(dir: string, file: string): Opened {
  const r = attempt(dir, file, PASS);
  assert.ok(!(r instanceof VaultFailure), `${file}: ${r instanceof VaultFailure ? r.message : ''}`);
  return r;
}
function mustFail(dir: string, file: string, passphrase = PASS): VaultFailure {
  const r = attempt(dir, file, passphrase);
  assert.ok(r instanceof VaultFailure, `${file} opened`);
  return r;
}

/** The documented reason for each refusal: FORMAT.md "Test vectors" and vectors.json's notes. */
const V2_REASONS: Record<string, { reason: VaultReason; frame?: number }> = {
  'basic.kwv': { reason: 'no-slot-opens' }, // step 4, with "not the passphrase"
  'flipped-value.kwv': { reason: 'meta-box', frame: 2 }, // "the next frame's chain"
  'flipped-last-value.kwv': { reason: 'last-value-box', frame: 2 }, // "checked on its own"
  'flipped-header.kwv': { reason: 'checksum' }, // step 3, header_sum
  'swapped.kwv': { reason: 'meta-box', frame: 1 }, // "each is bound to its place"
  'first-removed.kwv': { reason: 'meta-box', frame: 1 }, // "the chain breaks"
  'header-only.kwv': { reason: 'no-committed-frame' }, // "no frame authenticates it"
  'weakened-kdf.kwv': { reason: 'no-slot-opens' }, // "the wrap binds the KDF parameters"
  'kdf-out-of-range.kwv': { reason: 'kdf-bounds' }, // "must not make unlock allocate 4 TiB"
  'spliced.kwv': { reason: 'last-value-box', frame: 2 }, // "names another record id"
  'replayed.kwv': { reason: 'meta-box', frame: 2 }, // "another place and predecessor"
  'version-3.kwv': { reason: 'unsupported-version' }, // step 2
  'not-a-vault.kwv': { reason: 'not-a-vault' }, // step 1
};
const V1_REASONS: Record<string, VaultReason> = {
  'basic.kwv': 'no-slot-opens', // step 4, with "not the passphrase"
  'flipped-value.kwv': 'value-record', // "the record fails authentication"
  'flipped-byte.kwv': 'checksum', // "checksum mismatch"
  'truncated.kwv': 'checksum', // step 3: the last 32 bytes are no longer the checksum
  'swapped.kwv': 'value-record', // "names are bound as AD"
  'weakened-kdf.kwv': 'no-slot-opens', // "the wrap binds the KDF parameters"
  'not-a-vault.kwv': 'not-a-vault', // step 1
};

/** Offsets where two files of the same length differ. */
function diff(a: Buffer, b: Buffer): number[] {
  assert.equal(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

for (const [dir, version, reasons] of [
  [VAULT, 2, (f: string) => V2_REASONS[f]?.reason],
  [VAULT_V1, 1, (f: string) => V1_REASONS[f]],
] as const) {
  for (const v of readJson<VaultVector[]>(path.join(dir, 'vectors.json'))) {
    test(`independent: vault v${version} ${v.file} (${v.note})`, () => {
      const r = attempt(dir, v.file, v.passphrase);
      if (v.expect.ok) {
        assert.ok(!(r instanceof VaultFailure), r instanceof VaultFailure ? r.message : '');
        assert.equal(r.version, version);
        assert.deepEqual(Object.fromEntries(r.entries), v.expect.entries);
        return;
      }
      assert.ok(r instanceof VaultFailure, 'the vector opened');
      assert.equal(r.code, v.expect.code);
      assert.equal(r.reason, reasons(v.file), r.message);
      if (version === 2 && V2_REASONS[v.file]?.frame !== undefined) {
        assert.equal(r.frame, V2_REASONS[v.file]?.frame, r.message);
      }
    });
  }
}

// ---- version 2: the reasons, shown on the bytes ----

test('independent: v2 frames are as the vectors say (the mark, kinds, commit marks)', () => {
  const kinds = (o: Opened) => o.frames?.map((f) => `${f.kind}${f.flags & 0x80 ? '!' : ''}`);
  const basic = mustOpen(VAULT, 'basic.kwv');
  assert.deepEqual(kinds(basic), ['mark!', 'put', 'put!']); // init's mark, then one save
  assert.equal(basic.committed, 3);
  assert.deepEqual(kinds(mustOpen(VAULT, 'empty.kwv')), ['mark!']);
  const removed = mustOpen(VAULT, 'removed.kwv');
  assert.deepEqual(kinds(removed), ['mark!', 'put', 'put', 'put', 'delete!']);
  // truncated.kwv is basic.kwv cut short: the uncommitted put is read and ignored, the cut
  // frame is not a frame at all.
  const truncated = mustOpen(VAULT, 'truncated.kwv');
  assert.ok(read(VAULT, 'basic.kwv').subarray(0, -100).equals(read(VAULT, 'truncated.kwv')));
  assert.deepEqual(kinds(truncated), ['mark!', 'put']);
  assert.equal(truncated.committed, 1);
  const resaved = mustOpen(VAULT, 'resaved.kwv');
  assert.deepEqual(
    resaved.puts?.map((p) => p.name),
    ['api/token', 'api/token'],
  );
  // The cut file is the same vault as the one it was cut from.
  assert.ok(basic.vaultId.equals(truncated.vaultId));
});

test('independent: v2 flipped bytes lie where the vectors say, and fail where FORMAT.md says', () => {
  const basicFile = read(VAULT, 'basic.kwv');
  const frames = mustOpen(VAULT, 'basic.kwv').frames ?? [];
  const inValueBox = (at: number[], i: number) => {
    const f = frames[i]!;
    const start = f.offset + 4 + (f.body.length - f.valueBox.length);
    return at.length === 1 && at[0]! >= start && at[0]! < f.offset + 4 + f.body.length;
  };
  // The first value box of the save (frame 1): its own meta still opens, frame 2's does not.
  assert.ok(inValueBox(diff(basicFile, read(VAULT, 'flipped-value.kwv')), 1));
  // The last frame's value box: no later frame covers it, so it fails on its own.
  assert.ok(inValueBox(diff(basicFile, read(VAULT, 'flipped-last-value.kwv')), 2));
  // A header byte, header_sum left as it was.
  const flipped = diff(basicFile, read(VAULT, 'flipped-header.kwv'));
  assert.equal(flipped.length, 1);
  assert.ok(flipped[0]! < readHeader(basicFile).end);
});

test('independent: v2 reordered, removed and replayed frames are the frames of the good file', () => {
  const basic = mustOpen(VAULT, 'basic.kwv').frames ?? [];
  const bodies = (file: string) => splitAll(read(VAULT, file));
  // swapped.kwv: the save's two frames in the other order.
  assert.deepEqual(bodies('swapped.kwv'), [basic[0]!.body, basic[2]!.body, basic[1]!.body]);
  // first-removed.kwv: the save's first frame gone.
  assert.deepEqual(bodies('first-removed.kwv'), [basic[0]!.body, basic[2]!.body]);
  // replayed.kwv: resaved.kwv's last frame replaced by its older frame of the same name.
  const resaved = mustOpen(VAULT, 'resaved.kwv').frames ?? [];
  assert.deepEqual(bodies('replayed.kwv'), [resaved[0]!.body, resaved[1]!.body, resaved[1]!.body]);
});

/** Every frame body of a v2 file, by frame_len alone (no key). */
function splitAll(file: Buffer): Buffer[] {
  const h = readHeader(file);
  const out: Buffer[] = [];
  for (let pos = h.end + 32; pos + 4 <= file.length;) {
    const len = file.readUInt32BE(pos);
    out.push(file.subarray(pos + 4, pos + 4 + len));
    pos += 4 + len;
  }
  return out;
}

test('independent: v2 spliced value box opens only under the older record id', () => {
  const resaved = mustOpen(VAULT, 'resaved.kwv');
  const [older, newer] = resaved.puts ?? [];
  assert.ok(older && newer && !older.recordId.equals(newer.recordId));
  const spliced = splitAll(read(VAULT, 'spliced.kwv'));
  const oldBox = resaved.frames![older.frame]!.valueBox;
  // The last frame now carries the older value box, byte for byte.
  assert.ok(spliced[2]!.subarray(spliced[2]!.length - oldBox.length).equals(oldBox));
  const name = Buffer.from('api/token');
  const open = (id: Buffer) =>
    openBox(oldBox, resaved.keys.secrets, valueAd(resaved.vaultId, id, name));
  assert.equal(open(newer.recordId), null); // what the newer frame's meta names: refused
  assert.equal(open(older.recordId)?.toString(), 'old-value-1234'); // it was a genuine box
});

test('independent: v2 key slots wrap DK with version 1 in the AD, as the slot format', () => {
  // FORMAT.md, "Key slots": AD = "KEYWARD" || version || ...; "Migration from version 1": "their
  // wraps' AD names version 1, the slot format". Even a vault made as version 2 uses 1.
  const h = readHeader(read(VAULT, 'basic.kwv'));
  assert.equal(h.version, 2);
  assert.equal(unwrapDk(h, PASS, 1).length, 32);
  assert.throws(
    () => unwrapDk(h, PASS, 2),
    (e) => e instanceof VaultFailure && e.reason === 'no-slot-opens',
  );
});

test('independent: v2 header-only.kwv has a valid header_sum and no frame', () => {
  const file = read(VAULT, 'header-only.kwv');
  const h = readHeader(file);
  assert.equal(file.length, h.end + 32);
  assert.ok(blake2b256(file.subarray(0, h.end)).equals(file.subarray(h.end)));
  // Its header is basic.kwv's: only the frames are gone.
  assert.ok(read(VAULT, 'basic.kwv').subarray(0, file.length).equals(file));
});

/**
 * weakened-kdf.kwv: the slot's opslimit is 2 where the vectors use 1 ("KDF parameters in the
 * vectors are the minimum (ops 1, 8 MiB)"). Putting 1 back (and the checksum) opens it: the
 * refusal is the wrap's AD binding the parameter, nothing else.
 */
for (const [dir, version] of [
  [VAULT, 2],
  [VAULT_V1, 1],
] as const) {
  test(`independent: v${version} weakened-kdf.kwv fails the unwrap only because of opslimit`, () => {
    const file = Buffer.from(read(dir, 'weakened-kdf.kwv'));
    const h = readHeader(file);
    const slot = h.slots[0]!;
    assert.equal(slot.type, 1);
    const opsAt = slot.offset + 3 + 1; // type, body_len, then alg (1) and opslimit (u32)
    assert.equal(file.readUInt32BE(opsAt), 2);
    assert.equal(file.readUInt32BE(opsAt + 4), 8 * 1024);
    file.writeUInt32BE(1, opsAt);
    if (version === 2) {
      blake2b256(file.subarray(0, h.end)).copy(file, h.end);
    } else {
      blake2b256(file.subarray(0, file.length - 32)).copy(file, file.length - 32);
    }
    const opened = openVault(file, PASS);
    assert.deepEqual(opened.entries, mustOpen(dir, 'basic.kwv').entries);
  });
}

// ---- version 1 ----

test('independent: v1 flipped-byte.kwv and truncated.kwv are basic.kwv damaged, and the checksum says so', () => {
  const basic = read(VAULT_V1, 'basic.kwv');
  assert.ok(basic.subarray(0, -100).equals(read(VAULT_V1, 'truncated.kwv')));
  const flipped = diff(basic, read(VAULT_V1, 'flipped-byte.kwv'));
  assert.equal(flipped.length, 1); // one byte, the checksum left as it was
  assert.equal(mustFail(VAULT_V1, 'flipped-byte.kwv').reason, 'checksum');
});

// ---- the audit log (docs/AUDIT.md) ----

interface AuditVector {
  file: string;
  seedFile: string;
  expect: { ok: true; entries: number } | { ok: false; line: number; reason: string };
  note: string;
}
const seed = () => Buffer.from(fs.readFileSync(path.join(AUDIT, 'seed.hex'), 'utf8').trim(), 'hex');

for (const v of readJson<AuditVector[]>(path.join(AUDIT, 'vectors.json'))) {
  test(`independent: audit ${v.file} (${v.note})`, () => {
    const s = Buffer.from(fs.readFileSync(path.join(AUDIT, v.seedFile), 'utf8').trim(), 'hex');
    assert.equal(s.length, 32);
    const r = verifyLog([read(AUDIT, v.file)], s);
    if (v.expect.ok) {
      assert.ok(r.ok, r.ok ? '' : r.reason);
      assert.equal(r.entries, v.expect.entries);
      return;
    }
    assert.ok(!r.ok, 'the log verified');
    assert.equal(r.segment, 0);
    assert.equal(r.line, v.expect.line, r.reason);
    assert.ok(r.reason.includes(v.expect.reason), `${r.reason} is not "${v.expect.reason}"`);
  });
}

test('independent: audit good.jsonl spans epochs 0, 0, 1 and chains by line hash', () => {
  const lines = read(AUDIT, 'good.jsonl').toString('utf8').split('\n');
  assert.equal(lines.pop(), ''); // every line ends with \n
  const entries = lines.map((l) => JSON.parse(l) as { epoch: number; prev: string });
  assert.deepEqual(
    entries.map((e) => e.epoch),
    [0, 0, 1],
  );
  assert.equal(entries[1]!.prev, lineHash(Buffer.from(lines[0]!)));
  const r = verifyLog([read(AUDIT, 'good.jsonl')], seed());
  assert.ok(r.ok && r.head?.seq === 3 && r.head.hash === lineHash(Buffer.from(lines[2]!)));
  // The MAC is libsodium's crypto_auth (HMAC-SHA-512-256), as the Properties table says, not
  // HMAC-SHA-256 (the baseline the Benchmark section compares with).
  const first = lines[0]!;
  const p = first.slice(0, first.lastIndexOf(',"mac":'));
  const mac = (JSON.parse(first) as { mac: string }).mac;
  assert.notEqual(crypto.createHmac('sha256', epochKey(seed(), 0)).update(p).digest('hex'), mac);
});

test('independent: audit bodies.json opens as "Bodies" says, and a flipped byte does not', () => {
  const v = readJson<{
    boxSecretKey: string;
    boxPublicKey: string;
    bodies: Array<{ plain: string; body: string }>;
  }>(path.join(AUDIT, 'bodies.json'));
  const sk = Buffer.from(v.boxSecretKey, 'hex');
  const pk = Buffer.from(v.boxPublicKey, 'hex');
  assert.deepEqual(boxPublicKey(sk), pk, 'the box public key is X25519 of its secret key');
  const raw = v.bodies.map((b) => Buffer.from(b.body, 'base64'));
  for (const [i, b] of v.bodies.entries()) assert.equal(openBatchBody(raw[i]!, sk, pk), b.plain);
  // The first two share a batch key (the same epk); the third came after it aged out.
  const epk = (b: Buffer) => b.subarray(1, 33).toString('hex');
  assert.equal(epk(raw[0]!), epk(raw[1]!));
  assert.notEqual(epk(raw[1]!), epk(raw[2]!));
  // The nonce counts the bodies under its key: 8 bytes little-endian, then 16 zero bytes.
  const nonce = (n: number) => {
    const b = Buffer.alloc(24);
    b.writeBigUInt64LE(BigInt(n), 0);
    return b.toString('hex');
  };
  assert.deepEqual(
    raw.map((b) => b.subarray(33, 57).toString('hex')),
    [nonce(0), nonce(1), nonce(0)],
  );
  for (const at of [0, 1, 40, raw[0]!.length - 1]) {
    const bad = Buffer.from(raw[0]!);
    bad[at]! ^= 0x01;
    assert.equal(openBatchBody(bad, sk, pk), null, `byte ${at} flipped`);
  }
});

test('independent: audit chain-only checks see what needs no key', () => {
  // other-key.jsonl is "a valid chain under another seed": only its MACs are wrong.
  const other = verifyLog([read(AUDIT, 'other-key.jsonl')], null);
  assert.ok(other.ok && other.entries === 3);
  // flipped-type.jsonl: without the key, the changed line shows at the next line's prev.
  const r = verifyLog([read(AUDIT, 'flipped-type.jsonl')], null);
  assert.ok(!r.ok && r.line === 3 && r.reason.startsWith('prev'));
  // The rotation rule: a log split into two segments verifies as one chain.
  const good = read(AUDIT, 'good.jsonl');
  const cut = good.indexOf(0x0a) + 1;
  assert.ok(verifyLog([good.subarray(0, cut), good.subarray(cut)], seed()).ok);
});
