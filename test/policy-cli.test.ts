/**
 * keyward policy ... as users run it: check with positions, apply (passphrase, history, audit),
 * show, diff, explain, and an edit behind keyward's back.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { secureFree, secureTake } from '../src/lib/secure.js';
import { DEFAULT_POLICY } from '../src/policy/index.js';
import { readApplied } from '../src/policy/store.js';
import { vaultPaths, withVaultWrite } from '../src/vault/index.js';
import { agentHome, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import {
  BIN,
  cannotHold,
  commandHeldAt,
  eventually,
  initHome,
  kw,
  PASSPHRASE,
  type Home,
} from './helpers.js';

const agents: AgentHome[] = [];
after(async () => {
  for (const a of agents) await stopAgent(a);
});

const GOOD = `version: 1
rules:
  - name: git-signs
    targets: ["git-signing"]
    kind: key
    callers: { exe: /usr/bin/git }
    decision: allow
  - name: agent-denied
    targets: ["**"]
    callers: { ancestor: "**/claude" }
    decision: deny
  - name: default-secrets
    targets: ["**"]
    kind: secret
    decision: approve
    approve: { mode: confirm }
`;

function write(h: Home, name: string, text: string): string {
  const f = path.join(h.dir, name);
  fs.writeFileSync(f, text);
  return f;
}

interface AuditRow {
  type: string;
  body: { decision: string; reason: string | null; details: Record<string, unknown> };
}
function auditRows(h: Home): AuditRow[] {
  return kw(['audit', 'tail', '--json', '-n', '500'], { env: h.env })
    .stdout.trim()
    .split('\n')
    .map((l) => JSON.parse(l) as AuditRow);
}

test('init installs the default policy as version 1 and records it', () => {
  const h = initHome();
  assert.equal(fs.readFileSync(path.join(h.home, 'policy.yaml'), 'utf8'), DEFAULT_POLICY);
  const hist = JSON.parse(kw(['policy', 'history', '--json'], { env: h.env }).stdout) as Array<{
    version: number;
    rules: number;
  }>;
  assert.deepEqual(
    hist.map((x) => [x.version, x.rules]),
    [[1, 5]],
  );
  assert.ok(
    auditRows(h).some((r) => r.type === 'policy.changed' && r.body.details['version'] === 1),
  );
  const e = kw(['policy', 'explain', '--target', 'anything'], { env: h.env });
  assert.match(e.stdout, /^approve \(confirm, remember process\) by rule default-secrets\n/);
});

test('check prints every problem as FILE:LINE:COLUMN: field: message and exits 2', () => {
  const h = initHome();
  const f = write(
    h,
    'bad.yaml',
    'version: 1\nrules:\n  - name: a\n    targets: ["x"]\n    decision: alow\n  - name: b\n    targets: ["y"]\n    decision: deny\n    extra: 1\n',
  );
  const r = kw(['policy', 'check', f], { env: h.env });
  assert.equal(r.code, 2);
  assert.match(r.stderr, new RegExp(`${f}:5:15: rules\\[0\\]\\.decision: Invalid option`));
  assert.match(r.stderr, new RegExp(`${f}:9:12: rules\\[1\\]\\.extra: Unrecognized key`));
  assert.match(
    r.stderr,
    /keyward: error: .* is not a valid policy \(2 problems\)\nkeyward: hint: fix the lines above/,
  );
  assert.equal(kw(['policy', 'check', write(h, 'good.yaml', GOOD)], { env: h.env }).code, 0);
});

test('apply needs the passphrase: with a wrong one nothing changes (exit 4)', () => {
  const h = initHome();
  const f = write(h, 'good.yaml', GOOD);
  const wrong = write(h, 'wrong', 'not the passphrase at all\n');
  fs.chmodSync(wrong, 0o600);
  const r = kw(['policy', 'apply', f, '--passphrase-file', wrong], { env: h.env });
  assert.equal(r.code, 4);
  assert.equal(fs.readFileSync(path.join(h.home, 'policy.yaml'), 'utf8'), DEFAULT_POLICY);
  assert.equal(
    (JSON.parse(kw(['policy', 'history', '--json'], { env: h.env }).stdout) as unknown[]).length,
    1,
  );
});

test('apply installs a new version, keeps history, and records policy.changed with a diff summary and both hashes', () => {
  const h = initHome();
  const r = kw(['policy', 'apply', write(h, 'good.yaml', GOOD)], { env: h.env });
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /^Applied policy version 2 \(sha256 [0-9a-f]{64}\): \+2 rules, -4 rules, ~1 modified\n$/,
  );
  assert.equal(fs.readFileSync(path.join(h.home, 'policy.yaml'), 'utf8'), GOOD);
  const changed = auditRows(h)
    .filter((x) => x.type === 'policy.changed')
    .at(-1);
  assert.ok(changed);
  assert.equal(changed.body.reason, '+2 rules, -4 rules, ~1 modified');
  assert.match(String(changed.body.details['sha256']), /^[0-9a-f]{64}$/);
  assert.match(String(changed.body.details['previousSha256']), /^[0-9a-f]{64}$/);
  const d = kw(['policy', 'diff', '1', '2'], { env: h.env });
  assert.match(
    d.stdout,
    /^- rule default-keys\n- rule default-lists\n- rule default-audit-verify\n- rule default-audit\n\+ rule git-signs \(1 of 3, before agent-denied\): \{.*\}\n\+ rule agent-denied \(2 of 3, before default-secrets\): \{.*\}\n~ rule default-secrets\./,
  );
  assert.equal(kw(['policy', 'show'], { env: h.env }).stdout, GOOD);
});

test('check and apply say which allow rules name no caller they can trust: by cwd or ancestor alone, an interpreter, or a program whatever loader variables it carries', () => {
  const h = initHome();
  const weak = `version: 1
