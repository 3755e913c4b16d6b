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

/**
 * Where a file's checksum is (format 2 sums its header, format 1 the whole file), and where its
 * header ends: magic, version, ids, generation and the key slots, the same walk in both formats.
 */
function layoutOf(b: Buffer): { covered: number; headerEnd: number } {
  let pos = 49;
  for (let i = 0; i < b.readUInt8(48); i++) pos += 3 + b.readUInt16BE(pos + 1);
  return { covered: b[7] === 1 ? b.length - 32 : pos, headerEnd: pos };
}

/** The first offset where two files differ (the shorter one's length if one is a prefix). */
function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Every entry a vault holds, user and internal, as name -> value. */
function contentsOf(vault: Vault): Record<string, string> {
  const got: Record<string, string> = {};
  for (const e of vault.list()) got[e.name] = vault.reveal(e.name).toString('hex');
  for (const name of vault.internalNames('@')) {
    got[name] = vault.revealInternal(name as `@${string}`)?.toString('hex') ?? '(none)';
  }
  return got;
}

for (const [dir, format] of [
  [DIR, 2],
  [V1_DIR, 1],
] as const)
  test(`a mutated format ${format} vault file opens with its contents unchanged (or as it was after an earlier save: a rollback) or is refused: a wrong passphrase only for a changed header, VAULT_CORRUPT otherwise (1,500 random mutations)`, () => {
    const base = fs.readFileSync(path.join(dir, 'basic.kwv'));
    const { covered, headerEnd } = layoutOf(base);
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-vfuzz-'));
    fs.chmodSync(home, 0o700);
    const p = vaultPaths(home);
    const pass = secureTake(Buffer.from('correct horse battery staple'));
    fs.writeFileSync(p.file, base, { mode: 0o600 });
    const original = Vault.open(p, { passphrase: pass });
    const expected = contentsOf(original);
    original.close();
    assert.ok(Object.keys(expected).length >= 2, 'the base vector holds entries to compare');
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
    const seen = { opened: 0, earlier: 0, corrupt: 0, passphrase: 0, version: 0 };
    fc.assert(
      fc.property(mutation, (bytes) => {
        fs.writeFileSync(p.file, bytes, { mode: 0o600 });
        const at = firstDifference(bytes, base);
        let got: Record<string, string>;
        try {
          const vault = Vault.open(p, { passphrase: pass });
          try {
            got = contentsOf(vault);
          } finally {
            vault.close();
          }
        } catch (e) {
          if (!(e instanceof KeywardError)) throw e;
          if (e.code === 'VAULT_CORRUPT') seen.corrupt++;
          else if (e.code === 'VAULT_BAD_PASSPHRASE') {
            // A wrong passphrase is the answer only when the key slots or what binds them changed.
            assert.ok(at >= 0 && at < headerEnd, `wrong passphrase for a change at ${at}`);
            seen.passphrase++;
          } else if (e.code === 'VAULT_UNSUPPORTED_VERSION') {
            assert.equal(at, 7, 'an unsupported version only when the version byte changed');
            seen.version++;
          } else assert.fail(`refused with ${e.code}: ${e.message}`);
          return;
        }
        // Saves hidden from the end (cut off, or behind a frame length that now runs past the end,
        // which reads as a torn write) leave the vault as it was before them: FORMAT.md "Commits
        // and torn writes", THREAT-MODEL.md "Rollback". basic.kwv is init's mark frame, then one
        // save of both secrets, so the only earlier state is the empty vault.
        if (Object.keys(got).length === 0) seen.earlier++;
        else {
          assert.deepEqual(got, expected, `opened with other contents (first change at ${at})`);
          seen.opened++;
        }
      }),
      { numRuns: 1500 },
    );
    fs.rmSync(home, { recursive: true, force: true });
    // Each outcome the claim names was reached, or the mutations exercised less than they seem to.
    assert.ok(seen.opened > 0 && seen.corrupt > 0 && seen.passphrase > 0, JSON.stringify(seen));
  });

/** What a script says in a process of its own that loads the packages their own way. */
async function packageSays(script: string): Promise<string> {
  const { execFileSync } = await import('node:child_process');
  return execFileSync(process.execPath, ['-e', script], {
    cwd: path.resolve(VECTORS, '../..'),
    encoding: 'utf8',
  });
}

test('libsodium is loaded by its fixed path on Linux, and is the library its own resolver finds', async () => {
  const { sodium, sodiumPreloaded } = await import('../src/lib/sodium.js');
  assert.equal(sodiumPreloaded(), process.platform === 'linux');
  // The package's own resolver, in a process of its own, gives the same library: the same
  // functions, the same BLAKE2b of the same bytes.
  const other = await packageSays(
    "const s = require('sodium-native'); const o = Buffer.alloc(32); s.crypto_generichash(o, Buffer.from('keyward')); process.stdout.write(Object.keys(s).length + ' ' + o.toString('hex'))",
  );
  const out = Buffer.alloc(32);
  sodium.crypto_generichash(out, Buffer.from('keyward'));
  assert.equal(`${Object.keys(sodium).length} ${out.toString('hex')}`, other);
});

test("secure memory comes from libsodium's addon directly on Linux, and is the package's own: either frees the other's buffers", async () => {
  const { secureMemory, memoryFromAddon, sodiumPackage } =
    await import('../src/lib/sodium-addon.js');
  assert.equal(memoryFromAddon(), process.platform === 'linux');
  const whole = sodiumPackage();
  // A buffer from the direct path is one the package recognises as its own, and the other way
  // round: the package's sodium_free ignores a buffer without its mark, which would leave a
  // secret mapped until the collector ran.
  const a = secureMemory().sodium_malloc(100);
  a.fill(7);
  whole.sodium_memzero(a);
  assert.ok(a.every((b) => b === 0));
  whole.sodium_free(a);
  assert.equal(a.length, 0, 'the package freed (detached) a buffer from the direct path');
  const b = whole.sodium_malloc(100);
  b.fill(9);
  secureMemory().sodium_memzero(b);
  assert.ok(b.every((x) => x === 0));
  secureMemory().sodium_free(b);
  assert.equal(b.length, 0, 'the direct path freed a buffer from the package');
  // A plain Buffer is not freed (the package's rule): its memory is not libsodium's.
  const plain = Buffer.alloc(100, 1);
  secureMemory().sodium_free(plain);
  assert.equal(plain.length, 100);
  assert.throws(() => secureMemory().sodium_malloc(-1));
});

test("koffi's build is loaded by its fixed place on glibc Linux, and is the build the package's loader picks", async () => {
  const { koffi, koffiDirect } = await import('../src/lib/koffi.js');
  assert.equal(koffiDirect, process.platform === 'linux');
  const other = await packageSays(
    "const k = require('koffi'); process.stdout.write(k.version + ' ' + k.load('libc.so.6').func('int getpid()')())",
  );
  const [version, pid] = other.split(' ');
  assert.equal(koffi.version, version);
  assert.ok(Number(pid) > 0);
  assert.equal(koffi.load('libc.so.6').func('int getpid()')(), process.pid);
});
