/**
 * The audit log as users meet it: every command records its events, a release waits for its
 * durable record, no value ever reaches the log, and `keyward audit ...` works end to end.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { describe, test } from 'node:test';
import { agentHome, auditEntries, startAgent, stopAgent, withoutAgent } from './agent-helpers.js';
import {
  eventually,
  FAST_KDF,
  initHome,
  kw,
  ROOT,
  kwSpawn,
  rootTests,
  cannotHold,
  commandHeldAt,
  holdAt,
  type Home,
  type Run,
} from './helpers.js';
import { parseLine } from '../src/audit/entry.js';
import { AuditLog } from '../src/audit/log.js';
import { entryHashAt } from '../src/audit/index.js';

interface Row {
  seq: number;
  type: string;
  body: {
    target: string | null;
    decision: string;
    reason?: string;
    actor: { pid: number; cmdline: string[] };
    details: Record<string, unknown>;
  };
}

function rows(h: Home, n = 1000): Row[] {
  const r = kw(['audit', 'tail', '--json', '-n', String(n)], { env: h.env });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Row);
}

const auditDir = (h: Home) => path.join(h.home, 'audit');
const segment = (h: Home) => path.join(auditDir(h), 'log-000001.jsonl');
/** How many copies the agent has recorded as dropped (a read's last record). */
const drops = (h: Home) =>
  fs.readFileSync(segment(h), 'utf8').split('"type":"credential.drop"').length - 1;

describe('events recorded by the CLI', () => {
  test('init, set, read, rm, passwd, rekey and a wrong passphrase each leave their entries, in order', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'svc/token'], { env: h.env, input: 'tok-value-1' }).code, 0);
    kw(['read', 'svc/token'], { env: h.env });
    const wrong = path.join(h.dir, 'wrong');
    fs.writeFileSync(wrong, 'definitely wrong\n', { mode: 0o600 });
    assert.equal(kw(['read', 'svc/token', '--passphrase-file', wrong], { env: h.env }).code, 4);
    const next = path.join(h.dir, 'next');
    fs.writeFileSync(next, 'another long passphrase\n', { mode: 0o600 });
    kw(['passwd', '--new-passphrase-file', next, ...FAST_KDF], { env: h.env });
    const env = { ...h.env, KEYWARD_PASSPHRASE_FILE: next };
    kw(['rekey'], { env });
    kw(['secret', 'rm', 'svc/token'], { env });
    const got = rows({ ...h, env })
      .filter((r) => !r.type.startsWith('policy.'))
      .map((r) => `${r.type}${r.body.target ? ` ${r.body.target}` : ''}`);
    const expected = [
      'vault.init',
      'vault.unlock',
      'secret.set svc/token',
      'vault.unlock',
      'secret.read svc/token',
      'vault.unlock_failed',
      'vault.unlock',
      'vault.passwd',
      'vault.unlock',
      'vault.rekey',
      'vault.unlock',
      'secret.rm svc/token',
    ];
    assert.deepEqual(got.slice(0, expected.length), expected);
  });

  test('entries name the calling process: pid and command line', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'who/asks'], { env: h.env, input: 'value-xyz' }).code, 0);
    const set = rows(h).find((r) => r.type === 'secret.set');
    assert.ok(set);
    assert.ok(set.body.actor.pid > 1);
    assert.deepEqual(set.body.actor.cmdline.slice(-3), ['secret', 'set', 'who/asks']);
  });

  test('no secret value, nor its hex or base64, ever reaches the audit files', () => {
    const h = initHome();
    const value = 'sk_live_auditleak_0123456789';
    assert.equal(kw(['secret', 'set', 'leak/check'], { env: h.env, input: value }).code, 0);
    kw(['read', 'leak/check'], { env: h.env });
    kw(['audit', 'export', '--decrypt'], { env: h.env });
    const disk = Buffer.concat(
      fs.readdirSync(auditDir(h)).map((f) => fs.readFileSync(path.join(auditDir(h), f))),
    );
    for (const form of [
      value,
      Buffer.from(value).toString('hex'),
      Buffer.from(value).toString('base64').slice(0, 16),
      'leak/check',
    ]) {
      assert.equal(disk.indexOf(form), -1, `found ${form}`);
    }
    // ...and the decrypted export names the secret but never holds its value.
    const dec = kw(['audit', 'export', '--decrypt'], { env: h.env }).stdout;
    assert.match(dec, /leak\/check/);
    assert.doesNotMatch(dec, /auditleak/);
  });

  test('when the audit log cannot be written, read releases nothing (exit 5) and says why', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'gated'], { env: h.env, input: 'must-not-leak-1' }).code, 0);
    fs.rmSync(path.join(auditDir(h), 'state'));
    const r = kw(['read', 'gated'], { env: h.env });
    assert.equal(r.code, 5, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(
      r.stderr,
      /keyward: error: the audit log has no state file.*\nkeyward: hint: run: keyward audit init/,
    );
  });
});

