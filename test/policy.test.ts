/**
 * Policy: schema errors with positions, table-driven evaluation, limits, and properties.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  DEFAULT_POLICY,
  diffPolicies,
  evaluate,
  parsePolicy,
  TokenBucket,
  UseCounter,
  withChannels,
  type Caller,
  type Policy,
  type PolicyRequest,
} from '../src/policy/index.js';

function policy(text: string): Policy {
  const r = parsePolicy(text);
  if (!r.ok) throw new Error(JSON.stringify(r.problems));
  return r.policy;
}

describe('schema errors name the line, column and field', () => {
  const cases: Array<[string, string, number, number, string, RegExp]> = [
    [
      'an unknown decision',
      'version: 1\nrules:\n  - name: a\n    targets: ["x"]\n    decision: alow\n',
      5,
      15,
      'rules[0].decision',
      /expected one of/,
    ],
    [
      'an unknown key',
      'version: 1\nrules:\n  - name: a\n    targets: ["x"]\n    decision: deny\n    colour: red\n',
      6,
      13,
      'rules[0].colour',
      /Unrecognized key/,
    ],
    [
      'approve without a mode',
      'version: 1\nrules:\n  - name: a\n    targets: ["x"]\n    decision: approve\n',
      3,
      5,
      'rules[0].approve',
      /needs an approve: section/,
    ],
    [
      'empty targets',
      'version: 1\nrules:\n  - name: a\n    targets: []\n    decision: deny\n',
      4,
      14,
      'rules[0].targets',
      /at least|>=1/,
    ],
    [
      'a bad duration',
      'version: 1\nunlock:\n  idle_timeout: soon\n',
      3,
      17,
      'unlock.idle_timeout',
      /duration/,
    ],
    [
      'a lifetime over 24h',
      'version: 1\nunlock:\n  max_lifetime: 2d\n',
      3,
      17,
      'unlock.max_lifetime',
      /at most 24h/,
    ],
    [
      'high_value with allow',
      'version: 1\nrules:\n  - name: a\n    targets: ["x"]\n    decision: allow\n    high_value: true\n',
      6,
      17,
      'rules[0].high_value',
      /needs decision approve/,
    ],
    [
      'high_value with confirm',
      'version: 1\nrules:\n  - name: a\n    targets: ["x"]\n    decision: approve\n    high_value: true\n    approve: { mode: confirm }\n',
      7,
      22,
      'rules[0].approve.mode',
      /second factor/,
    ],
    [
      'high_value remembered',
      'version: 1\nrules:\n  - name: a\n    targets: ["x"]\n    decision: approve\n    high_value: true\n    approve: { mode: totp, remember: { scope: process, for: 1m } }\n',
      7,
      38,
      'rules[0].approve.remember',
      /never remembered/,
    ],
    [
      'a bad exe hash',
      'version: 1\nrules:\n  - name: a\n    targets: ["x"]\n    callers: { exe_sha256: abc }\n    decision: deny\n',
      5,
      28,
      'rules[0].callers.exe_sha256',
      /64 lowercase hex/,
    ],
    ['a wrong version', 'version: 2\n', 1, 10, 'version', /expected 1/],
    ['a YAML syntax error', 'version: 1\nrules: [\n', 3, 1, '', /./],
    ['duplicate keys', 'version: 1\nversion: 1\n', 2, 1, '', /unique|duplicate/i],
  ];
  for (const [label, text, line, column, field, message] of cases) {
    test(`${label} is reported at ${line}:${column} on ${field || '(syntax)'}`, () => {
      const r = parsePolicy(text);
      assert.equal(r.ok, false);
      if (r.ok) return;
      const p = r.problems.find((x) => x.path === field) ?? r.problems[0];
      assert.ok(p, JSON.stringify(r.problems));
      assert.deepEqual(
        [p.line, p.column, p.path],
        [line, column, field],
        JSON.stringify(r.problems),
      );
      assert.match(p.message, message);
    });
  }

  test('regression (caught by the fast-check property): a malformed duration is a problem, not a crash', () => {
    for (const bad of ['for: :10m', 'for: 10', 'for: -1m', 'for: 1.5h', 'for: ""']) {
      const r = parsePolicy(
        `version: 1\nrules:\n  - name: a\n    targets: [x]\n    decision: approve\n    approve: { mode: confirm, remember: { scope: process, ${bad} } }\n`,
      );
      assert.equal(r.ok, false, bad);
    }
    assert.equal(
      parsePolicy('version: 1\nunlock: { idle_timeout: x, max_lifetime: y }\n').ok,
      false,
    );
  });

  test('the proxy section: hosts and domains in the one spelling the proxy compares, a pinned CA, headers it owns refused', () => {
    const ok = policy(
      'version: 1\nproxy:\n  upstream_ca: /etc/ca.pem\n  upstream_ca_sha256: ' +
        'a'.repeat(64) +
        '\n  hosts:\n    api.github.com: { secret: gh/token }\n    10.0.0.7: { secret: x, port: 8443, headers: [X-Api-Key] }\n' +
        'rate_limits:\n  domains:\n    "*.github.com": { requests_per_minute: 60, burst: 10 }\n    "*": { requests_per_minute: 600, burst: 100 }\n',
    );
    assert.deepEqual(ok.proxy?.hosts['api.github.com'], {
      secret: 'gh/token',
      port: 443,
      in: ['headers'],
      headers: ['Authorization'],
    });
    const problems = (text: string) => {
      const r = parsePolicy(`version: 1\n${text}`);
      return r.ok ? [] : r.problems.map((p) => `${p.path}: ${p.message}`);
    };
    for (const host of [
      '127.1',
      '2130706433',
      '0x7f000001',
      '010.0.0.1',
      'API.github.com',
      'a.com.',
    ])
      assert.equal(problems(`proxy:\n  hosts:\n    "${host}": { secret: x }\n`).length, 1, host);
    assert.equal(
      problems('rate_limits:\n  domains:\n    "127.1": { requests_per_minute: 1, burst: 1 }\n')
        .length,
      1,
    );
    assert.match(
      problems('proxy:\n  upstream_ca: /etc/ca.pem\n').join(),
      /upstream_ca and upstream_ca_sha256 go together/,
    );
    assert.match(
      problems('proxy:\n  hosts:\n    a.com: { secret: x, headers: [Host] }\n').join(),
      /a header the proxy owns/,
    );
    assert.match(
      problems('proxy:\n  hosts:\n    a.com: { secret: x, format: "Bearer {}" }\n').join(),
      /format goes with header/,
    );
  });

  test('duplicate rule names are refused', () => {
    const r = parsePolicy(
      'version: 1\nrules:\n  - { name: a, targets: [x], decision: deny }\n  - { name: a, targets: [y], decision: deny }\n',
    );
    assert.equal(r.ok, false);
    if (!r.ok) assert.match(r.problems[0]?.message ?? '', /duplicate rule name/);
  });

  test('the default policy is valid and releases nothing silently; names may be listed and the log verified', () => {
    const p = policy(DEFAULT_POLICY);
    const releases = p.rules.filter((r) => r.kind !== 'list' && r.kind !== 'audit');
    assert.ok(releases.length >= 2 && releases.every((r) => r.decision !== 'allow'));
    for (const kind of ['secret', 'key'] as const)
      assert.equal(evaluate(p, { target: 'x/y', kind, action: 'read' }, {}).decision, 'approve');
    for (const [kind, target] of [
      ['list', 'secrets'],
      ['list', 'keys'],
      ['audit', 'verify'],
    ] as const)
      assert.equal(evaluate(p, { target, kind, action: 'read' }, {}).decision, 'allow');
    // Who asked for what, and who approved it: confirmed like a release.
    assert.equal(
      evaluate(p, { target: 'tail', kind: 'audit', action: 'tail' }, {}).decision,
      'approve',
    );
    assert.equal(p.unlock.idle_timeout, '15m');
    assert.equal(p.unlock.max_lifetime, '4h');
  });
});

describe('kinds list and audit', () => {
  test('rules of kind secret, key or any never cover a list or the log; a rule of their kind does', () => {
    const p = policy(`version: 1
rules:
  - { name: secrets, kind: secret, targets: ["**"], decision: allow }
  - { name: broad, targets: ["**"], decision: allow }
  - { name: logs, kind: audit, targets: [verify], decision: allow }
  - { name: rest, kind: list, targets: ["keys"], decision: approve, approve: { mode: confirm } }
`);
    assert.equal(evaluate(p, { target: 'a', kind: 'secret', action: 'read' }, {}).rule, 'secrets');
    assert.equal(evaluate(p, { target: 'a', kind: 'key', action: 'sign' }, {}).rule, 'broad');
    const list = evaluate(p, { target: 'secrets', kind: 'list', action: 'list' }, {});
    assert.deepEqual(
      [list.decision, list.rule, list.explanation[0], list.explanation[1]],
      [
        'deny',
        undefined,
        'rule secrets does not match: it is for secrets, this is a list of names',
        'rule broad does not match: it is for secrets and keys, this is a list of names',
      ],
    );
    assert.equal(
      evaluate(p, { target: 'verify', kind: 'audit', action: 'verify' }, {}).rule,
      'logs',
    );
    assert.equal(
      evaluate(p, { target: 'tail', kind: 'audit', action: 'tail' }, {}).decision,
      'deny',
    );
    assert.equal(evaluate(p, { target: 'keys', kind: 'list', action: 'list' }, {}).rule, 'rest');
  });
});

describe('evaluation', () => {
  const P = policy(`version: 1
rules:
  - name: deny-prod-for-agent
    targets: ["prod/**"]
    callers: { ancestor: "**/claude" }
    decision: deny
  - name: git-signs
    targets: ["git-signing"]
    kind: key
    callers: { exe: /usr/bin/git }
    decision: allow
  - name: pinned-tool
    targets: ["tool/*"]
    callers: { exe_sha256: "${'a'.repeat(64)}" }
    decision: allow
  - name: prod-needs-totp
    targets: ["prod/**"]
    decision: approve
    high_value: true
    approve: { mode: totp }
  - name: work-dir
    targets: ["work/*"]
    callers: { cwd: /home/me/work, uid: 1000 }
    decision: allow
  - name: everything-else
    targets: ["**"]
    decision: approve
    approve: { mode: confirm, remember: { scope: process, for: 10m, uses: 5 } }
