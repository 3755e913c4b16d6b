/**
 * A remembered approval covers what the person saw, and nothing a lock ended: one process of the
 * user (test/fixtures/one-process.ts) asks for several things in turn after one was approved.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, describe, test } from 'node:test';
import { agentHome, auditEntries, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import { agentStatus } from '../src/agent/client.js';
import { askpassEnv } from '../src/approval/index.js';
import { BIN, eventually, kw, rootTests, ROOT } from './helpers.js';
import { agentRunning, chownTree, kwAs, OTHER_UID } from './as-user.js';

const REMEMBER =
  'version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm, remember: { scope: process, for: 10m } } }\n';

const homes: AgentHome[] = [];
/** The fixtures started: ended after the tests, however a test ended (a failed assertion too). */
const fixtures: ChildProcessWithoutNullStreams[] = [];
after(async () => {
  for (const f of fixtures) f.kill('SIGKILL');
  for (const h of homes) await stopAgent(h);
});

/** The one-process fixture, driven a step at a time. */
function oneProcess(
  h: AgentHome,
  node = process.execPath,
): {
  ask: (step: Record<string, unknown>) => Promise<Record<string, unknown>>;
  end: () => void;
} {
  const p: ChildProcessWithoutNullStreams = spawn(
    node,
    [
      path.join(ROOT, 'dist/test/fixtures/one-process.js'),
      h.sock,
      path.join(h.sockDir, 'ssh-agent.sock'),
    ],
    { env: h.env, cwd: h.dir },
  );
  fixtures.push(p);
  const answers = readline.createInterface({ input: p.stdout })[Symbol.asyncIterator]();
  return {
    ask: async (step) => {
      p.stdin.write(`${JSON.stringify(step)}\n`);
      const a = await answers.next();
      assert.ok(!a.done, 'the fixture ended');
      return JSON.parse(String(a.value)) as Record<string, unknown>;
    },
    end: () => p.stdin.end(),
  };
}

/** An askpass that says its prompt, then waits for the file `go` before it answers. */
function heldAskpass(a: AgentHome): string {
  const go = path.join(a.dir, 'go');
  return `#!/bin/sh\nprintf '%s\\n' "$1" >> '${path.join(a.dir, 'prompts')}'\nwhile [ ! -e '${go}' ]; do sleep 0.05; done\n[ "$(cat '${path.join(a.dir, 'answer')}')" = yes ]\n`;
}

async function agentWith(policy: string, askpass?: (h: AgentHome) => string): Promise<AgentHome> {
  const h = agentHome(policy);
  homes.push(h);
  if (askpass) fs.writeFileSync(h.askpass, askpass(h), { mode: 0o700 });
  assert.equal(
    kw(['secret', 'set', 'app/token'], { env: h.env, input: 'remembered-value' }).code,
    0,
  );
  await startAgent(h);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  return h;
}

