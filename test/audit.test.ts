/**
 * The audit log: tamper matrix, forward security, crash recovery, rotation (docs/AUDIT.md).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import { KeywardError } from '../src/errors.js';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import {
  AuditLog,
  EVENT_TYPES,
  GroupCommitter,
  listSegments,
  verifySegments,
  type VerifyResult,
} from '../src/audit/index.js';
import { encodeLine, parseLine } from '../src/audit/entry.js';
import { epochKeyFromSeed, TagChecker } from '../src/audit/keys.js';
import { readState } from '../src/audit/state.js';
import { scanBackFor, scanBackLines } from '../src/audit/tail.js';
import { BATCH_KEY_MS, BodyOpener, BodySealer, sealBodyOnce } from '../src/audit/body.js';
import { secureAlloc, secureFree, secureTake } from '../src/lib/secure.js';
import { sodium } from '../src/lib/sodium.js';
import { copySegments, fill, lines, makeLog, scanBack, writeLines } from './audit-helpers.js';
import { scanMemory, unlockedMappings } from './agent-helpers.js';
import { eventually, rootTests, ROOT } from './helpers.js';

function failsAt(r: VerifyResult, line: number, why?: RegExp): void {
  assert.equal(r.ok, false, 'tampering went undetected');
  if (r.ok) return;
  assert.equal(r.finding.line, line, `reported at line ${r.finding.line}: ${r.finding.reason}`);
  if (why) assert.match(r.finding.reason, why);
}

test('the event type list is pinned', () => {
  assert.equal(EVENT_TYPES.length, 53);
  for (const t of [
    'secret.read',
    'vault.unlock_failed',
    'peer.rejected',
    'policy.changed',
    'policy.drift',
    'audit.recovered',
    'credential.evict',
    'audit.restored',
    'backup.created',
    'operator.login',
    'operator.key',
    'approval.operator',
    'approval.factor_failed',
  ]) {
    assert.ok((EVENT_TYPES as readonly string[]).includes(t), t);
  }
});

describe('tamper matrix over a log of 1,000 entries', () => {
  const { log, seed } = makeLog();
  fill(log, 1000);
  const original = listSegments(log.paths.dir);
  const head = log.head();
  const checkpoint = { seq: head.seq, hash: head.hash };

  test('the untouched log verifies: 1,000 entries, MACs and checkpoint', () => {
    const r = verifySegments(original, { seed, checkpoints: [checkpoint] });
    assert.equal(r.ok, true);
    if (r.ok) {
      assert.equal(r.entries, 1000);
      assert.equal(r.headHash, head.hash);
    }
  });

  // Where each field's value starts in a line, found by its key.
  const fields = ['v', 'seq', 'time', 'type', 'epoch', 'prev', 'body', 'mac'] as const;
  const positions = [1, 2, 137, 500, 999, 1000];
  for (const field of fields) {
    for (const at of positions) {
      test(`flipping a byte of ${field} in entry ${at} is detected at entry ${at}`, () => {
        const [file] = copySegments(log.paths.dir);
        assert.ok(file);
        const ls = lines(file);
        const line = ls[at - 1] ?? '';
        const key = `"${field}":`;
        let i = line.indexOf(key) + key.length;
        if (line[i] === '"') i += 1;
        i += Math.min(
          3,
          (line.indexOf(',', i) === -1 ? line.length : line.indexOf(',', i)) - i - 1,
        );
        const ch = line[i] ?? '0';
        const flipped = /[0-9]/.test(ch) ? String((Number(ch) + 1) % 10) : ch === 'a' ? 'b' : 'a';
        ls[at - 1] = line.slice(0, i) + flipped + line.slice(i + 1);
        writeLines(file, ls);
        failsAt(verifySegments([file], { seed, checkpoints: [checkpoint] }), at);
      });
    }
  }

  for (const at of [1, 500, 1000]) {
    test(`deleting entry ${at} is detected at that position`, () => {
      const [file] = copySegments(log.paths.dir);
      assert.ok(file);
      const ls = lines(file);
      ls.splice(at - 1, 1);
      writeLines(file, ls);
      const r = verifySegments([file], { seed, checkpoints: [checkpoint] });
      // The last entry's deletion leaves a valid shorter chain: only the checkpoint shows it.
      if (at === 1000)
        assert.equal(r.ok === false && r.finding.reason.includes('deleted from the end'), true);
      else failsAt(r, at);
    });
  }

  test('swapping two entries is detected at the first of them', () => {
    const [file] = copySegments(log.paths.dir);
    assert.ok(file);
    const ls = lines(file);
    [ls[300], ls[301]] = [ls[301] ?? '', ls[300] ?? ''];
    writeLines(file, ls);
    failsAt(
      verifySegments([file], { seed, checkpoints: [checkpoint] }),
      301,
      /seq 302 follows seq 300/,
    );
  });

  test('truncating the tail is detected by the sealed checkpoint, and only by it', () => {
    const [file] = copySegments(log.paths.dir);
    assert.ok(file);
    writeLines(file, lines(file).slice(0, 990));
    assert.equal(verifySegments([file], { seed }).ok, true, 'a shorter chain is self-consistent');
    const r = verifySegments([file], { seed, checkpoints: [checkpoint] });
    assert.equal(r.ok, false);
    if (!r.ok)
      assert.match(r.finding.reason, /ends at seq 990 but the checkpoint .* says seq 1000/);
  });

  /** A well-formed entry inserted after entry 500, chained to it, as seq 501. */
  const insertAfter500 = (key: ReturnType<typeof secureTake>): string[] => {
    const [file] = copySegments(log.paths.dir);
    assert.ok(file);
    const ls = lines(file);
    const prev = parseLine(ls[499] ?? '');
    assert.ok(prev);
    const forged = encodeLine(
      {
        seq: 501,
        time: prev.time,
        type: 'secret.read',
        epoch: prev.epoch,
        prev: prev.hash,
        body: 'AAAA',
      },
      key,
    );
    ls.splice(500, 0, forged.line); // inserted: nothing removed, 1,001 lines now
    writeLines(file, ls);
    return [file];
  };

  test('an inserted entry forged under another key is detected where it stands', () => {
    const files = insertAfter500(secureTake(Buffer.alloc(32, 9)));
    assert.equal(lines(files[0] ?? '').length, 1001);
    failsAt(verifySegments(files, { seed, checkpoints: [checkpoint] }), 501, /MAC does not verify/);
  });

  test('an entry inserted with the right key is detected at the entry after it', () => {
    // Whoever holds the epoch key can write a valid line, but not one that the next line follows.
    const prev = parseLine(lines(listSegments(log.paths.dir)[0] ?? '')[499] ?? '');
    assert.ok(prev);
    const files = insertAfter500(epochKeyFromSeed(seed, prev.epoch));
    failsAt(
      verifySegments(files, { seed, checkpoints: [checkpoint] }),
      502,
      /seq 501 follows seq 501/,
    );
  });

  test('a whole log replaced by a shorter valid chain under another key fails at entry 1', () => {
    const other = makeLog();
    fill(other.log, 10);
    const files = listSegments(other.log.paths.dir);
    failsAt(verifySegments(files, { seed, checkpoints: [checkpoint] }), 1, /MAC does not verify/);
    // Even without the key, the checkpoint sealed in the vault shows the swap.
    const r = verifySegments(files, { checkpoints: [checkpoint] });
    assert.equal(r.ok, false);
  });

  test('a forged epoch far ahead is a finding at once, never a walk of millions of keys', () => {
    // One who holds the current key can MAC lines at any later epoch; the verifier must derive
    // each key up to it before the MAC can be checked. At the first entry, and between entries,
    // the rise is bounded, so the answer comes before any such walk (and without allocating).
    const [file] = copySegments(log.paths.dir);
    assert.ok(file);
    const ls = lines(file);
    const first = parseLine(ls[0] ?? '');
    assert.ok(first);
    const at = (epoch: number, f = first) =>
      encodeLine({ ...f, epoch }, epochKeyFromSeed(seed, 0)).line;
    ls[0] = at(1_000_000_000);
    writeLines(file, ls);
    failsAt(verifySegments([file], { seed }), 1, /epoch 1000000000 at the first entry/);
    // Between entries: a jump past the bound is reported where it is, before any MAC.
    const again = lines(copySegments(log.paths.dir)[0] ?? '');
    const tenth = parseLine(again[9] ?? '');
    assert.ok(tenth);
    again[9] = encodeLine(
      { ...tenth, epoch: tenth.epoch + 20_000 },
      epochKeyFromSeed(seed, 0),
    ).line;
    const [file2] = copySegments(log.paths.dir);
    assert.ok(file2);
    writeLines(file2, again);
    failsAt(verifySegments([file2], { seed }), 10, /epoch \d+ after epoch \d+/);
    // A segment verified on its own (--path) takes its first entry's seq and prev as given, and
    // its epoch too, up to a bound: past it, a finding, not an hour of keys.
    const alone = lines(copySegments(log.paths.dir)[0] ?? '').slice(4);
    const fifth = parseLine(alone[0] ?? '');
    assert.ok(fifth && fifth.seq === 5);
    alone[0] = encodeLine({ ...fifth, epoch: 9_999_999_999 }, epochKeyFromSeed(seed, 0)).line;
    const [file3] = copySegments(log.paths.dir);
    assert.ok(file3);
    writeLines(file3, alone);
    failsAt(
      verifySegments([file3], { seed }, true),
      1,
      /epoch 9999999999 at the segment's first entry/,
    );
    // Within the bound, the segment is checked from there (its MACs under the walked key).
    writeLines(file3, lines(copySegments(log.paths.dir)[0] ?? '').slice(4));
    assert.equal(verifySegments([file3], { seed }, true).ok, true);
  });

  test('a malformed line gives a finding, never an exception', () => {
    const [file] = copySegments(log.paths.dir);
    assert.ok(file);
    const ls = lines(file);
    ls[41] = '{"v":1,"seq":42,"time":"not json at all';
    writeLines(file, ls);
    failsAt(verifySegments([file], { seed }), 42, /not a well-formed audit entry/);
  });
});