`);
  const secret = (target: string): PolicyRequest => ({ target, kind: 'secret', action: 'read' });
  const key = (target: string): PolicyRequest => ({ target, kind: 'key', action: 'sign' });
  const rows: Array<[string, PolicyRequest, Caller, string, string | undefined]> = [
    [
      'an ancestor match denies before a later approve',
      secret('prod/db'),
      { exe: '/usr/bin/psql', ancestors: [{ exe: '/bin/sh' }, { exe: '/opt/x/claude' }] },
      'deny',
      'deny-prod-for-agent',
    ],
    [
      'without that ancestor, prod needs high-value approval',
      secret('prod/db'),
      { exe: '/usr/bin/psql', ancestors: [{ exe: '/bin/sh' }] },
      'approve',
      'prod-needs-totp',
    ],
    ['git signs with its key', key('git-signing'), { exe: '/usr/bin/git' }, 'allow', 'git-signs'],
    [
      "a program a mount of the caller's own names /usr/bin/git does not get git's allow",
      key('git-signing'),
      { exe: '/usr/bin/git', exeElsewhere: true },
      'approve',
      'everything-else',
    ],
    [
      'an ancestor by a path that is not its running file is still denied by an ancestor deny rule',
      secret('prod/db'),
      { exe: '/usr/bin/psql', ancestors: [{ exe: '/opt/x/claude', elsewhere: true }] },
      'deny',
      'deny-prod-for-agent',
    ],
    [
      "another program asking for git's key falls through to approve",
      key('git-signing'),
      { exe: '/usr/bin/python3' },
      'approve',
      'everything-else',
    ],
    [
      'kind matters: a secret of the same name is not the key',
      secret('git-signing'),
      { exe: '/usr/bin/git' },
      'approve',
      'everything-else',
    ],
    [
      '* does not cross a /',
      secret('tool/a/b'),
      { exeSha256: 'a'.repeat(64) },
      'approve',
      'everything-else',
    ],
    [
      'the pinned hash allows',
      secret('tool/a'),
      { exeSha256: 'a'.repeat(64) },
      'allow',
      'pinned-tool',
    ],
    [
      'an unknown hash never matches a hash condition',
      secret('tool/a'),
      {},
      'approve',
      'everything-else',
    ],
    [
      'cwd under the path and uid both hold',
      secret('work/x'),
      { cwd: '/home/me/work/sub', uid: 1000 },
      'allow',
      'work-dir',
    ],
    [
      'a sibling directory is not under the path',
      secret('work/x'),
      { cwd: '/home/me/workshop', uid: 1000 },
      'approve',
      'everything-else',
    ],
    [
      'the wrong uid fails the rule',
      secret('work/x'),
      { cwd: '/home/me/work', uid: 1001 },
      'approve',
      'everything-else',
    ],
    [
      'an unknown executable never matches an exe condition',
      key('git-signing'),
      {},
      'approve',
      'everything-else',
    ],
  ];
  for (const [label, req, caller, decision, rule] of rows) {
    test(`${label}: ${decision} by ${rule ?? 'no rule'}`, () => {
      const d = evaluate(P, req, caller);
      assert.equal(d.decision, decision, d.explanation.join('\n'));
      assert.equal(d.rule, rule);
    });
  }

  test('nothing matching is deny, and the explanation says why each rule did not match', () => {
    const p = policy('version: 1\nrules:\n  - { name: only-x, targets: [x], decision: allow }\n');
    const d = evaluate(p, secret('y'), {});
    assert.equal(d.decision, 'deny');
    assert.equal(d.rule, undefined);
    assert.deepEqual(d.explanation, [
      'rule only-x does not match: no target of it matches y',
      'no rule matches: denied (nothing matching means deny)',
    ]);
  });

  test('a ** part matches any number of parts, none included, as POLICY.md says: a/** matches a itself', () => {
    const p = policy(
      'version: 1\nrules:\n  - { name: under-a, targets: ["a/**", "**/b", "c/**/d"], decision: allow }\n',
    );
    for (const t of ['a', 'a/x', 'a/x/y', 'b', 'x/y/b', 'c/d', 'c/x/y/d'])
      assert.equal(evaluate(p, secret(t), {}).decision, 'allow', t);
    for (const t of ['ab', 'x/a', 'bb', 'c/dd', 'cd'])
      assert.equal(evaluate(p, secret(t), {}).decision, 'deny', t);
  });

  test('first match wins: an earlier broad rule shadows a later narrow one', () => {
    const p = policy(
      'version: 1\nrules:\n  - { name: broad, targets: ["**"], decision: deny }\n  - { name: narrow, targets: [x], decision: allow }\n',
    );
    assert.equal(evaluate(p, secret('x'), {}).rule, 'broad');
  });

  test('high_value approvals are never remembered', () => {
    const d = evaluate(P, secret('prod/db'), {});
    assert.equal(d.decision, 'approve');
    if (d.decision === 'approve') {
      assert.equal(d.highValue, true);
      assert.deepEqual(d.approval.remember, { scope: 'once' });
      assert.equal(d.approval.mode, 'totp');
    }
  });

  test('remember settings come through with durations in ms', () => {
    const d = evaluate(P, secret('misc'), {});
    assert.ok(d.decision === 'approve');
    if (d.decision === 'approve')
      assert.deepEqual(d.approval.remember, { scope: 'process', forMs: 600_000, uses: 5 });
  });

  test('approve with no channel for its mode becomes deny, never allow', () => {
    for (const channels of [new Set<never>(), new Set(['passphrase'] as const)]) {
      const d = withChannels(evaluate(P, secret('misc'), {}), channels);
      assert.equal(d.decision, 'deny');
      assert.match(d.explanation.at(-1) ?? '', /no approval channel can give confirm approval/);
    }
    assert.equal(
      withChannels(evaluate(P, secret('misc'), {}), new Set(['confirm'] as const)).decision,
      'approve',
    );
  });
});

describe('limits', () => {
  test('a token bucket allows the burst, then the refill rate', () => {
    const b = new TokenBucket(60, 3, 0); // one a second, burst 3
    assert.deepEqual([b.take(0), b.take(0), b.take(0), b.take(0)], [true, true, true, false]);
    assert.equal(b.take(500), false);
    assert.equal(b.take(1000), true);
    assert.equal(b.take(1000), false);
    assert.equal(b.take(60_000), true);
  });

  test('a use counter stops at its maximum and starts again after reset (lock)', () => {
    const c = new UseCounter();
    assert.deepEqual([c.use('r', 2), c.use('r', 2), c.use('r', 2)], [true, true, false]);
    c.reset();
    assert.equal(c.use('r', 2), true);
    assert.equal(c.use('other', undefined), true);
  });
});

test('diff summarises added, removed, modified and reordered rules', () => {
  const a = policy(
    'version: 1\nrules:\n  - { name: a, targets: [x], decision: deny }\n  - { name: b, targets: [x], decision: deny }\n  - { name: c, targets: [x], decision: deny }\n',
  );
  const b = policy(
    'version: 1\nrules:\n  - { name: c, targets: [x], decision: deny }\n  - { name: a, targets: [y], decision: deny }\n  - { name: d, targets: [x], decision: deny }\n  - { name: e, targets: [x], decision: deny }\n',
  );
  const d = diffPolicies(a, b);
  assert.deepEqual([d.added, d.removed, d.modified], [['d', 'e'], ['b'], ['a']]);
  assert.equal(d.summary, '+2 rules, -1 rule, ~1 modified, order changed (first match decides)');
});

test('diff shows every change, section by section and field by field: the proxy and the operators too, values escaped', () => {
  const a = policy('version: 1\nrules:\n  - { name: a, targets: [x], decision: deny }\n');
  const b = policy(
    'version: 1\nrules:\n  - { name: a, targets: [x], decision: allow }\n' +
      'proxy:\n  hosts:\n    attacker.example: { secret: github/token }\n' +
      'operators:\n  oidc:\n    issuer: https://evil.example/\n    client_id: "k\\u001b[2K"\n    allowed_groups: [sre]\n',
  );
  const d = diffPolicies(a, b);
  assert.deepEqual(d.sections, ['operators', 'proxy']);
  assert.equal(d.summary, '+0 rules, -0 rules, ~1 modified, operators, proxy changed');
  assert.ok(d.changes.includes('~ rule a.decision: "deny" -> "allow"'), d.changes.join('\n'));
  assert.ok(
    d.changes.includes('~ proxy.hosts.attacker.example.secret: (none) -> "github/token"'),
    d.changes.join('\n'),
  );
  assert.ok(
    d.changes.includes('~ operators.oidc.issuer: (none) -> "https://evil.example/"'),
    d.changes.join('\n'),
  );
  assert.ok(
    d.changes.includes('~ operators.oidc.client_id: (none) -> "k\\\\u001b[2K"'),
    d.changes.join('\n'),
  );
  assert.ok(!d.changes.join('').includes('\x1b'), 'a raw escape in what a person reads');
});

describe('what is valid but does not do what it reads as is refused at check and apply (lint)', () => {
  const lint = (text: string) => {
    const r = parsePolicy(text);
    assert.ok(r.ok, JSON.stringify(r));
    return r.lint.map((p) => `${p.line}:${p.column} ${p.path} ${p.message}`);
  };
  const rule = (targets: string, extra = '') =>
    `version: 1\nrules:\n  - { name: r, targets: ${targets}, decision: deny${extra} }\n  - { name: rest, targets: ["**"], decision: allow }\n`;
  test('a control character hiding a rule from the screen, a bidi override, a lone carriage return', () => {
    for (const bad of ['# \x1b[2K\x1b[1A', '# \u202e', '# a\rb', '# \u200b']) {
      const l = lint(
        `version: 1\n${bad}\nrules:\n  - { name: rest, targets: ["**"], decision: allow }\n`,
      );
      assert.ok(l.length >= 1, JSON.stringify(bad));
      assert.match(l[0] ?? '', /^2:\d+ +a control or formatting character \(U\+/);
    }
    // Windows line ends and a byte order mark at the start are text.
    assert.deepEqual(
      lint(
        '\ufeffversion: 1\r\nrules:\r\n  - { name: rest, targets: ["**"], decision: allow }\r\n',
      ),
      [],
    );
  });
  test('a %YAML 1.1 directive (merge keys, yes/no booleans)', () => {
    const l = lint(`%YAML 1.1\n---\n${rule('["x"]')}`);
    assert.match(l.join('\n'), /a %YAML or %TAG directive/);
  });
  test('targets no name can match, and a ** that crosses no /', () => {
    assert.match(
      lint(rule('["pr\u043ed/**"]')).join(),
      /rules\[0\]\.targets\[0\] a target outside printable ASCII/,
    );
    assert.match(lint(rule('["prod/\\u200b**"]')).join(), /outside printable ASCII/);
    assert.match(lint(rule('["deploy**"]')).join(), /\*\* crosses \/ only as a whole part/);
    assert.match(
      lint(rule('["ssh-add:**"]', ', kind: key')).join(),
      /\*\* crosses \/ only as a whole part/,
    );
    for (const t of ['prod/', '/prod/x', 'prod//x', 'prod/x ', ' prod/x'])
      assert.match(
        lint(rule(JSON.stringify([t]))).join(),
        /a leading or trailing \/ or an empty part matches nothing/,
        t,
      );
    // A value made of escapes in quotes: plain ASCII in the file, a control character in force.
    assert.match(
      lint(rule('["x"]', ', callers: { exe: "/usr/bin/\\e[1A\\e[2K\\rOK" }')).join(),
      /rules\[0\]\.callers\.exe a control or formatting character \(U\+001B\) in a value/,
    );
    assert.match(
      lint(rule('["x"]', ', callers: { cwd: "/home/\\u202eevil" }')).join(),
      /U\+202E\) in a value/,
    );
    assert.match(
      lint(rule('["x"]', ', callers: { ancestor: "/opt/claude**" }')).join(),
      /rules\[0\]\.callers\.ancestor \*\* crosses/,
    );
    assert.deepEqual(lint(rule('["prod/**", "**/x", "a/**/b", "**", "ssh-add:*"]')), []);
  });
});

test('a key repeated in any spelling is refused, also one that only the object it becomes repeats (1 and "1")', () => {
  for (const [text, line] of [
    ['version: 1\nrules: []\nversion: 1\n', 3],
    [
      'version: 1\nrules:\n  - name: a\n    targets: [x]\n    decision: deny\n    "decisio\\u006e": allow\n',
      6,
    ],
    ['version: 1\nrules: []\nproxy:\n  hosts:\n    1: { secret: a }\n    "1": { secret: b }\n', 6],
    // An alias stands for its anchor's key: decision, said twice.
    [
      'version: 1\nrules:\n  - name: a\n    targets: [x]\n    &d decision: deny\n    *d : allow\n',
      6,
    ],
  ] as const) {
    const r = parsePolicy(text);
    assert.ok(!r.ok, text);
    assert.deepEqual(
      r.problems.map((p) => [p.line, p.message]),
      [[line, 'Map keys must be unique']],
      text,
    );
  }
});

test("a cwd condition: a directory named '..repo' inside is inside, '../x' is not", () => {
  const p = policy(
    'version: 1\nrules:\n  - { name: untrusted, targets: ["**"], callers: { cwd: /home/me/untrusted }, decision: deny }\n  - { name: rest, targets: ["**"], decision: allow }\n',
  );
  const at = (cwd: string) =>
    evaluate(p, { target: 'dev/token', kind: 'secret', action: 'read' }, { cwd }).decision;
  assert.equal(at('/home/me/untrusted/..repo'), 'deny');
  assert.equal(at('/home/me/untrusted/repo'), 'deny');
  assert.equal(at('/home/me/untrusted'), 'deny');
  assert.equal(at('/home/me/other'), 'allow');
  assert.equal(at('/home/me/untrusted-not'), 'allow');
});

describe('properties (fast-check)', () => {
  const NO_ALLOW = `version: 1