describe('an answer is to the policy that asked', () => {
  for (const [label, later] of [
    [
      'one that now denies the caller',
      '  - { name: no-app, targets: ["app/**"], decision: deny }\n',
    ],
    [
      'one that now allows it only through the proxy (an allow with limits the request never met)',
      '  - { name: proxied, targets: ["**"], decision: allow, proxy_only: true }\n',
    ],
    [
      'one whose rule of the same name now asks for the passphrase',
      '  - { name: ask, targets: ["**"], decision: approve, approve: { mode: passphrase } }\n',
    ],
  ] as const)
    test(`a policy applied while the person reads the prompt decides: ${label} is a refusal, whatever the answer`, async () => {
      // The askpass says its prompt, then waits for the test's word before it answers.
      const h = await agentWith(
        'version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n',
        heldAskpass,
      );
      const reader = spawn(process.execPath, [BIN, 'read', 'app/token'], {
        env: h.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      reader.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      reader.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = new Promise<number | null>((resolve) => reader.on('close', resolve));
      await eventually(() => h.prompts().length > 0, 'the prompt');
      const denying = path.join(h.dir, 'denying.yaml');
      fs.writeFileSync(denying, `version: 1\nrules:\n${later}`);
      const applied = kw(['policy', 'apply', denying], { env: h.env });
      assert.equal(applied.code, 0, applied.stderr);
      h.answer('yes');
      fs.writeFileSync(path.join(h.dir, 'go'), '');
      assert.notEqual(await code, 0, "the old question's yes releases nothing");
      assert.equal(stdout, '');
      assert.match(stderr, /the policy changed while the request waited/);
      const entries = auditEntries(h);
      assert.ok(entries.some((e) => e.type === 'approval.granted'));
      const denied = entries.find((e) => e.type === 'secret.read' && e.decision === 'deny');
      assert.match(String(denied?.reason), /the policy changed while the request waited/);
      assert.ok(!entries.some((e) => e.type === 'secret.read' && e.decision === 'allow'));
    });
});

describe('an answer stands where nothing changed', () => {
  test('ssh-add -c under an allow rule: a yes stands across a write to the vault that leaves the policy as it was', async () => {
    // The askpass says its prompt, then waits for the test's word before it answers.
    const h = await agentWith(
      'version: 1\nrules:\n  - { name: keys, kind: key, targets: ["**"], decision: allow }\n',
      heldAskpass,
    );
    const env = { ...h.env, SSH_AUTH_SOCK: path.join(h.sockDir, 'ssh-agent.sock') };
    const key = path.join(h.dir, 'confirmed');
    const made = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
    assert.equal(made.status, 0, String(made.stderr));
    const added = spawnSync('ssh-add', ['-c', key], { env });
    assert.equal(added.status, 0, String(added.stderr));
    fs.writeFileSync(path.join(h.dir, 'msg'), 'data\n');
    const signer = spawn(
      'ssh-keygen',
      ['-Y', 'sign', '-n', 'file', '-f', `${key}.pub`, path.join(h.dir, 'msg')],
      { env, stdio: 'ignore' },
    );
    const code = new Promise<number | null>((resolve) => signer.on('close', resolve));
    await eventually(() => h.prompts().length > 0, 'the prompt');
    // Another process's save: the vault file changes, the policy in it does not.
    assert.equal(kw(['secret', 'set', 'app/other'], { env: h.env, input: 'x' }).code, 0);
    h.answer('yes');
    fs.writeFileSync(path.join(h.dir, 'go'), '');
    assert.equal(await code, 0, 'the yes to the confirmation signs');
  });
});

describe("a run's approvals stand under the policy that asked them", () => {
  const TWO_RULES =
    'version: 1\nrules:\n' +
    '  - { name: ask, targets: ["app/a", "app/b"], decision: approve, approve: { mode: confirm } }\n' +
    '  - { name: mid, targets: ["app/c"], decision: approve, approve: { mode: confirm } }\n';
  for (const [label, later, wanted] of [
    [
      'a secret approved before is denied by a policy applied while a later one is asked',
      '  - { name: no, targets: ["app/a", "app/b"], decision: deny }\n' +
        TWO_RULES.split('rules:\n')[1],
      ['A=app/a', 'C=app/c'],
    ],
    [
      'the rule secrets were approved under keeps its name but asks for the passphrase now',
      TWO_RULES.split('rules:\n')[1]?.replace('{ mode: confirm } }', '{ mode: passphrase } }'),
      ['A=app/a', 'B=app/b', 'C=app/c'],
    ],
    [
      'a secret shown with an earlier approval is asked again once its rule changed, keeping its name',
      TWO_RULES.split('rules:\n')[1]?.replace(
        '{ mode: confirm } }',
        '{ mode: confirm, message: "rule ask changed" } }',
      ),
      ['A=app/a', 'C=app/c', 'B=app/b'],
    ],
  ] as const)
    test(`a run is refused, nothing delivered, when ${label}`, async () => {
      // The askpass answers yes at once, but for rule mid's prompt, which waits for the test.
      const h = await agentWith(TWO_RULES, (a) => {
        const go = path.join(a.dir, 'go');
        return `#!/bin/sh\nprintf '%s\\n' "$1" >> '${path.join(a.dir, 'prompts')}'\ncase "$1" in *"(rule mid)"*) while [ ! -e '${go}' ]; do sleep 0.05; done;; esac\nexit 0\n`;
      });
      for (const n of ['app/a', 'app/b', 'app/c'])
        assert.equal(kw(['secret', 'set', n], { env: h.env, input: `value-of-${n}` }).code, 0);
      const env = wanted.flatMap((w) => ['--env', w]);
      const run = spawn(
        process.execPath,
        [BIN, 'run', '--no-masking', ...env, '--', 'sh', '-c', 'echo "A=$A B=$B C=$C"'],
        { env: h.env, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stdout = '';
      let stderr = '';
      run.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      run.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = new Promise<number | null>((resolve) => run.on('close', resolve));
      await eventually(
        () => h.prompts().some((p) => p.includes('(rule mid)')),
        "rule mid's prompt",
      );
      const f = path.join(h.dir, 'later.yaml');
      assert.ok(later !== undefined);
      fs.writeFileSync(f, `version: 1\nrules:\n${later}`);
      const applied = kw(['policy', 'apply', f], { env: h.env });
      assert.equal(applied.code, 0, applied.stderr);
      fs.writeFileSync(path.join(h.dir, 'go'), '');
      assert.notEqual(await code, 0, stdout);
      assert.ok(!stdout.includes('value-of'), stdout);
      assert.match(stderr, /the policy changed while the (run|request) waited/);
      const delivered = auditEntries(h).filter(
        (e) => e.type === 'credential.deliver' && e.decision === 'allow',
      );
      assert.deepEqual(delivered, [], 'nothing delivered');
      if (later?.includes('rule ask changed'))
        assert.ok(
          h.prompts().some((p) => /"app\/b".*rule ask changed/.test(p)),
          `app/b asked again under the changed rule: ${h.prompts().join('\n')}`,
        );
    });
});

describe('a policy applied ends what the old one remembered', () => {
  /** An agent under REMEMBER, and a process of the user whose read was approved once. */
  async function readOnceApproved() {
    const h = await agentWith(REMEMBER);
    const p = oneProcess(h);
    h.answer('yes');
    assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
      ok: true,
      value: 'remembered-value',
    });
    return { h, p };
  }

  test('a write to the vault that leaves the policy as it was ends nothing remembered', async () => {
    const { h, p } = await readOnceApproved();
    // Another process's save: the vault file changes, the policy in it does not.
    assert.equal(kw(['secret', 'set', 'app/other'], { env: h.env, input: 'x' }).code, 0);
    h.answer('no');
    assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
      ok: true,
      value: 'remembered-value',
    });
    assert.equal(h.prompts().length, 1, 'still remembered');
    // The prompt said what a yes would be remembered for.
    assert.match(
      h.prompts()[0] ?? '',
      /\(rule ask\)\. A yes is remembered for 10 min, for this process only\. Asked by .*\. Allow\?$/,
    );
    p.end();
  });

  test('a prompt whose yes is remembered for every process of a program says so, and names the program', async () => {
    const h = await agentWith(
      REMEMBER.replace('scope: process, for: 10m', 'scope: executable, for: 90s, uses: 3'),
    );
    const p = oneProcess(h);
    h.answer('yes');
    assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
      ok: true,
      value: 'remembered-value',
    });
    p.end();
    const exe = fs.realpathSync(process.execPath);
    assert.ok(
      (h.prompts()[0] ?? '').includes(
        `(rule ask). A yes is remembered for 90 s (3 uses), for every process of this program ("${exe}", by its SHA-256) with the same loader variables. Asked by `,
      ),
      h.prompts().join('\n'),
    );
  });

  test('an approval remembered under a rule is not used once a policy is applied, even one with a rule of that name', async () => {
    const { h, p } = await readOnceApproved();
    assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
      ok: true,
      value: 'remembered-value',
    });
    assert.equal(h.prompts().length, 1, 'remembered for the process');
    // The owner makes the rule of that name stricter; a confirm remembered under the old one
    // must not stand in for it.
    const stricter = path.join(h.dir, 'stricter.yaml');
    fs.writeFileSync(stricter, REMEMBER.replace('mode: confirm', 'mode: confirm, message: "now"'));
    assert.equal(kw(['policy', 'apply', stricter], { env: h.env }).code, 0);
    h.answer('no');
    assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
      ok: false,
      code: 'APPROVAL_REJECTED',
    });
    assert.equal(h.prompts().length, 2, 'asked again under the new policy');
    p.end();
  });
});