describe('the line grammar', () => {
  // docs/AUDIT.md, "Entry line": the pattern as documented. The verifier checks bytes instead
  // (scanLine); the two must accept exactly the same lines and read the same fields.
  const DOCUMENTED =
    /^(\{"v":1,"seq":([1-9][0-9]{0,14}),"time":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z)","type":"([a-z_]{1,20}\.[a-z_]{1,20})","epoch":(0|[1-9][0-9]{0,9}),"prev":"([0-9a-f]{64})","body":"([A-Za-z0-9+/]*={0,2})"),"mac":"([0-9a-f]{64})"\}$/;

  test('the byte scanner and the documented pattern agree at every field boundary', () => {
    const f = {
      seq: '42',
      time: '2026-11-22T15:00:00.000Z',
      type: 'secret.read',
      epoch: '3',
      prev: 'a'.repeat(64),
      body: 'QUJD',
      mac: '0'.repeat(64),
      after: '',
    };
    const make = (o: Partial<typeof f>) => {
      const v = { ...f, ...o };
      return `{"v":1,"seq":${v.seq},"time":"${v.time}","type":"${v.type}","epoch":${v.epoch},"prev":"${v.prev}","body":"${v.body}","mac":"${v.mac}"}${v.after}`;
    };
    const cases: Array<Partial<typeof f>> = [
      {},
      ...['0', '01', '1'.padEnd(15, '0'), '1'.padEnd(16, '0'), '', '-1', '1.0', ' 1'].map(
        (seq) => ({
          seq,
        }),
      ),
      ...[
        '2026-11-22T15:00:00.00Z',
        '2026-11-22T15:00:00.0000Z',
        '2026-11-22 15:00:00.000Z',
        '2026-11-22T15:00:00.000z',
        '２026-11-22T15:00:00.000Z',
      ].map((time) => ({ time })),
      ...[
        `${'a'.repeat(20)}.${'b'.repeat(20)}`,
        `${'a'.repeat(21)}.b`,
        `a.${'b'.repeat(21)}`,
        '.b',
        'a.',
        'A.b',
        'a.b.c',
        'a_b._',
        'a-b.c',
      ].map((type) => ({ type })),
      ...['0', '00', '01', '1'.padEnd(10, '0'), '1'.padEnd(11, '0'), ''].map((epoch) => ({
        epoch,
      })),
      ...['a'.repeat(63), 'a'.repeat(65), 'A'.repeat(64), 'g'.repeat(64)].map((prev) => ({ prev })),
      ...['', 'QQ==', 'QQ=', 'QQ===', 'Q=Q', '+/09', 'QQ-_', 'é'].map((body) => ({ body })),
      ...['0'.repeat(63), '0'.repeat(65), 'F'.repeat(64)].map((mac) => ({ mac })),
      ...['\r', ' ', '}', '\n', 'x'].map((after) => ({ after })),
    ];
    for (const c of cases) {
      const m = make(c);
      assert.equal(
        parseLine(m) !== undefined,
        DOCUMENTED.test(m),
        `disagree on ${JSON.stringify(c)}`,
      );
    }
  });

  test('the byte scanner accepts what the documented pattern accepts, on 20,000 mutated lines', () => {
    const { log } = makeLog();
    fill(log, 20);
    const real = lines(listSegments(log.paths.dir)[0] ?? '');
    // Bytes that matter to the grammar, and some that don't belong in it.
    const alphabet = '0123456789abcdefzAZ_.-:TZ"=+/{},\\ é\n\t';
    let seed = 7;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const counts = { accepted: 0, refused: 0 };
    for (let i = 0; i < 20_000; i++) {
      let m = real[rand(real.length)] ?? '';
      for (let k = 1 + rand(3); k > 0; k--) {
        const at = rand(m.length + 1);
        const c = alphabet[rand(alphabet.length)] ?? '';
        const what = rand(4);
        m =
          what === 0
            ? m.slice(0, at) + m.slice(at + 1) // delete
            : what === 1
              ? m.slice(0, at) + c + m.slice(at) // insert
              : what === 2
                ? m.slice(0, at) + c + m.slice(at + 1) // replace
                : m.slice(0, at) + m.slice(at, at + 1).repeat(2 + rand(20)) + m.slice(at + 1); // repeat
      }
      const want = DOCUMENTED.exec(m);
      const got = parseLine(m);
      assert.equal(got !== undefined, want !== null, `disagree on ${JSON.stringify(m)}`);
      if (want && got) {
        counts.accepted++;
        assert.deepEqual(
          [got.seq, got.time, got.type, got.epoch, got.prev, got.body, got.mac.toString('hex')],
          [Number(want[2]), want[3], want[4], Number(want[5]), want[6], want[7], want[8]],
        );
        assert.equal(got.signed.toString('utf8'), want[1]);
      } else counts.refused++;
    }
    // Both outcomes are well represented (a mutation in the body often keeps the shape).
    assert.ok(counts.accepted > 1000 && counts.refused > 1000, JSON.stringify(counts));
  });
});

describe('forward security', () => {
  test('holding only the current epoch key, an attacker cannot forge an entry of an earlier epoch', () => {
    const { log, seed } = makeLog({ epochMs: 0 }); // a new epoch at every append
    fill(log, 6, 1);
    const st = readState(log.paths); // what an attacker who takes the machine reads
    assert.equal(st.epoch, 6);
    const [file] = copySegments(log.paths.dir);
    assert.ok(file);
    const ls = lines(file);
    const victim = parseLine(ls[2] ?? '');
    assert.ok(victim && victim.epoch < st.epoch);
    // Rewrite entry 3 (an earlier epoch) and re-MAC it with the stolen key. Claiming its own
    // epoch, the MAC fails on it; claiming the current epoch, the MAC holds but the chain breaks
    // at the very next entry (its prev no longer matches and the epoch would run backwards).
    for (const [epoch, caughtAt] of [
      [victim.epoch, 3],
      [st.epoch, 4],
    ] as const) {
      const forged = encodeLine({ ...victim, type: 'vault.lock', epoch }, st.key);
      const copy = [...ls];
      copy[2] = forged.line;
      writeLines(file, copy);
      failsAt(verifySegments([file], { seed }), caughtAt);
    }
  });

  test('the boundary, stated honestly: the current key can MAC entries of the current epoch (the checkpoint and an off-machine key are the answer)', () => {
    const { log, seed } = makeLog({ epochMs: 0 });
    fill(log, 3, 1);
    const st = readState(log.paths);
    const k = epochKeyFromSeed(seed, st.epoch);
    assert.equal(
      Buffer.compare(k, st.key),
      0,
      'the state file holds exactly K(epoch) derived from the seed',
    );
  });
});

describe("the verifier's tag check", () => {
  for (const fast of [true, false])
    test(`${fast ? "OpenSSL's SHA-512 from the key's precomputed states" : 'libsodium (the fallback)'} makes libsodium's tags, at every length around SHA-512's blocks, and refuses any change`, () => {
      const tags = TagChecker.create(fast);
      // On this machine the fast path is the one under test (a fallback would pass trivially).
      assert.equal(tags.precomputed, fast, "the checker's path");
      const keys = [secureAlloc(32), secureAlloc(32)] as const;
      for (const k of keys) sodium.randombytes_buf(k);
      const lengths = [0, 1, 63, 64, 111, 112, 113, 127, 128, 129, 239, 240, 255, 256, 480, 4099];
      try {
        for (const [i, key] of keys.entries()) {
          tags.setKey(key);
          // The checker keeps its own copy: the walk of epoch keys zeroes the one it was given.
          const given = Buffer.from(key);
          sodium.sodium_memzero(key);
          for (const n of lengths) {
            const data = Buffer.alloc(n);
            sodium.randombytes_buf(data);
            const tag = Buffer.alloc(32);
            sodium.crypto_auth(tag, data, given);
            assert.equal(tags.ok(data, tag), true, `length ${n}, key ${i}`);
            const other = Buffer.alloc(32);
            sodium.crypto_auth(other, data, keys[1 - i] ?? key);
            assert.equal(tags.ok(data, other), false, `another key's tag, length ${n}`);
            for (const at of [0, 31]) {
              const bad = Buffer.from(tag);
              bad[at] = (bad[at] ?? 0) ^ 0x80;
              assert.equal(tags.ok(data, bad), false, `tag byte ${at} changed, length ${n}`);
            }
            if (n > 0) {
              data[n - 1] = (data[n - 1] ?? 0) ^ 1;
              assert.equal(tags.ok(data, tag), false, `last data byte changed, length ${n}`);
            }
            assert.equal(tags.ok(data, tag.subarray(0, 31)), false, 'a short tag');
          }
          key.set(given);
        }
        assert.throws(() => tags.setKey(secureAlloc(16)), /32 bytes/);
        // A refused key leaves the checker unkeyed: nothing verifies.
        const data = Buffer.from('a line');
        const tag = Buffer.alloc(32);
        sodium.crypto_auth(tag, data, keys[0]);
        assert.equal(tags.ok(data, tag), false, 'a tag verified after a refused key');
        tags.setKey(keys[0]);
        assert.equal(tags.ok(data, tag), true);
        tags.free();
        assert.equal(tags.ok(data, tag), false, 'a tag verified after free()');
      } finally {
        tags.free();
        for (const k of keys) secureFree(k);
      }
    });

  test(
    "the key never passes through OpenSSL's SHA-512: no word of the padded key's message schedule outside secure memory, keyed or freed (root: /proc/PID/mem)",
    { skip: !rootTests && 'needs root to read another process memory' },
    async () => {
      // A process keys a checker (scanned then, before a tag's hash overwrites the stack), checks
      // tags and frees it (scanned again). OpenSSL's block function keeps
      // its message schedule (W[t], and W[t] + K[t]) on koffi's stack, which is neither locked
      // nor cleared: the schedule of K ^ ipad or K ^ opad there gives the key back.
      const child = spawn(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `const { TagChecker } = await import(${JSON.stringify(path.join(ROOT, 'dist/src/audit/keys.js'))});
const { secureAlloc } = await import(${JSON.stringify(path.join(ROOT, 'dist/src/lib/secure.js'))});
const { sodium } = await import(${JSON.stringify(path.join(ROOT, 'dist/src/lib/sodium.js'))});
globalThis.marker = 'a marker the scan must find';
const tags = TagChecker.create();
const key = secureAlloc(32);
sodium.randombytes_buf(key);
process.stdout.write(Buffer.from(key).toString('hex') + (tags.precomputed ? ' fast' : ' slow') + '\\n');
tags.setKey(key);
process.stdout.write('keyed\\n');
process.stdin.once('data', () => {
  for (let i = 0; i < 50; i++) {
    const data = Buffer.alloc(100 + i * 37, i);
    const tag = Buffer.alloc(32);
    sodium.crypto_auth(tag, data, key);
    if (!tags.ok(data, tag)) process.exit(3);
  }
  tags.free();
  sodium.sodium_memzero(key);
  process.stdout.write('freed\\n');
  process.stdin.once('data', () => process.exit(0));
});`,
        ],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      );
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const said = (what: string) => eventually(() => out.includes(what), `the child said ${what}`);
      try {
        await said('keyed');
        const [hex, path_] = out.split('\n')[0]?.split(' ') ?? [];
        assert.equal(path_, 'fast', 'the fast path is the one under test');
        const key = Buffer.from(hex ?? '', 'hex');
        assert.equal(key.length, 32);
        // The marker, in the child's heap, shows the scan finds what is there.
        const marker = Buffer.from('a marker the scan must find');
        const needles = [...scheduleWords(key), marker];
        const pid = child.pid ?? 0;
        // Keyed: the key and its states live in secure (locked) memory only. (Before a934f6b
        // 68 schedule words of K ^ opad were on koffi's stack here.)
        assert.deepEqual(
          scanMemory(pid, needles, unlockedMappings).map((b) => b.toString()),
          [marker.toString()],
          'key-derived words outside secure memory while keyed',
        );
        child.stdin.write('free\n');
        await said('freed');
        assert.deepEqual(
          scanMemory(pid, needles).map((b) => b.toString()),
          [marker.toString()],
          'key-derived words anywhere after free()',
        );
      } finally {
        child.stdin.end('end\n');
        child.kill();
      }
    },
  );

  test('verify finds the same tampering whichever path checks the MACs', () => {
    const { log, seed } = makeLog({ epochMs: 0 }); // a new epoch (and key) at every append
    fill(log, 12, 1);
    for (const tagCheck of [undefined, 'libsodium'] as const) {
      assert.equal(verifySegments(listSegments(log.paths.dir), { seed, tagCheck }).ok, true);
      const [file] = copySegments(log.paths.dir);
      assert.ok(file);
      const ls = lines(file);
      const seventh = parseLine(ls[6] ?? '');
      assert.ok(seventh);
      // Another type, MACed under the previous epoch's key (one a thief of old state holds):
      // only the MAC tells, at that line.
      ls[6] = encodeLine(
        { ...seventh, type: 'vault.lock' },
        epochKeyFromSeed(seed, seventh.epoch - 1),
      ).line;
      writeLines(file, ls);
      failsAt(verifySegments([file], { seed, tagCheck }), 7, /the MAC does not verify/);
    }
  });
});

