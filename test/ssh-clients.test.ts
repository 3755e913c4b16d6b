/**
 * keyward's SSH agent, driven by two client libraries people use from Python, asyncssh and
 * paramiko (Debian's packages), as their own agent tests drive an agent: the `query` extension,
 * listing, signing with every key type and verifying with the library's own code, and SHA-1
 * `ssh-rsa` refused (issue 18, item 11).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { agentHome, auditEntries, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import { kw, ROOT } from './helpers.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

// Debian's python3, where python3-asyncssh and python3-paramiko install (not a pyenv one).
const PYTHON = '/usr/bin/python3';
const hasLibs =
  fs.existsSync(PYTHON) &&
  spawnSync(PYTHON, ['-c', 'import asyncssh, paramiko'], { stdio: 'ignore' }).status === 0;
// CI installs them (.ci/run); a developer without them is told which, rather than a silent pass.
const skip =
  !hasLibs && process.env['CI'] !== 'true' ? 'needs python3-asyncssh and python3-paramiko' : false;

const ALLOW_KEYS =
  'version: 1\nrules:\n  - { name: keys, targets: ["**"], kind: key, decision: allow }\n';

interface ClientReport {
  extensions?: string[] | string | null;
  keys: string[];
  signed: Record<string, boolean>;
  sha1: string | null;
}

test(
  'asyncssh and paramiko query, list and sign with every key type; SHA-1 ssh-rsa is refused',
  { skip },
  async () => {
    const h = agentHome(ALLOW_KEYS);
    homes.push(h);
    for (const [name, type] of [
      ['k-ed', 'ed25519'],
      ['k-p256', 'ecdsa-p256'],
      ['k-p384', 'ecdsa-p384'],
      ['k-p521', 'ecdsa-p521'],
      ['k-rsa', 'rsa'],
    ] as const) {
      const r = kw(
        ['key', 'generate', name, '--type', type, ...(type === 'rsa' ? ['--bits', '2048'] : [])],
        {
          env: h.env,
        },
      );
      assert.equal(r.code, 0, r.stderr);
    }
    await startAgent(h);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    const sock = /SSH_AUTH_SOCK=(\S+?);?$/m.exec(kw(['ssh-env'], { env: h.env }).stdout)?.[1];
    assert.ok(sock);
    const r = spawnSync(PYTHON, [path.join(ROOT, 'test/fixtures/agent-clients.py'), sock], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { asyncssh: ClientReport; paramiko: ClientReport };
    const types = [
      'ecdsa-sha2-nistp256',
      'ecdsa-sha2-nistp384',
      'ecdsa-sha2-nistp521',
      'ssh-ed25519',
      'ssh-rsa',
    ];
    assert.deepEqual(
      got.asyncssh.extensions,
      ['query', 'session-bind@openssh.com'],
      'the query reply parses',
    );
    for (const [lib, rep] of Object.entries(got)) {
      assert.deepEqual([...rep.keys].sort(), types, `${lib} lists every key`);
      for (const t of types) assert.equal(rep.signed[t], true, `${lib} verified a ${t} signature`);
      assert.match(rep.sha1 ?? '', /^refused/, `${lib}: a SHA-1 ssh-rsa signature is refused`);
    }
    // And recorded, with the reason: one refusal per client library.
    const refused = auditEntries(h).filter(
      (e) => e.type === 'key.sign' && e.decision === 'deny' && e.target === 'k-rsa',
    );
    assert.deepEqual(
      refused.map((e) => e.reason),
      ['SHA-1 RSA signatures (ssh-rsa) are refused', 'SHA-1 RSA signatures (ssh-rsa) are refused'],
    );
  },
);
