/**
 * Vaults at scale (issue 17): a vault of many secrets opens, in one process, as many times as
 * needed, and an agent serves it (unlock, list, read). Each secure allocation (sodium_malloc)
 * holds several memory mappings until the garbage collector finalizes it, and a process has
 * 65,530: an open that allocated per secret aborted at about 16,000 secrets.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { agentHome, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import { kw, PASSPHRASE, ROOT } from './helpers.js';

const SECRETS = 20_000;
const ALLOW_ALL =
  'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n' +
  '  - { name: names, kind: list, targets: ["**"], decision: allow }\n';
const vaultModule = pathToFileURL(path.join(ROOT, 'dist/src/vault/index.js')).href;
const secureModule = pathToFileURL(path.join(ROOT, 'dist/src/lib/secure.js')).href;
const nameOf = (i: number) => `s/${String(i).padStart(6, '0')}`;

/** Runs an ES module script in a new Node process; its stdout, parsed as JSON. */
function script(body: string, home: string): unknown {
  const code = `
    const { Vault, vaultPaths } = await import(${JSON.stringify(vaultModule)});
    const { secureTake, secureFree } = await import(${JSON.stringify(secureModule)});
    const fs = await import('node:fs');
    const paths = vaultPaths(${JSON.stringify(home)});
    const pass = () => secureTake(Buffer.from(${JSON.stringify(PASSPHRASE)}));
    const maps = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').length;
    ${body}
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    encoding: 'utf8',
    maxBuffer: 1 << 20,
  });
  assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}: ${r.stderr.slice(-1500)}`);
  return JSON.parse(r.stdout);
}

describe(`a vault of ${SECRETS.toLocaleString('en')} secrets`, () => {
  let h: AgentHome;
  before(() => {
    h = agentHome(ALLOW_ALL);
    // One value buffer for all: the test's own allocations don't count against the process.
    script(
      `
      const v = Vault.open(paths, { passphrase: pass() });
      const value = secureTake(Buffer.alloc(12));
      for (let i = 0; i < ${SECRETS}; i++) {
        const n = String(i).padStart(6, '0');
        value.write('value-' + n);
        v.set('s/' + n, value);
      }
      secureFree(value);
      v.save();
      v.close();
      console.log('{}');
      `,
      h.home,
    );
  });
  after(async () => stopAgent(h));

  test('opens three times in one process, each time within a few thousand memory mappings', () => {
    const out = script(
      `
      const most = [];
      for (let round = 0; round < 3; round++) {
        const v = Vault.open(paths, { passphrase: pass() });
        const got = v.reveal(${JSON.stringify(nameOf(SECRETS - 1))});
        if (!got.equals(Buffer.from('value-' + ${JSON.stringify(nameOf(SECRETS - 1).slice(2))})))
          throw new Error('wrong value');
        secureFree(got);
        most.push(maps());
        v.close();
      }
      console.log(JSON.stringify(most));
      `,
      h.home,
    ) as number[];
    // A few hundred mappings for the runtime itself; nothing that grows with the vault.
    for (const m of out) assert.ok(m < 5_000, `mappings after an open: ${m}`);
  });

  test('an agent unlocks it, lists every name through the socket, and reads the last', async () => {
    await startAgent(h);
    const u = kw(['unlock'], { env: h.env });
    assert.equal(u.code, 0, u.stderr);
    const list = kw(['secret', 'list', '--json'], { env: h.env });
    assert.equal(list.code, 0, list.stderr);
    const names = (JSON.parse(list.stdout) as Array<{ name: string }>).map((e) => e.name);
    assert.equal(names.length, SECRETS);
    assert.equal(names[SECRETS - 1], nameOf(SECRETS - 1));
    const r = kw(['read', nameOf(SECRETS - 1)], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `value-${nameOf(SECRETS - 1).slice(2)}`);
  });
});