unlock: { idle_timeout: 15m, max_lifetime: 4h }
rules:
  - name: agent
    targets: ["**"]
    callers: { ancestor: "**/claude" }
    decision: deny
  - name: rest
    targets: ["**"]
    decision: approve
    approve: { mode: confirm, remember: { scope: process, for: 10m } }
`;
  const callers = fc.record({
    exe: fc.option(fc.string(), { nil: undefined }),
    uid: fc.option(fc.nat(), { nil: undefined }),
    cwd: fc.option(fc.string(), { nil: undefined }),
    ancestors: fc.array(fc.record({ exe: fc.option(fc.string(), { nil: undefined }) }), {
      maxLength: 3,
    }),
  });

  test('random text never crashes the parser', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 400 }), (text) => {
        const r = parsePolicy(text);
        return r.ok || r.problems.length > 0;
      }),
      { numRuns: 1500 },
    );
  });

  test('mutated policies never crash the parser, and without an allow rule never yield allow', () => {
    const mutate = fc
      .tuple(fc.nat(NO_ALLOW.length), fc.nat(20), fc.string({ maxLength: 12 }))
      .map(([at, del, ins]) => NO_ALLOW.slice(0, at) + ins + NO_ALLOW.slice(at + del));
    fc.assert(
      fc.property(mutate, fc.string({ maxLength: 20 }), callers, (text, target, caller) => {
        const r = parsePolicy(text);
        if (!r.ok) return r.problems.length > 0;
        if (r.policy.rules.some((x) => x.decision === 'allow')) return true;
        for (const kind of ['secret', 'key'] as const) {
          const d = evaluate(r.policy, { target, kind, action: 'read' }, caller);
          if (d.decision === 'allow') return false;
          if (withChannels(d, new Set()).decision !== 'deny') return false;
        }
        return true;
      }),
      { numRuns: 1500 },
    );
  });
});

test('the agent parses policies in a worker thread: the same results, and zod and yaml never load in its own', async () => {
  const { execFileSync } = await import('node:child_process');
  const path = await import('node:path');
  const { ROOT } = await import('./helpers.js');
  const index = path.join(ROOT, 'dist/src/policy/index.js');
  const script = `
    import { createRequire } from 'node:module';
    const p = await import(${JSON.stringify(index)});
    const texts = [
      'version: 1\\nrules:\\n  - { name: a, targets: ["x/*"], decision: allow }\\n',
      'version: 1\\nrules:\\n  - { name: a, targets: ["x/*"], decision: maybe }\\n',
    ];
    const here = texts.map((t) => p.parsePolicy(t));
    const loaded = () => Object.keys(createRequire(import.meta.url).cache).filter((k) => /node_modules\\/(zod|yaml)\\//.test(k)).length;
    const before = loaded();
    p.parsePoliciesInWorker(true);
    const there = p.parsePolicies(texts);
    const again = p.parsePolicy(texts[0]);
    process.stdout.write(JSON.stringify({ here, there, again, before }));
  `;
  // In a fresh process, the worker's parse first (nothing loaded), then the in-thread one.
  const workerFirst = `
    import { createRequire } from 'node:module';
    const p = await import(${JSON.stringify(index)});
    p.parsePoliciesInWorker(true);
    const r = p.parsePolicy('version: 1\\nrules: []\\n');
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((k) => /node_modules\\/(zod|yaml)\\//.test(k));
    process.stdout.write(JSON.stringify({ ok: r.ok, loaded }));
  `;
  const run = (s: string) =>
    JSON.parse(
      execFileSync(process.execPath, ['--input-type=module', '-e', s], { encoding: 'utf8' }),
    );
  const a = run(script);
  assert.ok(a.before > 0, 'the in-thread parse loads zod and yaml');
  assert.deepEqual(a.there, a.here);
  assert.deepEqual(a.again, a.here[0]);
  assert.equal(a.here[0].ok, true);
  assert.equal(a.here[1].ok, false);
  assert.match(JSON.stringify(a.there[1].problems), /"line":3/);
  const b = run(workerFirst);
  assert.equal(b.ok, true);
  assert.deepEqual(b.loaded, [], 'zod or yaml loaded in the main thread');
});

test('after an upgrade in place (its worker file replaced), the agent parses with the schema it started with, in its own thread', async () => {
  const { execFileSync } = await import('node:child_process');
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { ROOT } = await import('./helpers.js');
  // A copy of the build, so the worker file can be replaced without touching the real one.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-upgrade-'));
  fs.cpSync(path.join(ROOT, 'dist/src'), path.join(dir, 'src'), { recursive: true });
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  const worker = path.join(dir, 'src/policy/parse-worker.js');
  // The "new build" accepts anything: a worker of it would hand back a policy with no rules.
  const forged = `import { workerData } from 'node:worker_threads';
    workerData.port.postMessage({ results: workerData.texts.map(() => ({ ok: true, policy: { version: 1, rules: [] } })) });
    const f = new Int32Array(workerData.flag); Atomics.store(f, 0, 1); Atomics.notify(f, 0);`;
  const script = `
    import fs from 'node:fs';
    const p = await import(${JSON.stringify(path.join(dir, 'src/policy/index.js'))});
    p.parsePoliciesInWorker(true);
    const text = (n) => 'version: 1\\nrules:\\n  - { name: r' + n + ', targets: ["x/*"], decision: allow }\\n';
    const before = p.parsePolicy(text(1));
    fs.rmSync(${JSON.stringify(worker)});
    fs.writeFileSync(${JSON.stringify(worker)}, ${JSON.stringify(forged)});
    const after = p.parsePolicy(text(2));
    process.stdout.write(JSON.stringify({ before: before.policy.rules.length, after: after.policy.rules.length }));
  `;
  try {
    const out = JSON.parse(
      execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }),
    );
    assert.deepEqual(out, { before: 1, after: 1 });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
