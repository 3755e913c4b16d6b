/**
 * Every key type, key files, ssh-add and its constraints, lock and unlock over the SSH socket, and
 * a login to a real sshd: all with the real OpenSSH tools against keyward's agent.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import {
  agentHome,
  auditEntries,
  closeAll,
  kwAsync,
  type AgentHome,
  scanWindows,
  startAgent,
  unlockedMappings,
  stopAgent,
  withoutAgent,
} from './agent-helpers.js';
import {
  BIN,
  cannotHold,
  everyByteUnder,
  eventually,
  holdAt,
  kw,
  PASSPHRASE,
  rootTests,
} from './helpers.js';
import { sshString } from '../src/keys/index.js';

const homes: AgentHome[] = [];
const cleanups: (() => void)[] = [];
after(async () => {
  for (const c of cleanups) c();
  for (const h of homes) await stopAgent(h);
});

const have = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const hasOpenSsh = have('ssh-keygen') && have('ssh-add') && have('ssh');
// CI installs them (.ci/run); a developer without them is told which, rather than a silent pass.
const skip = !hasOpenSsh && process.env['CI'] !== 'true' ? 'needs openssh-client' : false;

const ALLOW_KEYS =
  'version: 1\nrules:\n  - { name: keys, targets: ["**"], kind: key, decision: allow }\n' +
  // key list and audit tail through the agent (docs/POLICY.md, "Lists and the audit log").
  '  - { name: names, targets: [keys], kind: list, decision: allow }\n' +
  '  - { name: log, targets: [tail], kind: audit, decision: allow }\n';

/** A rule a user writes for logins: /usr/bin/ssh signs without asking. */
const SSH_LOGINS_SILENT =
  'version: 1\nrules:\n' +
  '  - { name: ssh-logins-silent, targets: ["**"], kind: key, callers: { exe: /usr/bin/ssh, loader_vars: absent }, decision: allow }\n';

const run = (cmd: string, args: string[], env: NodeJS.ProcessEnv, input?: string) =>
  spawnSync(cmd, args, { env, encoding: 'utf8', input: input ?? '', timeout: 60_000 });

async function agentWith(
  policy: string | undefined,
): Promise<{ h: AgentHome; env: NodeJS.ProcessEnv }> {
  const h = agentHome(policy);
  homes.push(h);
  await startAgent(h);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  const sock = /SSH_AUTH_SOCK=(\S+)/.exec(kw(['ssh-env'], { env: h.env }).stdout)?.[1];
  assert.ok(sock);
  return { h, env: { ...h.env, SSH_AUTH_SOCK: sock } };
}

/** The last n audit records, read with the vault (not through the agent), types and bodies. */
function tailOf(
  h: AgentHome,
  n: number,
): Array<{ type: string; body: { details?: Record<string, unknown> } }> {
  return kw(['audit', 'tail', '--json', '-n', String(n)], { env: withoutAgent(h) })
    .stdout.trim()
    .split('\n')
    .map((x) => JSON.parse(x) as { type: string; body: { details?: Record<string, unknown> } });
}

/** ssh-keygen -Y sign with the agent's key for pub, then -Y verify against pub. */
function signAndVerify(dir: string, pub: string, env: NodeJS.ProcessEnv): void {
  const msg = path.join(dir, `msg-${crypto.randomUUID()}`);
  fs.writeFileSync(msg, 'data to sign\n');
  const s = run('ssh-keygen', ['-Y', 'sign', '-n', 'file', '-f', pub, msg], env);
  assert.equal(s.status, 0, `${pub}: ${s.stderr}`);
  const allowed = path.join(dir, 'allowed_signers');
  fs.writeFileSync(allowed, `me@example ${fs.readFileSync(pub, 'utf8')}`);
  const v = run(
    'ssh-keygen',
    ['-Y', 'verify', '-f', allowed, '-I', 'me@example', '-n', 'file', '-s', `${msg}.sig`],
    env,
    'data to sign\n',
  );
  assert.equal(v.status, 0, `${pub}: ${v.stderr}`);
  assert.match(v.stdout, /Good "file" signature for me@example/);
}

/** `ssh-keygen -lf` without the comment: bits, fingerprint and type. */
const fp = (line: string) => line.trim().replace(/^(\d+ SHA256:\S+) .*(\(\w+\))$/, '$1 $2');

function sshKeygen(dir: string, name: string, args: string[]): string {
  const file = path.join(dir, name);
  const r = spawnSync('ssh-keygen', ['-q', '-C', name, '-f', file, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return file;
}

test(
  'key generate makes ed25519, ECDSA P-256/P-384/P-521 and RSA keys; key list matches ssh-keygen -l; each signs and verifies',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    for (const [name, type] of [
      ['k-ed25519', 'ed25519'],
      ['k-p256', 'ecdsa-p256'],
      ['k-p384', 'ecdsa-p384'],
      ['k-p521', 'ecdsa-p521'],
      ['k-rsa', 'rsa'],
    ] as const) {
      const g = kw(['key', 'generate', name, '--type', type], { env: h.env });
      assert.equal(g.code, 0, g.stderr);
      fs.writeFileSync(path.join(h.dir, `${name}.pub`), g.stdout);
    }
    const listed = kw(['key', 'list'], { env: h.env }).stdout.trim().split('\n');
    for (const name of ['k-ed25519', 'k-p256', 'k-p384', 'k-p521', 'k-rsa']) {
      const expected = run('ssh-keygen', ['-lf', path.join(h.dir, `${name}.pub`)], env).stdout;
      assert.ok(listed.includes(expected.trim()), `${expected} in ${listed.join('\n')}`);
      signAndVerify(h.dir, path.join(h.dir, `${name}.pub`), env);
    }
    assert.match(listed.join('\n'), /^3072 SHA256:\S+ k-rsa \(RSA\)$/m);
    assert.match(listed.join('\n'), /^384 SHA256:\S+ k-p384 \(ECDSA\)$/m);
    assert.match(listed.join('\n'), /^521 SHA256:\S+ k-p521 \(ECDSA\)$/m);
    // ssh-add -L shows exactly the public keys key generate printed.
    const L = run('ssh-add', ['-L'], env).stdout;
    for (const name of ['k-ed25519', 'k-p256', 'k-p384', 'k-p521', 'k-rsa'])
      assert.ok(L.includes(fs.readFileSync(path.join(h.dir, `${name}.pub`), 'utf8').trim()));
    const bad = kw(['key', 'generate', 'x', '--type', 'dsa'], { env: h.env });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown key type dsa/);
  },
);

test(
  'with the agent unlocked, key list and a name taken in key generate ask no passphrase; locked, key list, secret list and read refuse alike',
  { skip },
  async () => {
    const { h } = await agentWith(ALLOW_KEYS);
    assert.equal(kw(['key', 'generate', 'k-one'], { env: h.env }).code, 0);
    // A passphrase file that opens nothing: only the agent's path can succeed.
    const wrong = path.join(h.dir, 'wrong-pass');
    fs.writeFileSync(wrong, 'not the passphrase at all\n', { mode: 0o600 });
    const env = { ...h.env, KEYWARD_PASSPHRASE_FILE: wrong };
    const listed = kw(['key', 'list'], { env });
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /^256 SHA256:\S+ k-one \(/m);
    const taken = kw(['key', 'generate', 'k-one'], { env });
    assert.equal(taken.code, 2, taken.stderr);
    assert.match(taken.stderr, /a key named k-one exists/);
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    // Locked: refused, as read and secret list are (the one way in while an agent runs).
    const locked = kw(['key', 'list'], { env });
    assert.equal(locked.code, 5, locked.stderr);
    assert.match(locked.stderr, /keyward unlock/);
    const secrets = kw(['secret', 'list'], { env });
    assert.equal(secrets.code, 5, `secret list: ${secrets.stderr}`);
    assert.equal(kw(['read', 'anything'], { env }).code, 5, 'read');
  },
);

test(
  'key import reads OpenSSH key files, plain and encrypted (aes256-ctr, aes256-gcm); the imported keys sign for the original public keys',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const keyPass = path.join(h.dir, 'keypass');
    fs.writeFileSync(keyPass, 'file passphrase\n', { mode: 0o600 });
    const files = [
      sshKeygen(h.dir, 'plain-ed25519', ['-t', 'ed25519', '-N', '']),
      sshKeygen(h.dir, 'enc-p384', ['-t', 'ecdsa', '-b', '384', '-N', 'file passphrase']),
      sshKeygen(h.dir, 'plain-p521', ['-t', 'ecdsa', '-b', '521', '-N', '']),
      sshKeygen(h.dir, 'enc-rsa', [
        '-t',
        'rsa',
        '-b',
        '3072',
        '-N',
        'file passphrase',
        '-Z',
        'aes256-gcm@openssh.com',
      ]),
      sshKeygen(h.dir, 'enc-ed25519', ['-t', 'ed25519', '-N', 'file passphrase', '-a', '4']),
    ];
    const before = fs.readFileSync(h.vaultFile);
    const wrong = path.join(h.dir, 'wrongpass');
    fs.writeFileSync(wrong, 'not it\n', { mode: 0o600 });
    const w = kw(['key', 'import', files[1] ?? '', '--key-passphrase-file', wrong], {
      env: h.env,
    });
    assert.equal(w.code, 4, w.stderr);
    assert.match(w.stderr, /wrong passphrase for the key file/);
    assert.deepEqual(fs.readFileSync(h.vaultFile), before, 'a failed import changes nothing');

    for (const f of files) {
      const r = kw(['key', 'import', f, '--key-passphrase-file', keyPass], { env: h.env });
      assert.equal(r.code, 0, r.stderr);
      const original = fs.readFileSync(`${f}.pub`, 'utf8').trim().split(' ');
      assert.equal(r.stdout.trim(), `${original[0]} ${original[1]} ${path.basename(f)}`);
      assert.doesNotMatch(r.stdout + r.stderr, /PRIVATE/);
    }
    for (const f of files) signAndVerify(h.dir, `${f}.pub`, env);
    // From here on every import fails, and each one leaves the vault as it was, byte for byte.
    const imported = fs.readFileSync(h.vaultFile);
    const unchanged = (why: string) =>
      assert.deepEqual(fs.readFileSync(h.vaultFile), imported, `${why} changed the vault`);
    const again = kw(['key', 'import', files[0] ?? '', '--name', 'other'], { env: h.env });
    assert.equal(again.code, 2);
    assert.match(again.stderr, /already in the vault/);
    unchanged('a second import of the same key');
    // A damaged key file: one byte of its private section changed (the base64 re-encoded, so
    // the file still parses as far as it can).
    const text = fs.readFileSync(files[2] ?? '', 'utf8').split('\n');
    const body = Buffer.from(text.slice(1, -2).join(''), 'base64');
    body[body.length - 40] = (body[body.length - 40] ?? 0) ^ 0x5a;
    const damaged = path.join(h.dir, 'damaged-p521');
    const b64 = body.toString('base64').match(/.{1,70}/g) ?? [];
    fs.writeFileSync(damaged, [text[0], ...b64, text.at(-2), ''].join('\n'), { mode: 0o600 });
    const d = kw(['key', 'import', damaged, '--name', 'damaged'], { env: h.env });
    assert.equal(d.code, 8, d.stderr);
    assert.match(d.stderr, /^keyward: error: not a usable key: its public and private halves/);
    unchanged('a damaged key file');

    const pem = sshKeygen(h.dir, 'pem-rsa', ['-t', 'rsa', '-b', '2048', '-N', '', '-m', 'PEM']);
    const p = kw(['key', 'import', pem], { env: h.env });
    assert.equal(p.code, 2);
    assert.match(p.stderr, /this is a PEM key.*\n.*ssh-keygen -p/);
    unchanged('a PEM key');
    const missing = kw(['key', 'import', path.join(h.dir, 'nope')], { env: h.env });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /cannot read the key file .*ENOENT/);
    unchanged('a missing file');
    const garbage = path.join(h.dir, 'garbage');
    fs.writeFileSync(
      garbage,
      `-----BEGIN OPENSSH PRIVATE KEY-----\n${crypto.randomBytes(300).toString('base64')}\n-----END OPENSSH PRIVATE KEY-----\n`,
    );
    const g = kw(['key', 'import', garbage], { env: h.env });
    assert.equal(g.code, 2, g.stderr);
    assert.match(g.stderr, /not an OpenSSH private key file/);
    unchanged('a garbage key file');
  },
);