test(
  'when the disk under the audit log is full, neither the agent nor the CLI releases anything, and both say why (root: a small tmpfs)',
  { skip: !rootTests && 'needs root to mount a tmpfs' },
  async () => {
    const h = agentHome(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['secret', 'set', 'gated'], { env: h.env, input: 'must-not-leak-2' }).code, 0);
    // The log as it is, moved onto a 1 MiB filesystem mounted in its place.
    const dir = auditDir(h);
    const saved = `${dir}.saved`;
    fs.renameSync(dir, saved);
    fs.mkdirSync(dir, { mode: 0o700 });
    const mount = spawnSync('mount', [
      '-t',
      'tmpfs',
      '-o',
      'size=1m,mode=0700,huge=never',
      'tmpfs',
      dir,
    ]);
    assert.equal(mount.status, 0, mount.stderr.toString());
    try {
      for (const f of fs.readdirSync(saved)) {
        fs.copyFileSync(path.join(saved, f), path.join(dir, f));
        fs.chmodSync(path.join(dir, f), fs.statSync(path.join(saved, f)).mode & 0o777);
      }
      await startAgent(h);
      try {
        assert.equal(kw(['unlock'], { env: h.env }).code, 0);
        // Positive control: with room, the same read through the same agent is served.
        assert.equal(kw(['read', 'gated'], { env: h.env }).stdout, 'must-not-leak-2');
        // Fill the filesystem: every byte of it, so the next audit line can't be written.
        const filler = fs.openSync(path.join(dir, 'filler'), 'w');
        try {
          const block = Buffer.alloc(4096, 1);
          for (;;) fs.writeSync(filler, block);
        } catch (e) {
          assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
        } finally {
          fs.closeSync(filler);
        }
        // A full filesystem may still hold a line or two: the last page of the open segment has
        // room the filler could not take. Each read served there must have its line on disk;
        // once the lines no longer fit, nothing is released, and that must come within a page.
        const says =
          /^keyward: error: the audit log cannot be written \(ENOSPC: no space left on its filesystem\); nothing was released\nkeyward: hint: free space/;
        const untilRefused = (env: NodeJS.ProcessEnv): { served: number; refused: Run } => {
          for (let served = 0; served < 64; served++) {
            const r = kw(['read', 'gated'], { env });
            if (r.code !== 0) return { served, refused: r };
            assert.equal(r.stdout, 'must-not-leak-2');
          }
          assert.fail('64 reads served on a full filesystem: the log cannot be taking them');
        };
        const viaAgent = untilRefused(h.env);
        assert.equal(viaAgent.refused.code, 5, viaAgent.refused.stderr);
        assert.equal(viaAgent.refused.stdout, '', 'the agent released with no audit line written');
        assert.match(viaAgent.refused.stderr, says);
        const direct = untilRefused(withoutAgent(h));
        assert.equal(direct.refused.code, 5, direct.refused.stderr);
        assert.equal(direct.refused.stdout, '', 'the CLI released with no audit line written');
        assert.match(direct.refused.stderr, says);
        assert.ok(
          !`${viaAgent.refused.stderr}${direct.refused.stderr}`.includes('must-not-leak-2'),
        );
        // Room again: served again, and the log verifies (a line cut short by the full disk is
        // cut and recorded, never left in the chain).
        fs.rmSync(path.join(dir, 'filler'));
        assert.equal(kw(['read', 'gated'], { env: h.env }).stdout, 'must-not-leak-2');
        // Every read served has its release on record: one with room, those served on the full
        // disk, and the one just now.
        const released = auditEntries(h).filter(
          (e) => e.type === 'secret.read' && e.target === 'gated' && e.decision === 'allow',
        );
        assert.equal(released.length, 2 + viaAgent.served + direct.served);
        const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
        assert.equal(v.code, 0, v.stdout + v.stderr);
      } finally {
        await stopAgent(h);
      }
    } finally {
      spawnSync('umount', [dir]);
    }
  },
);