describe('crash safety', () => {
  test('SIGKILL during heavy concurrent appends from 4 processes: recovery, verify passes, no acknowledged entry missing', async () => {
    const { log, seed, home } = makeLog();
    const fixture = path.join(ROOT, 'dist/test/fixtures/audit-appender.js');
    const acks = new Map<number, string>();
    const procs = Array.from({ length: 4 }, () =>
      spawn(process.execPath, [fixture, home, '2'], { stdio: ['ignore', 'pipe', 'inherit'] }),
    );
    for (const p of procs) {
      let buf = '';
      p.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        const parts = buf.split('\n');
        buf = parts.pop() ?? '';
        for (const l of parts) {
          const m = /^ack (\d+) ([0-9a-f]{64})$/.exec(l);
          if (m) acks.set(Number(m[1]), m[2] ?? '');
        }
      });
    }
    // Killed mid-stream once fifty appends are acknowledged, however long the machine takes.
    await eventually(() => acks.size > 50, 'fifty acknowledged appends');
    await Promise.all(
      procs.map(
        (p) =>
          new Promise<void>((r) => {
            p.on('exit', () => r());
            p.kill('SIGKILL');
          }),
      ),
    );
    assert.ok(acks.size > 50, `only ${acks.size} appends acknowledged`);
    // The next writer recovers (cuts a torn line if there is one) and the log verifies.
    log.append([{ type: 'agent.start', decision: 'info' }]);
    const files = listSegments(log.paths.dir);
    const r = verifySegments(files, { seed });
    assert.equal(r.ok, true, r.ok ? '' : r.finding.reason);
    const byseq = new Map<number, string>();
    for (const f of files)
      for (const l of lines(f)) {
        const e = parseLine(l);
        if (e) byseq.set(e.seq, e.hash);
      }
    for (const [seq, hash] of acks)
      assert.equal(byseq.get(seq), hash, `acknowledged seq ${seq} is missing or changed`);
  });

  test('a torn last line is cut at the next append and the cut is recorded as audit.recovered', () => {
    const { log, seed } = makeLog();
    fill(log, 5, 1);
    const [file] = listSegments(log.paths.dir);
    assert.ok(file);
    fs.appendFileSync(file, '{"v":1,"seq":6,"time":"2026-11-22T1');
    log.append([{ type: 'vault.lock', decision: 'info' }]);
    const ls = lines(file);
    const rec = parseLine(ls[5] ?? '');
    assert.equal(rec?.type, 'audit.recovered');
    assert.equal(parseLine(ls[6] ?? '')?.type, 'vault.lock');
    assert.equal(verifySegments([file], { seed }).ok, true);
  });
});

