/**
 * Lists, the audit log and policy explain through an unlocked agent (issue 18, item 2): no
 * passphrase, the policy decides (kinds list and audit, never covered by kind any), every read
 * is recorded, and what comes back is what the vault opened directly gives.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  auditEntries,
  startAgent,
  stopAgent,
  unlockedAgent,
  type AgentHome,
} from './agent-helpers.js';
import { call } from '../src/agent/index.js';
import { kw } from './helpers.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

/** The environment of a command that can only get through the agent: no passphrase source. */
function noPassphrase(h: AgentHome): NodeJS.ProcessEnv {
  const env = { ...h.env };
  delete env['KEYWARD_PASSPHRASE_FILE'];
  return env;
}

/** The same home, with no agent to be found: the vault is opened directly. */
function direct(h: AgentHome): NodeJS.ProcessEnv {
  return { ...h.env, KEYWARD_SOCKET_DIR: path.join(h.dir, 'no-agent-here') };
}

const RELEASES = `  - { name: all, targets: ["**"], decision: allow }\n`;

describe('the audit log through an unlocked agent', () => {
  test('tail, export --decrypt and verify need no passphrase, match the direct path, and are recorded', async () => {
    const h = await unlockedAgent(
      `version: 1\nrules:\n  - { name: logs, kind: audit, targets: ["**"], decision: allow }\n${RELEASES}`,
      homes,
    );
    for (let i = 0; i < 3; i++)
      assert.equal(kw(['secret', 'set', `v/s${i}`], { env: h.env, input: 'value' }).code, 0);
    const directRows = kw(['audit', 'export', '--decrypt'], { env: direct(h) });
    assert.equal(directRows.code, 0, directRows.stderr);
    const before = directRows.stdout.trim().split('\n');
    const lastSeq = (JSON.parse(before.at(-1) ?? '{}') as { seq: number }).seq;

    const env = noPassphrase(h);
    const exported = kw(['audit', 'export', '--decrypt'], { env });
    assert.equal(exported.code, 0, exported.stderr);
    // The same entries, bodies opened the same: the agent opens them with the vault it holds.
    assert.deepEqual(exported.stdout.trim().split('\n').slice(0, before.length), before);

    const tail = kw(['audit', 'tail', '--json', '-n', '4'], { env });
    assert.equal(tail.code, 0, tail.stderr);
    const rows = tail.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { seq: number; type: string; body: unknown });
    assert.equal(rows.length, 4);
    assert.ok(
      rows.every((r) => typeof r.body === 'object' && r.body !== null),
      'bodies opened',
    );
    assert.ok(
      rows.some((r) => r.type === 'audit.read'),
      'the export before it is on record',
    );

    const verify = kw(['audit', 'verify'], { env });
    assert.equal(verify.code, 0, verify.stderr);
    assert.match(verify.stdout, /MACs verified with the audit key/);
    assert.match(verify.stdout, /checkpoint sealed in the vault matches/);
    assert.doesNotMatch(verify.stderr, /passphrase/);

    const reads = auditEntries(h).filter((e) => e.type === 'audit.read');
    assert.deepEqual(
      reads.map((e) => [e.target, e.details['op'], e.details['rule'], e.decision]),
      [
        ['tail', 'entries', 'logs', 'allow'],
        ['tail', 'tail', 'logs', 'allow'],
        ['verify', 'verify', 'logs', 'allow'],
      ],
    );
    assert.ok(lastSeq > 0);
  });

  test('verify through the agent finds an edited entry (exit 8), as the direct path does', async () => {
    const h = await unlockedAgent(
      `version: 1\nrules:\n  - { name: logs, kind: audit, targets: ["**"], decision: allow }\n${RELEASES}`,
      homes,
    );
    assert.equal(kw(['secret', 'set', 'v/x'], { env: h.env, input: 'value' }).code, 0);
    const seg = path.join(h.home, 'audit', 'log-000001.jsonl');
    const ls = fs.readFileSync(seg, 'utf8').split('\n');
    const at = ls.findIndex((l) => l.includes('"type":"secret.set"'));
    ls[at] = (ls[at] ?? '').replace('"type":"secret.set"', '"type":"secret.rm"');
    fs.writeFileSync(seg, ls.join('\n'));
    const r = kw(['audit', 'verify'], { env: noPassphrase(h) });
    assert.equal(r.code, 8, r.stdout + r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`audit log broken at log-000001\\.jsonl line ${at + 1} .*the MAC does not verify`),
    );
  });

  test('a locked agent refuses (exit 5); --sealed and --chain-only need neither agent nor passphrase', async () => {
    const h = await unlockedAgent(undefined, homes);
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    const env = noPassphrase(h);
    for (const args of [
      ['audit', 'tail'],
      ['audit', 'verify'],
      ['audit', 'export', '--decrypt'],
    ]) {
      // With a passphrase file they would open the vault themselves, and ask no agent.
      const r = kw(args, { env });
      assert.equal(r.code, 5, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /the agent is locked/);
      assert.match(r.stderr, /keyward unlock/);
    }
    assert.equal(kw(['audit', 'tail', '--sealed'], { env }).code, 0);
    assert.equal(kw(['audit', 'verify', '--chain-only'], { env }).code, 0);
  });
});