test(
  'ssh-add adds keys held in memory only; -l, -L, -d and -D work; the vault file is untouched',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const files = [
      sshKeygen(h.dir, 'a-ed25519', ['-t', 'ed25519', '-N', '']),
      sshKeygen(h.dir, 'a-p256', ['-t', 'ecdsa', '-N', '']),
      sshKeygen(h.dir, 'a-p521', ['-t', 'ecdsa', '-b', '521', '-N', '']),
      sshKeygen(h.dir, 'a-rsa', ['-t', 'rsa', '-b', '3072', '-N', '']),
    ];
    const before = fs.readFileSync(h.vaultFile);
    const add = run('ssh-add', files, env);
    assert.equal(add.status, 0, add.stderr);
    assert.deepEqual(fs.readFileSync(h.vaultFile), before);
    const l = run('ssh-add', ['-l'], env).stdout.trim().split('\n').map(fp);
    for (const f of files)
      assert.ok(l.includes(fp(run('ssh-keygen', ['-lf', `${f}.pub`], env).stdout)), f);
    const L = run('ssh-add', ['-L'], env).stdout;
    for (const f of files) assert.ok(L.includes(fs.readFileSync(`${f}.pub`, 'utf8').trim()));
    for (const f of files) signAndVerify(h.dir, `${f}.pub`, env);

    assert.equal(run('ssh-add', ['-d', `${files[1]}.pub`], env).status, 0);
    assert.doesNotMatch(run('ssh-add', ['-l'], env).stdout, /a-p256/);
    // (a copy of the public key alone, so ssh-keygen can't fall back to the private key file)
    const lone = path.join(h.dir, 'lone');
    fs.mkdirSync(lone);
    fs.copyFileSync(`${files[1]}.pub`, path.join(lone, 'a-p256.pub'));
    const gone = run(
      'ssh-keygen',
      ['-Y', 'sign', '-n', 'file', '-f', path.join(lone, 'a-p256.pub'), '/dev/null'],
      env,
    );
    assert.notEqual(gone.status, 0);
    assert.equal(run('ssh-add', ['-D'], env).status, 0);
    const empty = run('ssh-add', ['-l'], env);
    assert.equal(empty.status, 1);
    assert.match(empty.stdout, /The agent has no identities/);

    const rows = tailOf(h, 40);
    assert.equal(rows.filter((r) => r.type === 'key.add').length, files.length);
    assert.ok(
      rows.some((r) => r.type === 'key.remove' && r.body.details?.['reason'] === 'ssh-add -D'),
    );
    assert.ok(
      rows.some((r) => r.type === 'key.sign' && r.body.details?.['algorithm'] === 'rsa-sha2-512'),
    );
    // A locked agent takes no keys.
    kw(['lock'], { env: h.env });
    assert.notEqual(run('ssh-add', [files[0] ?? ''], env).status, 0);
  },
);

test(
  'ssh-add -c: every signature with the key is confirmed through askpass, even when policy allows',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const f = sshKeygen(h.dir, 'c-ed25519', ['-t', 'ed25519', '-N', '']);
    assert.equal(run('ssh-add', ['-c', f], env).status, 0);
    h.answer('no');
    const denied = run(
      'ssh-keygen',
      ['-Y', 'sign', '-n', 'git', '-f', `${f}.pub`, '/dev/null'],
      env,
    );
    assert.notEqual(denied.status, 0);
    assert.match(
      h.prompts().at(-1) ?? '',
      /a request to sign with the ssh-add key "c-ed25519" \(ED25519 SHA256:/,
    );
    h.answer('yes');
    const n = h.prompts().length;
    signAndVerify(h.dir, `${f}.pub`, env);
    signAndVerify(h.dir, `${f}.pub`, env);
    assert.equal(h.prompts().length, n + 2, 'asked for each signature, never remembered');
  },
);

test(
  'ssh-add -t and the policy key_lifetime: keys go when their lifetime ends',
  { skip },
  async () => {
    const { h, env } = await agentWith(
      `${ALLOW_KEYS}unlock:\n  idle_timeout: 15m\n  max_lifetime: 4h\n  key_lifetime: 2s\n`,
    );
    const a = sshKeygen(h.dir, 't-a', ['-t', 'ed25519', '-N', '']);
    const b = sshKeygen(h.dir, 't-b', ['-t', 'ed25519', '-N', '']);
    assert.equal(run('ssh-add', ['-t', '1', a], env).status, 0);
    assert.equal(run('ssh-add', ['-t', '3600', b], env).status, 0); // capped at 2 s by the policy
    assert.match(run('ssh-add', ['-l'], env).stdout, /t-a[\s\S]*t-b/);
    // Each goes when its lifetime ends (b's 3600 s capped at 2 s): waited for, not timed, so a
    // loaded machine can't make either look early or late.
    const listed = () => run('ssh-add', ['-l'], env).stdout;
    await eventually(() => !/t-a/.test(listed()), 't-a to go after 1 s');
    await eventually(() => !/t-b/.test(listed()), 't-b to go after the 2 s cap');
  },
);

test(
  'a key_lifetime applied while keys are added ends those older than it and caps the next, with only the SSH socket asked',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const a = sshKeygen(h.dir, 'p-a', ['-t', 'ed25519', '-N', '']);
    const b = sshKeygen(h.dir, 'p-b', ['-t', 'ed25519', '-N', '']);
    assert.equal(run('ssh-add', [a], env).status, 0);
    const listed = () => run('ssh-add', ['-l'], env).stdout;
    const addedAt = Date.now();
    await eventually(() => Date.now() - addedAt > 2500, 'p-a to be older than two seconds');
    const f = path.join(h.dir, 'lifetime.yaml');
    fs.writeFileSync(
      f,
      `${ALLOW_KEYS}unlock:\n  idle_timeout: 15m\n  max_lifetime: 4h\n  key_lifetime: 2s\n`,
    );
    assert.equal(kw(['policy', 'apply', f], { env: h.env }).code, 0);
    // Nothing but ssh-add from here: the agent reads the policy in force all the same.
    assert.equal(run('ssh-add', [b], env).status, 0);
    await eventually(() => !/p-a/.test(listed()), 'p-a, added before, to go');
    await eventually(() => !/p-b/.test(listed()), 'p-b to go after two seconds');
    const adds = tailOf(h, 40).filter((r) => r.type === 'key.add');
    assert.deepEqual(
      adds.map((r) => r.body.details?.['lifetimeS']),
      [null, 2],
    );
  },
);

test(
  'ssh-add -t longer than a timer can wait (24.8 days) keeps the key: it was gone at once',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const f = sshKeygen(h.dir, 't-long', ['-t', 'ed25519', '-N', '']);
    const add = run('ssh-add', ['-t', '3000000', f], env);
    assert.equal(add.status, 0, add.stderr);
    // Node fires a timer of more than 2^31 - 1 ms after 1 ms: a request that takes many turns of
    // the agent's loop (a status through the CLI) comes after it would have fired.
    assert.equal(kw(['status'], { env: h.env }).code, 0);
    assert.match(run('ssh-add', ['-l'], env).stdout, /t-long/);
    const added = tailOf(h, 20).find((r) => r.type === 'key.add');
    assert.equal(added?.body.details?.['lifetimeS'], 3_000_000);
  },
);

test(
  'ssh-add -x locks keyward and wipes added keys; ssh-add -X unlocks only with the vault passphrase',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const f = sshKeygen(h.dir, 'x-ed25519', ['-t', 'ed25519', '-N', '']);
    assert.equal(run('ssh-add', [f], env).status, 0);
    const say = (what: string) => {
      const p = path.join(h.dir, `say-${crypto.randomUUID()}.sh`);
      fs.writeFileSync(p, `#!/bin/sh\nprintf '%s\\n' '${what}'\n`, { mode: 0o700 });
      return { ...env, SSH_ASKPASS: p, SSH_ASKPASS_REQUIRE: 'force', DISPLAY: ':0' };
    };
    const x = run('ssh-add', ['-x'], say('any lock password'));
    assert.equal(x.status, 0, x.stderr);
    assert.notEqual(kw(['status'], { env: h.env }).code, 0, 'keyward is locked');
    assert.equal(run('ssh-add', ['-l'], env).status, 1);
    const wrongX = run('ssh-add', ['-X'], say('any lock password'));
    assert.notEqual(wrongX.status, 0);
    const X = run('ssh-add', ['-X'], say(PASSPHRASE));
    assert.equal(X.status, 0, X.stderr);
    assert.equal(kw(['status'], { env: h.env }).code, 0, 'unlocked again');
    // While unlocked, -X is refused whatever it carries, and costs nothing.
    assert.notEqual(run('ssh-add', ['-X'], say(PASSPHRASE)).status, 0);
    assert.notEqual(run('ssh-add', ['-X'], say('another guess')).status, 0);
    assert.doesNotMatch(
      run('ssh-add', ['-l'], env).stdout,
      /x-ed25519/,
      'lock wiped the added key',
    );
    // The wrong guess cost a derivation and is on record as coming through the SSH socket.
    const log = auditEntries(h);
    const failed = log.filter((e) => e.type === 'vault.unlock_failed');
    assert.equal(failed.length, 1, 'one record for the one wrong guess');
    assert.equal(failed[0]?.details['mode'], 'ssh-agent');
    assert.ok(log.some((e) => e.type === 'vault.lock'));
  },
);