describe('rotation', () => {
  test('segments rotate by size; the chain verifies end to end across files', () => {
    const { log, seed } = makeLog({ segmentMaxBytes: 4000 });
    fill(log, 60, 3);
    const files = listSegments(log.paths.dir);
    assert.ok(files.length >= 3, `${files.length} segments`);
    const r = verifySegments(files, { seed, checkpoints: [log.head()] });
    assert.equal(r.ok, true, r.ok ? '' : r.finding.reason);
    // Each closed segment ends with audit.rotated naming the next one.
    const closing = parseLine(lines(files[0] ?? '').at(-1) ?? '');
    assert.equal(closing?.type, 'audit.rotated');
  });

  test('rotation advances the epoch key', () => {
    const { log } = makeLog({ segmentMaxBytes: 2000 });
    fill(log, 30, 3);
    assert.ok(readState(log.paths).epoch >= 2);
  });

  test('segments rotate by age', () => {
    let now = Date.parse('2026-01-01T00:00:00Z');
    const { log, seed } = makeLog({ now: () => new Date(now) });
    fill(log, 3, 1);
    now += 31 * 24 * 3600 * 1000;
    fill(log, 2, 1);
    const files = listSegments(log.paths.dir);
    assert.equal(files.length, 2);
    assert.equal(verifySegments(files, { seed }).ok, true);
  });

  test('a deleted middle segment, or a deleted first segment, is detected', () => {
    const { log, seed } = makeLog({ segmentMaxBytes: 3000 });
    fill(log, 60, 3);
    const files = copySegments(log.paths.dir);
    assert.ok(files.length >= 3);
    const middle = files[1] ?? '';
    fs.rmSync(middle);
    assert.equal(
      verifySegments(
        files.filter((f) => f !== middle),
        { seed },
      ).ok,
      false,
    );
    assert.equal(
      verifySegments(
        files.slice(1).filter((f) => f !== middle),
        { seed },
      ).ok,
      false,
    );
  });
});