describe('the policy decides lists and reading the log', () => {
  test('rules of kind secret, key or any do not cover them: denied (exit 6), recorded, never locking the owner out', async () => {
    // A policy written before kinds list and audit existed: every release allowed.
    const h = await unlockedAgent(
      `version: 1\nrules:\n  - { name: secrets-only, kind: secret, targets: ["**"], decision: allow }\n${RELEASES}`,
      homes,
    );
    assert.equal(kw(['secret', 'set', 'p/a'], { env: h.env, input: 'value' }).code, 0);
    const env = noPassphrase(h);
    const cases: Array<[string[], string]> = [
      [['secret', 'list'], 'kind list'],
      [['key', 'list'], 'kind list'],
      [['audit', 'tail'], 'kind audit'],
      [['audit', 'verify'], 'kind audit'],
    ];
    for (const [args, hint] of cases) {
      const r = kw(args, { env });
      assert.equal(r.code, 6, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /denied by policy: no rule matches/);
      assert.ok(r.stderr.includes(`no rule of ${hint} matches`), r.stderr);
    }
    // More than the circuit breaker's five denials: a refused list releases nothing, and must
    // not lock out an owner whose policy predates kind list.
    for (let i = 0; i < 3; i++) assert.equal(kw(['secret', 'list'], { env }).code, 6);
    const st = kw(['status', '--json'], { env });
    assert.equal((JSON.parse(st.stdout) as { locked: boolean }).locked, false, st.stdout);
    const denied = auditEntries(h)
      .filter((e) => (e.type === 'vault.list' || e.type === 'audit.read') && e.decision === 'deny')
      .map((e) => `${e.type} ${e.target}`);
    assert.deepEqual(denied, [
      'vault.list secrets',
      'vault.list keys',
      'audit.read tail',
      'audit.read verify',
      'vault.list secrets',
      'vault.list secrets',
      'vault.list secrets',
    ]);
    const explained = kw(['policy', 'explain', '--kind', 'list', '--target', 'secrets'], { env });
    assert.equal(explained.code, 0, explained.stderr);
    assert.match(explained.stdout, /^deny\n/);
    assert.match(
      explained.stdout,
      /rule secrets-only does not match: it is for secrets, this is a list of names/,
    );
    assert.match(
      explained.stdout,
      /rule all does not match: it is for secrets and keys, this is a list of names/,
    );
  });

  test('a policy can allow verify and refuse tail; key generate checks the name without asking', async () => {
    const h = await unlockedAgent(
      `version: 1\nrules:\n` +
        `  - { name: verify-ok, kind: audit, targets: [verify], decision: allow }\n` +
        `  - { name: no-tail, kind: audit, targets: [tail], decision: deny }\n` +
        `  - { name: no-keys, kind: list, targets: [keys], decision: deny }\n${RELEASES}`,
      homes,
    );
    const env = noPassphrase(h);
    assert.equal(kw(['audit', 'verify'], { env }).code, 0);
    const tail = kw(['audit', 'tail'], { env });
    assert.equal(tail.code, 6, tail.stderr);
    assert.match(tail.stderr, /denied by policy: rule no-tail matches and decides: deny/);
    const before = auditEntries(h).length;
    // The name check before the passphrase is a convenience: refused by policy, it is skipped
    // (no denial recorded) and generate asks the passphrase as without an agent.
    const g = kw(['key', 'generate', 'k1'], { env: h.env });
    assert.equal(g.code, 0, g.stderr);
    const added = auditEntries(h).slice(before);
    assert.ok(!added.some((e) => e.type === 'vault.list'), JSON.stringify(added));
  });
});

