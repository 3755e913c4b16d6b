/**
 * Operators (docs/OPERATORS.md): API keys made with the passphrase and kept as hashes, the
 * console's operator API, rules that only an operator of a named group may approve, two-person
 * control, and the machine's own user kept out. A real agent, its console, real HTTP; the OIDC
 * side is test/operators-oidc.test.ts (a real OpenID Provider).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parsePolicy } from '../src/policy/index.js';
import {
  auditEntries,
  pendingId,
  startAgent,
  stopAgent,
  unlockedAgent,
  type AgentHome,
} from './agent-helpers.js';
import { consoleUrl, rawRequest, waitingCommand } from './console-helpers.js';
import { BIN, everyByteUnder, kw, pastSecondOf } from './helpers.js';
import {
  CLIENT_ID,
  generateSigningKey,
  OidcProvider,
  RESOURCE,
  skip as oidcSkip,
} from './oidc-helpers.js';

const POLICY = `version: 1
operators:
  self: ["key:me"]
  group_policy_map:
    sre-team: [prod, release]
    dev: ["dev-*"]
rules:
  - name: prod
    targets: ["prod/**"]
    decision: approve
    approve: { mode: operator, groups: [sre-team, dev], timeout: 10m }
  - name: release
    targets: ["release/**"]
    decision: approve
    approve: { mode: operator, groups: [sre-team], count: 2, timeout: 10m }
  - name: rest
    targets: ["**"]
    decision: allow
`;

const KEY_RE = /^kwop_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/;

/** `keyward operator key create NAME --groups G`: the key, shown once on stdout. */
function createKey(h: AgentHome, name: string, groups: string): string {
  const r = kw(['operator', 'key', 'create', name, '--groups', groups], { env: h.env });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim();
}

interface Reply {
  status: number;
  json: Record<string, unknown>;
}

/** A request to the operator API as a script makes one: Host, a bearer token, no Origin. */
async function api(
  url: string,
  method: string,
  p: string,
  o: { token?: string; key?: string; json?: unknown } = {},
): Promise<Reply> {
  const u = new URL(url);
  const headers: Record<string, string> = { Host: u.host };
  if (o.token) headers['Authorization'] = `Bearer ${o.token}`;
  if (o.key !== undefined) headers['Content-Type'] = 'application/octet-stream';
  if (o.json !== undefined) headers['Content-Type'] = 'application/json';
  const r = await rawRequest(url, {
    method,
    path: p,
    headers,
    ...(o.key !== undefined ? { body: o.key } : {}),
    ...(o.json !== undefined ? { body: JSON.stringify(o.json) } : {}),
  });
  return { status: r.status, json: JSON.parse(r.body || '{}') as Record<string, unknown> };
}

async function login(url: string, key: string): Promise<string> {
  const r = await api(url, 'POST', '/api/operator/login/key', { key });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return String(r.json['token']);
}

const decide = (url: string, token: string, id: string, what: 'approve' | 'deny') =>
  api(url, 'POST', `/api/operator/approvals/${id}/${what}`, { token });

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

describe('operator policy', () => {
  const problems = (text: string) => {
    const r = parsePolicy(text);
    return r.ok ? [] : r.problems.map((p) => `${p.path}: ${p.message}`);
  };
  const rule = (approve: string) =>
    `version: 1\nrules:\n  - name: r\n    targets: ["x"]\n    decision: approve\n    approve: ${approve}\n`;

  test('mode operator needs groups; groups, count and allow_self go only with it', () => {
    assert.deepEqual(problems(rule('{ mode: operator, groups: [sre] , count: 2 }')), []);
    assert.match(problems(rule('{ mode: operator }')).join('\n'), /mode operator needs groups/);
    assert.match(
      problems(rule('{ mode: confirm, groups: [sre] }')).join('\n'),
      /groups goes with mode operator, not confirm/,
    );
    assert.match(
      problems(rule('{ mode: passphrase, count: 2 }')).join('\n'),
      /count goes with mode operator/,
    );
    assert.match(problems(rule('{ mode: operator, groups: [sre], count: 6 }')).join('\n'), /count/);
    assert.match(problems(rule('{ mode: operator, groups: [] }')).join('\n'), /groups/);
  });

  test('an identity provider must be https (http only on loopback); a group map names rules', () => {
    const ops = (o: string) =>
      `version: 1\noperators:\n${o}\nrules:\n  - { name: prod, targets: ["x"], decision: deny }\n`;
    const oidc = (issuer: string) =>
      ops(`  oidc: { issuer: "${issuer}", client_id: keyward, allowed_groups: [sre] }`);
    assert.deepEqual(problems(oidc('https://idp.example.com/realms/x')), []);
    assert.deepEqual(problems(oidc('http://127.0.0.1:8080')), []);
    assert.match(problems(oidc('http://idp.example.com')).join('\n'), /an https URL/);
    assert.match(problems(oidc('not a url')).join('\n'), /an https URL/);
    assert.match(
      problems(ops('  group_policy_map: { sre: [prod, prdo, "release-*"] }')).join('\n'),
      /operators\.group_policy_map\.sre\[1\]: no rule is named prdo/,
    );
  });
});