describe('group commit', () => {
  test('200 concurrent records resolve once durable, in far fewer batches (fsyncs) than records, and verify', async () => {
    const { log, seed } = makeLog();
    const gc = new GroupCommitter(log);
    const heads = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        gc.record({ type: 'key.sign', target: `k${i}`, decision: 'allow' }),
      ),
    );
    assert.equal(heads.length, 200);
    assert.ok(gc.batches < 50, `${gc.batches} batches for 200 records`);
    assert.equal(log.head().seq, 200);
    const r = verifySegments(listSegments(log.paths.dir), { seed });
    assert.equal(r.ok && r.entries, 200);
  });

  test("a batch is fsynced on the writer's thread only while appends are fast; a slow disk or a failed fsync sends batches to the thread pool", async () => {
    // Counted, and done: the real fsyncs, on a real file. failNext: the next blocking fsync
    // fails with EIO, as a dying disk's would.
    const counts = { blocking: 0, pool: 0 };
    // fdatasyncs alone (the journal's), either way.
    let datasyncs = 0;
    let failNext = false;
    // The committers' clock: it moves only when an fsync is to look slow (slowNext: the next
    // one, either way, takes SLOW_MS as a disk's hiccup would). Real fsyncs take no time by it,
    // however loaded the machine.
    let clockMs = 0;
    const clock = () => clockMs;
    let slowNext = false;
    const SLOW_MS = 300;
    const stall = () => {
      if (!slowNext) return;
      slowNext = false;
      clockMs += SLOW_MS;
    };
    const { fsyncSync, fsync, fdatasyncSync, fdatasync } = fs;
    // On the thread pool, either kind.
    const pooled = (real: typeof fs.fsync) =>
      ((fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => {
        counts.pool += 1;
        if (real === fdatasync) datasyncs += 1;
        stall();
        real(fd, cb);
      }) as typeof fs.fsync;
    // The agent's own way: its batches fdatasync the journal (docs/AUDIT.md, "The journal").
    fs.fdatasyncSync = (fd) => {
      counts.blocking += 1;
      datasyncs += 1;
      stall();
      fdatasyncSync(fd);
    };
    fs.fdatasync = pooled(fdatasync);
    fs.fsyncSync = (fd) => {
      // A segment's, not its directory's (made durable when a segment is created).
      if (fs.fstatSync(fd).isFile()) {
        counts.blocking += 1;
        if (failNext) {
          failNext = false;
          throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
        }
        stall();
      }
      fsyncSync(fd);
    };
    fs.fsync = pooled(fsync);
    const rec = (i: number) => ({
      type: 'key.sign' as const,
      target: `k${i}`,
      decision: 'allow' as const,
    });
    const phase = async (f: () => Promise<unknown>) => {
      const before = { ...counts };
      await f();
      return { blocking: counts.blocking - before.blocking, pool: counts.pool - before.pool };
    };
    const lone = (gc: GroupCommitter, n: number) =>
      phase(async () => {
        for (let i = 0; i < n; i++) await gc.record(rec(i));
      });
    // Five records at once: one batch, one fsync.
    const five = (gc: GroupCommitter) =>
      phase(() => Promise.all(Array.from({ length: 5 }, (_, i) => gc.record(rec(100 + i)))));
    try {
      // Any disk counts as fast (on a local file system): after the first sixteen, every lone
      // record blocks, and so does a batch (five records at once).
      {
        const { log, seed } = makeLog({ keep: true });
        const local = log.onLocalDisk();
        const gc = new GroupCommitter(log, Number.POSITIVE_INFINITY, clock);
        assert.deepEqual(
          await lone(gc, 40),
          local ? { blocking: 24, pool: 16 } : { blocking: 0, pool: 40 },
        );
        assert.deepEqual(
          await five(gc),
          local ? { blocking: 1, pool: 0 } : { blocking: 0, pool: 1 },
        );
        if (local) {
          // A failed fsync: its record is refused, and the next sixteen appends (a batch among
          // them) go to the pool.
          failNext = true;
          await assert.rejects(gc.record(rec(200)), /EIO/);
          assert.deepEqual(await five(gc), { blocking: 0, pool: 1 });
          assert.deepEqual(await lone(gc, 15), { blocking: 0, pool: 15 });
          assert.deepEqual(await lone(gc, 1), { blocking: 1, pool: 0 });
        }
        // The refused record's line was written before its fsync failed: the chain holds it.
        const r = verifySegments(listSegments(log.paths.dir), { seed });
        assert.equal(r.ok && r.entries, local ? 67 : 45);
        log.close();
      }
      // A disk whose appends take under 200 ms (by the clock: every one, but for a hiccup of SLOW_MS):
      // one slow append among the last sixteen is a hiccup and fsyncs go on blocking (not the one
      // right after it); a second sends them, a batch's too, to the pool.
      {
        const { log } = makeLog({ keep: true });
        if (log.onLocalDisk()) {
          const gc = new GroupCommitter(log, 200, clock);
          assert.deepEqual(await lone(gc, 16), { blocking: 0, pool: 16 });
          // A hiccup: it blocked (it was not known to be slow), the next goes to the pool, then
          // lone records block again.
          slowNext = true;
          assert.deepEqual(await lone(gc, 4), { blocking: 3, pool: 1 });
          slowNext = true;
          assert.deepEqual(await lone(gc, 1), { blocking: 1, pool: 0 });
          // Two slow ones (appends 17 and 21) in the last sixteen: the pool, a batch's fsync too,
          // until the first has left the window (after append 33) and sixteen more have followed.
          assert.deepEqual(await five(gc), { blocking: 0, pool: 1 });
          assert.deepEqual(await lone(gc, 26), { blocking: 0, pool: 26 });
          assert.deepEqual(await lone(gc, 1), { blocking: 1, pool: 0 });
        }
        log.close();
      }
      // No disk counts as fast (a slow one): nothing ever blocks the thread.
      {
        const { log } = makeLog({ keep: true });
        const gc = new GroupCommitter(log, 0, clock);
        assert.deepEqual(await lone(gc, 40), { blocking: 0, pool: 40 });
        assert.deepEqual(await five(gc), { blocking: 0, pool: 1 });
        log.close();
      }
      // The agent's log, journaled: the same choice for its journal's fdatasync (any disk
      // counts as fast; the slow and failed cases are the same committer's, above).
      {
        const { log } = makeLog({ keep: true, journal: true });
        if (log.onLocalDisk()) {
          const gc = new GroupCommitter(log, Number.POSITIVE_INFINITY, clock);
          // The journal made at the first append, then fifteen more: sixteen fast appends.
          await gc.record(rec(0));
          const before = datasyncs;
          assert.deepEqual(await lone(gc, 15), { blocking: 0, pool: 15 });
          assert.deepEqual(await lone(gc, 1), { blocking: 1, pool: 0 });
          assert.deepEqual(await five(gc), { blocking: 1, pool: 0 });
          // Every one of them the journal's fdatasync, not the segment's fsync.
          assert.equal(datasyncs - before, 17);
        }
        log.close();
      }
    } finally {
      fs.fsyncSync = fsyncSync;
      fs.fsync = fsync;
      fs.fdatasyncSync = fdatasyncSync;
      fs.fdatasync = fdatasync;
    }
  });

  test('a failed batch rejects every waiter in it: nobody is told a record is durable when it is not', async () => {
    const { log, dir } = makeLog();
    fs.rmSync(path.join(dir, 'state'));
    const gc = new GroupCommitter(log);
    const results = await Promise.allSettled(
      [1, 2, 3].map(() => gc.record({ type: 'key.sign', decision: 'allow' })),
    );
    assert.deepEqual(
      results.map((r) => r.status),
      ['rejected', 'rejected', 'rejected'],
    );
  });
});