test(
  'an ssh-add in flight when keyward locks and unlocks again is refused: the key never outlives the window it was added in',
  { skip: skip || cannotHold },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const f = sshKeygen(h.dir, 'late-ed25519', ['-t', 'ed25519', '-N', '']);
    const pid = h.agentPid ?? 0;
    const journal = path.join(h.home, 'audit', 'journal');
    // strace holds the journal's next fdatasync: the ssh-add's record (key.add), made durable in
    // the thread pool (a new agent's first appends go there: group.ts) while the agent's main
    // thread goes on answering.
    const hold = await holdAt(pid, 'fdatasync', journal);
    try {
      const adding = new Promise<number | null>((res) =>
        spawn('ssh-add', [f], { env, stdio: 'ignore' }).on('close', (c) => res(c)),
      );
      await eventually(hold.held, "the key.add record's fdatasync held");
      // The person locks, then unlocks, while the add waits for its record.
      const locking = kwAsync(['lock'], h.env);
      await eventually(() => kw(['status'], { env: h.env }).code !== 0, 'keyward locked');
      const unlocking = kwAsync(['unlock'], h.env);
      await eventually(() => kw(['status'], { env: h.env }).code === 0, 'keyward unlocked again');
      hold.release();
      assert.notEqual(await adding, 0, 'the add is refused');
      assert.equal((await locking).code, 0);
      assert.equal((await unlocking).code, 0);
      assert.doesNotMatch(run('ssh-add', ['-l'], env).stdout, /late-ed25519/);
    } finally {
      hold.release();
    }
  },
);

test('unlock.max_signatures: the agent locks when the signatures are spent', { skip }, async () => {
  const { h, env } = await agentWith(
    `${ALLOW_KEYS}unlock:\n  idle_timeout: 15m\n  max_lifetime: 4h\n  max_signatures: 2\n`,
  );
  const g = kw(['key', 'generate', 'm'], { env: h.env });
  fs.writeFileSync(path.join(h.dir, 'm.pub'), g.stdout);
  signAndVerify(h.dir, path.join(h.dir, 'm.pub'), env);
  signAndVerify(h.dir, path.join(h.dir, 'm.pub'), env);
  await eventually(() => kw(['status'], { env: h.env }).code !== 0, 'the lock after 2 signatures');
  const third = run(
    'ssh-keygen',
    ['-Y', 'sign', '-n', 'file', '-f', path.join(h.dir, 'm.pub'), '/dev/null'],
    env,
  );
  assert.notEqual(third.status, 0);
  assert.match(
    kw(['audit', 'tail', '-n', '5'], { env: withoutAgent(h) }).stdout,
    /maximum signatures per unlock/,
  );
});

/**
 * One SSH agent request on its own connection: the reply's body (type byte first), or what came
 * before the agent closed the connection (nothing, for a message it drops).
 */
function agentRequest(sock: string, body: Buffer): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const c = net.connect(sock);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    let got = Buffer.alloc(0);
    c.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 4 && got.length >= 4 + got.readUInt32BE(0)) {
        c.end();
        resolve(got.subarray(4, 4 + got.readUInt32BE(0)));
      }
    });
    c.on('error', reject);
    c.on('close', () => resolve(got));
    c.write(Buffer.concat([len, body]));
  });
}

for (const limit of ['max_signatures', 'max_uses'] as const)
  test(
    `unlock.${limit}: requests sent together, each waiting in the gate, get no more than the limit`,
    { skip },
    async () => {
      // A rule on a hash makes every request wait for its caller's hash (this test's node: large)
      // before it is decided: all four wait together, past a check made before the wait.
      const { h, env } = await agentWith(
        'version: 1\nrules:\n' +
          `  - { name: not-this, targets: ["other"], kind: key, callers: { exe_sha256: "${'0'.repeat(64)}" }, decision: deny }\n` +
          '  - { name: keys, targets: ["**"], kind: key, decision: allow }\n' +
          `unlock:\n  idle_timeout: 15m\n  max_lifetime: 4h\n  ${limit}: 1\n`,
      );
      assert.equal(kw(['key', 'generate', 'm'], { env: h.env }).code, 0);
      const sock = env['SSH_AUTH_SOCK'] ?? '';
      const ids = await agentRequest(sock, Buffer.from([11]));
      assert.equal(ids[0], 12);
      const blob = ids.subarray(9, 9 + ids.readUInt32BE(5));
      const sshString = (b: Buffer) => {
        const l = Buffer.alloc(4);
        l.writeUInt32BE(b.length);
        return Buffer.concat([l, b]);
      };
      const sign = (i: number) =>
        agentRequest(
          sock,
          Buffer.concat([
            Buffer.from([13]),
            sshString(blob),
            sshString(Buffer.from(`data ${i}`)),
            Buffer.alloc(4),
          ]),
        );
      const replies = await Promise.all([0, 1, 2, 3].map(sign));
      assert.equal(
        replies.filter((r) => r[0] === 14).length,
        1,
        'one signature, as the limit says',
      );
      const signed = auditEntries(h).filter((e) => e.type === 'key.sign' && e.decision === 'allow');
      assert.equal(signed.length, 1);
    },
  );

test(
  'the SSH socket answers extensions and smartcard requests it does not support with SSH_AGENT_FAILURE, and drops oversized messages',
  { skip },
  async () => {
    const { env } = await agentWith(ALLOW_KEYS);
    const sock = env['SSH_AUTH_SOCK'] ?? '';
    const ask = (body: Buffer) => agentRequest(sock, body);
    const str = (s: string) => {
      const b = Buffer.from(s);
      const l = Buffer.alloc(4);
      l.writeUInt32BE(b.length);
      return Buffer.concat([l, b]);
    };
    // A session-bind without its host key, session id, signature and flag.
    assert.deepEqual(
      await ask(Buffer.concat([Buffer.of(27), str('session-bind@openssh.com')])),
      Buffer.of(5),
    );
    // SUCCESS, then the names as strings to the end (no count: asyncssh and paramiko read it so).
    assert.deepEqual(
      await ask(Buffer.concat([Buffer.of(27), str('query')])),
      Buffer.concat([Buffer.of(6), str('query'), str('session-bind@openssh.com')]),
    );
    assert.deepEqual(
      await ask(Buffer.concat([Buffer.of(20), str('id'), str('pin')])),
      Buffer.of(5),
    );
    assert.deepEqual(await ask(Buffer.of(99)), Buffer.of(5));
    assert.deepEqual(await ask(Buffer.of(13)), Buffer.of(5), 'a truncated sign request');
    // A length over the limit closes the connection without an answer.
    const big = await new Promise<Buffer>((resolve) => {
      const c = net.connect(sock);
      let got = Buffer.alloc(0);
      c.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
      c.on('close', () => resolve(got));
      c.write(Buffer.from([0x7f, 0, 0, 0, 11]));
    });
    assert.equal(big.length, 0);
    // A flood of small requests at once (each would hold locked secure memory while it waits)
    // closes the connection; a few pipelined requests are all answered.
    const flood = (n: number) =>
      new Promise<number[]>((resolve) => {
        const c = net.connect(sock);
        let got = Buffer.alloc(0);
        const types = () => {
          const t: number[] = [];
          for (let o = 0; o + 4 < got.length; o += 4 + got.readUInt32BE(o)) t.push(got[o + 4] ?? 0);
          return t;
        };
        c.on('data', (d: Buffer) => {
          got = Buffer.concat([got, d]);
          if (types().length >= n) c.end();
        });
        c.on('close', () => resolve(types()));
        c.write(Buffer.concat(Array.from({ length: n }, () => Buffer.from([0, 0, 0, 1, 11]))));
      });
    const few = await flood(4);
    assert.deepEqual(few, [12, 12, 12, 12], 'four identities answers');
    assert.equal((await flood(5000)).length, 0, 'a flood is dropped unanswered');
    const after = spawnSync('ssh-add', ['-l'], { env, encoding: 'utf8' });
    assert.match(after.stdout, /no identities/, 'the agent still answers');
  },
);

