/**
 * `keyward read NAME` through an agent talks over a blocking socket of its own
 * (agent/read-blocking.ts), without node:net: what it prints and refuses is the async client's,
 * and the process never loads node:net (which is most of what it would cost: docs/PERFORMANCE.md,
 * "keyward read").
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { stopAgent, unlockedAgent, type AgentHome } from './agent-helpers.js';
import { BIN, kw } from './helpers.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

const ALLOW_APP =
  'version: 1\nrules:\n  - { name: app, targets: ["app/**"], decision: allow }\n' +
  '  - { name: no, targets: ["**"], decision: deny }\n';

test('read through the agent loads no node:net, through a pipe as through a file; it prints the value, and refusals as before', async () => {
  const h = await unlockedAgent(ALLOW_APP, homes);
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'tok-123' }).code, 0);
  assert.equal(kw(['secret', 'set', 'other/x'], { env: h.env, input: 'no' }).code, 0);
  // bin/keyward.js run as `keyward read NAME`, by a wrapper that says at exit whether
  // node:net was ever loaded in the process.
  const wrapper = path.join(h.dir, 'read-wrapper.cjs');
  fs.writeFileSync(
    wrapper,
    `const fs = require('node:fs');\n` +
      `process.on('exit', () => fs.writeSync(2, '\\nnet loaded: ' + process.moduleLoadList.includes('NativeModule net') + '\\n'));\n` +
      `process.argv = [process.argv[0], ${JSON.stringify(BIN)}, 'read', process.env.READ_NAME];\n` +
      `require(${JSON.stringify(BIN)});\n`,
  );
  const env: NodeJS.ProcessEnv = { ...h.env, READ_NAME: 'app/token' };
  delete env['NODE_OPTIONS'];
  // Standard output a pipe (Node would make it a net.Socket if asked for process.stdout).
  const piped = spawnSync(process.execPath, [wrapper], { env, encoding: 'utf8' });
  assert.equal(piped.status, 0, piped.stderr);
  assert.equal(piped.stdout, 'tok-123');
  assert.match(piped.stderr, /net loaded: false/);
  // A refusal: the policy's, with its exit code and message, and still no node:net.
  const denied = spawnSync(process.execPath, [wrapper], {
    env: { ...env, READ_NAME: 'other/x' },
    encoding: 'utf8',
  });
  assert.equal(denied.status, 6, denied.stderr);
  assert.match(denied.stderr, /denied by policy: rule no matches and decides: deny/);
  assert.equal(denied.stdout, '');
  // A name the vault does not hold: exit 3, as the async client said it.
  const missing = kw(['read', 'app/none'], { env: h.env });
  assert.equal(missing.code, 3, missing.stderr);
  assert.match(missing.stderr, /no secret named app\/none/);
});