describe('the agent keeps what it knows of the log between appends (issue 17)', () => {
  const rec = (target: string) => ({
    type: 'secret.read' as const,
    target,
    decision: 'allow' as const,
  });
  const entries = (dir: string) =>
    listSegments(dir).flatMap((f) =>
      fs
        .readFileSync(f, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => parseLine(l)),
    );

  test('another writer appends between its batches: it chains after that writer, not after its own last line', async () => {
    const { home, log, seed, dir } = makeLog({ keep: true });
    const gc = new GroupCommitter(log);
    await gc.record(rec('agent/1'));
    const cli = new AuditLog(home);
    cli.append([rec('cli/1'), rec('cli/2')]);
    await gc.record(rec('agent/2'));
    assert.deepEqual(
      entries(dir).map((e) => e?.seq),
      [1, 2, 3, 4],
    );
    const r = verifySegments(listSegments(dir), { seed });
    assert.equal(r.ok && r.entries, 4);
    log.close();
  });

  test('the state file deleted behind it: the next batch fails (nothing released), it does not write on from memory', async () => {
    const { log, dir } = makeLog({ keep: true });
    const gc = new GroupCommitter(log);
    await gc.record(rec('a'));
    fs.rmSync(path.join(dir, 'state'));
    await assert.rejects(gc.record(rec('b')), /no state file/);
    assert.equal(entries(dir).length, 1);
    log.close();
  });

  test('its last line rewritten in place, same length and times: the next batch records the cut (audit.gap)', async () => {
    const { log, dir } = makeLog({ keep: true });
    const gc = new GroupCommitter(log);
    const gaps: string[] = [];
    gc.onGap = (reason) => gaps.push(reason);
    await gc.record(rec('one'));
    await gc.record(rec('two'));
    const [file] = listSegments(dir);
    assert.ok(file);
    const before = fs.statSync(file);
    const text = fs.readFileSync(file, 'utf8');
    // A hex digit of the last line's MAC: still well-formed, no longer what the agent wrote.
    assert.match(text.slice(-4, -3), /[0-9a-f]/);
    const forged = text.slice(0, -4) + (text.at(-4) === '0' ? '1' : '0') + text.slice(-3);
    assert.equal(forged.length, text.length);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, forged, 0, 'utf8');
    fs.closeSync(fd);
    fs.utimesSync(file, before.atime, before.mtime);
    await gc.record(rec('three'));
    assert.equal(gaps.length, 1, 'the cut is reported');
    assert.ok(entries(dir).some((e) => e?.type === 'audit.gap'));
    log.close();
  });

  test('its segment replaced by a copy (another file at the same path): the next line goes into the file the path names', async () => {
    const { log, seed, dir } = makeLog({ keep: true });
    const gc = new GroupCommitter(log);
    await gc.record(rec('one'));
    const [file] = listSegments(dir);
    assert.ok(file);
    fs.copyFileSync(file, `${file}.copy`);
    fs.renameSync(`${file}.copy`, file);
    await gc.record(rec('two'));
    assert.equal(entries(dir).length, 2);
    const r = verifySegments(listSegments(dir), { seed });
    assert.equal(r.ok && r.entries, 2);
    log.close();
  });
});

describe('bodies (docs/AUDIT.md, "Bodies")', () => {
  const box = () => {
    const publicKey = Buffer.alloc(32);
    const secretKey = secureAlloc(32);
    sodium.crypto_box_keypair(publicKey, secretKey);
    return { publicKey, secretKey };
  };

  test('batch-form bodies open with the box secret, sealed-form bodies still open, other keys open neither', () => {
    const mine = box();
    const other = box();
    const sealer = new BodySealer();
    const batch = [1, 2, 3].map((i) => sealer.seal(Buffer.from(`{"n":${i}}`), mine.publicKey));
    const old = sealBodyOnce(Buffer.from('{"n":"sealed"}'), mine.publicKey);
    sealer.close();
    // One batch key for the three: the same epk, and never the same nonce.
    assert.equal(new Set(batch.map((b) => b.subarray(1, 33).toString('hex'))).size, 1);
    assert.equal(new Set(batch.map((b) => b.subarray(33, 57).toString('hex'))).size, 3);
    const opener = new BodyOpener([other, mine]);
    assert.deepEqual(
      batch.map((b) => opener.open(b)?.toString()),
      ['{"n":1}', '{"n":2}', '{"n":3}'],
    );
    assert.equal(opener.open(old)?.toString(), '{"n":"sealed"}');
    // A sealed body whose first byte is the batch tag is still read as sealed.
    // (Sealed until its first byte is that tag: a loop that began from `old` passed it over when
    // old's own first byte was the tag, one run in 256.)
    const seal = () => sealBodyOnce(Buffer.from('{"n":"tagged"}'), mine.publicKey);
    let tagged = seal();
    while (tagged[0] !== 0x01) tagged = seal();
    assert.equal(opener.open(tagged)?.toString(), '{"n":"tagged"}');
    const flipped = Buffer.from(batch[1] as Buffer);
    flipped.writeUInt8((flipped.at(-1) ?? 0) ^ 1, flipped.length - 1);
    assert.equal(opener.open(flipped), undefined);
    opener.close();
    const stranger = new BodyOpener([other]);
    assert.equal(stranger.open(batch[0] as Buffer), undefined);
    assert.equal(stranger.open(old), undefined);
    stranger.close();
  });

  test('a batch key serves one box key and one second: a new box key, or its age, renews it', () => {
    let now = 0;
    const sealer = new BodySealer(() => now);
    const a = box();
    const b = box();
    const epk = (x: Buffer) => x.subarray(1, 33).toString('hex');
    const first = sealer.seal(Buffer.from('{}'), a.publicKey);
    assert.equal(epk(sealer.seal(Buffer.from('{}'), a.publicKey)), epk(first));
    const toB = sealer.seal(Buffer.from('{}'), b.publicKey);
    assert.notEqual(epk(toB), epk(first), 'a rekeyed log gets a new batch key');
    now += BATCH_KEY_MS;
    assert.notEqual(epk(sealer.seal(Buffer.from('{}'), b.publicKey)), epk(toB), 'aged out');
    assert.ok(sealer.holdsKey());
    sealer.close();
    assert.ok(!sealer.holdsKey(), 'close() frees the batch key');
  });
});

