/**
 * The command line around approvals (issue 16, "the CLI side"): a waiting command says so at
 * once, `approvals` shows the time left, an askpass program that can't be run is refused at start
 * and in doctor, a failing one is recorded, and a requester that hangs up takes its request back.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import {
  agentHome,
  auditEntries,
  startAgent,
  stopAgent,
  unlockedAgent,
  type AgentHome,
} from './agent-helpers.js';
import { waitingCommand } from './console-helpers.js';
import { eventually, kw, straced } from './helpers.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

async function running(env: NodeJS.ProcessEnv, args: string[] = []): Promise<AgentHome> {
  const h = agentHome();
  homes.push(h);
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'the-value-1234' }).code, 0);
  await startAgent(h, env, args);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  return h;
}

/** Until the agent no longer lists this request (it answers after the close it saw). */
async function gone(h: AgentHome, id: string): Promise<void> {
  await eventually(() => {
    const list = JSON.parse(kw(['approvals', '--json'], { env: h.env }).stdout) as Array<{
      id: string;
    }>;
    return !list.some((p) => p.id === id);
  }, `request ${id} to be gone`);
}

test('a command waiting for approval says so at once: id, time left, where to approve', async () => {
  const h = await running({ KEYWARD_ASKPASS: '', SSH_ASKPASS: '' });
  const w = waitingCommand(['read', 'app/token'], h.env);
  const id = await w.id;
  const list = kw(['approvals'], { env: h.env }).stdout;
  assert.match(
    list,
    new RegExp(`^${id}  read app/token  \\(rule default-secrets, confirm, \\d+ s left\\)`),
  );
  assert.equal(kw(['deny', id], { env: h.env }).code, 0);
  const r = await w.done;
  assert.equal(r.code, 6);
  assert.match(
    r.stderr,
    new RegExp(
      `keyward: waiting for approval of request ${id} \\(read "app/token", confirm, \\d+ s left\\)\\n` +
        `keyward: approve it in the console, http://localhost:\\d+/#/approvals, or with: keyward approve ${id}\\n`,
    ),
  );
});

test("an askpass program that can't be run is an error at agent start and in doctor", () => {
  const h = agentHome();
  homes.push(h);
  const missing = path.join(h.dir, 'no-such-askpass');
  const r = kw(['agent', 'start'], { env: { ...h.env, KEYWARD_ASKPASS: missing } });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /KEYWARD_ASKPASS=.*no-such-askpass: .* is not an executable file/);
  assert.match(r.stderr, /hint: .*approve in the console/);
  assert.equal(kw(['status'], { env: h.env }).code, 5, 'no agent was started');
  const onPath = kw(['agent', 'start'], { env: { ...h.env, SSH_ASKPASS: 'ssh-askpass-not-here' } });
  assert.equal(onPath.code, 2);
  assert.match(onPath.stderr, /SSH_ASKPASS=ssh-askpass-not-here: .*not found on PATH/);
  const notExec = path.join(h.dir, 'not-executable');
  fs.writeFileSync(notExec, '#!/bin/sh\nexit 0\n', { mode: 0o600 });
  const run = kw(['agent', 'run'], { env: { ...h.env, KEYWARD_ASKPASS: notExec } });
  assert.equal(run.code, 2);
  const doc = kw(['doctor', '--json'], { env: { ...h.env, KEYWARD_ASKPASS: missing } });
  const checks = JSON.parse(doc.stdout) as Array<{ id: string; status: string; message: string }>;
  const c = checks.find((x) => x.id === 'askpass');
  assert.equal(c?.status, 'fail');
  assert.match(c?.message ?? '', /not an executable file/);
});

