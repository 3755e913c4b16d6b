import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { KeywardError } from '../src/errors.js';
import { secureTake } from '../src/lib/secure.js';
import { Vault, vaultPaths, withVaultWrite } from '../src/vault/index.js';
import { blake2b256 } from '../src/vault/crypto.js';
import {
  makeAuditVectors,
  makeVectors,
  type AuditVectorSpec,
  type VectorSpec,
} from '../scripts/make-vectors.js';
import { verifySegments } from '../src/audit/index.js';
import { FAST_KDF, kw, makeHome, VECTORS } from './helpers.js';

const DIR = path.join(VECTORS, 'vault');
/** Format 1 files from before format 2, kept as they were made: what the migration reads. */
const V1_DIR = path.join(VECTORS, 'vault-v1');
const specsOf = (dir: string) =>
  JSON.parse(fs.readFileSync(path.join(dir, 'vectors.json'), 'utf8')) as VectorSpec[];

function placed(file: string, dir = DIR): ReturnType<typeof vaultPaths> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-vec-'));
  fs.chmodSync(home, 0o700);
  const p = vaultPaths(home);
  fs.copyFileSync(path.join(dir, file), p.file);
  fs.chmodSync(p.file, 0o600);
  return p;
}

for (const [dir, format] of [
  [DIR, 2],
  [V1_DIR, 1],
] as const) {
  for (const v of specsOf(dir)) {
    const expectation = v.expect.ok
      ? 'opens with the expected entries'
      : `fails with ${v.expect.code}`;
    test(`format ${format} vector ${v.file} with ${JSON.stringify(v.passphrase)} ${expectation} (${v.note})`, () => {
      const p = placed(v.file, dir);
      const before = fs.readFileSync(p.file);
      const pass = secureTake(Buffer.from(v.passphrase));
      try {
        if (v.expect.ok) {
          const vault = Vault.open(p, { passphrase: pass });
          try {
            const got: Record<string, string> = {};
            for (const e of vault.list()) got[e.name] = vault.reveal(e.name).toString('utf8');
            assert.deepEqual(got, v.expect.entries);
          } finally {
            vault.close();
          }
        } else {
          const code = v.expect.code;
          assert.throws(
            () => Vault.open(p, { passphrase: pass }),
            (e: unknown) => e instanceof KeywardError && e.code === code,
          );
        }
        assert.deepEqual(fs.readFileSync(p.file), before, 'opening never changes the file');
      } finally {
        fs.rmSync(p.home, { recursive: true, force: true });
      }
    });
  }
}

test('a format 1 vault is rewritten in format 2 at its first save, with every record, its times and its ids', () => {
  const p = placed('basic.kwv', V1_DIR);
  const pass = secureTake(Buffer.from('correct horse battery staple'));
  try {
    const before = Vault.open(p, { passphrase: pass });
    const listed = before.list();
    const ids = listed.map((e) => before.recordId(e.name));
    const gen = before.fileGeneration;
    before.close();
    withVaultWrite(p, { passphrase: pass }, (v) => v.save());
    const bytes = fs.readFileSync(p.file);
    assert.equal(bytes[7], 2, 'the file is format 2 now');
    const after = Vault.open(p, { passphrase: pass });
    try {
      assert.deepEqual(after.list(), listed, 'names, sizes and times kept');
      assert.deepEqual(
        listed.map((e) => after.recordId(e.name)),
        ids,
        'record ids kept',
      );
      assert.equal(after.reveal('api/token').toString('utf8'), 's3cr3t-value');
      assert.ok(after.fileGeneration > gen, 'the generation still only grows');
    } finally {
      after.close();
    }
  } finally {
    fs.rmSync(p.home, { recursive: true, force: true });
  }
});

test('the vector generator reproduces every committed vector byte for byte (the format is pinned)', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-vec-gen-'));
  makeVectors(out);
  assert.deepEqual(fs.readdirSync(out).sort(), fs.readdirSync(DIR).sort());
  for (const name of fs.readdirSync(DIR)) {
    assert.deepEqual(
      fs.readFileSync(path.join(out, name)),
      fs.readFileSync(path.join(DIR, name)),
      name,
    );
  }
  fs.rmSync(out, { recursive: true, force: true });
});

const cliCases: Array<[string, number, RegExp]> = [
  ['flipped-value.kwv', 8, /failed authentication/],
  ['flipped-header.kwv', 8, /damaged/],
  ['swapped.kwv', 8, /failed authentication/],
  ['version-3.kwv', 8, /version 3 is not supported/],
  ['not-a-vault.kwv', 8, /not a keyward vault/],
];
for (const [file, exit, message] of cliCases) {
  test(`when the vault file is ${file}, keyward read exits ${exit}, says what is wrong and leaves the file as it was`, () => {
    const h = makeHome('correct horse battery staple');
    assert.equal(kw(['init', ...FAST_KDF], { env: h.env }).code, 0);
    fs.copyFileSync(path.join(DIR, file), h.vaultFile);
    fs.chmodSync(h.vaultFile, 0o600);
    const before = fs.readFileSync(h.vaultFile);
    const r = kw(['read', 'api/token'], { env: h.env });
    assert.equal(r.code, exit);
    assert.match(r.stderr, message);
    assert.match(r.stderr, /^keyward: error: /);
    assert.equal(r.stdout, '');
    assert.deepEqual(fs.readFileSync(h.vaultFile), before);
  });
}