test(
  'a flood of partial SSH messages across 500 connections is refused, not held: the agent grows by its in-flight budget at most, and still answers (root: /proc/PID/status)',
  { skip: skip || (!rootTests && 'needs root to read the agent status') },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const sock = env['SSH_AUTH_SOCK'] ?? '';
    const rss = () =>
      Number(
        /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${h.agentPid}/status`, 'utf8'))?.[1],
      );
    const before = rss();
    // Each connection: a message that declares the largest size (256 KiB) and sends all of it
    // but one byte, so the agent holds it while it waits for the rest. 500 of them: 125 MiB of
    // messages in secure memory, against a 48 MiB budget; what it holds is resident (written).
    const head = Buffer.from([0, 4, 0, 0]);
    const body = Buffer.alloc(256 * 1024 - 1, 0x20);
    const conns = Array.from({ length: 500 }, () => {
      const s = net.connect(sock);
      const c = { s, closedByAgent: false, done: Promise.resolve() };
      c.done = new Promise<void>((resolve) => {
        // Taken in full (the agent holds it, or refused it and closed): kept open meanwhile.
        s.on('connect', () => s.write(Buffer.concat([head, body]), () => resolve()));
        s.on('close', () => {
          c.closedByAgent = true;
          resolve();
        });
        s.on('error', () => resolve());
      });
      return c;
    });
    await Promise.all(conns.map((c) => c.done));
    const grew = (rss() - before) / 1024;
    const refused = conns.filter((c) => c.closedByAgent).length;
    await closeAll(conns.map((c) => c.s));
    assert.ok(refused > 0, 'no connection was refused for the budget');
    // Measured: 270 MiB without the budget; about 72 with it (48 held, and 500 sockets).
    assert.ok(grew < 150, `the agent grew by ${grew.toFixed(0)} MiB`);
    const after = spawnSync('ssh-add', ['-l'], { env, encoding: 'utf8' });
    assert.match(after.stdout, /no identities/, 'the agent still answers');
  },
);

test(
  'connections that once sent a large message and stay idle do not hold the in-flight budget: lock still gets in',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const sock = env['SSH_AUTH_SOCK'] ?? '';
    // A request for the identities, padded to the largest message (256 KiB), on each of 250
    // connections kept open: the agent answers each, and used to keep its 256 KiB-plus buffer
    // charged to the budget (48 MiB) for as long as the connection lived.
    const msg = Buffer.alloc(4 + 256 * 1024);
    msg.writeUInt32BE(256 * 1024, 0);
    msg[4] = 11;
    const open: net.Socket[] = [];
    for (let i = 0; i < 250; i++) {
      const s = net.connect(sock);
      open.push(s);
      const answered = await new Promise<boolean>((resolve) => {
        s.once('data', () => resolve(true));
        s.once('close', () => resolve(false));
        s.once('error', () => resolve(false));
        s.on('connect', () => s.write(msg));
      });
      assert.ok(answered, `connection ${i} was refused: the budget was held by the idle ones`);
    }
    const lock = kw(['lock'], { env: h.env });
    assert.equal(lock.code, 0, lock.stderr);
    await closeAll(open);
  },
);

test(
  'found in review: SSH messages queued behind a signature that waits for a person can fill the in-flight budget, and lock still gets in',
  { skip },
  async () => {
    // Each signature asks a person and waits (10 minutes: the fill must not outlast it).
    const h = agentHome(
      'version: 1\nrules:\n  - { name: asked, targets: ["**"], kind: key, decision: approve, approve: { mode: confirm, timeout: 10m } }\n',
    );
    homes.push(h);
    // An askpass that never answers: each signature waits (until the lock ends it).
    fs.writeFileSync(h.askpass, '#!/bin/sh\nexec sleep 600\n', { mode: 0o700 });
    await startAgent(h);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    assert.equal(kw(['key', 'generate', 'q'], { env: h.env }).code, 0);
    const sock = /SSH_AUTH_SOCK=(\S+)/.exec(kw(['ssh-env'], { env: h.env }).stdout)?.[1] ?? '';
    const ids = await agentRequest(sock, Buffer.from([11]));
    const blob = ids.subarray(9, 9 + ids.readUInt32BE(5));
    const frame = (body: Buffer) => {
      const l = Buffer.alloc(4);
      l.writeUInt32BE(body.length);
      return Buffer.concat([l, body]);
    };
    const str = (b: Buffer) => frame(b);
    const sign = frame(
      Buffer.concat([Buffer.of(13), str(blob), str(Buffer.from('data')), Buffer.alloc(4)]),
    );
    // A connection: the signature, then fifteen complete messages of one size, which wait their
    // turn behind it. One the agent refuses (the budget is full) it closes: counted in refused.
    const conns: net.Socket[] = [];
    // Refusals by the size of the connection's messages: a connection of a larger size may close
    // late, while a smaller one fills (found in review).
    const refused = new Map<number, number>();
    const open = (size: number) =>
      new Promise<void>((resolve) => {
        const body = Buffer.alloc(size);
        body[0] = 11;
        const s = net.connect(sock);
        conns.push(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          refused.set(size, (refused.get(size) ?? 0) + 1);
          resolve();
        });
        s.on('connect', () =>
          s.write(Buffer.concat([sign, ...Array.from({ length: 15 }, () => frame(body))]), () =>
            resolve(),
          ),
        );
      });
    // A small SSH request: answered, or its connection closed unanswered.
    const room = () =>
      new Promise<boolean>((resolve) => {
        const s = net.connect(sock);
        s.on('error', () => undefined);
        s.once('data', () => {
          s.destroy();
          resolve(true);
        });
        s.on('close', () => resolve(false));
        s.on('connect', () => s.write(frame(Buffer.of(11))));
      });
    // A keyward request (status) carrying `bytes` raw bytes: its answer's error, or 'answered'.
    const { frameHead, REQ, RES_ERROR, RES_HELLO } = await import('../src/agent/index.js');
    const keywardFrame = (bytes: number) =>
      new Promise<string>((resolve) => {
        const s = net.connect(h.sock);
        let got = Buffer.alloc(0);
        let greeted = false;
        s.on('error', () => undefined);
        s.on('close', () => resolve('closed unanswered'));
        s.on('data', (d: Buffer) => {
          got = Buffer.concat([got, d]);
          while (got.length >= 8 && got.length >= 4 + got.readUInt32BE(0)) {
            const type = got[5];
            const meta = got.subarray(8, 8 + got.readUInt16BE(6)).toString('utf8');
            got = got.subarray(4 + got.readUInt32BE(0));
            if (type === RES_HELLO && !greeted) {
              greeted = true;
              s.write(Buffer.concat([frameHead(REQ.status, {}, bytes), Buffer.alloc(bytes, 1)]));
              continue;
            }
            s.destroy();
            resolve(type === RES_ERROR ? meta : 'answered');
          }
        });
      });
    // Filled as an attacker would, from the largest messages down to small ones: each size
    // until the agent refuses a connection of it. (Found when this test was first watched
    // failing: filled until a small request found no room, the fill went on past the
    // approvals' timeout and ended at the socket's 1,024 connections, with megabytes of the
    // budget free; the test then passed with every frame kept out of the reserve.)
    // Again, until a pass where no connection is kept: under load, a larger connection the
    // agent refuses late gives its room back after the smaller ones filled (a run with other
    // suites beside it found the budget 200 KiB short of full once).
    const fill = async () => {
      let kept = 0;
      for (const size of [256 * 1024, 64 * 1024, 16 * 1024, 4 * 1024, 1024, 128]) {
        for (;;) {
          const before = refused.get(size) ?? 0;
          await open(size);
          await room();
          if ((refused.get(size) ?? 0) > before) break;
          kept++;
        }
      }
      return kept;
    };
    while ((await fill()) > 0);
    assert.ok(conns.length < 1000, `${conns.length} connections: the fill met the socket's limit`);
    // Full outside the reserve: a frame larger than the reserve is for is refused...
    assert.match(await keywardFrame(200 * 1024), /holding too much request data/);
    // ...while one of the largest size it is for (60 KiB), and lock, are read from it.
    assert.doesNotMatch(await keywardFrame(60 * 1024), /holding too much request data|closed/);
    const lock = kw(['lock'], { env: h.env });
    await closeAll(conns);
    assert.equal(lock.code, 0, lock.stderr);
  },
);

test(
  'found in review: a partial SSH message trickled a byte at a time is dropped at its deadline, not held while the bytes keep coming',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const sock = env['SSH_AUTH_SOCK'] ?? '';
    // 200 KiB of a message that declares 256 KiB, then one more byte every half second: each
    // byte resets the idle limit, and the message stays incomplete. 200 such connections held
    // the budget lock and approve need for as long as the trickle went on (days).
    const s = net.connect(sock);
    const head = Buffer.from([0, 4, 0, 0]);
    let sent = 0;
    let timer: NodeJS.Timeout | undefined;
    const closed = await new Promise<boolean>((resolve) => {
      s.on('close', () => resolve(true));
      s.on('error', () => undefined);
      s.on('connect', () => {
        s.write(Buffer.concat([head, Buffer.alloc(200 * 1024, 0x20)]));
        // Paced, not timed: the test waits for the agent to close; 120 bytes is a minute.
        timer = setInterval(() => {
          if (sent >= 120) {
            resolve(false);
            return;
          }
          sent++;
          s.write(Buffer.of(0x20));
        }, 500);
      });
    });
    clearInterval(timer);
    s.destroy();
    assert.ok(closed, `the agent kept a message trickled for ${sent} bytes`);
    const lock = kw(['lock'], { env: h.env });
    assert.equal(lock.code, 0, lock.stderr);
  },
);

test(
  'removing a key wipes it: no fragment of the ed25519, ECDSA or RSA private keys reaches the disk, or stays in the agent after ssh-add -D (root: /proc/PID/mem)',
  { skip: skip || (!rootTests && 'needs root to read /proc/PID/mem') },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const ed = sshKeygen(h.dir, 'w-ed25519', ['-t', 'ed25519', '-N', '']);
    const ec = sshKeygen(h.dir, 'w-p256', ['-t', 'ecdsa', '-N', '', '-m', 'PEM']);
    const rsa = sshKeygen(h.dir, 'w-rsa', ['-t', 'rsa', '-b', '3072', '-N', '', '-m', 'PEM']);
    // The private values, read here with node:crypto (the test may hold them; the agent may not).
    const jwk = (f: string) =>
      crypto.createPrivateKey(fs.readFileSync(f)).export({ format: 'jwk' }) as Record<
        string,
        string
      >;
    const b64 = (s: string | undefined) => Buffer.from(s ?? '', 'base64url');
    const edBody = Buffer.from(
      fs
        .readFileSync(ed, 'utf8')
        .split('\n')
        .filter((l) => !l.startsWith('-----'))
        .join(''),
      'base64',
    );
    const edPub = Buffer.from(
      fs.readFileSync(`${ed}.pub`, 'utf8').split(' ')[1] ?? '',
      'base64',
    ).subarray(19);
    const at = edBody.lastIndexOf(edPub);
    // OpenSSL holds numbers as little-endian words, least significant first: each number's
    // bytes reversed. A copy in that form is as much a copy as the big-endian one.
    const both = (name: string, v: Buffer): [string, Buffer][] => [
      [name, v],
      [`${name} (OpenSSL's form)`, Buffer.from(v).reverse()],
    ];
    const secrets: [string, Buffer][] = [
      ['ed25519 seed', edBody.subarray(at - 32, at)],
      ...both('ECDSA d', b64(jwk(ec)['d'])),
      ...both('RSA p', b64(jwk(rsa)['p'])),
      ...both('RSA q', b64(jwk(rsa)['q'])),
      ...both('RSA d', b64(jwk(rsa)['d'])),
    ];
    const values = secrets.map(([, v]) => v);
    assert.equal(run('ssh-add', [ed, ec, rsa], env).status, 0);
    for (let i = 0; i < 3; i++)
      for (const f of [ed, ec, rsa]) signAndVerify(h.dir, `${f}.pub`, env);
    const pid = h.agentPid ?? 0;
    // Positive control: while the keys are held the scan finds them.
    const held = scanWindows(pid, values).map((i) => secrets[i]?.[0]);
    for (const [n] of secrets)
      if (!n.includes('(OpenSSL')) assert.ok(held.includes(n), `the scanner finds ${n} while held`);
    assert.ok(held.includes("ECDSA d (OpenSSL's form)"), 'and the ECDSA key held by OpenSSL');
    // Nor did any of them reach the disk: every file under the home and the socket directory
    // (vault, audit log, state), raw and as hex, has no 12-byte window of any key.
    const onDisk = Buffer.concat([everyByteUnder(h.home), everyByteUnder(h.sockDir)]);
    const inFiles = (v: Buffer) =>
      [v, Buffer.from(v.toString('hex'))].some((form) => {
        for (let i = 0; i + 12 <= form.length; i++)
          if (onDisk.includes(form.subarray(i, i + 12))) return true;
        return false;
      });
    assert.ok(onDisk.includes('"type":"key.sign"'), 'the audit log was read');
    assert.deepEqual(
      secrets.filter(([, v]) => inFiles(v)).map(([n]) => n),
      [],
      'key material on disk',
    );
    // The keys are wiped before the agent answers -D: no 12-byte window of any of them is left.
    assert.equal(run('ssh-add', ['-D'], env).status, 0);
    const named = scanWindows(pid, values).map((i) => secrets[i]?.[0]);
    assert.deepEqual(named, [], `left in the agent's memory: ${named.join(', ')}`);
  },
);