describe('keyward audit', () => {
  test('verify passes on an untouched log: chain, MACs and the sealed checkpoint', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' }).code, 0);
    const r = kw(['audit', 'verify'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /^ok: \d+ entries in 1 segment\(s\); head seq \d+, sha256 [0-9a-f]{64}\nMACs verified/,
    );
    assert.match(r.stdout, /checkpoint sealed in the vault matches/);
  });

  test('found in review: verify refuses an audit directory, or its state, put in place as a link (exit 8), as every writer does, whatever the log it leads to holds', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' }).code, 0);
    // The same user moves the log aside and leaves a link to it (a copy would do as well).
    const dir = path.join(h.home, 'audit');
    fs.renameSync(dir, `${dir}.elsewhere`);
    fs.symlinkSync(`${dir}.elsewhere`, dir);
    for (const args of [[], ['--chain-only']]) {
      const r = kw(['audit', 'verify', ...args], { env: h.env });
      assert.equal(r.code, 8, r.stdout + r.stderr);
      assert.doesNotMatch(r.stdout, /^ok:/);
      assert.match(r.stderr, /refusing to use .*audit: it is a symbolic link/);
      assert.match(r.stderr, /hint: keyward makes no links there/);
    }
    // The directory put back; its writers' state replaced by a link to a copy of itself.
    fs.rmSync(dir);
    fs.renameSync(`${dir}.elsewhere`, dir);
    const state = path.join(dir, 'state');
    fs.copyFileSync(state, `${state}.copy`);
    fs.rmSync(state);
    fs.symlinkSync(`${state}.copy`, state);
    const v = kw(['audit', 'verify'], { env: h.env });
    assert.equal(v.code, 8, v.stdout + v.stderr);
    assert.match(v.stderr, /refusing to use .*state: it is a symbolic link/);
    // A writer refuses it in the same words, not as an internal error.
    const r = kw(['read', 'a'], { env: h.env });
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stderr, /internal error/);
    assert.match(r.stderr, /state: it is a symbolic link/);
  });

  test('verify names the first bad entry and exits 8 when a line was edited', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' }).code, 0);
    const ls = fs.readFileSync(segment(h), 'utf8').split('\n');
    const at = ls.findIndex((l) => l.includes('"type":"secret.set"'));
    ls[at] = (ls[at] ?? '').replace('"type":"secret.set"', '"type":"secret.rm"');
    fs.writeFileSync(segment(h), ls.join('\n'));
    const r = kw(['audit', 'verify'], { env: h.env });
    assert.equal(r.code, 8);
    const line = at + 1;
    const where = `log-000001\\.jsonl line ${line} \\(seq ${line}\\)`;
    assert.match(
      r.stderr,
      new RegExp(`keyward: error: audit log broken at ${where}: the MAC does not verify`),
    );
    assert.match(r.stderr, new RegExp(`keyward: hint: ${at} entries before it verified`));
  });

  test('verify detects a deleted tail through the checkpoint sealed in the vault', () => {
    const h = initHome();
    for (const n of ['a', 'b', 'c']) kw(['secret', 'set', n], { env: h.env, input: 'value-aaaa' });
    const ls = fs.readFileSync(segment(h), 'utf8').trimEnd().split('\n');
    fs.writeFileSync(segment(h), `${ls.slice(0, ls.length - 2).join('\n')}\n`);
    const r = kw(['audit', 'verify'], { env: h.env });
    assert.equal(r.code, 8, r.stdout + r.stderr);
    // verify records what it found (chained from the last entry left) before anything else.
    assert.match(
      r.stderr,
      /WARNING: the audit log was cut: the log ends at seq \d+, but the checkpoint file sealed seq \d+: 2 entries are missing/,
    );
    assert.match(r.stderr, /not acknowledged: audit.gap at seq \d+/);
  });

  test('verify --chain-only needs no passphrase and says MACs were not checked', () => {
    const h = initHome();
    const env = { ...h.env };
    delete env['KEYWARD_PASSPHRASE_FILE'];
    const r = kw(['audit', 'verify', '--chain-only'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /MACs NOT checked/);
  });

  test('an exported key verifies the log elsewhere; a key file others can read is refused', () => {
    const h = initHome();
    const exp = kw(['audit', 'key', 'export'], { env: h.env });
    assert.equal(exp.code, 0, exp.stderr);
    assert.match(exp.stdout, /^[0-9a-f]{64}\n$/);
    assert.match(exp.stderr, /keep this key off this machine/);
    const keyFile = path.join(h.dir, 'audit.key');
    fs.writeFileSync(keyFile, exp.stdout, { mode: 0o600 });
    const env = { ...h.env };
    delete env['KEYWARD_PASSPHRASE_FILE'];
    let r = kw(['audit', 'verify', '--key-file', keyFile], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /MACs verified/);
    assert.ok(rows(h).some((x) => x.type === 'audit.key_exported'));
    fs.chmodSync(keyFile, 0o644);
    r = kw(['audit', 'verify', '--key-file', keyFile], { env });
    assert.equal(r.code, 8);
    assert.match(r.stderr, /refusing the key file/);
  });

  test('audit init rebuilds a lost state file from the vault; the chain still verifies', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' }).code, 0);
    fs.rmSync(path.join(auditDir(h), 'state'));
    const r = kw(['audit', 'init'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Audit log repaired/);
    assert.equal(kw(['read', 'a'], { env: h.env }).stdout, 'value-aaaa');
    assert.equal(kw(['audit', 'verify'], { env: h.env }).code, 0);
    assert.ok(rows(h).some((x) => x.type === 'audit.recovered'));
  });

  test('audit rekey: new bodies use the new key and older bodies still open', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'before'], { env: h.env, input: 'value-aaaa' }).code, 0);
    assert.equal(kw(['audit', 'rekey'], { env: h.env }).code, 0);
    assert.equal(kw(['secret', 'set', 'after'], { env: h.env, input: 'value-bbbb' }).code, 0);
    const targets = rows(h).map((r) => r.body.target);
    assert.ok(targets.includes('before') && targets.includes('after'));
    assert.ok(rows(h).some((r) => r.type === 'audit.rekeyed'));
    assert.equal(kw(['audit', 'verify'], { env: h.env }).code, 0);
  });

  test('export gives the stored lines (sealed) or, with --decrypt, opened bodies; --since filters', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'x'], { env: h.env, input: 'value-aaaa' }).code, 0);
    const sealed = kw(['audit', 'export'], { env: h.env }).stdout.trim().split('\n');
    assert.ok(sealed.length >= 3);
    assert.ok(sealed.every((l) => l.startsWith('{"v":1,"seq":')));
    assert.equal(kw(['audit', 'export', '--since', '2999-01-01'], { env: h.env }).stdout, '');
    const r = kw(['audit', 'export', '--since', 'yesterday-ish'], { env: h.env });
    assert.equal(r.code, 2);
  });

  test('tail --sealed shows time and type without the passphrase', () => {
    const h = initHome();
    const env = { ...h.env };
    delete env['KEYWARD_PASSPHRASE_FILE'];
    const r = kw(['audit', 'tail', '--sealed', '-n', '1'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^ +\d+ +\S+Z +[a-z_]+\.[a-z_]+ +\(sealed\)\n$/);
  });

  test('init --force moves the old audit log aside with the old vault', () => {
    const h = initHome();
    const r = kw(['init', '--force', '--yes', ...FAST_KDF], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(fs.readdirSync(h.home).some((n) => n.startsWith('audit.bak-')));
    assert.equal(kw(['audit', 'verify'], { env: h.env }).code, 0);
  });

  test('key export --qr draws a QR code that decodes to the same key as the hex export', () => {
    const h = initHome();
    const hex = kw(['audit', 'key', 'export'], { env: h.env }).stdout.trim();
    const r = kw(['audit', 'key', 'export', '--qr'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    // Back to pixels: each character is two module rows; a drawn half is a light module.
    const rowsOut = r.stdout
      .replace(/\n$/, '')
      .split('\n')
      .map((l) => [...l]);
    const width = rowsOut[0]?.length ?? 0;
    const scale = 4;
    const w = width * scale;
    const hgt = rowsOut.length * 2 * scale;
    const px = new Uint8ClampedArray(w * hgt * 4);
    rowsOut.forEach((row, y) =>
      row.forEach((ch, x) => {
        const light = [ch === '█' || ch === '▀', ch === '█' || ch === '▄'];
        light.forEach((on, half) => {
          for (let dy = 0; dy < scale; dy++) {
            for (let dx = 0; dx < scale; dx++) {
              const i = (((2 * y + half) * scale + dy) * w + x * scale + dx) * 4;
              px.fill(on ? 255 : 0, i, i + 3);
              px[i + 3] = 255;
            }
          }
        });
      }),
    );
    const jsQR = createRequire(import.meta.url)('jsqr') as (
      d: Uint8ClampedArray,
      w: number,
      h: number,
    ) => { data: string } | null;
    assert.equal(jsQR(px, w, hgt)?.data, hex);
  });
});

/** An unlocked agent whose policy allows every read, with one secret (api/token) to read. */
async function allowingAgent() {
  const h = agentHome(
    'version: 1\nrules:\n  - { name: allow, targets: ["**"], kind: secret, decision: allow }\n',
  );
  assert.equal(kw(['secret', 'set', 'api/token'], { env: h.env, input: 'value-aaaa' }).code, 0);
  await startAgent(h);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  return h;
}

/**
 * The state file names the key every body is sealed to (bytes 56-88): a process of the user can
 * write its own there, and with it read who asked for what from then on.
 */
function swapBoxKey(h: Home): Buffer {
  const file = path.join(auditDir(h), 'state');
  const st = fs.readFileSync(file);
  const original = Buffer.from(st.subarray(56, 88));
  randomBytes(32).copy(st, 56);
  fs.writeFileSync(`${file}.new`, st, { mode: 0o600 });
  fs.renameSync(`${file}.new`, file);
  return original;
}

/**
 * A home with three secrets set, and `audit acknowledge` of the head verify showed, run under
 * strace and held at its nth write to the log.
 */
function acknowledgeHeldAtWrite(nth: number): { h: Home; run: ReturnType<typeof commandHeldAt> } {
  const h = initHome();
  for (const n of ['a', 'b', 'c']) kw(['secret', 'set', n], { env: h.env, input: 'value-aaaa' });
  const seen = kw(['audit', 'verify'], { env: h.env });
  assert.equal(seen.code, 0, seen.stderr);
  const m = /head seq (\d+), sha256 ([0-9a-f]{64})/.exec(seen.stdout);
  assert.ok(m, seen.stdout);
  const head = `${m[1]}:${m[2]}`;
  const run = commandHeldAt(
    ['audit', 'acknowledge', '--head', head],
    h.env,
    'write',
    segment(h),
    '',
    nth,
  );
  return { h, run };
}

describe('a home others may enter', () => {
  test('found in review: a home made 0777 under a running, unlocked agent is refused at its next release, and said; made private again, releases go on', async () => {
    const h = await allowingAgent();
    try {
      assert.equal(kw(['read', 'api/token'], { env: h.env }).stdout, 'value-aaaa');
      fs.chmodSync(h.home, 0o777);
      const r = kw(['read', 'api/token'], { env: h.env });
      assert.notEqual(r.code, 0, 'nothing released');
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /has mode 777, so others can change it/);
      fs.chmodSync(h.home, 0o700);
      assert.equal(kw(['read', 'api/token'], { env: h.env }).stdout, 'value-aaaa');
    } finally {
      fs.chmodSync(h.home, 0o700);
      await stopAgent(h);
    }
  });
});

describe("the box key in the audit state is the vault's", () => {
  test('one swapped in by another process is found by the next command that holds the vault: recorded as a break, set back, and no body is sealed to it', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' }).code, 0);
    const original = swapBoxKey(h);
    // The copy of the vault's key sealed beside the log, replaced too: it is only a cache.
    fs.writeFileSync(path.join(auditDir(h), 'box'), randomBytes(72), { mode: 0o600 });
    assert.equal(kw(['secret', 'set', 'b'], { env: h.env, input: 'value-bbbb' }).code, 0);
    const all = rows(h);
    for (const r of all) assert.equal(typeof r.body, 'object', `seq ${r.seq}: ${String(r.body)}`);
    assert.ok(all.some((r) => r.type === 'secret.set' && r.body.target === 'b'));
    const gap = all.find((r) => r.type === 'audit.gap');
    assert.match(String(gap?.body.reason), /box key that is not this vault's/);
    const st = fs.readFileSync(path.join(auditDir(h), 'state'));
    assert.deepEqual(st.subarray(56, 88), original, "the state names the vault's key again");
    const v = kw(['audit', 'verify'], { env: h.env });
    assert.equal(v.code, 8, v.stdout + v.stderr);
    assert.match(v.stderr, /not acknowledged: audit.gap at seq \d+/);
  });

  test('one swapped in under a running, unlocked agent: the agent records the break and locks; the body of the request that found it opens', async () => {
    const h = await allowingAgent();
    try {
      assert.equal(kw(['read', 'api/token'], { env: h.env }).code, 0);
      // The first read's last record (its copy dropped) is written after the reader has the
      // value: the swap comes after it, so the next request is the one that finds it.
      await eventually(
        () => fs.readFileSync(segment(h), 'utf8').includes('"type":"credential.drop"'),
        "the first read's credential.drop",
      );
      swapBoxKey(h);
      const r = kw(['read', 'api/token'], { env: h.env });
      assert.notEqual(r.code, 0, 'nothing is released once the log was tampered with');
      assert.equal(r.stdout, '');
      const status = kw(['status'], { env: h.env });
      assert.match(status.stdout, /locked/);
    } finally {
      await stopAgent(h);
    }
    const entries = auditEntries(h);
    const gap = entries.find((e) => e.type === 'audit.gap');
    assert.match(String(gap?.reason), /box key that is not this vault's/);
    assert.equal(
      entries.filter((e) => e.type === 'secret.read' && e.target === 'api/token').length,
      2,
      `both reads recorded, and their bodies open with the vault: ${JSON.stringify(
        entries.map((e) => [e.type, e.target, e.decision, e.reason]),
      )}`,
    );
  });

  test("one written through a shared mapping under a running, unlocked agent, the file's stat unchanged, is found at the next request all the same", async () => {
    const h = await allowingAgent();
    const file = path.join(auditDir(h), 'state');
    // A process of the user maps the state file and writes a byte back as it was: that first
    // write moves the file's times (ext4), and the agent reads the file again at its next
    // request. Writes through the same mapping after that move no time (the page stays dirty
    // and writable; on tmpfs no time ever moves), so the file's stamp stays the agent's.
    const mapper = spawn(
      'python3',
      [
        '-c',
        [
          'import mmap, os, sys',
          'f = open(sys.argv[1], "r+b")',
          'm = mmap.mmap(f.fileno(), 0)',
          'm[60] = m[60]',
          'print("touched", flush=True)',
          'sys.stdin.readline()',
          'm[56:88] = os.urandom(32)',
          'print("swapped", flush=True)',
          'sys.stdin.readline()',
        ].join('\n'),
        file,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    const lines: string[] = [];
    mapper.stdout.on('data', (d: Buffer) => lines.push(...d.toString().trim().split('\n')));
    try {
      await eventually(() => lines.includes('touched'), 'the mapping written once');
      assert.equal(kw(['read', 'api/token'], { env: h.env }).code, 0);
      await eventually(() => drops(h) === 1, "the read's credential.drop");
      mapper.stdin.write('swap\n');
      await eventually(() => lines.includes('swapped'), 'the box key swapped through the mapping');
      const r = kw(['read', 'api/token'], { env: h.env });
      assert.notEqual(r.code, 0, 'nothing is released once the state was tampered with');
      assert.equal(r.stdout, '');
      assert.match(kw(['status'], { env: h.env }).stdout, /locked/);
    } finally {
      mapper.kill('SIGKILL');
      await stopAgent(h);
    }
    const gap = auditEntries(h).find((e) => e.type === 'audit.gap');
    assert.match(String(gap?.reason), /box key that is not this vault's/);
  });
});

describe("audit verify takes nothing on the word of whatever answers on the agent's socket", () => {
  /** A home of four secrets, and an impostor on its agent's socket (fixtures/lying-agent.mjs). */
  async function impostor(): Promise<{
    h: Home;
    withPass: NodeJS.ProcessEnv;
    noPass: NodeJS.ProcessEnv;
    says: (seq: number | string, hash: string | undefined) => void;
    lastSeq: () => number;
    change: (i: number) => void;
    stop: () => void;
  }> {
    const h = initHome();
    for (const n of ['a', 'b', 'c', 'd'])
      kw(['secret', 'set', n], { env: h.env, input: 'value-aaaa' });
    const run = path.join(h.dir, 'run');
    const said = path.join(h.dir, 'said.json');
    const says = (headSeq: number | string, headHash: string | undefined) =>
      fs.writeFileSync(said, JSON.stringify({ headSeq, headHash }));
    says(1, '0'.repeat(64));
    const fake = spawn(
      process.execPath,
      [path.join(ROOT, 'test/fixtures/lying-agent.mjs'), run, said],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve, reject) => {
      fake.stdout.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
      fake.once('exit', (c) => reject(new Error(`the impostor exited (${c})`)));
    });
    const withPass = { ...h.env, KEYWARD_SOCKET_DIR: run };
    const noPass: NodeJS.ProcessEnv = { ...withPass };
    delete noPass['KEYWARD_PASSPHRASE_FILE'];
    const lines = () => fs.readFileSync(segment(h), 'utf8').trimEnd().split('\n');
    return {
      h,
      withPass,
      noPass,
      says,
      lastSeq: () => lines().length,
      // One digit of entry i's time changed: its length kept, the chain not rewritten.
      change: (i) => {
        const ls = lines();
        ls[i] = (ls[i] ?? '').replace(/"time":"2/, '"time":"3');
        fs.writeFileSync(segment(h), `${ls.join('\n')}\n`);
      },
      stop: () => fake.kill('SIGTERM'),
    };
  }

  test("found in review: a process of the user's own that answers in the agent's place does not make a changed log pass", async () => {
    const f = await impostor();
    try {
      const n = f.lastSeq();
      // It says it verified to the entry before the last, which is the log's.
      f.says(n - 1, entryHashAt(f.h.home, n - 1));
      // The last entry changed: only its MAC shows it. Without a passphrase file the impostor is
      // asked, and the output says which part is its word, and how far.
      f.change(n - 1);
      const asked = kw(['audit', 'verify'], { env: f.noPass });
      assert.equal(asked.code, 0, asked.stdout + asked.stderr);
      assert.match(asked.stdout, new RegExp(`^ok: ${n} entries .*head seq ${n},`, 'm'));
      assert.match(
        asked.stdout,
        new RegExp(`MACs verified with the audit key by the agent, to seq ${n - 1}`),
      );
      assert.match(
        asked.stdout,
        /the chain was read here; the MACs, the checkpoint and the acknowledgements are the agent's word/,
      );
      // A head that is no entry of this log: whatever answered did not verify it.
      f.says(1, '0'.repeat(64));
      const elsewhere = kw(['audit', 'verify'], { env: f.noPass });
      assert.equal(elsewhere.code, 8, elsewhere.stdout + elsewhere.stderr);
      assert.match(
        elsewhere.stderr,
        /the agent says it verified the log to seq 1, .*this log holds no such entry/,
      );
      // A head the log does not hold, with no hash; a head of words for the terminal (review).
      f.says(999999, undefined);
      const none = kw(['audit', 'verify'], { env: f.noPass });
      assert.equal(none.code, 8, none.stdout + none.stderr);
      assert.match(none.stderr, /to seq 999999, sha256 \(none\): this log holds no such entry/);
      f.says('\u001b[31mRED', undefined);
      const words = kw(['audit', 'verify'], { env: f.noPass });
      assert.equal(words.code, 8, words.stdout + words.stderr);
      assert.match(words.stderr, /the agent's verify answer is not one keyward's agent gives/);
      assert.ok(
        !(words.stdout + words.stderr).includes('\u001b'),
        'no escape reaches the terminal',
      );
      // With a passphrase file the vault is opened here, and the impostor is not asked.
      const local = kw(['audit', 'verify'], { env: f.withPass });
      assert.equal(local.code, 8, local.stdout + local.stderr);
      assert.match(local.stderr, /audit log broken at .*MAC/);
      // An entry before the last: its link breaks, which this process sees by itself.
      f.change(1);
      const chain = kw(['audit', 'verify'], { env: f.noPass });
      assert.equal(chain.code, 8, chain.stdout + chain.stderr);
      assert.match(chain.stderr, /audit log broken at /);
    } finally {
      f.stop();
    }
  });

  test('found in review: a break recorded in the log is reported whatever the agent says', async () => {
    const f = await impostor();
    try {
      // The newest two entries cut; the next command that opens the vault records the break.
      const ls = fs.readFileSync(segment(f.h), 'utf8').trimEnd().split('\n');
      fs.writeFileSync(segment(f.h), `${ls.slice(0, -2).join('\n')}\n`);
      kw(['secret', 'set', 'e'], { env: f.h.env, input: 'value-aaaa' });
      assert.ok(
        fs.readFileSync(segment(f.h), 'utf8').includes('"type":"audit.gap"'),
        'the break is recorded',
      );
      const n = f.lastSeq();
      f.says(n, entryHashAt(f.h.home, n));
      const r = kw(['audit', 'verify'], { env: f.noPass });
      assert.equal(r.code, 8, r.stdout + r.stderr);
      assert.match(r.stderr, /not acknowledged: audit\.gap at seq \d+/);
    } finally {
      f.stop();
    }
  });
});

describe("an acknowledgement is the passphrase holder's", () => {
  test('one appended by another process (the state file holds the key that MACs new entries) does not silence a recorded break', async () => {
    const h = await allowingAgent();
    try {
      for (let i = 1; i <= 3; i++) {
        assert.equal(kw(['read', 'api/token'], { env: h.env }).code, 0);
        // A read's last record (its copy dropped) is written after the reader has the value.
        await eventually(() => drops(h) === i, `read ${i}'s credential.drop`);
      }
      // The newest entries cut behind the running agent: its next write records the break.
      const ls = fs.readFileSync(segment(h), 'utf8').trimEnd().split('\n');
      fs.writeFileSync(segment(h), `${ls.slice(0, ls.length - 3).join('\n')}\n`);
      assert.notEqual(kw(['read', 'api/token'], { env: h.env }).code, 0);
    } finally {
      await stopAgent(h);
    }
    const before = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(before.code, 8, before.stdout + before.stderr);
    assert.match(before.stderr, /not acknowledged: audit\.gap at seq \d+/);
    // The attacker writes a well-formed, MACed acknowledgement with nothing but the log's files.
    new AuditLog(h.home).append([
      {
        type: 'audit.acknowledged',
        decision: 'info',
        reason: 'the person acknowledged 1 recorded break(s) of the audit log',
        details: { gaps: null },
      },
    ]);
    const forged = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(forged.code, 8, forged.stdout + forged.stderr);
    assert.match(forged.stderr, /audit\.acknowledged .*not made with this vault/);
    // Without the vault, verify can't tell, and says so.
    const chain = kw(['audit', 'verify', '--chain-only'], { env: withoutAgent(h) });
    assert.match(chain.stdout + chain.stderr, /acknowledgements not checked/);
  });

  test(
    "found in review: an acknowledgement whose entry finds the log changed as it is written fails, and the vault takes nothing for the person's",
    { skip: cannotHold },
    async () => {
      // Held at its second write to the log: its vault.unlock is the first, its entry the second.
      const { h, run } = acknowledgeHeldAtWrite(2);
      // Its first entry in the log, then stopped in a write: the second.
      const lastType = () =>
        /"type":"([^"]+)"/.exec(
          fs.readFileSync(segment(h), 'utf8').trimEnd().split('\n').at(-1) ?? '',
        )?.[1];
      await eventually(
        () => lastType() === 'vault.unlock' && run.held(),
        'acknowledge held at the write of its entry',
      );
      // The entry it follows, cut while it is written.
      const ls = fs.readFileSync(segment(h), 'utf8').trimEnd().split('\n');
      fs.writeFileSync(segment(h), `${ls.slice(0, -1).join('\n')}\n`);
      run.release();
      const r = await run.done;
      assert.equal(r.code, 8, r.stdout + r.stderr);
      assert.match(
        r.stderr,
        /nothing acknowledged: the log changed while this command wrote its entry/,
      );
      const v = kw(['audit', 'verify'], { env: h.env });
      assert.equal(v.code, 8, v.stdout + v.stderr);
    },
  );

  test(
    'an acknowledgement whose write finds a break first (a box key swapped in as it is written) records that break alone, acknowledges nothing, and the break stays to be seen',
    { skip: cannotHold },
    async () => {
      const { h, run } = acknowledgeHeldAtWrite(1);
      const lines = () => fs.readFileSync(segment(h), 'utf8').trimEnd().split('\n');
      // Held at its first write to the log (its vault.unlock), after that write's checks.
      await eventually(() => run.held(), 'acknowledge held at its first write');
      const before = lines().length;
      // Another process of the user names its own box key in the state: the write of the
      // acknowledgement's entry, next, is the first to look.
      swapBoxKey(h);
      run.release();
      const r = await run.done;
      assert.equal(r.code, 8, r.stdout + r.stderr);
      assert.match(
        r.stderr,
        /nothing written: the log changed since it was checked \(the audit state named a box key that is not this vault's/,
      );
      const added = lines()
        .slice(before)
        .map((l) => /"type":"([^"]+)"/.exec(l)?.[1]);
      assert.deepEqual(
        added,
        ['vault.unlock', 'audit.gap'],
        'its unlock, then the break alone: nothing of the acknowledgement',
      );
      const v = kw(['audit', 'verify'], { env: h.env });
      assert.equal(v.code, 8, v.stdout + v.stderr);
      assert.match(v.stderr, /not acknowledged: audit.gap at seq \d+/);
    },
  );

  test("the person's acknowledgement ends the report of the breaks before it", () => {
    const h = initHome();
    for (const n of ['a', 'b', 'c']) kw(['secret', 'set', n], { env: h.env, input: 'value-aaaa' });
    const ls = fs.readFileSync(segment(h), 'utf8').trimEnd().split('\n');
    fs.writeFileSync(segment(h), `${ls.slice(0, ls.length - 2).join('\n')}\n`);
    const seen = kw(['audit', 'verify'], { env: h.env });
    assert.equal(seen.code, 8);
    // The head the person looked at, which verify names in its hint.
    const head = /acknowledge --head (\d+:[0-9a-f]{64})/.exec(seen.stderr)?.[1];
    assert.ok(head, seen.stderr);
    assert.equal(kw(['audit', 'acknowledge', '--head', head], { env: h.env }).code, 0);
    const r = kw(['audit', 'verify'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /recorded break\(s\), acknowledged: audit.gap at seq \d+/);
  });
});

describe('a change made while the agent writes', () => {
  const lines = (file: string) => fs.readFileSync(file, 'utf8').trimEnd().split('\n');
  const text = (ls: string[]) => `${ls.join('\n')}\n`;
  const attacks: [string, (file: string) => void][] = [
    ['a cut of the last three entries', (f) => fs.writeFileSync(f, text(lines(f).slice(0, -3)))],
    [
      // The file keeps its length: only the line the batch follows shows it.
      'the last entry rewritten in place, its length kept',
      (f) => {
        const ls = lines(f);
        const last = (ls.at(-1) ?? '').replace(
          /"prev":"(.)/,
          (_, c) => `"prev":"${c === '0' ? '1' : '0'}`,
        );
        const changed = text([...ls.slice(0, -1), last]);
        assert.equal(changed.length, fs.statSync(f).size, 'the length kept');
        fs.writeFileSync(f, changed);
      },
    ],
    [
      // The file the agent holds open keeps its length and its last line: only the path shows it.
      'a cut copy renamed over the segment',
      (f) => {
        fs.writeFileSync(`${f}.new`, text(lines(f).slice(0, -3)), { mode: 0o600 });
        fs.renameSync(`${f}.new`, f);
      },
    ],
  ];
  for (const [what, attack] of attacks)
    test(
      `${what}, made after the agent checked that its last entry is there, before its batch lands, is found all the same: the agent records the break, locks and releases nothing`,
      { skip: cannotHold },
      async () => {
        const h = await allowingAgent();
        let release = () => {};
        try {
          for (let i = 1; i <= 3; i++) {
            assert.equal(kw(['read', 'api/token'], { env: h.env }).code, 0);
            await eventually(() => drops(h) === i, `read ${i}'s credential.drop`);
          }
          // strace holds the agent as it enters its next write to the segment: the next read's
          // batch, its checks of the log done. The attacker changes the log then.
          const hold = await holdAt(h.agentPid ?? 0, 'write', segment(h));
          release = hold.release;
          const reader = kwSpawn(['read', 'api/token'], h.env);
          reader.stdin.end();
          let out = '';
          reader.stdout.on('data', (d: Buffer) => (out += d.toString()));
          const code = new Promise<number | null>((res) => reader.on('close', (c) => res(c)));
          await eventually(hold.held, "the agent held at its batch's write");
          attack(segment(h));
          release();
          assert.notEqual(await code, 0, 'nothing is released once the log was changed');
          assert.equal(out, '');
          assert.match(kw(['status'], { env: h.env }).stdout, /locked/);
        } finally {
          release();
          await stopAgent(h);
        }
        const gap = auditEntries(h).find((e) => e.type === 'audit.gap');
        assert.match(String(gap?.reason), /changed while a batch was written/);
        // What the batch follows is not what it was built on: verify says so too (a broken link
        // is no break a person can acknowledge).
        const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
        assert.equal(v.code, 8, v.stdout + v.stderr);
        assert.match(v.stderr, /audit log broken at/);
      },
    );
});

test(
  'a keyward command whose record lands after another process cut the log fails, prints nothing, and the break is recorded',
  { skip: cannotHold },
  async () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'api/token'], { env: h.env, input: 'value-aaaa' }).code, 0);
    for (const n of ['b', 'c', 'd']) kw(['secret', 'set', n], { env: h.env, input: 'v' });
    // No agent: the read opens the vault itself, and records the release before it prints.
    const run = commandHeldAt(['read', 'api/token'], h.env, 'write', segment(h));
    try {
      await eventually(run.held, "the read held at its record's write");
      const ls = fs.readFileSync(segment(h), 'utf8').trimEnd().split('\n');
      fs.writeFileSync(segment(h), `${ls.slice(0, -3).join('\n')}\n`);
    } finally {
      run.release();
    }
    const r = await run.done;
    assert.equal(r.code, 8, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /changed while this command wrote to it/);
    // The break is the log's last entry, after the batch that landed after the cut.
    const rows = fs.readFileSync(segment(h), 'utf8').trimEnd().split('\n');
    assert.match(rows.at(-1) ?? '', /"type":"audit\.gap"/);
    const v = kw(['audit', 'verify'], { env: h.env });
    assert.equal(v.code, 8, v.stdout + v.stderr);
    assert.match(v.stderr, /audit log broken at/);
  },
);