describe("a policy applied is in force at once, its rules' limits too", () => {
  test('a tighter rate limit holds from the next request, and an apply never fills a bucket again', async () => {
    const limited = (per: number, burst: number) =>
      `version: 1\nrules:\n  - { name: r, targets: ["**"], decision: allow, rate_limit: { per_minute: ${per}, burst: ${burst} } }\n`;
    const h = await agentWith(limited(600, 50));
    const read = () => kw(['read', 'app/token'], { env: h.env });
    assert.equal(read().code, 0);
    const apply = (text: string) => {
      const f = path.join(h.dir, 'limits.yaml');
      fs.writeFileSync(f, text);
      assert.equal(kw(['policy', 'apply', f], { env: h.env }).code, 0);
    };
    // Tightened: the one request the new burst holds, then refusals (a minute's refill is 1).
    apply(limited(1, 1));
    const codes = [read(), read(), read()].map((r) => r.code);
    assert.equal(codes[0], 0);
    assert.notEqual(codes[1], 0);
    assert.notEqual(codes[2], 0);
    assert.match(read().stderr, /rate limit of rule r reached/);
    // Loosened again: the bucket is as spent as it was, not refilled by the apply.
    apply(limited(1, 5));
    assert.match(read().stderr, /rate limit of rule r reached/);
  });
});