test(
  'an ECDSA key the agent holds is parsed once into locked memory: while unlocked, no fragment of its scalar is in any mapping that is not locked (root: /proc/PID/mem)',
  { skip: skip || (!rootTests && 'needs root to read /proc/PID/mem') },
  async () => {
    // The agent keeps ECDSA keys parsed by OpenSSL between signatures (src/lib/openssl.ts): in
    // OpenSSL's secure heap, as sodium keeps its own, never in the ordinary heap where a swap
    // file or a read of the process would find the scalar for the whole unlock.
    const { h, env } = await agentWith(ALLOW_KEYS);
    const keys = [
      sshKeygen(h.dir, 'h-p256', ['-t', 'ecdsa', '-b', '256', '-N', '', '-m', 'PEM']),
      sshKeygen(h.dir, 'h-p384', ['-t', 'ecdsa', '-b', '384', '-N', '', '-m', 'PEM']),
      sshKeygen(h.dir, 'h-p521', ['-t', 'ecdsa', '-b', '521', '-N', '', '-m', 'PEM']),
    ];
    const scalars = keys.map((f) =>
      Buffer.from(
        (crypto.createPrivateKey(fs.readFileSync(f)).export({ format: 'jwk' }) as { d: string }).d,
        'base64url',
      ),
    );
    assert.equal(run('ssh-add', keys, env).status, 0);
    for (let i = 0; i < 3; i++) for (const f of keys) signAndVerify(h.dir, `${f}.pub`, env);
    const pid = h.agentPid ?? 0;
    // OpenSSL keeps a scalar as little-endian words, least significant first: the number's bytes
    // reversed. Both forms are looked for; the held (reversed) one must be found somewhere.
    const forms = scalars.flatMap((d) => [d, Buffer.from(d).reverse()]);
    const found = scanWindows(pid, forms);
    assert.ok(
      found.includes(1) && found.includes(3) && found.includes(5),
      `OpenSSL's forms of the scalars: ${found}`,
    );
    assert.deepEqual(
      scanWindows(pid, forms, 12, unlockedMappings),
      [],
      'a fragment of an ECDSA scalar in unlocked memory',
    );
  },
);

test(
  'an RSA key the agent holds keeps its private numbers in locked memory: while unlocked, after signatures made concurrently on the thread pool, no fragment of p, q, d or the CRT exponents is in any mapping that is not locked (root: /proc/PID/mem)',
  { skip: skip || (!rootTests && 'needs root to read /proc/PID/mem') },
  async () => {
    // The agent keeps RSA keys parsed by OpenSSL between signatures (rsaHoldable): OpenSSL would
    // cache the Montgomery forms of p and q with a key, in its ordinary heap, for as long as it is
    // held, which the agent turns off. Signatures run three at once on the pool's threads.
    const { h, env } = await agentWith(ALLOW_KEYS);
    const key = sshKeygen(h.dir, 'h-rsa', ['-t', 'rsa', '-b', '3072', '-N', '', '-m', 'PEM']);
    const jwk = crypto.createPrivateKey(fs.readFileSync(key)).export({ format: 'jwk' }) as Record<
      string,
      string
    >;
    const names = ['p', 'q', 'd', 'dp', 'dq', 'qi'];
    const forms = names.flatMap((n) => {
      const v = Buffer.from(jwk[n] ?? '', 'base64url');
      assert.ok(v.length >= 128, n);
      return [v, Buffer.from(v).reverse()];
    });
    assert.equal(run('ssh-add', [key], env).status, 0);
    // Six signers at once (ssh-keygen signs standard input), so the agent's pool threads sign
    // with the one held key concurrently.
    const signers = Array.from(
      { length: 6 },
      (_, i) =>
        new Promise<{ status: number | null; out: string }>((resolve) => {
          const c = spawn('ssh-keygen', ['-Y', 'sign', '-n', 'file', '-f', `${key}.pub`], { env });
          let out = '';
          c.stdout.on('data', (d: Buffer) => (out += d.toString()));
          c.stderr.on('data', (d: Buffer) => (out += d.toString()));
          c.on('close', (status) => resolve({ status, out }));
          c.stdin.end(`message ${i}\n`);
        }),
    );
    for (const r of await Promise.all(signers)) {
      assert.equal(r.status, 0, r.out);
      assert.match(r.out, /BEGIN SSH SIGNATURE/);
    }
    signAndVerify(h.dir, `${key}.pub`, env);
    const pid = h.agentPid ?? 0;
    // Positive control: OpenSSL's (reversed) form of p is found, in the locked secure heap.
    const found = scanWindows(pid, forms);
    assert.ok(found.includes(1), `OpenSSL's form of p is held: ${found}`);
    const loose = scanWindows(pid, forms, 12, unlockedMappings).map(
      (i) => `${names[i >> 1]}${i % 2 ? " (OpenSSL's form)" : ''}`,
    );
    assert.deepEqual(loose, [], 'a fragment of an RSA private number in unlocked memory');
  },
);

test(
  'ECDSA keys gone by expiry, by replacement, and vault keys after a lock leave no fragment of their scalars, in either byte order (root: /proc/PID/mem)',
  { skip: skip || (!rootTests && 'needs root to read /proc/PID/mem') },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const exp = sshKeygen(h.dir, 'x-exp', ['-t', 'ecdsa', '-N', '', '-m', 'PEM']);
    const rep = sshKeygen(h.dir, 'x-rep', ['-t', 'ecdsa', '-b', '384', '-N', '', '-m', 'PEM']);
    const vk = sshKeygen(h.dir, 'x-vault', ['-t', 'ecdsa', '-b', '521', '-N', '', '-m', 'PEM']);
    // key import reads OpenSSH's own format: a copy of the vault key rewritten in it.
    const vkOpenssh = path.join(h.dir, 'x-vault-o');
    fs.copyFileSync(vk, vkOpenssh);
    fs.chmodSync(vkOpenssh, 0o600);
    assert.equal(
      spawnSync('ssh-keygen', ['-q', '-p', '-N', '', '-P', '', '-f', vkOpenssh]).status,
      0,
    );
    const d = (f: string) =>
      Buffer.from(
        (crypto.createPrivateKey(fs.readFileSync(f)).export({ format: 'jwk' }) as { d: string }).d,
        'base64url',
      );
    const named: [string, Buffer][] = [];
    for (const [n, f] of [
      ['expired', exp],
      ['replaced', rep],
      ['vault', vk],
    ] as const)
      named.push([n, d(f)], [`${n} (OpenSSL's form)`, Buffer.from(d(f)).reverse()]);
    const imp = kw(['key', 'import', vkOpenssh, '--name', 'vk'], { env: h.env });
    assert.equal(imp.code, 0, imp.stderr);
    assert.equal(run('ssh-add', ['-t', '2', exp], env).status, 0);
    assert.equal(run('ssh-add', [rep], env).status, 0);
    for (const f of [exp, rep, vk]) signAndVerify(h.dir, `${f}.pub`, env);
    assert.equal(run('ssh-add', [rep], env).status, 0); // replaces the one held
    signAndVerify(h.dir, `${rep}.pub`, env);
    const pid = h.agentPid ?? 0;
    const values = named.map(([, v]) => v);
    assert.ok(scanWindows(pid, values).length > 0, 'the scanner finds the keys while held');
    await eventually(() => !/x-exp/.test(run('ssh-add', ['-l'], env).stdout), 'the expiry');
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    const left = scanWindows(pid, values).map((i) => named[i]?.[0]);
    assert.deepEqual(left, [], `left in the agent's memory: ${left.join(', ')}`);
  },
);

const sshdSkip =
  skip ||
  (!fs.existsSync('/usr/sbin/sshd') && process.env['CI'] !== 'true' && 'needs openssh-server');

