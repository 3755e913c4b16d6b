/**
 * A remembered approval covers what the person saw, and nothing a lock ended: one process of the
 * user (test/fixtures/one-process.ts) asks for several things in turn after one was approved.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { after, describe, test } from 'node:test';
import { agentHome, auditEntries, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import { BIN, kw, ROOT } from './helpers.js';

const REMEMBER =
  'version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm, remember: { scope: process, for: 10m } } }\n';

const homes: AgentHome[] = [];
after(async () => {
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

describe('every grant ends at lock', () => {
  test("a request a lock ends is no probe: it does not count toward the next unlock's breaker", async () => {
    // The askpass has the agent locked before it answers, as a process of the user that sends
    // `lock` while a person decides: the lock ends the request.
    const h = await agentWith(
      REMEMBER,
      (x) =>
        `#!/bin/sh\nprintf '%s\\n' "$1" >> '${path.join(x.dir, 'prompts')}'\n` +
        `if [ -e '${path.join(x.dir, 'lock-first')}' ]; then rm -f '${path.join(x.dir, 'lock-first')}'; '${process.execPath}' '${BIN}' lock >/dev/null 2>&1; exit 0; fi\n` +
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

describe("the caller's executable", () => {
  test("one too large to hash (a sparse file of 600 MiB) is refused at once where a hash is needed, not read on the agent's thread", async () => {
    const h = await agentWith(REMEMBER);
    // node, made sparse to 600 MiB: it still runs (the zeros follow the ELF image), and its hash
    // (needed for a grant remembered per process) would take the agent's thread for seconds;
    // a terabyte, for most of an hour.
    const big = path.join(h.dir, 'big-node');
    fs.copyFileSync(process.execPath, big);
    fs.truncateSync(big, 600 * 1024 * 1024);
    fs.chmodSync(big, 0o755);
    const p = oneProcess(h, big);
    h.answer('yes');
    assert.deepEqual(await p.ask({ op: 'read', name: 'app/token' }), {
      ok: false,
      code: 'POLICY_DENIED',
    });
    assert.equal(h.prompts().length, 0, 'nobody was asked');
    const denied = auditEntries(h).find((e) => e.type === 'secret.read' && e.decision === 'deny');
    assert.match(String(denied?.reason), /is larger than 512 MiB, too large to hash/);
    p.end();
  });
});