describe('a remembered approval covers what the person saw', () => {
  test('a run: the same command again, never another command of the same process', async () => {
    const h = await agentWith(REMEMBER);
    const p = oneProcess(h);
    const env = [{ var: 'V', name: 'app/token' }];
    const shown = { op: 'run', argv: ['sh', '-c', 'echo first'], env };
    h.answer('yes');
    assert.deepEqual(await p.ask(shown), { ok: true, code: 0, stdout: 'first\n' });
    assert.equal(h.prompts().length, 1);
    h.answer('no');
    // The same command: remembered, not asked.
    assert.deepEqual(await p.ask(shown), { ok: true, code: 0, stdout: 'first\n' });
    assert.equal(h.prompts().length, 1);
    // Another command, by the same process, within the ten minutes: asked, and refused.
    const loot = path.join(h.dir, 'loot');
    const other = await p.ask({
      op: 'run',
      argv: ['sh', '-c', `printf %s "$V" > '${loot}'`],
      env,
    });
    assert.deepEqual(other, { ok: false, code: 'APPROVAL_REJECTED' });
    assert.equal(h.prompts().length, 2, 'the person was asked about the other command');
    assert.match(h.prompts()[1] ?? '', /printf %s/);
    assert.equal(fs.existsSync(loot), false);
    p.end();
  });

  test('a signature: the same SSHSIG namespace again, never another one', async () => {
    const h = await agentWith(REMEMBER);
    assert.equal(kw(['key', 'generate', 'signer'], { env: h.env }).code, 0);
    const p = oneProcess(h);
    h.answer('yes');
    assert.deepEqual(await p.ask({ op: 'sshsig', namespace: 'file', data: 'a file' }), {
      ok: true,
    });
    assert.equal(h.prompts().length, 1);
    h.answer('no');
    assert.deepEqual(await p.ask({ op: 'sshsig', namespace: 'file', data: 'another file' }), {
      ok: true,
    });
    assert.equal(h.prompts().length, 1, 'the same namespace is remembered');
    assert.deepEqual(await p.ask({ op: 'sshsig', namespace: 'git', data: 'a commit' }), {
      ok: false,
    });
    assert.equal(h.prompts().length, 2, 'another namespace is asked');
    assert.match(h.prompts()[1] ?? '', /a git commit or tag/);
    p.end();
  });
});