rules:
  - { name: under-git, targets: ["a/*"], callers: { ancestor: "**/git" }, decision: allow }
  - { name: in-repo, targets: ["b/*"], callers: { cwd: /home/me/repo }, decision: allow }
  - { name: node-here, targets: ["c/*"], callers: { exe: /usr/bin/node, cwd: /home/me/repo }, decision: allow }
  - { name: git, targets: ["d/*"], callers: { exe: /usr/bin/git }, decision: allow }
  - { name: ask-under-git, targets: ["e/*"], callers: { ancestor: "**/git" }, decision: approve, approve: { mode: confirm } }
`;
  const f = write(h, 'weak.yaml', weak);
  const c = kw(['policy', 'check', f], { env: h.env });
  assert.equal(c.code, 0, c.stderr);
  const notes = c.stderr.split('\n').filter((l) => l.startsWith('keyward: note: '));
  const about = (rule: string) => notes.filter((n) => n.startsWith(`keyward: note: rule ${rule} `));
  assert.equal(notes.length, 5, c.stderr);
  assert.match(about('under-git')[0] ?? '', /allows by ancestor alone: an ancestor can be gained/);
  assert.match(
    about('in-repo')[0] ?? '',
    /allows by cwd alone: any process of yours can change to that directory first/,
  );
  assert.match(
    about('node-here').join('\n'),
    /allows the interpreter \/usr\/bin\/node: every script/,
  );
  // A program allowed by its path or hash, whatever loader variables it carries.
  assert.match(about('git')[0] ?? '', /whatever loader variables it carries/);
  assert.equal(about('ask-under-git').length, 0);
  const a = kw(['policy', 'apply', '--yes', f], { env: h.env });
  assert.equal(a.code, 0, a.stderr);
  assert.equal(a.stderr.match(/^ {2}note: rule /gm)?.length, 5, a.stderr);
  // A glob may name an interpreter: said too (found in review).
  const globbed = `version: 1
rules:
  - { name: pythons, targets: ["d/*"], callers: { exe: "/usr/bin/python3*", loader_vars: absent }, decision: allow }
  - { name: either, targets: ["d/*"], callers: { exe: "/usr/bin/{git,perl}", loader_vars: absent }, decision: allow }
  - { name: logins, targets: ["**"], kind: key, callers: { exe: /usr/bin/ssh, loader_vars: absent }, decision: allow }