test('scanBackFor and scanBackLines see the lines scanBack sees (those that hold the needle; every one), in the same order, across chunks, long lines and a torn end', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-scanback-'));
  try {
    const file = path.join(dir, 'seg');
    const needle = Buffer.from('"type":"audit.', 'latin1');
    // Deterministic lines: most without the needle, some with it, some far longer than a chunk
    // (1 MiB), some empty; the needle at a line's start, middle and end.
    let x = 7;
    const next = () => (x = (x * 1103515245 + 12345) % 2 ** 31);
    const shapes = (): string[] => {
      const out: string[] = [];
      for (let i = 0; i < 1500; i++) {
        const r = next() % 400;
        const pad = 'a'.repeat(next() % 700);
        if (r < 12) out.push(`"type":"audit.${i}${pad}`);
        else if (r < 24) out.push(`${pad}"type":"audit.${i}`);
        else if (r < 26) out.push(`${pad}"type":"audit.${i}${'b'.repeat(1_100_000)}`);
        else if (r < 28) out.push('');
        else if (r < 30) out.push(`${i}${'c'.repeat(1_100_000)}`);
        else out.push(`${pad}"type":"secret.${i}`);
      }
      return out;
    };
    for (const torn of [false, true]) {
      const body = shapes().join('\n') + (torn ? '\n"type":"audit.torn' : '\n');
      fs.writeFileSync(file, body);
      // Every visit, to the end; then one that stops half way.
      for (const stopAt of [Number.POSITIVE_INFINITY, 40]) {
        const seen: string[] = [];
        const seenFor: string[] = [];
        const r1 = scanBack(file, (line) => {
          if (!line.includes('"type":"audit.')) return false;
          seen.push(line);
          return seen.length >= stopAt;
        });
        const r2 = scanBackFor(file, needle, (line) => {
          seenFor.push(line);
          return seenFor.length >= stopAt;
        });
        assert.equal(r2, r1);
        assert.ok(seen.length >= Math.min(stopAt, 60), `${seen.length} lines with the needle`);
        assert.deepEqual(
          seenFor.map((l) => l.slice(0, 40) + l.length),
          seen.map((l) => l.slice(0, 40) + l.length),
        );
        assert.deepEqual(seenFor, seen);
      }
      // scanBackLines: every non-empty line, as bytes, the order and stop of scanBack.
      for (const stopAt of [Number.POSITIVE_INFINITY, 700]) {
        const all: string[] = [];
        const bytes: string[] = [];
        const r1 = scanBack(file, (line) => all.push(line) >= stopAt);
        const r2 = scanBackLines(file, (line) => bytes.push(line.toString('utf8')) >= stopAt);
        assert.equal(r2, r1);
        assert.ok(all.length >= Math.min(stopAt, 1000), `${all.length} lines`);
        assert.deepEqual(bytes, all);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the breaks found in rotated segments are read once, and again whenever a segment changes', async () => {
  const { log, dir } = makeLog({ segmentMaxBytes: 3000 });
  // What the search answered before segments were remembered: the whole log, every time.
  const reference = (): number[] => {
    const gaps: number[] = [];
    for (const file of listSegments(dir).reverse()) {
      const stop = scanBack(file, (line) => {
        const e = parseLine(line);
        if (e?.type === 'audit.acknowledged') return true;
        if (e?.type === 'audit.gap') gaps.push(e.seq);
        return false;
      });
      if (stop) break;
    }
    return gaps.reverse();
  };
  const gap = { type: 'audit.gap' as const, decision: 'error' as const, reason: 'test' };
  const ack = { type: 'audit.acknowledged' as const, decision: 'info' as const };
  fill(log, 10, 5);
  log.append([gap]);
  fill(log, 10, 5);
  log.append([ack]);
  fill(log, 10, 5);
  log.append([gap]);
  fill(log, 20, 5);
  log.append([gap]);
  assert.ok(listSegments(dir).length >= 4, `${listSegments(dir).length} segments`);
  assert.deepEqual(log.unacknowledgedGaps(), reference());
  assert.equal(log.unacknowledgedGaps().length, 2);
  const holding = (type: string) =>
    listSegments(dir)
      .slice(0, -1)
      .find((f) => fs.readFileSync(f, 'latin1').includes(`"type":"${type}"`));
  // An edit of a closed segment moves its change time; wait until the clock shows a new one.
  const afterTick = async (file: string) => {
    const was = fs.statSync(file, { bigint: true }).ctimeNs;
    const probe = path.join(dir, '..', 'tick');
    await eventually(() => {
      fs.writeFileSync(probe, 'x');
      return fs.statSync(probe, { bigint: true }).ctimeNs !== was;
    }, 'the clock to move past the segment change time');
    fs.rmSync(probe);
  };
  // The attacker takes the acknowledgement out of its (closed) segment: the earlier gap counts.
  const withAck = holding('audit.acknowledged');
  assert.ok(withAck);
  await afterTick(withAck);
  fs.writeFileSync(
    withAck,
    fs
      .readFileSync(withAck, 'latin1')
      .split('\n')
      .filter((l) => !l.includes('"type":"audit.acknowledged"'))
      .join('\n'),
    'latin1',
  );
  assert.deepEqual(log.unacknowledgedGaps(), reference());
  assert.equal(log.unacknowledgedGaps().length, 3);
  // A gap made another type in place, same length (size kept, times put back): seen again.
  const withGap = holding('audit.gap');
  assert.ok(withGap);
  const mtime = fs.statSync(withGap, { bigint: true }).mtimeNs;
  await afterTick(withGap);
  fs.writeFileSync(
    withGap,
    fs.readFileSync(withGap, 'latin1').replace('"type":"audit.gap"', '"type":"audit.gaz"'),
    'latin1',
  );
  // The modification time put back to the nanosecond (touch sets it exactly): only the change
  // time, which no one but the clock sets, still tells.
  const ns = (mtime % 1_000_000_000n).toString().padStart(9, '0');
  execFileSync('touch', ['-m', '-d', `@${mtime / 1_000_000_000n}.${ns}`, withGap]);
  assert.equal(fs.statSync(withGap, { bigint: true }).mtimeNs, mtime);
  assert.deepEqual(log.unacknowledgedGaps(), reference());
  assert.equal(log.unacknowledgedGaps().length, 2);
});

test('an acknowledgement in a file past the log (a name no writer makes there) hides no recorded break', () => {
  const { log, dir, home } = makeLog();
  const other = makeLog();
  try {
    fill(log, 5, 5);
    log.append([{ type: 'audit.gap', decision: 'error', reason: 'test' }]);
    other.log.append([{ type: 'audit.acknowledged', decision: 'info' }]);
    assert.equal(log.unacknowledgedGaps().length, 1);
    // The attacker's file, numbered past the log: readers that start from the highest file
    // would meet the acknowledgement first.
    fs.copyFileSync(path.join(other.dir, 'log-000001.jsonl'), path.join(dir, 'log-999999.jsonl'));
    assert.equal(log.unacknowledgedGaps().length, 1);
    assert.equal(log.chainBackTo(1, 1).broken?.includes('log-999999.jsonl'), true);
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
    fs.rmSync(other.home, { recursive: true, force: true });
  }
});

/** SHA-512's round constants (FIPS 180-4), for the schedule words below. */
const SHA512_K = [
  '428a2f98d728ae22',
  '7137449123ef65cd',
  'b5c0fbcfec4d3b2f',
  'e9b5dba58189dbbc',
  '3956c25bf348b538',
  '59f111f1b605d019',
  '923f82a4af194f9b',
  'ab1c5ed5da6d8118',
  'd807aa98a3030242',
  '12835b0145706fbe',
  '243185be4ee4b28c',
  '550c7dc3d5ffb4e2',
  '72be5d74f27b896f',
  '80deb1fe3b1696b1',
  '9bdc06a725c71235',
  'c19bf174cf692694',
  'e49b69c19ef14ad2',
  'efbe4786384f25e3',
  '0fc19dc68b8cd5b5',
  '240ca1cc77ac9c65',
  '2de92c6f592b0275',
  '4a7484aa6ea6e483',
  '5cb0a9dcbd41fbd4',
  '76f988da831153b5',
  '983e5152ee66dfab',
  'a831c66d2db43210',
  'b00327c898fb213f',
  'bf597fc7beef0ee4',
  'c6e00bf33da88fc2',
  'd5a79147930aa725',
  '06ca6351e003826f',
  '142929670a0e6e70',
  '27b70a8546d22ffc',
  '2e1b21385c26c926',
  '4d2c6dfc5ac42aed',
  '53380d139d95b3df',
  '650a73548baf63de',
  '766a0abb3c77b2a8',
  '81c2c92e47edaee6',
  '92722c851482353b',
  'a2bfe8a14cf10364',
  'a81a664bbc423001',
  'c24b8b70d0f89791',
  'c76c51a30654be30',
  'd192e819d6ef5218',
  'd69906245565a910',
  'f40e35855771202a',
  '106aa07032bbd1b8',
  '19a4c116b8d2d0c8',
  '1e376c085141ab53',
  '2748774cdf8eeb99',
  '34b0bcb5e19b48a8',
  '391c0cb3c5c95a63',
  '4ed8aa4ae3418acb',
  '5b9cca4f7763e373',
  '682e6ff3d6b2b8a3',
  '748f82ee5defb2fc',
  '78a5636f43172f60',
  '84c87814a1f0ab72',
  '8cc702081a6439ec',
  '90befffa23631e28',
  'a4506cebde82bde9',
  'bef9a3f7b2c67915',
  'c67178f2e372532b',
  'ca273eceea26619c',
  'd186b8c721c0c207',
  'eada7dd6cde0eb1e',
  'f57d4f7fee6ed178',
  '06f067aa72176fba',
  '0a637dc5a2c898a6',
  '113f9804bef90dae',
  '1b710b35131c471b',
  '28db77f523047d84',
  '32caab7b40c72493',
  '3c9ebe0a15c9bebc',
  '431d67c49c100d4c',
  '4cc5d4becb3e42b6',
  '597f299cfc657e2a',
  '5fcb6fab3ad6faec',
  '6c44198c4a475817',
].map((h) => BigInt(`0x${h}`));

/**
 * The words SHA-512's block function computes from the HMAC key's two padded blocks (K ^ 0x36..,
 * K ^ 0x5c..): each W[t] that depends on the key, and W[t] + K[t], as 8 bytes in either order;
 * and the padded blocks' key-dependent bytes themselves.
 */
function scheduleWords(key: Buffer): Buffer[] {
  const M = (1n << 64n) - 1n;
  const rotr = (x: bigint, n: bigint) => ((x >> n) | (x << (64n - n))) & M;
  const words: Buffer[] = [];
  const push = (v: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    words.push(b, Buffer.from(b).reverse());
  };
  for (const byte of [0x36, 0x5c]) {
    const block = Buffer.alloc(128, byte);
    for (let i = 0; i < 32; i++) block[i] = (key[i] ?? 0) ^ byte;
    words.push(block.subarray(0, 32));
    const w: bigint[] = [];
    for (let t = 0; t < 80; t++) {
      if (t < 16) w.push(block.readBigUInt64BE(8 * t));
      else {
        const a = w[t - 15] ?? 0n;
        const b = w[t - 2] ?? 0n;
        const s0 = rotr(a, 1n) ^ rotr(a, 8n) ^ (a >> 7n);
        const s1 = rotr(b, 19n) ^ rotr(b, 61n) ^ (b >> 6n);
        w.push((s1 + (w[t - 7] ?? 0n) + s0 + (w[t - 16] ?? 0n)) & M);
      }
      // W[4..15] are the pad's constant bytes: nothing of the key.
      if (t < 4 || t >= 16) {
        push(w[t] ?? 0n);
        push(((w[t] ?? 0n) + (SHA512_K[t] ?? 0n)) & M);
      }
    }
  }
  return words;
}

test('an append that must follow an entry writes nothing after any other (acknowledge: its record commits to the history it checked)', () => {
  const { log } = makeLog();
  const rec = { type: 'secret.read' as const, target: 'a/b', decision: 'allow' as const };
  const first = log.append([rec]);
  const second = log.append([rec]);
  const size = fs.statSync(log.segmentPath(second.segment)).size;
  // The entry checked is no longer the last one (another line came, or another file was put in
  // the segment's place): refused, nothing written.
  assert.throws(
    () => log.append([rec], { seq: first.seq, hash: first.hash }),
    (e: unknown) => e instanceof KeywardError && e.code === 'AUDIT_CHAIN_BROKEN',
  );
  assert.throws(() => log.append([rec], { seq: second.seq, hash: first.hash }));
  assert.equal(fs.statSync(log.segmentPath(second.segment)).size, size);
  // The last one: written, linked to it.
  const third = log.append([rec], { seq: second.seq, hash: second.hash });
  assert.equal(third.seq, second.seq + 1);
  const last = parseLine(lines(log.segmentPath(third.segment)).at(-1) ?? '');
  assert.equal(last?.prev, second.hash);
});