describe('found attacking the grants: what else the person was shown', () => {
  test('a run with another environment (GIT_SSH, a changed NODE_OPTIONS) is another run', async () => {
    const h = await agentWith(REMEMBER);
    const p = oneProcess(h);
    const env = [{ var: 'V', name: 'app/token' }];
    const step = (environ: Record<string, string>) => ({
      op: 'run',
      argv: ['sh', '-c', 'echo ran'],
      env,
      environ,
    });
    h.answer('yes');
    assert.deepEqual(await p.ask(step({ NODE_OPTIONS: '--max-old-space-size=64' })), {
      ok: true,
      code: 0,
      stdout: 'ran\n',
    });
    h.answer('no');
    assert.deepEqual(await p.ask(step({ NODE_OPTIONS: '--max-old-space-size=64' })), {
      ok: true,
      code: 0,
      stdout: 'ran\n',
    });
    assert.equal(h.prompts().length, 1, 'the same run is remembered');
    for (const environ of [
      { NODE_OPTIONS: '--require /tmp/evil.js' },
      { NODE_OPTIONS: '--max-old-space-size=64', GIT_SSH: '/tmp/fake-ssh' },
    ])
      assert.deepEqual(await p.ask(step(environ)), { ok: false, code: 'APPROVAL_REJECTED' });
    assert.equal(h.prompts().length, 3, 'each other environment was asked about');
    p.end();
  });

  test('a run approved with its output masked is asked again unmasked, and the prompt says which', async () => {
    const h = await agentWith(REMEMBER);
    const p = oneProcess(h);
    const step = (masking: boolean) => ({
      op: 'run',
      argv: ['sh', '-c', 'printf %s "$V"'],
      env: [{ var: 'V', name: 'app/token' }],
      masking,
    });
    h.answer('yes');
    const masked = (await p.ask(step(true))) as { ok: boolean; stdout: string };
    assert.equal(masked.ok, true);
    assert.doesNotMatch(masked.stdout, /remembered-value/, 'the value was masked');
    assert.equal(h.prompts().length, 1);
    assert.doesNotMatch(h.prompts()[0] ?? '', /not masked/);
    h.answer('no');
    // The same command with masking off prints the value: not what the person approved.
    assert.deepEqual(await p.ask(step(false)), { ok: false, code: 'APPROVAL_REJECTED' });
    assert.equal(h.prompts().length, 2, 'the unmasked run was asked about');
    assert.match(h.prompts()[1] ?? '', /its output not masked/);
    p.end();
  });

  test('a signature with another ssh-added key of the same comment, or over other data of no known shape, is asked again', async () => {
    const h = await agentWith(REMEMBER);
    // Two keys with ssh-keygen's default comment shape, added with the real ssh-add.
    const env = { ...h.env, SSH_AUTH_SOCK: path.join(h.sockDir, 'ssh-agent.sock') };
    h.answer('yes');
    for (const k of ['key-work', 'key-laptop']) {
      const f = path.join(h.dir, k);
      const g = spawnSync('ssh-keygen', [
        '-q',
        '-t',
        'ed25519',
        '-N',
        '',
        '-C',
        'me@laptop',
        '-f',
        f,
      ]);
      assert.equal(g.status, 0, String(g.stderr));
      const a = spawnSync('ssh-add', [f], { env });
      assert.equal(a.status, 0, `${String(a.stdout)} ${String(a.stderr)}`);
    }
    const base = h.prompts().length;
    const p = oneProcess(h);
    assert.deepEqual(await p.ask({ op: 'sshsig', namespace: 'file', data: 'a', key: 0 }), {
      ok: true,
    });
    h.answer('no');
    assert.deepEqual(await p.ask({ op: 'sshsig', namespace: 'file', data: 'b', key: 0 }), {
      ok: true,
    });
    assert.equal(h.prompts().length, base + 1);
    assert.deepEqual(await p.ask({ op: 'sshsig', namespace: 'file', data: 'c', key: 1 }), {
      ok: false,
    });
    assert.equal(h.prompts().length, base + 2, 'the other key was asked about');
    // Data of no known shape (a certificate to sign): the person saw its hash, nothing more.
    h.answer('yes');
    assert.deepEqual(await p.ask({ op: 'sign', data: 'opaque one', key: 0 }), { ok: true });
    h.answer('no');
    assert.deepEqual(await p.ask({ op: 'sign', data: 'opaque two', key: 0 }), { ok: false });
    assert.equal(h.prompts().length, base + 4);
    p.end();
  });

  test('an environment too large to read (over 4 MiB) is said in the prompt, and no grant holds for it', async () => {
    const h = await agentWith(REMEMBER);
    h.answer('no');
    // Forty variables of 120 KiB (a variable's limit) under a raised stack limit, as any user can.
    const script = [
      'ulimit -s unlimited',
      'v=$(head -c 122880 /dev/zero | tr "\\0" x)',
      'for i in $(seq 1 40); do export "PAD_$i=$v"; done',
      `exec '${process.execPath}' '${BIN}' read app/token`,
    ].join('\n');
    const r = spawnSync('bash', ['-c', script], {
      env: { ...h.env, LD_PRELOAD: '' },
      encoding: 'utf8',
    });
    assert.equal(r.status, 6, r.stderr);
    assert.match(h.prompts()[0] ?? '', /, whose environment could not be read\. Allow\?$/);
  });

  test('forty copies of a harmless LD_PRELOAD before the one that loads do not hide it', async () => {
    const h = await agentWith(REMEMBER);
    h.answer('no');
    // execve with an environment of our own making (duplicates: ld.so takes the last).
    const lib = ['/lib/x86_64-linux-gnu/libm.so.6', '/lib/aarch64-linux-gnu/libm.so.6'].find((x) =>
      fs.existsSync(x),
    ) as string;
    const loads = path.join(h.dir, 'loads.so');
    fs.copyFileSync(lib, loads);
    const envp = [
      ...Object.entries(h.env).map(([k, v]) => `${k}=${v ?? ''}`),
      ...Array.from({ length: 40 }, () => `LD_PRELOAD=${lib}`),
      `LD_PRELOAD=${loads}`,
    ];
    const argv = [process.execPath, BIN, 'read', 'app/token'];
    const r = spawnSync(
      'python3',
      [
        '-c',
        [
          'import ctypes, json, sys',
          'a, e = json.loads(sys.argv[1]), json.loads(sys.argv[2])',
          'arr = lambda xs: (ctypes.c_char_p * (len(xs) + 1))(*[x.encode() for x in xs], None)',
          'ctypes.CDLL(None).execve(a[0].encode(), arr(a), arr(e))',
        ].join('\n'),
        JSON.stringify(argv),
        JSON.stringify(envp),
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 6, r.stderr);
    const prompt = h.prompts()[0] ?? '';
    assert.match(prompt, new RegExp(`LD_PRELOAD="${loads.replace(/[/.]/g, '\\$&')}"`));
    assert.equal(prompt.split('LD_PRELOAD=').length - 1, 1, 'one LD_PRELOAD: the one that loads');
  });
});

describe('every grant ends at lock', () => {
  test("a request a lock ends is no probe: it does not count toward the next unlock's breaker", async () => {
    // The askpass has the agent locked before it answers, as a process of the user that sends
    // `lock` while a person decides: the lock ends the request. (The askpass gets none of the
    // agent's KEYWARD_ variables: it names the socket directory itself.)
    const h = await agentWith(
      REMEMBER,
      (x) =>
        `#!/bin/sh\nprintf '%s\\n' "$1" >> '${path.join(x.dir, 'prompts')}'\n` +
        `if [ -e '${path.join(x.dir, 'lock-first')}' ]; then rm -f '${path.join(x.dir, 'lock-first')}'; KEYWARD_SOCKET_DIR='${x.sockDir}' '${process.execPath}' '${BIN}' lock >/dev/null 2>&1; exit 0; fi\n` +
        `[ "$(cat '${path.join(x.dir, 'answer')}' 2>/dev/null)" = yes ]\n`,
    );
    fs.writeFileSync(path.join(h.dir, 'lock-first'), '');
    const p = oneProcess(h);
    assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
      ok: false,
      code: 'APPROVAL_REJECTED',
    });
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    // Four refusals by a person after the unlock: with the request the lock ended counted too,
    // five within a minute, and the breaker locked the agent.
    h.answer('no');
    for (let i = 0; i < 4; i++)
      assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
        ok: false,
        code: 'APPROVAL_REJECTED',
      });
    assert.equal(h.prompts().length, 5);
    const locks = auditEntries(h).filter((e) => e.type === 'vault.lock');
    assert.deepEqual(
      locks.map((e) => e.reason),
      [locks[0]?.reason],
      'one lock: the one the askpass asked for, not the breaker',
    );
    assert.doesNotMatch(String(locks[0]?.reason), /circuit breaker/);
    assert.equal(kw(['status'], { env: h.env }).code, 0, 'still unlocked');
    p.end();
  });
});