test('a failing askpass program is recorded with its reason; the console still can approve', async () => {
  const h = agentHome();
  homes.push(h);
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'the-value-1234' }).code, 0);
  const broken = path.join(h.dir, 'broken-askpass');
  fs.writeFileSync(broken, '#!/bin/sh\nexit 3\n', { mode: 0o700 });
  await startAgent(h, { KEYWARD_ASKPASS: broken });
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  const w = waitingCommand(['read', 'app/token'], h.env);
  const id = await w.id;
  // The failure is recorded before the request is shown as still pending.
  let failed: ReturnType<typeof auditEntries>[number] | undefined;
  await eventually(() => {
    failed = auditEntries(h).find((e) => e.type === 'approval.askpass_failed');
    return failed !== undefined;
  }, 'the askpass failure record');
  assert.equal(failed?.reason, 'the askpass program exited with status 3');
  assert.equal(failed?.details['request'], id);
  assert.equal(kw(['deny', id], { env: h.env }).code, 0);
  assert.equal((await w.done).code, 6);
});

test('without a console, a failing askpass program denies at once, with its reason', async () => {
  const h = agentHome();
  homes.push(h);
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'the-value-1234' }).code, 0);
  const killed = path.join(h.dir, 'killed-askpass');
  fs.writeFileSync(killed, '#!/bin/sh\nkill -9 $$\n', { mode: 0o700 });
  await startAgent(h, { KEYWARD_ASKPASS: killed }, ['--no-console']);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  const r = kw(['read', 'app/token'], { env: h.env });
  assert.equal(r.code, 6);
  const entries = auditEntries(h);
  assert.equal(
    entries.find((e) => e.type === 'approval.askpass_failed')?.reason,
    'the askpass program was killed by SIGKILL',
  );
  assert.equal(
    entries.find((e) => e.type === 'approval.denied')?.details['askpass'],
    'was killed by SIGKILL',
  );
});

test('a requester that goes away takes its request with it', async () => {
  const h = await running({ KEYWARD_ASKPASS: '', SSH_ASKPASS: '' });
  const w = waitingCommand(['read', 'app/token'], h.env);
  const id = await w.id;
  w.kill();
  await w.done;
  await gone(h, id);
  const denied = auditEntries(h).find((e) => e.type === 'approval.denied');
  assert.equal(denied?.details['reason'], 'the requester went away');
});

test('read NAME, lock, agent start, agent run and agent stop load no command-line parser: their own file, never main.js or commander', async () => {
  const h = await unlockedAgent(
    'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    homes,
  );
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'quick-value' }).code, 0);
  // The files the CLI process opens (the agent it talks to is another process, untraced).
  const opened = (args: string[]) => {
    const r = straced(['-e', 'trace=openat,open'], args, h.env);
    const files = [...r.trace.matchAll(/open(?:at)?\([^"]*"([^"]+)"/g)].map((m) => m[1] ?? '');
    const bundled = (f: string) => files.some((x) => x.endsWith(`/dist/src/bundle/${f}`));
    return { ...r, files, bundled };
  };
  const shapes: Array<[string[], string, number]> = [
    [['read', 'app/token'], 'quick.cjs', 0],
    // An agent already answers: the command refuses before it spawns anything to trace.
    [['agent', 'start'], 'quick-start.cjs', 5],
    // The agent itself, as `agent start` runs it: refused too (one agent a home; traced, it
    // would refuse the tracer first, which --allow-debugger lets by).
    [['--allow-debugger', 'agent', 'run', '--no-console'], 'agent-run.js', 5],
    [['lock'], 'quick.cjs', 0],
    [['agent', 'stop'], 'quick.cjs', 0],
  ];
  for (const [args, own, code] of shapes) {
    const r = opened(args);
    const what = args.join(' ');
    assert.equal(r.code, code, `${what}: ${r.stderr}`);
    assert.ok(r.bundled(own), `${what} opened ${own}`);
    assert.ok(!r.bundled('main.js'), `${what} loaded main.js`);
    assert.ok(!r.files.some((f) => f.includes('/commander/')), `${what} loaded commander`);
  }
  assert.equal(kw(['status'], { env: h.env }).code, 5, 'agent stop stopped it');
  // The same command with an option goes the long way, and says the same.
  await startAgent(h);
  const long = opened(['agent', 'start', '--no-console']);
  assert.equal(long.code, 5);
  assert.ok(long.bundled('main.js'));
  assert.match(long.stderr, /an agent already answers on/);
});