`;
  const gl = kw(['policy', 'check', write(h, 'globbed.yaml', globbed)], { env: h.env });
  assert.equal(gl.code, 0, gl.stderr);
  for (const [rule, pattern] of [
    ['pythons', '/usr/bin/python3*'],
    ['either', '/usr/bin/{git,perl}'],
  ])
    assert.ok(
      gl.stderr.includes(
        `keyward: note: rule ${rule} allows whatever the glob ${pattern} names, which may be an interpreter`,
      ),
      gl.stderr,
    );
  // ssh relays the agent for its far side (found in review: ssh -R).
  assert.match(
    gl.stderr,
    /keyward: note: rule logins lets ssh sign without asking: ssh relays the agent/,
  );
  // A rule before it that denies callers with loader variables: no note on that.
  const guarded = `version: 1
rules:
  - { name: no-loaders, targets: ["**"], callers: { loader_vars: present }, decision: deny }
  - { name: git, targets: ["d/*"], callers: { exe: /usr/bin/git }, decision: allow }
`;
  const g = kw(['policy', 'check', write(h, 'guarded.yaml', guarded)], { env: h.env });
  assert.doesNotMatch(g.stderr, /note:/);
  // The default policy has none.
  const d = kw(['policy', 'check', write(h, 'default.yaml', DEFAULT_POLICY)], { env: h.env });
  assert.doesNotMatch(d.stderr, /note:/);
});

test('check says which caller paths hold a look-alike letter: a deny rule so written denies nothing', () => {
  const h = initHome();
  const c = kw(
    [
      'policy',
      'check',
      write(
        h,
        'lookalike.yaml',
        'version: 1\nrules:\n  - { name: no-claude, targets: ["**"], callers: { ancestor: "**/\u0441laude" }, decision: deny }\n  - { name: fine, targets: ["**"], callers: { exe: /usr/bin/claude }, decision: deny }\n',
      ),
    ],
    { env: h.env },
  );
  assert.equal(c.code, 0, c.stderr);
  const notes = c.stderr.split('\n').filter((l) => l.startsWith('keyward: note: '));
  assert.equal(notes.length, 1, c.stderr);
  assert.match(
    notes[0] ?? '',
    /rule no-claude's ancestor holds characters outside ASCII \(U\+0441\): a look-alike letter makes it name no program, and a deny rule so written denies nothing/,
  );
});

test("check says which approvals are remembered for every process of an interpreter, keyward's own commands' included", () => {
  const h = initHome();
  const remembered = `version: 1
rules:
  - { name: any-program, targets: ["a/*"], decision: approve, approve: { mode: confirm, remember: { scope: executable, for: 10m } } }
  - { name: perl, targets: ["b/*"], callers: { exe: /usr/bin/perl }, decision: approve, approve: { mode: confirm, remember: { scope: executable, for: 10m } } }
  - { name: git, targets: ["c/*"], callers: { exe: /usr/bin/git }, decision: approve, approve: { mode: confirm, remember: { scope: executable, for: 10m } } }
  - { name: this-process, targets: ["d/*"], decision: approve, approve: { mode: confirm, remember: { scope: process, for: 10m } } }
  - { name: by-glob, targets: ["e/*"], callers: { exe: "/usr/bin/python3*" }, decision: approve, approve: { mode: confirm, remember: { scope: executable, for: 10m } } }
  - { name: by-hash, targets: ["f/*"], callers: { exe_sha256: "${'a'.repeat(64)}" }, decision: approve, approve: { mode: confirm, remember: { scope: executable, for: 10m } } }