describe('the askpass program is the one the agent started with', () => {
  /** A directory only root can write (and its parents: /tmp is sticky), for the askpass. */
  const rootOwned = () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-askpass-'));
    fs.chmodSync(d, 0o755);
    cleanups.push(() => fs.rmSync(d, { recursive: true, force: true }));
    return d;
  };
  const cleanups: Array<() => void> = [];
  after(() => {
    for (const c of cleanups) c();
  });

  /**
   * A home whose confirm rule gives up after a second, app/token in its vault, a directory only
   * root can write for the askpass, and the file the askpass reads its answer from.
   */
  const askpassCase = () => {
    const h = agentHome(REMEMBER.replace('remember: { scope: process, for: 10m }', 'timeout: 1s'));
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'askpass-held-value' }).code,
      0,
    );
    return { h, sys: rootOwned(), answer: path.join(h.dir, 'answer') };
  };

  test(
    "found in review: what the askpass runs by name is looked up only where root alone can write, not in the user's own bin",
    { skip: !rootTests && 'needs root (setpriv to another user)' },
    async () => {
      // A user who keeps the askpass where only root can write, as THREAT-MODEL.md advises: a
      // wrapper that runs the dialog by name. The user's PATH has a directory of the user's own
      // first (~/.local/bin): any process of the user can put a `kwdialog` there.
      const { h, sys, answer } = askpassCase();
      fs.writeFileSync(path.join(sys, 'kw-askpass'), '#!/bin/sh\nexec kwdialog "$1"\n', {
        mode: 0o755,
      });
      fs.writeFileSync(path.join(sys, 'kwdialog'), `#!/bin/sh\n[ "$(cat '${answer}')" = yes ]\n`, {
        mode: 0o755,
      });
      const userBin = path.join(h.dir, 'bin');
      fs.mkdirSync(userBin);
      chownTree(h.dir, OTHER_UID);
      const env = {
        ...h.env,
        KEYWARD_ASKPASS: path.join(sys, 'kw-askpass'),
        PATH: `${userBin}:${sys}:/usr/bin:/bin`,
      };
      const agent = await agentRunning(env, true);
      try {
        assert.equal(kwAs(['unlock'], env).code, 0);
        fs.writeFileSync(answer, 'yes');
        const yes = kwAs(['read', 'app/token'], env);
        assert.equal(yes.stdout, 'askpass-held-value', `the dialog answers: ${yes.stderr}`);
        // The attacker, a process of the user: its own kwdialog, first on PATH.
        const pwned = path.join(h.dir, 'attacker-ran');
        const [cmd, ...pre] = [
          'setpriv',
          `--reuid=${OTHER_UID}`,
          `--regid=${OTHER_UID}`,
          '--clear-groups',
        ];
        const planted = spawnSync(cmd as string, [
          ...pre,
          'sh',
          '-c',
          `printf '#!/bin/sh\\ntouch ${pwned}\\nexit 0\\n' > '${userBin}/kwdialog' && chmod 755 '${userBin}/kwdialog'`,
        ]);
        assert.equal(planted.status, 0, String(planted.stderr));
        fs.writeFileSync(answer, 'no');
        const no = kwAs(['read', 'app/token'], env);
        assert.equal(no.stdout, '', "released by the attacker's dialog");
        assert.notEqual(no.code, 0);
        assert.equal(fs.existsSync(pwned), false, "the attacker's kwdialog ran");
      } finally {
        agent.kill('SIGKILL');
      }
    },
  );

  test(
    "found in review: the askpass gets the display and the locale of the agent's environment, not what makes its programs run the user's code (BASH_ENV, Python's user site)",
    { skip: !rootTests && 'needs root (setpriv to another user)' },
    async () => {
      const { h, sys, answer } = askpassCase();
      // A root-owned wrapper in bash that asks through Python, as many dialogs do.
      const program = path.join(sys, 'kw-askpass');
      fs.writeFileSync(
        program,
        `#!/bin/bash\nexec /usr/bin/python3 -c 'import sys; sys.exit(0 if open("${answer}").read().strip() == "yes" else 1)'\n`,
        { mode: 0o755 },
      );
      const pwned = path.join(h.dir, 'attacker-ran');
      const bashEnv = path.join(h.dir, 'bash-env.sh');
      chownTree(h.dir, OTHER_UID);
      // The user's shell exported BASH_ENV (a file of the user's) before it started the agent.
      const env = { ...h.env, KEYWARD_ASKPASS: program, BASH_ENV: bashEnv, HOME: h.dir };
      const agent = await agentRunning(env, true);
      try {
        assert.equal(kwAs(['unlock'], env).code, 0);
        fs.writeFileSync(answer, 'yes');
        assert.equal(kwAs(['read', 'app/token'], env).stdout, 'askpass-held-value');
        // The attacker, a process of the user: BASH_ENV's file, and a usercustomize.py in its
        // Python user site, each answering yes.
        const site = spawnSync(
          'setpriv',
          [
            `--reuid=${OTHER_UID}`,
            `--regid=${OTHER_UID}`,
            '--clear-groups',
            '/usr/bin/python3',
            '-c',
            'import site; print(site.getusersitepackages())',
          ],
          { env: { HOME: h.dir }, encoding: 'utf8' },
        ).stdout.trim();
        assert.ok(site.startsWith(h.dir), site);
        const plant = spawnSync(
          'setpriv',
          [
            `--reuid=${OTHER_UID}`,
            `--regid=${OTHER_UID}`,
            '--clear-groups',
            'sh',
            '-c',
            `mkdir -p '${site}' && printf 'import os\\nopen("${pwned}", "w")\\nos._exit(0)\\n' > '${site}/usercustomize.py' && printf 'touch ${pwned}; exit 0\\n' > '${bashEnv}'`,
          ],
          { encoding: 'utf8' },
        );
        assert.equal(plant.status, 0, plant.stderr);
        fs.writeFileSync(answer, 'no');
        const no = kwAs(['read', 'app/token'], env);
        assert.equal(no.stdout, '', "released by the attacker's code in the askpass");
        assert.equal(fs.existsSync(pwned), false, "the attacker's code ran in the askpass");
      } finally {
        agent.kill('SIGKILL');
      }
    },
  );

  test(
    "found in review: the askpass's PATH names each root-only directory by its real path, and an empty one is no PATH",
    { skip: !rootTests && 'needs root (a directory only root can write)' },
    () => {
      const sys = rootOwned();
      const link = path.join(os.tmpdir(), `keyward-askpass-link-${process.pid}`);
      fs.symlinkSync(sys, link);
      cleanups.push(() => fs.rmSync(link, { force: true }));
      // A link on the way (as ~/.nix-profile is) could be pointed elsewhere once checked.
      assert.equal(
        askpassEnv({ PATH: `${link}:relative:/usr/bin` })['PATH'],
        `${fs.realpathSync(sys)}:/usr/bin`,
      );
      assert.equal(askpassEnv({ PATH: 'relative:' })['PATH'], '/nonexistent');
      assert.equal(askpassEnv({ BASH_ENV: '/x', DISPLAY: ':0' })['BASH_ENV'], undefined);
      assert.equal(askpassEnv({ BASH_ENV: '/x', DISPLAY: ':0' })['DISPLAY'], ':0');
    },
  );

  test(
    "found in review: an askpass program the agent can't read (to pin it) refuses the agent's start",
    { skip: !rootTests && 'needs root (setpriv to another user)' },
    async () => {
      const h = agentHome(REMEMBER);
      const sys = rootOwned();
      // Runnable, not readable, by the user: the agent can't hash it, so can't tell it replaced.
      const program = path.join(sys, 'kwask');
      fs.copyFileSync('/bin/false', program);
      fs.chmodSync(program, 0o711);
      chownTree(h.dir, OTHER_UID);
      const env = { ...h.env, KEYWARD_ASKPASS: program };
      await assert.rejects(agentRunning(env, true), /KEYWARD_ASKPASS=\S*kwask: it can't be read/);
    },
  );

  test('one replaced by `exit 0` after the agent started approves nothing: it is not run, and that is recorded', async () => {
    // A short timeout: with the askpass failed, the request waits for the console, then expires.
    const h = await agentWith(REMEMBER.replace('mode: confirm,', 'mode: confirm, timeout: 1s,'));
    const pwned = path.join(h.dir, 'ran-the-replacement');
    // Any process of the user can write the program; the file is replaced, not edited.
    const fresh = `${h.askpass}.new`;
    fs.writeFileSync(fresh, `#!/bin/sh\ntouch '${pwned}'\nexit 0\n`, { mode: 0o700 });
    fs.renameSync(fresh, h.askpass);
    const r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout, '');
    assert.equal(fs.existsSync(pwned), false, 'the replacement never ran');
    const failed = auditEntries(h).find((e) => e.type === 'approval.askpass_failed');
    assert.match(String(failed?.reason), /changed since the agent started: not run/);
  });
});