/** A test sshd on 127.0.0.1 (a free port), with these extra config lines; stopped after the file. */
async function startSshd(
  dir: string,
  extra: string[],
  opts: { hostCertificate?: boolean } = {},
): Promise<{ port: number; hostKey: string; log: () => string }> {
  const hostKey = sshKeygen(dir, 'host_ed25519', ['-t', 'ed25519', '-N', '']);
  if (opts.hostCertificate) {
    // The host key certified by a CA of its own, which the client's known_hosts trusts: ssh then
    // takes the certificate as the host's key.
    const ca = sshKeygen(dir, 'host_ca', ['-t', 'ed25519', '-N', '']);
    const c = spawnSync(
      'ssh-keygen',
      ['-q', '-s', ca, '-I', 'test-host', '-h', '-n', '127.0.0.1', `${hostKey}.pub`],
      { encoding: 'utf8' },
    );
    assert.equal(c.status, 0, c.stderr);
    extra = [...extra, `HostCertificate ${hostKey}-cert.pub`];
    fs.writeFileSync(
      path.join(dir, 'known_hosts'),
      `@cert-authority * ${fs.readFileSync(`${ca}.pub`, 'utf8')}`,
    );
  }
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const config = path.join(dir, 'sshd_config');
  fs.writeFileSync(
    config,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKey}`,
      `PidFile ${path.join(dir, 'sshd.pid')}`,
      'StrictModes no',
      'UsePAM no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PubkeyAuthentication yes',
      'PermitRootLogin prohibit-password',
      ...extra,
      '',
    ].join('\n'),
  );
  if (rootTests) fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const sshd = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', config], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let sshdLog = '';
  sshd.stderr.on('data', (d: Buffer) => (sshdLog += d.toString()));
  cleanups.push(() => sshd.kill());
  await new Promise<void>((resolve, reject) => {
    const check = () => /Server listening/.test(sshdLog) && resolve();
    sshd.stderr.on('data', check);
    sshd.on('exit', () => reject(new Error(`sshd exited: ${sshdLog}`)));
  });
  sshPorts.set(dir, port);
  return { port, hostKey, log: () => sshdLog };
}

const sshPorts = new Map<string, number>();

/** ssh to the test sshd of dir as this user, running echo; BatchMode, no host key prompts. */
function sshLogin(
  dir: string,
  env: NodeJS.ProcessEnv,
  extra: string[] = [],
  command = 'echo logged-in-through-keyward',
) {
  return run(
    'ssh',
    [
      '-F',
      '/dev/null',
      '-p',
      String(sshPorts.get(dir)),
      '-o',
      'BatchMode=yes',
      '-o',
      'StrictHostKeyChecking=no',
      '-o',
      `UserKnownHostsFile=${path.join(dir, 'known_hosts')}`,
      ...extra,
      `${os.userInfo().username}@127.0.0.1`,
      command,
    ],
    env,
  );
}

test(
  'ssh-add of keys with their OpenSSH certificates: ssh-add -L lists the certificates, and ssh logs in to an sshd that trusts only the CA',
  { skip: sshdSkip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const dir = h.dir;
    const user = os.userInfo().username;
    const ca = sshKeygen(dir, 'user_ca', ['-t', 'ed25519', '-N', '']);
    const keys: string[] = [];
    for (const [t, bits] of [
      ['ed25519', []],
      ['ecdsa', ['-b', '521']],
      ['rsa', ['-b', '2048']],
    ] as const) {
      const k = sshKeygen(dir, `cert-${t}`, ['-t', t, ...bits, '-N', '']);
      const s = run(
        'ssh-keygen',
        ['-s', ca, '-I', `test-${t}`, '-n', user, '-V', '+1h', `${k}.pub`],
        env,
      );
      assert.equal(s.status, 0, s.stderr);
      keys.push(k);
    }
    // ssh-add KEY adds KEY and KEY-cert.pub; the private files then go: only the agent has them.
    const add = run('ssh-add', keys, env);
    assert.equal(add.status, 0, add.stderr);
    assert.match(add.stderr, /Certificate added/);
    for (const k of keys) fs.rmSync(k);
    const L = run('ssh-add', ['-L'], env).stdout;
    for (const k of keys) {
      const [type, b64] = fs.readFileSync(`${k}-cert.pub`, 'utf8').split(' ');
      assert.ok(L.includes(`${type} ${b64}`), `ssh-add -L lists ${type}`);
    }
    const { log } = await startSshd(dir, [
      'AuthorizedKeysFile /dev/null',
      `TrustedUserCAKeys ${ca}.pub`,
    ]);
    for (const k of keys) {
      const ok = sshLogin(dir, env, [
        '-o',
        'IdentitiesOnly=yes',
        '-o',
        `IdentityFile=${k}.pub`,
        '-o',
        `CertificateFile=${k}-cert.pub`,
      ]);
      assert.equal(ok.status, 0, `${k}: ${ok.stderr}\n${log()}`);
      assert.match(ok.stdout, /logged-in-through-keyward/);
    }
    // The sshd authorizes nothing but the CA, so each login above was the certificate's; the key
    // alone is refused.
    const plain = sshLogin(dir, env, [
      '-o',
      'IdentitiesOnly=yes',
      '-o',
      `IdentityFile=${keys[0]}.pub`,
    ]);
    assert.notEqual(plain.status, 0);
  },
);

/** One SSH_AGENTC_SIGN_REQUEST for blob on the agent's socket: the reply's type (14: signed). */
async function signRequestType(sock: string, blob: Buffer): Promise<number> {
  const framed = (b: Buffer) => {
    const out = Buffer.concat([Buffer.alloc(4), b]);
    out.writeUInt32BE(b.length);
    return out;
  };
  const body = Buffer.concat([
    Buffer.from([13]),
    framed(blob),
    framed(Buffer.from('data a process wants signed')),
    Buffer.alloc(4),
  ]);
  const c = net.connect(sock);
  let got = Buffer.alloc(0);
  return await new Promise<number>((resolve, reject) => {
    c.on('error', reject);
    c.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 5 && got.length >= 4 + got.readUInt32BE(0)) {
        c.destroy();
        resolve(got[4] ?? -1);
      }
    });
    c.write(framed(body));
  });
}

test(
  "a certificate of a key in the vault signs only as that key's policy says, and goes when the key leaves the vault",
  { skip },
  async () => {
    // The vault's key `held` may not sign; keys ssh-added by the user may.
    const { h, env } = await agentWith(
      'version: 1\nrules:\n' +
        '  - { name: added, targets: ["ssh-add:*", "ssh-add:*/**"], kind: key, decision: allow }\n' +
        '  - { name: held-key, targets: [held], kind: key, decision: deny }\n',
    );
    const dir = h.dir;
    const ca = sshKeygen(dir, 'vault_ca', ['-t', 'ed25519', '-N', '']);
    const k = sshKeygen(dir, 'held', ['-t', 'ed25519', '-N', '']);
    const s = run('ssh-keygen', ['-s', ca, '-I', 'held-id', '-n', 'deploy', `${k}.pub`], env);
    assert.equal(s.status, 0, s.stderr);
    assert.equal(kw(['key', 'import', k], { env: h.env }).code, 0);
    const sock = env['SSH_AUTH_SOCK'] ?? '';
    const certBlob = Buffer.from(
      fs.readFileSync(`${k}-cert.pub`, 'utf8').split(' ')[1] ?? '',
      'base64',
    );
    const keyBlob = Buffer.from(fs.readFileSync(`${k}.pub`, 'utf8').split(' ')[1] ?? '', 'base64');
    // The user's ssh-add of the key file: the plain key is the vault's already; its certificate
    // (KEY-cert.pub, sent with it) is listed, as the vault's key.
    const add = run('ssh-add', [k], env);
    assert.match(add.stderr, /Certificate added/, add.stderr);
    // Any process asking for a signature by the certificate gets what the key's rule says: no.
    assert.equal(await signRequestType(sock, keyBlob), 5);
    assert.equal(await signRequestType(sock, certBlob), 5, 'the certificate signs as the key');
    const last = tailOf(h, 5)
      .filter((e) => e.type === 'key.sign')
      .pop();
    assert.match(JSON.stringify(last), /"decision":"deny"/);
    assert.match(JSON.stringify(last), /"target":"held"/);
    // The key leaves the vault: its certificate goes with it.
    assert.equal(kw(['key', 'rm', 'held'], { env: h.env }).code, 0);
    assert.equal(await signRequestType(sock, certBlob), 5);
    assert.doesNotMatch(run('ssh-add', ['-L'], env).stdout, /cert-v01/);
    // Added first, then imported: the certificate listed under ssh-add goes when the key becomes
    // the vault's (ssh-add it again to list it as the vault's key).
    const add2 = run('ssh-add', [k], env);
    assert.equal(add2.status, 0, add2.stderr);
    assert.equal(await signRequestType(sock, certBlob), 14, 'ssh-added, the certificate signs');
    assert.equal(kw(['key', 'import', k, '--name', 'held'], { env: h.env }).code, 0);
    assert.equal(await signRequestType(sock, certBlob), 5);
    assert.doesNotMatch(run('ssh-add', ['-L'], env).stdout, /cert-v01/);
  },
);

test(
  'an SSH login to a test sshd on 127.0.0.1 goes through keyward; the prompt names the user and the server host key',
  { skip: sshdSkip },
  async () => {
    const { h, env } = await agentWith(undefined); // the default policy: every signature confirmed
    const g = kw(['key', 'generate', 'login'], { env: h.env });
    assert.equal(g.code, 0, g.stderr);
    const dir = h.dir;
    fs.writeFileSync(path.join(dir, 'authorized_keys'), g.stdout, { mode: 0o600 });
    const { hostKey, log } = await startSshd(dir, [
      `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
    ]);
    const user = os.userInfo().username;
    const ssh = (extra: string[] = []) => sshLogin(dir, env, extra);
    h.answer('no');
    const refused = ssh();
    assert.notEqual(refused.status, 0, 'a refused signature means no login');
    h.answer('yes');
    const ok = ssh();
    assert.equal(ok.status, 0, `${ok.stderr}\n${log()}`);
    assert.match(ok.stdout, /logged-in-through-keyward/);
    const hostFp = run('ssh-keygen', ['-lf', `${hostKey}.pub`], env).stdout.split(' ')[1] ?? '';
    const prompt = h.prompts().at(-1) ?? '';
    assert.match(
      prompt,
      new RegExp(
        `a request to sign with the key "login".*an SSH login as "${user}" \\("ssh-connection"\\).* Asked by .*ssh" \\(pid \\d+\\)`,
      ),
    );
    assert.ok(prompt.includes(`server host key ${hostFp}`), `${prompt} names ${hostFp}`);
  },
);