describe('operator API keys and approvals, through a real agent', () => {
  let h: AgentHome;
  let url: string;
  const keys: Record<string, string> = {};
  before(async () => {
    h = await unlockedAgent(POLICY, homes);
    url = consoleUrl(h);
    for (const [name, value] of [
      ['prod/db', 'prod-db-value-7f3a'],
      ['release/key', 'release-key-value-9c1e'],
    ] as const)
      assert.equal(kw(['secret', 'set', name], { env: h.env, input: value }).code, 0);
    keys['alice'] = createKey(h, 'alice', 'sre-team');
    keys['carol'] = createKey(h, 'carol', 'sre-team,oncall');
    keys['bob'] = createKey(h, 'bob', 'dev');
    keys['me'] = createKey(h, 'me', 'sre-team');
  });

  test('a key is shown once and kept only as a hash, and its making is audited', () => {
    for (const k of Object.values(keys)) assert.match(k, KEY_RE);
    const listed = kw(['operator', 'key', 'list', '--json'], { env: h.env });
    assert.equal(listed.code, 0, listed.stderr);
    const list = JSON.parse(listed.stdout) as Array<{ name: string; id: string; groups: string[] }>;
    assert.deepEqual(
      list.map((k) => [k.name, k.groups]),
      [
        ['alice', ['sre-team']],
        ['carol', ['sre-team', 'oncall']],
        ['bob', ['dev']],
        ['me', ['sre-team']],
      ],
    );
    // Neither the key nor its secret part is anywhere under the home, in any form kept.
    const everything = everyByteUnder(h.dir);
    for (const k of Object.values(keys)) {
      assert.equal(everything.includes(Buffer.from(k)), false, 'the key is on disk');
      assert.equal(everything.includes(Buffer.from(k.slice(22))), false, 'its secret is on disk');
    }
    assert.ok(!listed.stdout.includes(keys['alice']?.slice(22) ?? '-'));
    const made = auditEntries(h).filter((e) => e.type === 'operator.key');
    assert.deepEqual(
      made.map((e) => e.details?.['name']),
      ['alice', 'carol', 'bob', 'me'],
    );
    // A name is one key: a second with the same name is refused.
    const again = kw(['operator', 'key', 'create', 'alice', '--groups', 'x'], { env: h.env });
    assert.equal(again.code, 2);
    assert.match(again.stderr, /an operator key named alice exists already/);
    // A key that can't be shown (standard output a full device) is said to be unshown, with what
    // to do: it exists, and nobody has it.
    const full = spawnSync(
      process.execPath,
      [BIN, 'operator', 'key', 'create', 'dora', '--groups', 'x'],
      { env: h.env, stdio: ['ignore', fs.openSync('/dev/full', 'w'), 'pipe'], encoding: 'utf8' },
    );
    assert.equal(full.status, 5, full.stderr);
    assert.match(
      full.stderr,
      /the new key dora was not shown \(could not write to standard output \(ENOSPC\)\)/,
    );
    assert.match(
      full.stderr,
      /hint: nobody has it: revoke it \(keyward operator key revoke dora\)/,
    );
    assert.doesNotMatch(full.stderr, /internal error|bug in keyward/);
    assert.equal(kw(['operator', 'key', 'revoke', 'dora'], { env: h.env }).code, 0);
  });

  test('an operator rule waits for an operator of its group; no local factor approves it', async () => {
    const w = waitingCommand(['read', 'prod/db'], h.env);
    const id = await w.id;
    // The passphrase, from another terminal: not an operator.
    const local = kw(['approve', id], { env: h.env });
    assert.equal(local.code, 2, local.stderr);
    assert.match(local.stderr, /this request needs operator approval, not passphrase/);
    // An operator of a group the rule names, but the group map gives that group only dev-* rules.
    const bob = await login(url, keys['bob'] ?? '');
    const refused = await decide(url, bob, id, 'approve');
    assert.equal(refused.status, 403);
    assert.match(String(refused.json['error']), /group_policy_map gives none of operator key:bob/);
    // bob is shown nothing of a request he may not decide (its caller's command line is not his).
    const listed = await api(url, 'GET', '/api/operator/approvals', { token: bob });
    assert.deepEqual(listed.json['pending'], []);
    // alice (sre-team) approves.
    const alice = await login(url, keys['alice'] ?? '');
    const ok = await decide(url, alice, id, 'approve');
    assert.equal(ok.status, 200, JSON.stringify(ok.json));
    assert.deepEqual(ok.json, { approved: id, votes: 1, needed: 1 });
    const done = await w.done;
    assert.equal(done.code, 0, done.stderr);
    assert.equal(done.stdout, 'prod-db-value-7f3a');
    const granted = auditEntries(h)
      .filter((e) => e.type === 'approval.granted')
      .at(-1);
    assert.equal(granted?.target, 'prod/db');
    assert.deepEqual(JSON.parse(String(granted?.details?.['operators'])), [
      { operator: 'key:alice', method: 'key', groups: ['sre-team'] },
    ]);
    const logins = auditEntries(h).filter((e) => e.type === 'operator.login');
    assert.deepEqual(
      logins.map((e) => [e.decision, e.details?.['operator']]),
      [
        ['allow', 'key:bob'],
        ['allow', 'key:alice'],
      ],
    );
  });

  test("two-person control takes two distinct operators, never the machine's own user", async () => {
    const w = waitingCommand(['read', 'release/key'], h.env);
    const id = await w.id;
    const alice = await login(url, keys['alice'] ?? '');
    const first = await decide(url, alice, id, 'approve');
    assert.deepEqual(first.json, { approved: id, votes: 1, needed: 2 });
    // Still waiting: one approval of two.
    assert.equal(await pendingId(h), id);
    const again = await decide(url, alice, id, 'approve');
    assert.equal(again.status, 403);
    assert.match(String(again.json['error']), /approved request \w+ already: it needs 2 distinct/);
    const me = await login(url, keys['me'] ?? '');
    const self = await decide(url, me, id, 'approve');
    assert.equal(self.status, 403);
    assert.match(String(self.json['error']), /this machine's own user \(operators\.self\)/);
    const carol = await login(url, keys['carol'] ?? '');
    const second = await decide(url, carol, id, 'approve');
    assert.deepEqual(second.json, { approved: id, votes: 2, needed: 2 });
    const done = await w.done;
    assert.equal(done.stdout, 'release-key-value-9c1e');
    const granted = auditEntries(h)
      .filter((e) => e.type === 'approval.granted')
      .at(-1);
    assert.deepEqual(JSON.parse(String(granted?.details?.['operators'])), [
      { operator: 'key:alice', method: 'key', groups: ['sre-team'] },
      { operator: 'key:carol', method: 'key', groups: ['sre-team'] },
    ]);
    const votes = auditEntries(h).filter((e) => e.type === 'approval.operator');
    assert.deepEqual(
      votes.slice(-2).map((e) => [e.details?.['operator'], e.details?.['votes']]),
      [
        ['key:alice', 1],
        ['key:carol', 2],
      ],
    );
  });
});

describe('revoking keys, denying, and no operator channel', () => {
  test('a revoked key logs in no more, and the sessions it opened end', async () => {
    const h = await unlockedAgent(POLICY, homes);
    const url = consoleUrl(h);
    const alice = createKey(h, 'alice', 'sre-team');
    // As a file holds it: with its newline.
    const token = await login(url, `${alice}\n`);
    assert.equal((await api(url, 'GET', '/api/operator/approvals', { token })).status, 200);
    const r = kw(['operator', 'key', 'revoke', 'alice'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await api(url, 'GET', '/api/operator/approvals', { token })).status, 401);
    const again = await api(url, 'POST', '/api/operator/login/key', { key: alice });
    assert.equal(again.status, 403);
    assert.equal(again.json['code'], 'OPERATOR_REFUSED');
    const last = auditEntries(h)
      .filter((e) => e.type === 'operator.login')
      .at(-1);
    assert.equal(last?.decision, 'deny');
    assert.equal(last?.details?.['key'], alice.slice(5, 21));
    // A key that was never made, and garbage, are refused alike.
    for (const key of [alice.slice(0, -1) + (alice.endsWith('A') ? 'B' : 'A'), 'x'])
      assert.equal((await api(url, 'POST', '/api/operator/login/key', { key })).status, 403);
    const gone = kw(['operator', 'key', 'revoke', 'alice'], { env: h.env });
    assert.equal(gone.code, 3);
  });

  test("a revoked key's vote no longer counts toward two-person control", async () => {
    const h = await unlockedAgent(POLICY, homes);
    const url = consoleUrl(h);
    assert.equal(kw(['secret', 'set', 'release/key'], { env: h.env, input: 'two' }).code, 0);
    const bob = await login(url, createKey(h, 'bob', 'sre-team'));
    const carol = await login(url, createKey(h, 'carol', 'sre-team'));
    const dave = await login(url, createKey(h, 'dave', 'sre-team'));
    const w = waitingCommand(['read', 'release/key'], h.env);
    const id = await w.id;
    assert.deepEqual((await decide(url, bob, id, 'approve')).json['votes'], 1);
    assert.equal(kw(['operator', 'key', 'revoke', 'bob'], { env: h.env }).code, 0);
    // carol's approval would have been the second: bob's no longer counts.
    assert.deepEqual((await decide(url, carol, id, 'approve')).json, {
      approved: id,
      votes: 1,
      needed: 2,
    });
    assert.deepEqual((await decide(url, dave, id, 'approve')).json['votes'], 2);
    const done = await w.done;
    assert.equal(done.stdout, 'two', done.stderr);
    const entries = auditEntries(h);
    const granted = entries.filter((e) => e.type === 'approval.granted').at(-1);
    assert.deepEqual(
      (JSON.parse(String(granted?.details?.['operators'])) as Array<{ operator: string }>).map(
        (v) => v.operator,
      ),
      ['key:carol', 'key:dave'],
    );
    assert.ok(
      entries.some(
        (e) =>
          e.type === 'approval.operator' &&
          /the vote of operator key:bob no longer counts/.test(String(e.reason)),
      ),
    );
  });

  test("an operator of the rule's groups may deny; one outside them may not", async () => {
    const h = await unlockedAgent(POLICY, homes);
    const url = consoleUrl(h);
    assert.equal(kw(['secret', 'set', 'prod/db'], { env: h.env, input: 'v' }).code, 0);
    const outsider = await login(url, createKey(h, 'eve', 'marketing'));
    const carol = await login(url, createKey(h, 'carol', 'sre-team'));
    const w = waitingCommand(['read', 'prod/db'], h.env);
    const id = await w.id;
    const no = await decide(url, outsider, id, 'deny');
    assert.equal(no.status, 403);
    assert.match(String(no.json['error']), /none of the groups rule prod asks for/);
    assert.equal((await decide(url, carol, id, 'deny')).status, 200);
    const done = await w.done;
    assert.equal(done.code, 6, done.stderr);
    const denied = auditEntries(h)
      .filter((e) => e.type === 'approval.denied')
      .at(-1);
    assert.equal(denied?.details?.['operator'], 'key:carol');
  });

  test('with no way for an operator to log in, an operator rule is a denial at once', async () => {
    const h = await unlockedAgent(POLICY, homes);
    assert.equal(kw(['secret', 'set', 'prod/db'], { env: h.env, input: 'v' }).code, 0);
    const r = kw(['read', 'prod/db'], { env: h.env });
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, /no approval channel can give operator approval here/);
  });

  test('without the console, no operator channel either', async () => {
    const h = await unlockedAgent(POLICY, homes);
    createKey(h, 'alice', 'sre-team');
    await stopAgent(h);
    await startAgent(h, {}, ['--no-console']);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    assert.equal(kw(['secret', 'set', 'prod/db'], { env: h.env, input: 'v' }).code, 0);
    const r = kw(['read', 'prod/db'], { env: h.env });
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, /no approval channel can give operator approval here/);
  });
});