/**
 * node, made sparse to mib MiB: it still runs (the zeros follow the ELF image), and its hash
 * reads every byte.
 */
function sparseNode(h: AgentHome, mib: number): string {
  const big = path.join(h.dir, 'big-node');
  fs.copyFileSync(process.execPath, big);
  fs.truncateSync(big, mib * 1024 * 1024);
  fs.chmodSync(big, 0o755);
  return big;
}

describe("the caller's executable", () => {
  test('one being hashed (node, sparse to 500 MiB) does not hold the agent: others are answered while it is read', async () => {
    const h = await agentWith(REMEMBER);
    const big = sparseNode(h, 500);
    const pid = h.agentPid;
    assert.ok(pid !== undefined);
    // What the agent has read so far (every read and pread counts): its progress through the file.
    const readBytes = () =>
      Number(/^rchar: (\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1]);
    const before = readBytes();
    const p = oneProcess(h, big);
    h.answer('yes');
    // The read needs the hash (a grant remembered per process).
    const asked = p.ask({ op: 'read', name: 'app/token' });
    while (readBytes() < before + 16 * 1024 * 1024) await new Promise((r) => setImmediate(r));
    // Another client, while the hash is being taken.
    const status = await agentStatus(h.sock);
    assert.equal(status?.['locked'], false);
    const atStatus = readBytes();
    assert.deepEqual(await asked, { ok: true, value: 'remembered-value' });
    assert.ok(
      readBytes() - atStatus > 128 * 1024 * 1024,
      'the hash went on after the other client was answered',
    );
    p.end();
  });

  test("one too large to hash (a sparse file of 600 MiB) is asked about with its hash said unknown, never read on the agent's thread, and nothing is remembered", async () => {
    const h = await agentWith(REMEMBER);
    // Its hash (a grant remembered per process needs it) would take a core for seconds; a
    // terabyte's, for most of an hour. The person is asked, told the hash is unknown and why.
    const big = sparseNode(h, 600);
    const p = oneProcess(h, big);
    h.answer('yes');
    assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
      ok: true,
      value: 'remembered-value',
    });
    assert.equal(h.prompts().length, 1);
    assert.match(
      h.prompts()[0] ?? '',
      / Asked by .*its program's sha-256 is unknown: the caller's executable is larger than 512 MiB, too large to hash.*; this approval is for this request only\)/,
    );
    // REMEMBER keeps an answer for the process: not this one, whose program has no hash.
    h.answer('no');
    assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
      ok: false,
      code: 'APPROVAL_REJECTED',
    });
    assert.equal(h.prompts().length, 2, 'asked again: nothing was remembered');
    const requested = auditEntries(h).filter((e) => e.type === 'approval.requested');
    assert.equal(requested.length, 2);
    assert.match(String(requested[0]?.details?.['exeUnknown']), /too large to hash/);
    p.end();
  });
});