test(
  'a host certificate of each key type is read as the key it certifies (ssh-keygen -h), as ssh-keygen -l names it; anything else is left as it is',
  { skip },
  async () => {
    const { certifiedKeyBlob, hostKeyFingerprint } = await import('../src/agent/ssh-cert.js');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-host-certs-'));
    try {
      const ca = sshKeygen(dir, 'ca', ['-t', 'ed25519', '-N', '']);
      const blobOf = (file: string) =>
        Buffer.from(fs.readFileSync(file, 'utf8').split(' ')[1] ?? '', 'base64');
      for (const [name, args] of [
        ['ed25519', ['-t', 'ed25519']],
        ['p256', ['-t', 'ecdsa', '-b', '256']],
        ['p384', ['-t', 'ecdsa', '-b', '384']],
        ['p521', ['-t', 'ecdsa', '-b', '521']],
        ['rsa', ['-t', 'rsa', '-b', '2048']],
      ] as const) {
        const key = sshKeygen(dir, `host-${name}`, [...args, '-N', '']);
        const c = spawnSync('ssh-keygen', ['-q', '-s', ca, '-I', name, '-h', `${key}.pub`], {
          encoding: 'utf8',
        });
        assert.equal(c.status, 0, c.stderr);
        const cert = blobOf(`${key}-cert.pub`);
        const plain = blobOf(`${key}.pub`);
        assert.deepEqual(Buffer.from(certifiedKeyBlob(cert)), plain, name);
        const fp = spawnSync('ssh-keygen', ['-lf', `${key}.pub`], { encoding: 'utf8' });
        assert.equal(hostKeyFingerprint(cert), fp.stdout.split(' ')[1], name);
        // A plain key, and a certificate cut short, are fingerprinted as they are.
        assert.equal(certifiedKeyBlob(plain), plain);
        const cut = cert.subarray(0, 40);
        assert.equal(certifiedKeyBlob(cut), cut);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'a login to an sshd that presents a host certificate binds its session (the certified key verifies it): a rule that lets ssh sign silently holds, and the record names the host key',
  { skip: sshdSkip },
  async () => {
    const { h, env } = await agentWith(SSH_LOGINS_SILENT);
    const g = kw(['key', 'generate', 'login'], { env: h.env });
    assert.equal(g.code, 0, g.stderr);
    const dir = h.dir;
    fs.writeFileSync(path.join(dir, 'authorized_keys'), g.stdout, { mode: 0o600 });
    const { hostKey, log } = await startSshd(
      dir,
      [`AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`],
      { hostCertificate: true },
    );
    // Any question is answered no: a login that needed a person fails.
    h.answer('no');
    const asked = h.prompts().length;
    const ok = sshLogin(dir, env, ['-v']);
    assert.match(ok.stderr, /Server host certificate: ssh-ed25519-cert-v01@openssh.com/);
    assert.equal(ok.status, 0, `${ok.stderr}\n${log()}\n${h.prompts().at(-1) ?? ''}`);
    assert.equal(h.prompts().length, asked, 'no one was asked');
    // Named as ssh-keygen -l names the host's key (and as OpenSSH fingerprints a certificate).
    const hostFp = run('ssh-keygen', ['-lf', `${hostKey}.pub`], env).stdout.split(' ')[1] ?? '';
    const sign = tailOf(h, 10)
      .filter((e) => e.type === 'key.sign')
      .at(-1);
    assert.equal(sign?.body.details?.['hostKey'], hostFp, JSON.stringify(sign));
  },
);

test(
  "found in review: key import of a passphrase-protected key leaves none of its private numbers in the CLI's ordinary memory (Node's decipher, OpenSSL's parse)",
  { skip: skip || (!rootTests && 'needs root to read /proc/PID/mem') },
  async () => {
    const h = agentHome(undefined);
    homes.push(h);
    const rsa = sshKeygen(h.dir, 'imp-rsa', ['-t', 'rsa', '-b', '3072', '-N', '', '-m', 'PEM']);
    const ec = sshKeygen(h.dir, 'imp-ec', ['-t', 'ecdsa', '-b', '256', '-N', '', '-m', 'PEM']);
    const secrets = [rsa, ec].flatMap((f) => {
      const jwk = crypto.createPrivateKey(fs.readFileSync(f)).export({ format: 'jwk' });
      return ['d', 'p', 'q']
        .map((n) => (jwk as Record<string, string | undefined>)[n])
        .filter((v): v is string => v !== undefined)
        .map((v) => Buffer.from(v, 'base64url'));
    });
    const keyPass = path.join(h.dir, 'key-pass');
    fs.writeFileSync(keyPass, 'KeyPassAb12Cd34Ef56\n', { mode: 0o600 });
    // In OpenSSH's format: the RSA key encrypted (aes256-ctr), the ECDSA key in the clear.
    for (const [f, pass] of [
      [rsa, 'KeyPassAb12Cd34Ef56'],
      [ec, ''],
    ] as const) {
      const p = run('ssh-keygen', ['-q', '-p', '-P', '', '-N', pass, '-f', f], h.env);
      assert.equal(p.status, 0, p.stderr);
    }
    for (const [file, extra] of [
      [rsa, ['--key-passphrase-file', keyPass]],
      [ec, []],
    ] as const) {
      // Held at its exit (strace delays exit_group) once it has said the key is imported.
      const traced = spawn(
        'strace',
        [
          '-f',
          '-o',
          '/dev/null',
          '-e',
          'trace=exit_group',
          '-e',
          'inject=exit_group:delay_enter=600000000',
          process.execPath,
          BIN,
          'key',
          'import',
          file,
          ...extra,
        ],
        { env: h.env, stdio: ['ignore', 'ignore', 'pipe'] },
      );
      let said = '';
      await new Promise<void>((resolve, reject) => {
        traced.stderr.on('data', (d: Buffer) => {
          said += d.toString();
          if (/imported/.test(said)) resolve();
          else if (/keyward: error/.test(said)) reject(new Error(said));
        });
        traced.once('exit', () => reject(new Error(`key import ended: ${said}`)));
      });
      const pid = Number(
        spawnSync('pgrep', ['-P', String(traced.pid)], { encoding: 'utf8' }).stdout.trim(),
      );
      assert.ok(pid > 0);
      const found = scanWindows(pid, secrets, 12, unlockedMappings);
      process.kill(pid, 'SIGKILL');
      traced.kill('SIGKILL');
      assert.deepEqual(found, [], `${path.basename(file)}: a private number in ordinary memory`);
    }
  },
);

/**
 * An agent whose one rule lets /usr/bin/ssh sign without asking (a rule a user writes for logins),
 * a vault key `vk` (its public key in `pub`), and a test sshd (this extra line in its config) that
 * lets the attacker log in with a key of its own (`own`): no signature of keyward's is needed
 * for that.
 */
async function sshOnlyAllowed(sshdLine: string) {
  const { h, env } = await agentWith(SSH_LOGINS_SILENT);
  const g = kw(['key', 'generate', 'vk'], { env: h.env });
  assert.equal(g.code, 0, g.stderr);
  const dir = h.dir;
  const pub = path.join(dir, 'vk.pub');
  fs.writeFileSync(pub, g.stdout);
  const own = sshKeygen(dir, 'attacker', ['-t', 'ed25519', '-N', '']);
  fs.writeFileSync(path.join(dir, 'authorized_keys'), fs.readFileSync(`${own}.pub`), {
    mode: 0o600,
  });
  const sshd = await startSshd(dir, [
    `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
    sshdLine,
  ]);
  return { h, env, dir, pub, own, ...sshd };
}

test(
  'found in review: a signature asked through an agent forwarded with ssh -A is not the local ssh asking: no rule on ssh allows it silently, a person is asked and told the host',
  { skip: sshdSkip },
  async () => {
    // A rule a user writes for logins: the local ssh signs without asking. Through `ssh -A`, the
    // requests of any process on the far host (or of a process of the user that runs ssh into an
    // sshd of its own, as here) reach keyward on a connection of that same ssh process.
    const { h, env, dir, pub, own, hostKey, log } = await sshOnlyAllowed(
      'AllowAgentForwarding yes',
    );
    const payload = path.join(dir, 'payload');
    fs.writeFileSync(payload, 'tree 0000\nauthor attacker\n\nnot the user\n');
    const remote = `ssh-keygen -Y sign -n git -f '${pub}' '${payload}'`;
    const signVia = () => {
      fs.rmSync(`${payload}.sig`, { force: true });
      return sshLogin(dir, env, ['-A', '-i', own, '-o', 'IdentitiesOnly=yes'], remote);
    };
    h.answer('no');
    const refused = signVia();
    assert.equal(
      fs.existsSync(`${payload}.sig`),
      false,
      `signed silently: ${refused.stderr}\n${log()}`,
    );
    const prompt = h.prompts().at(-1) ?? '';
    const hostFp = run('ssh-keygen', ['-lf', `${hostKey}.pub`], env).stdout.split(' ')[1] ?? '';
    assert.match(prompt, /an SSHSIG signature \(a git commit or tag\)/);
    assert.ok(
      prompt.includes(`through an agent forwarded to the host with key ${hostFp}`),
      `${prompt} names the forwarded host ${hostFp}`,
    );
    h.answer('yes');
    const ok = signVia();
    assert.equal(ok.status, 0, `${ok.stderr}\n${log()}`);
    assert.equal(fs.existsSync(`${payload}.sig`), true);
    // Approved once, for that use: the next request asks again (no grant for a forwarded agent).
    h.answer('no');
    const again = signVia();
    assert.equal(fs.existsSync(`${payload}.sig`), false, `a grant was used: ${again.stderr}`);
    const signs = tailOf(h, 20).filter((e) => e.type === 'key.sign');
    assert.ok(
      signs.some((e) => e.body.details?.['forwardedTo'] === hostFp),
      `the record names the forwarded host: ${JSON.stringify(signs.at(-1))}`,
    );
  },
);

test(
  "found in review: session-bind takes a session id of a hash's size only (a verified bind with a longer one is refused, and kept nowhere)",
  { skip },
  async () => {
    const { env } = await agentWith(ALLOW_KEYS);
    const sock = env['SSH_AUTH_SOCK'] ?? '';
    const str = sshString;
    // A host key of the test's own, signing whatever session id it likes, as an attacker's would.
    const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
    const raw = publicKey.export({ format: 'jwk' }).x ?? '';
    const hostKey = Buffer.concat([
      str(Buffer.from('ssh-ed25519')),
      str(Buffer.from(raw, 'base64url')),
    ]);
    const bind = (sessionId: Buffer) => {
      const sig = crypto.sign(null, sessionId, privateKey);
      return Buffer.concat([
        Buffer.of(27),
        str(Buffer.from('session-bind@openssh.com')),
        str(hostKey),
        str(sessionId),
        str(Buffer.concat([str(Buffer.from('ssh-ed25519')), str(sig)])),
        Buffer.of(0),
      ]);
    };
    assert.deepEqual(
      await agentRequest(sock, bind(crypto.randomBytes(32))),
      Buffer.of(6),
      'a SHA-256 id',
    );
    assert.deepEqual(
      await agentRequest(sock, bind(crypto.randomBytes(64))),
      Buffer.of(6),
      'a SHA-512 id',
    );
    assert.deepEqual(await agentRequest(sock, bind(crypto.randomBytes(65))), Buffer.of(5));
    assert.deepEqual(await agentRequest(sock, bind(crypto.randomBytes(200_000))), Buffer.of(5));
  },
);

test(
  "found in review: a host-bound login on ssh's connection that names another host's key than its session bound is a relay's, asked of a person (as ssh-agent refuses it)",
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const g = kw(['key', 'generate', 'vk'], { env: h.env });
    assert.equal(g.code, 0, g.stderr);
    const keyBlob = Buffer.from(g.stdout.split(' ')[1] ?? '', 'base64');
    // A copy of node named ssh: the agent takes its connection for ssh's, as it takes any
    // program of that name (the stricter checks of a relay then apply).
    const ssh = path.join(h.dir, 'ssh');
    fs.copyFileSync(process.execPath, ssh);
    fs.chmodSync(ssh, 0o755);
    const script = `
      const net = require('net');
      const crypto = require('crypto');
      const str = (b) => { const l = Buffer.alloc(4); l.writeUInt32BE(b.length); return Buffer.concat([l, b]); };
      const ed = () => { const p = crypto.generateKeyPairSync('ed25519');
        return { ...p, blob: Buffer.concat([str(Buffer.from('ssh-ed25519')), str(Buffer.from(p.publicKey.export({ format: 'jwk' }).x, 'base64url'))]) }; };
      const bound = ed(), other = ed();
      const sid = crypto.randomBytes(32);
      const bind = Buffer.concat([Buffer.of(27), str(Buffer.from('session-bind@openssh.com')), str(bound.blob), str(sid),
        str(Buffer.concat([str(Buffer.from('ssh-ed25519')), str(crypto.sign(null, sid, bound.privateKey))])), Buffer.of(0)]);
      const key = Buffer.from(process.argv[1], 'base64');
      const login = (hostKey) => Buffer.concat([str(sid), Buffer.of(50), str(Buffer.from('git')), str(Buffer.from('ssh-connection')),
        str(Buffer.from('publickey-hostbound-v00@openssh.com')), Buffer.of(1), str(Buffer.from('ssh-ed25519')), str(key), str(hostKey)]);
      const sign = (hostKey) => Buffer.concat([Buffer.of(13), str(key), str(login(hostKey)), Buffer.alloc(4)]);
      const s = net.connect(process.env.SSH_AUTH_SOCK);
      const asks = [bind, sign(bound.blob), sign(other.blob)];
      const answers = [];
      let buf = Buffer.alloc(0);
      s.on('connect', () => s.write(str(asks[0])));
      s.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
          answers.push(buf[4]);
          buf = buf.subarray(4 + buf.readUInt32BE(0));
          if (answers.length === asks.length) { console.log(answers.join(' ')); s.end(); return; }
          s.write(str(asks[answers.length]));
        }
      });
    `;
    h.answer('no');
    const asked = h.prompts().length;
    const r = spawnSync(ssh, ['-e', script, keyBlob.toString('base64')], {
      env,
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    // The bind is kept (6); the login to the bound host signs without asking (14); the one that
    // names another host's key is asked, and the person said no (5).
    assert.equal(r.stdout.trim(), '6 14 5');
    assert.equal(h.prompts().length, asked + 1);
    assert.match(h.prompts().at(-1) ?? '', /another host/);
  },
);

test(
  'session-bind with a host certificate verifies only with the key it certifies: a signature by another key is refused',
  { skip },
  async () => {
    const { h, env } = await agentWith(ALLOW_KEYS);
    const sock = env['SSH_AUTH_SOCK'] ?? '';
    const str = sshString;
    const ed25519 = () => {
      const pair = crypto.generateKeyPairSync('ed25519');
      const raw = Buffer.from(pair.publicKey.export({ format: 'jwk' }).x ?? '', 'base64url');
      return { ...pair, blob: Buffer.concat([str(Buffer.from('ssh-ed25519')), str(raw)]) };
    };
    // The host's key (its public half certified by a CA, as ssh-keygen -h does), and another.
    const host = ed25519();
    const other = ed25519();
    const pub = path.join(h.dir, 'host.pub');
    fs.writeFileSync(pub, `ssh-ed25519 ${host.blob.toString('base64')} host\n`);
    const ca = sshKeygen(h.dir, 'host-ca', ['-t', 'ed25519', '-N', '']);
    const c = spawnSync('ssh-keygen', ['-q', '-s', ca, '-I', 'host', '-h', pub], {
      encoding: 'utf8',
    });
    assert.equal(c.status, 0, c.stderr);
    const cert = Buffer.from(
      fs.readFileSync(path.join(h.dir, 'host-cert.pub'), 'utf8').split(' ')[1] ?? '',
      'base64',
    );
    const bind = (signer: crypto.KeyObject) => {
      const sid = crypto.randomBytes(32);
      return Buffer.concat([
        Buffer.of(27),
        str(Buffer.from('session-bind@openssh.com')),
        str(cert),
        str(sid),
        str(Buffer.concat([str(Buffer.from('ssh-ed25519')), str(crypto.sign(null, sid, signer))])),
        Buffer.of(0),
      ]);
    };
    assert.deepEqual(await agentRequest(sock, bind(host.privateKey)), Buffer.of(6), 'the host');
    assert.deepEqual(await agentRequest(sock, bind(other.privateKey)), Buffer.of(5), 'another key');
  },
);

test(
  'found in review: a signature asked through ssh -R (the agent socket relayed by the local ssh, which names no session) is not the local ssh asking either',
  { skip: sshdSkip },
  async () => {
    const { h, env, dir, pub, own, log } = await sshOnlyAllowed('AllowStreamLocalForwarding yes');
    const payload = path.join(dir, 'payload-r');
    fs.writeFileSync(payload, 'tree 0000\nauthor attacker\n\nnot the user either\n');
    const relay = path.join(dir, 'relay.sock');
    // The far side waits for the relayed socket, then signs through it: the local ssh connects
    // to keyward's socket for each connection to it, and says nothing of a session.
    const remote = `while [ ! -S '${relay}' ]; do sleep 0.1; done; SSH_AUTH_SOCK='${relay}' ssh-keygen -Y sign -n git -f '${pub}' '${payload}'`;
    const signVia = () => {
      fs.rmSync(`${payload}.sig`, { force: true });
      fs.rmSync(relay, { force: true });
      return sshLogin(
        dir,
        env,
        ['-i', own, '-o', 'IdentitiesOnly=yes', '-R', `${relay}:${env['SSH_AUTH_SOCK'] ?? ''}`],
        remote,
      );
    };
    h.answer('no');
    const refused = signVia();
    assert.equal(
      fs.existsSync(`${payload}.sig`),
      false,
      `signed silently: ${refused.stderr}\n${log()}`,
    );
    const prompt = h.prompts().at(-1) ?? '';
    assert.match(prompt, /a connection of ssh asking for a signature ssh never asks for itself/);
    // The far side binds a session of its own first (its own host key signs its own session
    // id: a bind that verifies), then asks for a git signature: still not ssh's own.
    const forger = path.join(dir, 'forged-bind.mjs');
    fs.writeFileSync(
      forger,
      `import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
const [sock, pubFile] = process.argv.slice(2);
const str = (b) => { const l = Buffer.alloc(4); l.writeUInt32BE(b.length); return Buffer.concat([l, b]); };
const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url');
const hostKey = Buffer.concat([str(Buffer.from('ssh-ed25519')), str(raw)]);
const sid = crypto.randomBytes(32);
const sig = crypto.sign(null, sid, privateKey);
const bind = Buffer.concat([Buffer.of(27), str(Buffer.from('session-bind@openssh.com')), str(hostKey), str(sid),
  str(Buffer.concat([str(Buffer.from('ssh-ed25519')), str(sig)])), Buffer.of(0)]);
const blob = Buffer.from(fs.readFileSync(pubFile, 'utf8').split(' ')[1], 'base64');
const data = Buffer.concat([Buffer.from('SSHSIG'), str(Buffer.from('git')), str(Buffer.alloc(0)), str(Buffer.from('sha512')), str(crypto.randomBytes(64))]);
const sign = Buffer.concat([Buffer.of(13), str(blob), str(data), Buffer.alloc(4)]);
const c = net.connect(sock);
let got = Buffer.alloc(0); const replies = [];
c.on('data', (d) => { got = Buffer.concat([got, d]);
  while (got.length >= 4 && got.length >= 4 + got.readUInt32BE(0)) { replies.push(got[4]); got = got.subarray(4 + got.readUInt32BE(0)); }
  if (replies.length === 2) { console.log('REPLIES=' + replies.join(',')); c.end(); } });
c.on('connect', () => c.write(Buffer.concat([str(bind), str(sign)])));
`,
    );
    const forged = () => {
      fs.rmSync(relay, { force: true });
      return sshLogin(
        dir,
        env,
        ['-i', own, '-o', 'IdentitiesOnly=yes', '-R', `${relay}:${env['SSH_AUTH_SOCK'] ?? ''}`],
        `while [ ! -S '${relay}' ]; do sleep 0.1; done; '${process.execPath}' '${forger}' '${relay}' '${pub}'`,
      );
    };
    const prompts = h.prompts().length;
    const f = forged();
    assert.match(
      f.stdout,
      /^REPLIES=6,5$/m,
      `the bind taken, the signature refused: ${f.stdout}${f.stderr}`,
    );
    assert.match(h.prompts().at(-1) ?? '', /a signature ssh never asks for itself/);
    assert.equal(h.prompts().length, prompts + 1);
    h.answer('yes');
    const ok = signVia();
    assert.equal(ok.status, 0, `${ok.stderr}\n${log()}`);
    assert.equal(fs.existsSync(`${payload}.sig`), true);
    const signs = tailOf(h, 20).filter((e) => e.type === 'key.sign');
    assert.ok(
      signs.some((e) => e.body.details?.['relayed'] === true),
      `the record says it was relayed: ${JSON.stringify(signs.at(-1))}`,
    );
  },
);