const AUDIT_DIR = path.join(VECTORS, 'audit');
const auditSpecs = JSON.parse(
  fs.readFileSync(path.join(AUDIT_DIR, 'vectors.json'), 'utf8'),
) as AuditVectorSpec[];

for (const v of auditSpecs) {
  test(`audit vector ${v.file}: ${v.expect.ok ? `verifies (${v.expect.entries} entries)` : `fails at line ${v.expect.line}`} (${v.note})`, () => {
    const seed = secureTake(
      Buffer.from(fs.readFileSync(path.join(AUDIT_DIR, v.seedFile), 'utf8').trim(), 'hex'),
    );
    // Verified as a whole log (its first and only segment), as `keyward audit verify` does.
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-avec-'));
    const seg = path.join(tmp, 'log-000001.jsonl');
    fs.copyFileSync(path.join(AUDIT_DIR, v.file), seg);
    const r = verifySegments([seg], { seed });
    fs.rmSync(tmp, { recursive: true, force: true });
    if (v.expect.ok) {
      assert.equal(r.ok, true, r.ok ? '' : r.finding.reason);
      if (r.ok) assert.equal(r.entries, v.expect.entries);
    } else {
      assert.equal(r.ok, false);
      if (!r.ok) {
        assert.equal(r.finding.line, v.expect.line);
        assert.ok(r.finding.reason.includes(v.expect.reason), r.finding.reason);
      }
    }
  });
}

test('the audit vector generator reproduces every committed audit vector byte for byte', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-avec-gen-'));
  makeAuditVectors(out);
  for (const name of fs.readdirSync(AUDIT_DIR)) {
    assert.deepEqual(
      fs.readFileSync(path.join(out, name)),
      fs.readFileSync(path.join(AUDIT_DIR, name)),
      name,
    );
  }
  fs.rmSync(out, { recursive: true, force: true });
});

/** Where a file's checksum is: format 2 sums its header, format 1 the whole file. */
function checksumAt(b: Buffer): { covered: number } {
  if (b[7] === 1) return { covered: b.length - 32 };
  let pos = 49;
  for (let i = 0; i < b.readUInt8(48); i++) pos += 3 + b.readUInt16BE(pos + 1);
  return { covered: pos };
}

for (const [dir, format] of [
  [DIR, 2],
  [V1_DIR, 1],
] as const)
  test(`a mutated format ${format} vault file opens or fails with a KeywardError, never another exception (it is attacker-controlled)`, () => {
    const base = fs.readFileSync(path.join(dir, 'basic.kwv'));
    const { covered } = checksumAt(base);
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-vfuzz-'));
    fs.chmodSync(home, 0o700);
    const p = vaultPaths(home);
    const pass = secureTake(Buffer.from('correct horse battery staple'));
    const mutation = fc.oneof(
      fc
        .record({ at: fc.nat(base.length - 1), byte: fc.integer({ min: 0, max: 255 }) })
        .map(({ at, byte }) => {
          const b = Buffer.from(base);
          b[at] = byte;
          return b;
        }),
      fc.nat(base.length).map((n) => base.subarray(0, n)),
      fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.from(a)),
      // Past the checksum: the same byte changes with the checksum recomputed, as an attacker would.
      fc
        .array(fc.record({ at: fc.nat(base.length - 1), byte: fc.integer({ min: 0, max: 255 }) }), {
          minLength: 1,
          maxLength: 3,
        })
        .map((edits) => {
          const b = Buffer.from(base);
          for (const { at, byte } of edits) if (at < covered || at >= covered + 32) b[at] = byte;
          blake2b256(b.subarray(0, covered)).copy(b, covered);
          return b;
        }),
      fc
        .tuple(fc.nat(base.length), fc.uint8Array({ minLength: 1, maxLength: 8 }))
        .map(([at, ins]) =>
          Buffer.concat([base.subarray(0, at), Buffer.from(ins), base.subarray(at)]),
        ),
    );
    fc.assert(
      fc.property(mutation, (bytes) => {
        fs.writeFileSync(p.file, bytes, { mode: 0o600 });
        try {
          Vault.open(p, { passphrase: pass }).close();
          return true;
        } catch (e) {
          return e instanceof KeywardError;
        }
      }),
      { numRuns: 1500 },
    );
    fs.rmSync(home, { recursive: true, force: true });
  });
