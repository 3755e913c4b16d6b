/**
 * Secret memory that can't be locked is refused (docs/THREAT-MODEL.md). Any process of the user
 * can lower the locked-memory limit of another of its processes (prlimit needs no privilege for
 * that), and libsodium's sodium_malloc goes on silently where mlock fails: a secret could then be
 * swapped to disk. Tried as the attacker would, from a process of the agent's own user (root is
 * not limited: CAP_IPC_LOCK), so the agent and the attacker run as OTHER_UID.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { after, test } from 'node:test';
import { agentHome, withoutAgent } from './agent-helpers.js';
import { agentRunning, asUser, chownTree, kwAs, OTHER_UID } from './as-user.js';
import { BIN, rootTests } from './helpers.js';

const agents: ChildProcess[] = [];
after(() => {
  for (const a of agents) a.kill('SIGKILL');
});

const skip = !rootTests && 'needs root (setpriv to another user)';
const ALLOW = 'version: 1\nrules:\n  - { name: everything, targets: ["**"], decision: allow }\n';
const VALUE = 'memlock-value-7c1e9a';

/** prlimit as the agent's own user: what any of that user's processes can do. */
function lowerLimitAs(args: string[]): void {
  const [cmd, ...pre] = asUser as [string, ...string[]];
  const r = spawnSync(cmd, [...pre, 'prlimit', ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, `prlimit as the same user: ${r.stderr}`);
}

test(
  "found in review: a process of the agent's user that lowers its locked-memory limit gets no secret held in memory that could swap: the next unlock is refused, and says why",
  { skip },
  async () => {
    const h = agentHome(ALLOW);
    chownTree(h.dir, OTHER_UID);
    assert.equal(kwAs(['secret', 'set', 'app/tok'], h.env, VALUE).code, 0);
    const agent = await agentRunning(h.env, true);
    agents.push(agent);
    assert.equal(kwAs(['unlock'], h.env).code, 0);
    assert.equal(kwAs(['read', 'app/tok'], h.env).stdout, VALUE, 'the agent serves reads');
    // The attacker, as the same user: the agent's limit down to nothing, soft and hard.
    lowerLimitAs(['--pid', String(agent.pid), '--memlock=0:0']);
    // The person locks and unlocks as usual: the unlock would put the vault's keys in memory
    // that is not locked. Refused, with the reason.
    assert.equal(kwAs(['lock'], h.env).code, 0);
    const u = kwAs(['unlock'], h.env);
    assert.equal(u.code, 5, u.stderr);
    assert.match(
      u.stderr,
      /could be swapped to disk: the kernel would not lock it \(the limit on locked memory, RLIMIT_MEMLOCK, is 0 bytes/,
    );
    const r = kwAs(['read', 'app/tok'], h.env);
    assert.notEqual(r.code, 0);
    assert.ok(!r.stdout.includes(VALUE), 'a value served from a vault opened in unlocked memory');
    assert.equal(agent.exitCode, null, 'the agent still runs (locked)');

    // A command that opens the vault itself, started under such a limit: the same refusal.
    const [cmd, ...pre] = asUser as [string, ...string[]];
    const direct = spawnSync(
      cmd,
      [...pre, 'prlimit', '--memlock=0:0', process.execPath, BIN, 'read', 'app/tok'],
      { env: withoutAgent(h), encoding: 'utf8' },
    );
    assert.equal(direct.status, 5, direct.stderr);
    assert.match(direct.stderr, /MEMORY_NOT_LOCKED|could be swapped to disk/);
    assert.ok(!direct.stdout.includes(VALUE));
  },
);

test(
  "an agent started where memory can not be locked refuses to start, says why, and exits (none at all, or room for OpenSSL's heap alone)",
  { skip },
  () => {
    const h = agentHome(ALLOW);
    chownTree(h.dir, OTHER_UID);
    const [cmd, ...pre] = asUser as [string, ...string[]];
    for (const [limit, said] of [
      [
        0,
        /OpenSSL's secure heap .* could not be locked in memory \(RLIMIT_MEMLOCK\), so keys could be swapped to disk/,
      ],
      // The heap locks; the first secret buffer after it can't be (found in review: the agent
      // printed the refusal and went on running, its sockets listening).
      [1024 * 1024, /could be swapped to disk/],
    ] as const) {
      const r = spawnSync(
        cmd,
        [
          ...pre,
          'prlimit',
          `--memlock=${limit}:${limit}`,
          process.execPath,
          BIN,
          'agent',
          'run',
          '--no-console',
        ],
        { env: h.env, encoding: 'utf8', timeout: 120_000 },
      );
      assert.equal(r.status, 5, `limit ${limit}: ${r.stderr}`);
      assert.match(r.stderr, said);
      assert.doesNotMatch(r.stderr, /listening on/);
    }
  },
);