`;
  const c = kw(['policy', 'check', write(h, 'remembered.yaml', remembered)], { env: h.env });
  assert.equal(c.code, 0, c.stderr);
  const notes = c.stderr.split('\n').filter((l) => l.startsWith('keyward: note: '));
  assert.equal(notes.length, 3, c.stderr);
  assert.match(
    notes[2] ?? '',
    /^keyward: note: rule by-glob remembers a yes for every process of what the glob \/usr\/bin\/python3\* names, which may be an interpreter/,
  );
  assert.match(
    notes[0] ?? '',
    /^keyward: note: rule any-program remembers a yes for every process of the program that asked \(scope: executable\), and names no program: keyward's own commands run as node, so a yes to one covers every Node program of yours/,
  );
  assert.match(
    notes[1] ?? '',
    /^keyward: note: rule perl remembers a yes for every process of the interpreter \/usr\/bin\/perl \(scope: executable\): every script it runs, any process's/,
  );
});

test('an invalid policy is never applied (exit 2)', () => {
  const h = initHome();
  const r = kw(['policy', 'apply', write(h, 'bad.yaml', 'version: 1\nrules: nope\n')], {
    env: h.env,
  });
  assert.equal(r.code, 2);
  assert.equal(fs.readFileSync(path.join(h.home, 'policy.yaml'), 'utf8'), DEFAULT_POLICY);
});

test("policy.yaml edited behind keyward's back: the applied version stays in force, loudly, and the load is recorded", () => {
  const h = initHome();
  kw(['policy', 'apply', write(h, 'good.yaml', GOOD)], { env: h.env });
  const allowAll = 'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n';
  fs.writeFileSync(path.join(h.home, 'policy.yaml'), allowAll);
  const e = kw(['policy', 'explain', '--target', 'x'], { env: h.env });
  assert.match(
    e.stderr,
    /WARNING: the policy files were changed behind keyward's back and are NOT in force; the applied version 2 is: policy.yaml differs from the applied version/,
  );
  assert.match(e.stdout, /^approve .* by rule default-secrets/);
  const loaded = auditRows(h)
    .filter((x) => x.type === 'policy.loaded')
    .at(-1);
  assert.equal(loaded?.body.details['drift'], true);
  assert.equal(loaded?.body.decision, 'error');
});

test("a history file changed behind keyward's back is caught against the policy kept in the vault (exit 8), which stays in force", () => {
  const h = initHome();
  const hist = path.join(h.home, 'policy/history/000001.yaml');
  fs.writeFileSync(
    hist,
    'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
  );
  fs.writeFileSync(path.join(h.home, 'policy.yaml'), fs.readFileSync(hist));
  const r = kw(['policy', 'show', '--verify'], { env: h.env });
  assert.equal(r.code, 8, r.stdout + r.stderr);
  assert.match(
    r.stderr,
    /keyward: error: the policy files differ from the applied policy kept in the vault: the policy history ends at version 1 \(\w+\), not at the applied version 1 \(\w+\); policy.yaml differs from the applied version/,
  );
  assert.equal(r.stdout, DEFAULT_POLICY, 'what is in force: the applied version');
});

/** The shape a vault from before the applied policy was kept in it has: a sealed hash file only. */
function legacyShape(h: Home): void {
  const pass = secureTake(Buffer.from(PASSPHRASE));
  try {
    withVaultWrite(vaultPaths(h.home), { passphrase: pass }, (v) => {
      const a = readApplied(v);
      assert.ok(a);
      v.remove('@policy/applied');
      fs.writeFileSync(
        path.join(h.home, 'policy/applied'),
        v.sealState('policy-applied', Buffer.from(`${a.version}\n${a.sha256}`)),
        { mode: 0o600 },
      );
      v.save();
    });
  } finally {
    secureFree(pass);
  }
}

/** A vault with a deny policy applied, put back into the shape of one from before 0.2. */
function legacyDenyHome(): { h: Home; deny: string } {
  const h = initHome();
  const deny = write(
    h,
    'deny.yaml',
    'version: 1\nrules:\n  - { name: deny-prod, targets: ["prod/**"], decision: deny }\n',
  );
  assert.equal(kw(['policy', 'apply', deny], { env: h.env }).code, 0);
  legacyShape(h);
  return { h, deny };
}

test('a vault from before the applied policy was kept in it: its sealed record deleted is tampering, never the default policy (exit 8)', () => {
  for (const alsoHistory of [false, true]) {
    const { h, deny } = legacyDenyHome();
    const intact = kw(['policy', 'show', '--verify'], { env: h.env });
    assert.equal(intact.code, 0, intact.stderr);
    assert.match(intact.stdout, /deny-prod/);
    fs.rmSync(path.join(h.home, 'policy/applied'));
    if (alsoHistory) fs.rmSync(path.join(h.home, 'policy/history'), { recursive: true });
    const r = kw(['policy', 'show', '--verify'], { env: h.env });
    assert.equal(r.code, 8, r.stdout + r.stderr);
    assert.match(r.stderr, /keyward: error: .*policy\/applied.* is missing/);
    assert.doesNotMatch(r.stdout, /default-secrets/, 'the default policy is not in force');
    // The way on: apply a policy with the passphrase.
    assert.equal(kw(['policy', 'apply', deny], { env: h.env }).code, 0);
    assert.equal(kw(['policy', 'show', '--verify'], { env: h.env }).code, 0);
  }
});

test(
  'found in review: a history file swapped between its check and its read is refused, not obeyed (a vault from before the applied policy was kept in it)',
  { skip: cannotHold },
  async () => {
    const { h } = legacyDenyHome();
    // The default applied at init is version 1, the deny policy version 2.
    const hist = path.join(h.home, 'policy/history/000002.yaml');
    // Held as it reads the history to check it against the sealed hash.
    const run = commandHeldAt(['policy', 'show', '--verify'], h.env, 'read', hist, '', 1);
    await eventually(() => run.held(), 'held at its read of the history');
    // A process of the user puts its own policy in the file's place meanwhile.
    const evil = path.join(h.dir, 'evil.yaml');
    fs.writeFileSync(
      evil,
      'version: 1\nrules:\n  - { name: attacker-all, targets: ["**"], decision: allow }\n',
      { mode: 0o600 },
    );
    fs.renameSync(evil, hist);
    run.release();
    const r = await run.done;
    assert.doesNotMatch(r.stdout, /attacker-all/, 'the swapped text is not in force');
    assert.equal(r.code, 8, r.stdout + r.stderr);
    assert.match(r.stderr, /policy history version 2 changed while it was read/);
  },
);

test('explain says which rule decided and why earlier ones did not match', () => {
  const h = initHome();
  kw(['policy', 'apply', write(h, 'good.yaml', GOOD)], { env: h.env });
  const r = kw(
    [
      'policy',
      'explain',
      '--target',
      'github/token',
      '--exe',
      '/usr/bin/curl',
      '--ancestor',
      '/bin/bash',
      '--ancestor',
      '/opt/ai/claude',
    ],
    { env: h.env },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    r.stdout,
    [
      'deny by rule agent-denied',
      '  rule git-signs does not match: it is for keys, this is a secret',
      '  rule agent-denied matches and decides: deny',
      '',
    ].join('\n'),
  );
});

test("a vault from before the policy was kept in it, its history rewritten: apply shows every field against the defaults, not against the attacker's files", () => {
  const { h } = legacyDenyHome();
  // The attacker: its policy over the newest history file and policy.yaml, so the files agree.
  const evil =
    'version: 1\nrules:\n  - { name: deny-prod, targets: ["prod/**"], decision: deny }\n' +
    'proxy:\n  hosts:\n    attacker.example: { secret: prod/db }\n';
  const newest = fs.readdirSync(path.join(h.home, 'policy/history')).sort().at(-1) ?? '';
  fs.writeFileSync(path.join(h.home, 'policy/history', newest), evil);
  fs.writeFileSync(path.join(h.home, 'policy.yaml'), evil);
  const r = kw(['policy', 'apply', path.join(h.home, 'policy.yaml')], { env: h.env });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /the policy in force could not be verified/);
  assert.match(r.stderr, /~ proxy\.hosts\.attacker\.example\.secret: \(none\) -> "prod\/db"/);
  assert.match(r.stderr, /\+ rule deny-prod \(1 of 1, last\)/);
});

test('a policy applied before apply refused what does not do what it reads as is still enforced as it was', () => {
  const h = initHome();
  // As an older keyward applied it: a ** that is not a whole part.
  const text =
    'version: 1\nrules:\n  - { name: old, targets: ["deploy**"], decision: deny }\n  - { name: rest, targets: ["**"], decision: allow }\n';
  const sha = createHash('sha256').update(text).digest('hex');
  const pass = secureTake(Buffer.from(PASSPHRASE));
  try {
    withVaultWrite(vaultPaths(h.home), { passphrase: pass }, (v) => {
      const a = readApplied(v);
      assert.ok(a);
      const record = secureTake(Buffer.from(`keyward-policy 1\n${a.version + 1}\n${sha}\n${text}`));
      v.setInternal('@policy/applied', record);
      secureFree(record);
      v.save();
    });
  } finally {
    secureFree(pass);
  }
  const show = kw(['policy', 'show', '--verify'], { env: h.env });
  assert.match(show.stdout, /deploy\*\*/, show.stderr);
  assert.doesNotMatch(show.stderr, /not a valid policy/);
  // A new apply of the same text is refused, and says why.
  const f = write(h, 'again.yaml', text);
  const again = kw(['policy', 'apply', f], { env: h.env });
  assert.equal(again.code, 2);
  assert.match(again.stderr, /\*\* crosses \/ only as a whole part/);
});

test("found in review: a rule on a program's path that is a symbolic link matches nothing: check and apply refuse it, and explain answers for the file the link leads to, with an agent or without", async () => {
  const h = agentHome();
  agents.push(h);
  const bin = path.join(h.dir, 'bin');
  fs.mkdirSync(bin);
  // As /usr/bin/python3 is a link to python3.11: the agent sees the file a process runs.
  const link = path.join(bin, 'mypython');
  fs.symlinkSync(process.execPath, link);
  const real = fs.realpathSync(process.execPath);
  const linked = `version: 1