describe('found in review: a prompt ends with its request', () => {
  test('a requester that hangs up takes its askpass dialog with it; the request is ended as gone, not left to expire', async () => {
    const ASK =
      'version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm, timeout: 10m } }\n';
    const pids = (h: AgentHome) => path.join(h.dir, 'askpass-pids');
    const h = await agentWith(
      ASK,
      // A wrapper whose dialog is its child (the dialog's pid is the one said).
      (a) => `#!/bin/sh\nsleep 600 &\necho $! >> '${pids(a)}'\nwait\n`,
    );
    const reader = spawn(process.execPath, [BIN, 'read', 'app/token'], {
      env: h.env,
      stdio: 'ignore',
    });
    const exited = new Promise((r) => reader.once('exit', r));
    let pid = 0;
    await eventually(() => {
      pid = Number(fs.readFileSync(pids(h), { encoding: 'utf8', flag: 'a+' }).trim() || 0);
      return pid > 0;
    }, 'the askpass dialog');
    after(() => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // ended, as it should be
      }
    });
    reader.kill('SIGKILL');
    await exited;
    // The dialog is gone (a person can't answer a request whose answer would go nowhere).
    await eventually(() => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    }, 'the askpass program ended');
    const e = auditEntries(h).find((x) => x.type === 'approval.denied');
    assert.match(JSON.stringify(e?.details), /the requester went away/);
    // Nothing about it stays pending.
    assert.match(kw(['approvals'], { env: h.env }).stdout, /no pending requests/);
  });
});