describe(
  'OIDC operators and API keys together, through a real agent and a real provider',
  {
    skip: oidcSkip,
  },
  () => {
    let idp: OidcProvider;
    let h: AgentHome;
    let url: string;
    /** The policy of these tests, with more rules after its own. */
    const hybrid = (more = '') =>
      `version: 1
operators:
  oidc:
    issuer: "${idp.issuer}"
    client_id: ${CLIENT_ID}
    audience: "${RESOURCE}"
    allowed_groups: [sre-team]
rules:
  - name: prod
    targets: ["prod/**"]
    decision: approve
    high_value: true
    approve: { mode: operator, groups: [sre-team], count: 2, timeout: 10m }
${more}`;
    before(async () => {
      idp = await OidcProvider.start([await generateSigningKey()]);
      h = await unlockedAgent(hybrid(), homes);
      const started = Date.now();
      url = consoleUrl(h);
      assert.equal(kw(['secret', 'set', 'prod/db'], { env: h.env, input: 'hybrid-value' }).code, 0);
      await pastSecondOf(started);
    });
    after(async () => {
      await idp?.stop();
    });

    test('an OIDC operator and an API-key operator approve one request together', async () => {
      const carol = await login(url, createKey(h, 'carol', 'sre-team'));
      // bob's real token: a group the policy doesn't allow, refused at login and recorded.
      const bob = await api(url, 'POST', '/api/operator/login/oidc', {
        json: { token: (await idp.login('bob')).idToken },
      });
      assert.equal(bob.status, 403);
      assert.match(String(bob.json['error']), /operator "bob" is in none of the allowed groups/);
      const w = waitingCommand(['read', 'prod/db'], h.env);
      const id = await w.id;
      const r = await api(url, 'POST', '/api/operator/login/oidc', {
        json: { token: (await idp.login('alice')).idToken },
      });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.deepEqual(r.json['operator'], {
        id: 'alice',
        method: 'oidc',
        groups: ['sre-team'],
        issuer: idp.issuer,
      });
      const alice = String(r.json['token']);
      assert.deepEqual((await decide(url, alice, id, 'approve')).json, {
        approved: id,
        votes: 1,
        needed: 2,
      });
      assert.deepEqual((await decide(url, carol, id, 'approve')).json, {
        approved: id,
        votes: 2,
        needed: 2,
      });
      const done = await w.done;
      assert.equal(done.stdout, 'hybrid-value', done.stderr);
      const entries = auditEntries(h);
      const granted = entries.filter((e) => e.type === 'approval.granted').at(-1);
      assert.deepEqual(JSON.parse(String(granted?.details?.['operators'])), [
        { operator: 'alice', method: 'oidc', groups: ['sre-team'] },
        { operator: 'key:carol', method: 'key', groups: ['sre-team'] },
      ]);
      const logins = entries.filter((e) => e.type === 'operator.login');
      assert.deepEqual(
        logins.map((e) => [e.decision, e.details?.['method'], e.details?.['operator'] ?? null]),
        [
          ['allow', 'key', 'key:carol'],
          ['deny', 'oidc', null],
          ['allow', 'oidc', 'alice'],
        ],
      );
      assert.match(String(logins[1]?.reason), /none of the allowed groups/);
    });

    test('one person counts once: a key made --as their OIDC id and their OIDC login are one operator', async () => {
      const made = kw(
        ['operator', 'key', 'create', 'alice-laptop', '--groups', 'sre-team', '--as', 'alice'],
        { env: h.env },
      );
      assert.equal(made.code, 0, made.stderr);
      const byKey = await login(url, made.stdout.trim());
      const r = await api(url, 'POST', '/api/operator/login/oidc', {
        json: { token: (await idp.login('alice')).idToken },
      });
      const byToken = String(r.json['token']);
      const w = waitingCommand(['read', 'prod/db'], h.env);
      const id = await w.id;
      assert.deepEqual((await decide(url, byToken, id, 'approve')).json['votes'], 1);
      const twice = await decide(url, byKey, id, 'approve');
      assert.equal(twice.status, 403);
      assert.match(String(twice.json['error']), /operator alice approved request \w+ already/);
      w.kill();
      await w.done;
    });

    test('a token opens one session: the same token again is refused, and recorded', async () => {
      const { idToken } = await idp.login('alice');
      const first = await api(url, 'POST', '/api/operator/login/oidc', {
        json: { token: idToken },
      });
      assert.equal(first.status, 200);
      const again = await api(url, 'POST', '/api/operator/login/oidc', {
        json: { token: idToken },
      });
      assert.equal(again.status, 403);
      assert.match(String(again.json['error']), /this token was used to log in already/);
      const last = auditEntries(h)
        .filter((e) => e.type === 'operator.login')
        .at(-1);
      assert.equal(last?.decision, 'deny');
    });

    test("found in review: a token written another way opens no second session (its signature's spare bits, its high-s twin)", async () => {
      // The provider's ID tokens carry no jti: each is remembered by what it is.
      const { idToken } = await idp.login('alice');
      const [head, claims, sig] = idToken.split('.') as [string, string, string];
      assert.equal(JSON.parse(Buffer.from(head, 'base64url').toString()).alg, 'ES256');
      const raw = Buffer.from(sig, 'base64url');
      assert.equal(raw.length, 64);
      // The same 64 bytes: the last of 86 characters holds 2 bits of the signature and 4 spare.
      const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
      const spare = sig.slice(0, -1) + B64[B64.indexOf(sig.slice(-1)) ^ 1];
      assert.notEqual(spare, sig);
      assert.deepEqual(Buffer.from(spare, 'base64url'), raw);
      // (r, n - s): another signature of the same bytes, valid for ECDSA.
      const n = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551');
      const s = BigInt(`0x${raw.subarray(32).toString('hex')}`);
      const twin = Buffer.concat([
        raw.subarray(0, 32),
        Buffer.from((n - s).toString(16).padStart(64, '0'), 'hex'),
      ]).toString('base64url');
      const loginWith = (token: string) =>
        api(url, 'POST', '/api/operator/login/oidc', { json: { token } });
      assert.equal((await loginWith(idToken)).status, 200);
      for (const other of [spare, twin]) {
        const r = await loginWith(`${head}.${claims}.${other}`);
        assert.equal(r.status, 403, `a second session from ${other}`);
        assert.match(String(r.json['error']), /this token was used to log in already/);
      }
    });

    test('a token that opened a session opens no other: not after a policy change, not after the agent starts anew', async () => {
      const { idToken } = await idp.login('alice');
      const loginWith = (token: string) =>
        api(url, 'POST', '/api/operator/login/oidc', { json: { token } });
      assert.equal((await loginWith(idToken)).status, 200);
      // A rule added (the issuer and groups the same): the policy in force is another one.
      const file = path.join(h.dir, 'one-more-rule.yaml');
      fs.writeFileSync(
        file,
        hybrid('  - { name: notes, targets: ["notes/**"], decision: allow }\n'),
      );
      assert.equal(kw(['policy', 'apply', file], { env: h.env }).code, 0);
      const afterChange = await loginWith(idToken);
      assert.equal(afterChange.status, 403);
      assert.match(String(afterChange.json['error']), /this token was used to log in already/);
      // An agent started anew remembers no login of the last one: a token issued before it
      // started opens nothing, and a new login does.
      await stopAgent(h);
      await startAgent(h);
      const restarted = Date.now();
      assert.equal(kw(['unlock'], { env: h.env }).code, 0);
      url = consoleUrl(h);
      // Within the second it was issued in, as a fast restart can be: refused all the same.
      const afterRestart = await loginWith(idToken);
      assert.equal(afterRestart.status, 403);
      assert.match(String(afterRestart.json['error']), /issued .* not after this agent started/);
      // iat is in whole seconds: a token of the agent's first second is refused too, so the
      // fresh login waits for the clock's next second (an event, not a length of time).
      await pastSecondOf(restarted);
      assert.equal((await loginWith((await idp.login('alice')).idToken)).status, 200);
    });

    test('an OIDC session ends when the policy no longer allows its group', async () => {
      const r = await api(url, 'POST', '/api/operator/login/oidc', {
        json: { token: (await idp.login('alice')).idToken },
      });
      const token = String(r.json['token']);
      assert.equal((await api(url, 'GET', '/api/operator/approvals', { token })).status, 200);
      const file = path.join(h.dir, 'narrower.yaml');
      fs.writeFileSync(
        file,
        `version: 1
operators:
  oidc:
    issuer: "${idp.issuer}"
    client_id: ${CLIENT_ID}
    allowed_groups: [release-managers]
rules:
  - { name: rest, targets: ["**"], decision: deny }
`,
      );
      assert.equal(kw(['policy', 'apply', file], { env: h.env }).code, 0);
      assert.equal((await api(url, 'GET', '/api/operator/approvals', { token })).status, 401);
    });
  },
);