describe('audit verify --against a copy off the machine (the copy is untrusted input)', () => {
  /** The copy's lines for every entry of h's log, as the collector's template writes them. */
  const shipped = (h: Home): string[] =>
    fs
      .readFileSync(segment(h), 'utf8')
      .trim()
      .split('\n')
      .map((l) => {
        const e = parseLine(l);
        assert.ok(e);
        const sd = `[keyward@32473 seq="${e.seq}" type="${e.type}" epoch="${e.epoch}" decision="info" hash="${e.hash}" prev="${e.prev}"]`;
        return `keyward 4242 ${e.type} ${sd} keyward audit seq=${e.seq} type=${e.type} decision=info hash=${e.hash}`;
      });
  const against = (h: Home, copy: string | Buffer, extra: string[] = []) => {
    const file = path.join(h.dir, `copy-${Math.random().toString(36).slice(2)}`);
    fs.writeFileSync(file, copy);
    return kw(['audit', 'verify', '--chain-only', '--against', file, ...extra], { env: h.env });
  };

  test('a log rolled back and written again past the copy is caught: the copy holds two entries at those seqs', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'svc/a'], { env: h.env, input: 'v1' }).code, 0);
    const snapshot = path.join(h.dir, 'snapshot');
    fs.cpSync(h.home, snapshot, { recursive: true });
    // What an attacker wants gone: two reads, shipped as they happened.
    for (let i = 0; i < 2; i++) assert.equal(kw(['read', 'svc/a'], { env: h.env }).code, 0);
    const before = shipped(h);
    // The older home put back (vault, log and checkpoint together), then ordinary use writes
    // the same seqs again (reads too: other times, other processes) and ships them.
    fs.rmSync(h.home, { recursive: true });
    fs.cpSync(snapshot, h.home, { recursive: true });
    for (let i = 0; i < 2; i++) assert.equal(kw(['read', 'svc/a'], { env: h.env }).code, 0);
    const after = shipped(h);
    assert.ok(after.length >= before.length, 'the rewritten log reaches as far');
    const copy = [...new Set([...before, ...after])].join('\n');
    const r = against(h, `${copy}\n`);
    assert.equal(r.code, 8, r.stdout + r.stderr);
    assert.match(r.stderr, /two or more different entries at \d+ seqs \(the log was rolled back/);
    // Each alone would pass: the local log matches what was shipped after the rollback.
    assert.equal(against(h, `${after.join('\n')}\n`).code, 0);
  });

  test('lines forged into the system log never make a changed entry pass; look-alikes and foreign journal entries are not counted', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'svc/a'], { env: h.env, input: 'v1' }).code, 0);
    const lines = shipped(h);
    const last = parseLine(fs.readFileSync(segment(h), 'utf8').trim().split('\n').at(-1) ?? '');
    assert.ok(last);
    const other = 'f'.repeat(64);
    // A full forgery of the last entry (`logger -t keyward ...`): two entries at one seq.
    const forged = `keyward 999 x.y [keyward@32473 seq="${last.seq}" type="secret.set" epoch="0" decision="allow" hash="${other}" prev="${other}"] keyward audit`;
    let r = against(h, `${[...lines, forged].join('\n')}\n`);
    assert.equal(r.code, 8, r.stdout + r.stderr);
    assert.match(r.stderr, new RegExp(`different entries at 1 seqs .*: seq ${last.seq}`));
    // Another program's message carrying keyward's bracket (an ssh user name fits 96 bytes of
    // it): not keyward's shape, said and not counted; a CRLF, a byte-order mark, a record
    // separator and a journald line from another uid change nothing.
    const sshd = `sshd 31 - - Invalid user [keyward@32473 seq="${last.seq}" hash="${other}"] from 10.0.0.1`;
    const foreign = JSON.stringify({
      SYSLOG_IDENTIFIER: 'keyward',
      KEYWARD_SEQ: String(last.seq),
      KEYWARD_HASH: other,
      _UID: String((process.getuid?.() ?? 0) + 1),
    });
    const numeric = JSON.stringify({
      SYSLOG_IDENTIFIER: 'keyward',
      KEYWARD_SEQ: 1,
      KEYWARD_HASH: other,
    });
    const [first, ...rest] = lines;
    r = against(h, `\uFEFF${first}\r\n${rest.join('\n')}\n${sshd}\n${foreign}\n\u001e${numeric}\n`);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`the copy holds ${lines.length} entries`));
    assert.match(
      r.stdout,
      /2 lines of the copy look like keyward's entries and can't be read: line \d+, \d+/,
    );
    assert.match(
      r.stdout,
      /1 keyward-like journal entries come from another user's processes: not counted/,
    );
    assert.match(r.stdout, /every entry of the copy is here, unchanged/);
  });

  test('a copy with no entry is no evidence, and one that is not a file is said to be so', () => {
    const h = initHome();
    for (const [what, copy] of [
      ['an empty file', ''],
      ['another file', fs.readFileSync('/etc/passwd')],
      ['journalctl -o json-pretty', '{\n  "KEYWARD_SEQ" : "1"\n}\n'],
    ] as const) {
      const r = against(h, copy);
      assert.equal(r.code, 2, `${what}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /holds no keyward audit entry/, what);
    }
    const dir = kw(['audit', 'verify', '--chain-only', '--against', h.dir], { env: h.env });
    assert.equal(dir.code, 2, dir.stderr);
    assert.match(dir.stderr, /is not a file or a pipe/);
    assert.doesNotMatch(dir.stderr, /internal error/);
    // A long line of brackets that never close: read in one pass (the old pattern scanned to
    // the line's end from each, quadratic: a 2 MiB line took 24 s).
    const long = `${'[keyward@32473 seq="1" '.repeat(200_000)}\n${shipped(h).join('\n')}\n`;
    const r = against(h, long);
    assert.equal(r.code, 0, r.stderr);
  });

  test("--against with --path is refused: the copy is compared with the home's log, not with that file", () => {
    const h = initHome();
    const r = against(h, `${shipped(h).join('\n')}\n`, ['--path', segment(h)]);
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr, /--against compares the copy with this home's log: not with --path/);
    assert.equal(r.stdout, '');
  });
});
