/**
 * Fail closed: a vault others could read, change or swap is refused, with a hint, before use.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { BIN, FAST_KDF, initHome, kw, makeHome, ROOT, rootTests } from './helpers.js';
import { peerPidfdCheck } from '../src/doctor/index.js';

function refused(env: NodeJS.ProcessEnv, why: RegExp): void {
  for (const args of [
    ['secret', 'list'],
    ['read', 'a'],
    ['secret', 'set', 'b'],
  ]) {
    const r = kw(args, { env, input: 'value-123' });
    assert.equal(r.code, 8, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^keyward: error: refusing to use /);
    assert.match(r.stderr, why);
    assert.match(r.stderr, /keyward: hint: /);
  }
}

test('when the vault directory is readable by others (0755), every command refuses it', () => {
  const h = initHome();
  fs.chmodSync(h.home, 0o755);
  refused(h.env, /it has mode 755, so others can read it/);
});

test('when the vault directory is group-writable (0770), it is refused as changeable', () => {
  const h = initHome();
  fs.chmodSync(h.home, 0o770);
  refused(h.env, /so others can change it/);
});

test('when the vault file is readable by others (0644), it is refused', () => {
  const h = initHome();
  fs.chmodSync(h.vaultFile, 0o644);
  refused(h.env, /vault\.kw: it has mode 644/);
});

test('when the vault file is a symbolic link, it is refused', () => {
  const h = initHome();
  const moved = path.join(h.dir, 'elsewhere.kw');
  fs.renameSync(h.vaultFile, moved);
  fs.symlinkSync(moved, h.vaultFile);
  refused(h.env, /it is a symbolic link/);
});

test('when KEYWARD_HOME is a symbolic link, it is refused', () => {
  const h = initHome();
  const real = path.join(h.dir, 'real-home');
  fs.renameSync(h.home, real);
  fs.symlinkSync(real, h.home);
  refused(h.env, /it is a symbolic link/);
});

test(
  'when the vault file belongs to another user, it is refused',
  { skip: !rootTests && 'needs root to chown' },
  () => {
    const h = initHome();
    fs.chownSync(h.vaultFile, 65534, 65534);
    refused(h.env, /owned by uid 65534, not by you/);
  },
);

test('init refuses a pre-existing home directory with loose permissions and writes nothing into it', () => {
  const h = makeHome();
  fs.mkdirSync(h.home, { mode: 0o755 });
  fs.chmodSync(h.home, 0o755);
  const r = kw(['init', ...FAST_KDF], { env: h.env });
  assert.equal(r.code, 8);
  assert.match(r.stderr, /refusing to use .*home: it has mode 755/);
  assert.deepEqual(fs.readdirSync(h.home), []);
});

test('doctor reports a loose vault directory as FAIL and exits 8; a private one passes', () => {
  const h = initHome();
  let r = kw(['doctor'], { env: h.env });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^OK +home-permissions/m);
  assert.match(r.stdout, /^OK +vault-permissions/m);
  assert.match(r.stdout, /core-limit/);
  fs.chmodSync(h.home, 0o755);
  r = kw(['doctor', '--json'], { env: h.env });
  assert.equal(r.code, 8);
  const checks = JSON.parse(r.stdout) as Array<{ id: string; status: string }>;
  assert.equal(checks.find((c) => c.id === 'home-permissions')?.status, 'fail');
  assert.match(r.stderr, /1 check\(s\) failed: home-permissions/);
});

test('doctor warns that a passphrase file makes the vault only as safe as that file', () => {
  const h = initHome();
  const r = kw(['doctor'], { env: h.env });
  assert.match(
    r.stdout,
    /^WARN +passphrase-file .*only as safe as this file, and any process that can read it can answer a passphrase approval/m,
  );
});

test('doctor warns while unprivileged user namespaces are on: any process can make its executable look like another', () => {
  const h = initHome();
  const proc = (p: string) => {
    try {
      return fs.readFileSync(p, 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  const off =
    proc('/proc/sys/user/max_user_namespaces') === '0' ||
    proc('/proc/sys/kernel/unprivileged_userns_clone') === '0' ||
    proc('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1';
  const r = kw(['doctor'], { env: h.env });
  assert.match(
    r.stdout,
    off
      ? /^OK +user-namespaces/m
      : /^WARN +user-namespaces .*exe, exe_sha256 and ancestor rules are evidence, not proof/m,
  );
  // This kernel pins the process that connects (6.5 or later): said so.
  assert.match(r.stdout, /^OK +peer-pidfd .*SO_PEERPIDFD/m);
});

test('doctor asks the kernel for SO_PEERPIDFD, not its version: unknown is a warning, blocked a failure', () => {
  const h = initHome();
  const fixture = path.join(ROOT, 'dist/test/fixtures/no-peerpidfd.js');
  const under = (errno: string) =>
    spawnSync(process.execPath, [fixture, errno, process.execPath, BIN, 'doctor'], {
      env: h.env,
      encoding: 'utf8',
    });
  // The option unknown, as before Linux 6.5, whatever os.release() says (here 6.5 or later):
  // callers are unpinned, and doctor says what that costs.
  const old = under('ENOPROTOOPT');
  assert.match(
    old.stdout,
    /^WARN +peer-pidfd .*has no SO_PEERPIDFD: .*rules allow nobody by who they are/m,
  );
  // Any other failure (a filter, a security module): the agent would refuse every connection.
  const blocked = under('EINVAL');
  assert.match(
    blocked.stdout,
    /^FAIL +peer-pidfd .*SO_PEERPIDFD fails here \(errno 22\).*refuses every connection/m,
  );
  assert.notEqual(blocked.status, 0);
  // The check's own words, for a kernel's answers this one can't give.
  assert.equal(peerPidfdCheck(92, '5.15.0-91-generic').status, 'warn');
  assert.equal(peerPidfdCheck(0).status, 'ok');
});