rules:
  - { name: no-python, targets: ["**"], callers: { exe: ${JSON.stringify(link)} }, decision: deny }
  - { name: rest, targets: ["**"], decision: allow }
`;
  const f = write(h, 'linked.yaml', linked);
  for (const args of [
    ['check', f],
    ['apply', '--yes', f],
  ]) {
    const r = kw(['policy', ...args], { env: h.env });
    assert.equal(r.code, 2, `${args[0]}: ${r.stderr}`);
    assert.ok(
      r.stderr.includes(`rule no-python's exe ${link} goes through a symbolic link to ${real}`),
      r.stderr,
    );
  }
  // The rule written for the file itself: explain, asked with the link's path, answers for it.
  const f2 = write(h, 'real.yaml', linked.replace(JSON.stringify(link), JSON.stringify(real)));
  assert.equal(kw(['policy', 'apply', '--yes', f2], { env: h.env }).code, 0);
  const explain = () =>
    kw(['policy', 'explain', '--target', 'a/b', '--exe', link, '--ancestor', link], {
      env: h.env,
    });
  const without = explain();
  assert.match(without.stdout, /^deny by rule no-python/, without.stderr);
  await startAgent(h);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  const through = explain();
  assert.match(through.stdout, /^deny by rule no-python/, `the agent's answer: ${through.stdout}`);
});

