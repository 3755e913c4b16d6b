/**
 * Tamper evidence that holds (docs/THREAT-MODEL.md), tried as a same-user attacker would: policy
 * files deleted or put back to an older version, an audit log deleted, truncated or healed.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { agentHome, auditEntries, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import { kw } from './helpers.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

const DENY_GITHUB =
  'version: 1\nrules:\n' +
  '  - { name: no-github, targets: ["github/**"], decision: deny }\n' +
  '  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n';
const ALLOW_GITHUB =
  'version: 1\nrules:\n  - { name: github-ok, targets: ["github/**"], decision: allow }\n';

async function unlocked(policy: string): Promise<AgentHome> {
  const h = agentHome(policy);
  homes.push(h);
  await startAgent(h);
  const u = kw(['unlock'], { env: h.env });
  assert.equal(u.code, 0, u.stderr);
  return h;
}

function relock(h: AgentHome): void {
  assert.equal(kw(['lock'], { env: h.env }).code, 0);
  const u = kw(['unlock'], { env: h.env });
  assert.equal(u.code, 0, u.stderr);
}

describe('a policy that cannot be downgraded', () => {
  test('deleting every policy file changes no decision after lock and unlock; the drift is recorded and shown', async () => {
    const h = await unlocked(DENY_GITHUB);
    kw(['secret', 'set', 'github/token'], { env: h.env, input: 'ghp_downgraded' });
    h.answer('yes'); // were the default confirm rule in force, the read would pass
    let r = kw(['read', 'github/token'], { env: h.env });
    assert.equal(r.code, 6, r.stderr);
    fs.rmSync(path.join(h.home, 'policy'), { recursive: true, force: true });
    fs.rmSync(path.join(h.home, 'policy.yaml'), { force: true });
    relock(h);
    r = kw(['read', 'github/token'], { env: h.env });
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, /denied by policy: rule no-github matches and decides: deny/);
    assert.equal(r.stdout, '');
    assert.equal(h.prompts().length, 0, 'nobody was even asked');
    const drift = auditEntries(h).filter((e) => e.type === 'policy.drift');
    assert.ok(drift.length > 0, 'policy.drift recorded');
    assert.match(
      drift.at(-1)?.reason ?? '',
      /the policy history is missing; policy.yaml is missing/,
    );
    assert.match(kw(['status'], { env: h.env }).stdout, /WARNING: the policy files were changed/);
    assert.match(kw(['doctor'], { env: h.env }).stdout, /WARN\s+policy\s+the policy files differ/);
    const show = kw(['policy', 'show', '--verify'], { env: h.env });
    assert.equal(show.code, 8, show.stderr);
    assert.equal(show.stdout, DENY_GITHUB, 'what is in force, from the vault');
  });

  test('a policy history put back to an older valid version changes no decision; the drift is recorded', async () => {
    const h = agentHome(ALLOW_GITHUB);
    homes.push(h);
    const hist = path.join(h.home, 'policy', 'history');
    const older = fs.readdirSync(hist).sort().at(-1) as string;
    const olderText = fs.readFileSync(path.join(hist, older), 'utf8');
    const f = path.join(h.dir, 'deny.yaml');
    fs.writeFileSync(f, DENY_GITHUB);
    assert.equal(kw(['policy', 'apply', f], { env: h.env }).code, 0);
    kw(['secret', 'set', 'github/token'], { env: h.env, input: 'ghp_rolled_back' });
    // The attacker removes the newer version and puts the older one back in place.
    for (const n of fs.readdirSync(hist)) if (n > older) fs.rmSync(path.join(hist, n));
    fs.writeFileSync(path.join(h.home, 'policy.yaml'), olderText);
    await startAgent(h);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    const r = kw(['read', 'github/token'], { env: h.env });
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, /rule no-github/);
    const drift = auditEntries(h).filter((e) => e.type === 'policy.drift');
    assert.match(
      drift.at(-1)?.reason ?? '',
      /the policy history ends at version \d+ \(\w+\), not at the applied version \d+/,
    );
  });
});