describe('policy explain', () => {
  test('through an unlocked agent it answers from the policy in force, not from edited files', async () => {
    const applied = `version: 1\nrules:\n  - { name: no-x, targets: ["x/**"], decision: deny }\n`;
    const h = await unlockedAgent(applied, homes);
    // Edited behind keyward's back: the files now say allow.
    fs.writeFileSync(
      path.join(h.home, 'policy.yaml'),
      `version: 1\nrules:\n  - { name: yes-x, targets: ["x/**"], decision: allow }\n`,
    );
    const env = noPassphrase(h);
    const viaAgent = kw(['policy', 'explain', '--target', 'x/a', '--exe', '/usr/bin/git'], {
      env,
    });
    assert.equal(viaAgent.code, 0, viaAgent.stderr);
    assert.equal(
      viaAgent.stdout,
      'deny by rule no-x\n  rule no-x matches and decides: deny\n',
      'the applied policy decides',
    );
    assert.doesNotMatch(viaAgent.stderr, /unverified/);
    await stopAgent(h);
    const fromFiles = kw(['policy', 'explain', '--target', 'x/a'], { env });
    assert.match(fromFiles.stderr, /from the policy files, unverified \(no agent runs\)/);
    await startAgent(h);
    const locked = kw(['policy', 'explain', '--target', 'x/a'], { env });
    assert.match(locked.stderr, /unverified \(the agent is locked\)/);
  });
});

describe('found in review', () => {
  test('malformed requests are refused before the policy is asked; a tail of 0 is no way round its bounds', async () => {
    const h = await unlockedAgent(
      `version: 1\nrules:\n  - { name: ask, kind: audit, targets: ["**"], decision: deny }\n`,
      homes,
    );
    for (const meta of [
      { op: 'tail', count: 0 },
      { op: 'tail', count: -1 },
      { op: 'tail', count: 1.5 },
      { op: 'tail', count: '5' },
      { op: 'entries', after: -1 },
      { op: 'nothing' },
    ])
      await assert.rejects(call(h.sock, 'audit', meta), (e: { code?: string }) => {
        assert.equal(e.code, 'USAGE', JSON.stringify(meta));
        return true;
      });
    // None reached the policy: nothing denied, nothing recorded.
    assert.equal(auditEntries(h).filter((e) => e.type === 'audit.read').length, 0);
  });

  test("a quiet list is quiet whatever refuses it: a rate limit spent gives 'withheld', never a denial on record", async () => {
    const h = await unlockedAgent(
      `version: 1\nrules:\n  - { name: names, kind: list, targets: ["**"], decision: allow, rate_limit: { per_minute: 1, burst: 1 } }\n${RELEASES}`,
      homes,
    );
    for (let i = 0; i < 3; i++) {
      const f = await call(h.sock, 'list', { kind: 'keys', quiet: true });
      assert.equal(f.meta['withheld'], true, 'a rule with a rate limit is not an outright allow');
    }
    assert.equal(auditEntries(h).filter((e) => e.type === 'vault.list').length, 0);
  });

  test('a read of a name that does not exist is recorded and counts as probing', async () => {
    const h = await unlockedAgent(
      `version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n`,
      homes,
    );
    const r = kw(['read', 'no/such'], { env: h.env });
    assert.equal(r.code, 3, r.stderr);
    const miss = auditEntries(h).filter((e) => e.type === 'secret.read' && e.target === 'no/such');
    assert.deepEqual(
      miss.map((e) => [e.decision, e.reason]),
      [['deny', 'no secret named no/such']],
    );
    for (let i = 0; i < 4; i++) kw(['read', `no/such-${i}`], { env: h.env });
    const st = JSON.parse(kw(['status', '--json'], { env: h.env }).stdout) as { locked: boolean };
    assert.equal(st.locked, true, 'five misses within a minute lock the agent');
  });
});