test("found in review: a deny rule on an ancestor holds when the ancestor's program is updated under it (its /proc path then ends in ' (deleted)')", async () => {
  const h = agentHome(`version: 1
rules:
  - { name: nothing-for-the-agent, targets: ["**"], callers: { ancestor: "**/claude" }, decision: deny }
  - { name: rest, targets: ["**"], decision: allow }
`);
  agents.push(h);
  assert.equal(kw(['secret', 'set', 'a/b'], { env: h.env, input: 'ancestor-held' }).code, 0);
  await startAgent(h);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  const bin = path.join(h.dir, 'bin');
  fs.mkdirSync(bin);
  const claude = path.join(bin, 'claude');
  fs.copyFileSync('/bin/bash', claude);
  fs.chmodSync(claude, 0o755);
  const read = `'${process.execPath}' '${BIN}' read a/b`;
  const under = (script: string) =>
    spawnSync(claude, ['-c', `${script}; exit $?`], { env: h.env, encoding: 'utf8' });
  const plain = under(read);
  assert.equal(plain.status, 6, `denied under claude: ${plain.stdout}${plain.stderr}`);
  // An update in place, as an installer makes it: a new file renamed over the running one.
  const updated = under(
    `cp '${claude}' '${claude}.new' && mv '${claude}.new' '${claude}' && ${read}`,
  );
  assert.equal(updated.stdout, '', 'released under an updated claude');
  assert.equal(updated.status, 6, updated.stderr);
});
