/**
 * Sealed project files opened through the agent (docs/PROJECT-FILES.md, "Opening through the
 * agent"): two people's homes and a CI home, each with its own agent, read one repository's
 * sealed file under their own policy, approval and audit log.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  auditEntries,
  kwAsync,
  pendingId,
  scanMemory,
  stopAgent,
  unlockedAgent,
  withoutAgent,
  type AgentHome,
} from './agent-helpers.js';
import { sodium } from '../src/lib/sodium.js';
import { BIN, eventually, everyByteUnder, kw, rootTests } from './helpers.js';
import { serveClient } from './mcp-helpers.js';

const AGE_KEYGEN = ['/usr/bin/age-keygen', '/usr/local/bin/age-keygen'].find((p) =>
  fs.existsSync(p),
);
const skip = AGE_KEYGEN || process.env['CI'] ? false : 'age is not installed (CI installs it)';
const PROJECT = 'github.com/acme/api';
const VALUES: Record<string, string> = {
  DATABASE_URL: 'postgres://app:Pr0ject-db-pw@db.internal/app',
  API_TOKEN: 'tok_project_value_0123456789',
  DB_PASSWORD: 'very-secret-project-password',
  SIGNING_KEY: 'signing-key-of-the-project-0042',
};
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

/** Each value allowed, except two, which need the passphrase (once per run for both). */
const POLICY = `version: 1
rules:
  - name: project-password
    targets: ["project:${PROJECT}/DB_PASSWORD", "project:${PROJECT}/SIGNING_KEY"]
    decision: approve
    approve: { mode: passphrase, timeout: 2m }
  - name: project-values
    targets: ["project:${PROJECT}/*"]
    decision: allow
`;

describe('sealed project files through the agent', { skip }, () => {
  const homes: AgentHome[] = [];
  const repo = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-repo-'));
  const sealed = path.join(repo, '.keyward.env');
  let alice: AgentHome;
  let bob: AgentHome;
  let ci: AgentHome;
  let ciRecipient = '';
  const identity = (h: AgentHome) => {
    const r = kw(['project', 'identity'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  /** `read --project NAME --file FILE`, as h. */
  const readAs = (h: AgentHome, name: string, file: string) =>
    kwAsync(['read', '--project', name, '--file', file], h.env);

  before(async () => {
    execFileSync('git', ['init', '-q', repo]);
    execFileSync('git', ['-C', repo, 'remote', 'add', 'origin', `https://${PROJECT}.git`]);
    alice = await unlockedAgent(POLICY, homes);
    bob = await unlockedAgent(POLICY, homes);
    ci = await unlockedAgent(POLICY, homes);
    // CI's recipient is an age-keygen key pair; its secret half reaches CI as a file.
    const keyFile = path.join(ci.dir, 'ci.key');
    execFileSync(AGE_KEYGEN ?? 'age-keygen', ['-o', keyFile], { stdio: 'pipe' });
    fs.chmodSync(keyFile, 0o600);
    ciRecipient = /# public key: (age1\S+)/.exec(fs.readFileSync(keyFile, 'utf8'))?.[1] ?? '';
    const imported = kw(['project', 'identity', '--import', keyFile], { env: ci.env });
    assert.equal(imported.code, 0, imported.stderr);
    assert.equal(imported.stdout.trim(), ciRecipient);
    // alice seals the team's .env for herself, bob and CI, then deletes the plain file.
    const env = path.join(repo, '.env');
    fs.writeFileSync(
      env,
      Object.entries(VALUES)
        .map(([k, v]) => `${k}=${v}\n`)
        .join(''),
    );
    const s = kw(['seal', env, '--recipient', identity(bob), '--recipient', ciRecipient], {
      env: alice.env,
    });
    assert.equal(s.code, 0, s.stderr);
    fs.rmSync(env);
  });
  after(async () => {
    for (const h of homes) await stopAgent(h);
  });

  test('each recipient reads through their own agent; the target is the project the file names', async () => {
    for (const h of [alice, bob, ci]) {
      const r = await kwAsync(['read', '--project', 'API_TOKEN', '--file', sealed], h.env);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, VALUES['API_TOKEN']);
      const rec = auditEntries(h).filter((e) => e.type === 'secret.read' && e.decision === 'allow');
      assert.equal(rec.at(-1)?.target, `project:${PROJECT}/API_TOKEN`);
      assert.equal(rec.at(-1)?.details['rule'], 'project-values');
    }
    // Found from the working directory, up to the repository's top.
    const sub = path.join(repo, 'src', 'deep');
    fs.mkdirSync(sub, { recursive: true });
    const r = kw(['read', '--project', 'DATABASE_URL'], { env: bob.env, cwd: sub });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, VALUES['DATABASE_URL']);
  });

  test('the nearest .keyward.env is used only if it is yours alone: one another user planted above is refused', () => {
    const shared = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-shared-'));
    fs.chmodSync(shared, 0o1777);
    const below = path.join(shared, 'work');
    fs.mkdirSync(below);
    const planted = path.join(shared, '.keyward.env');
    fs.copyFileSync(sealed, planted);
    fs.chmodSync(planted, 0o666);
    const r = kw(['read', '--project', 'API_TOKEN'], { env: bob.env, cwd: below });
    assert.equal(r.code, 8, r.stderr);
    assert.match(r.stderr, /writable by others: not used/);
    if (rootTests) {
      fs.chmodSync(planted, 0o644);
      fs.chownSync(planted, 1234, 1234);
      const other = kw(['run', '--project', '--', 'true'], { env: bob.env, cwd: below });
      assert.equal(other.code, 8, other.stderr);
      assert.match(other.stderr, /owned by uid 1234: not used/);
    }
  });

  test('a copy elsewhere is still its project: the name comes from under the MAC, never the path', async () => {
    const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-scratch-'));
    const copy = path.join(elsewhere, '.keyward.env');
    fs.copyFileSync(sealed, copy);
    const r = await kwAsync(['read', '--project', 'API_TOKEN', '--file', copy], bob.env);
    assert.equal(r.code, 0, r.stderr);
    const last = auditEntries(bob)
      .filter((e) => e.type === 'secret.read')
      .at(-1);
    assert.equal(last?.target, `project:${PROJECT}/API_TOKEN`);
    // And the password is still behind its approval there: the copy does not get round it.
    const p = kwAsync(['read', '--project', 'DB_PASSWORD', '--file', copy], bob.env);
    const id = await pendingId(bob);
    assert.equal(kw(['deny', id], { env: bob.env }).code, 0);
    assert.equal((await p).code, 6);
  });

  test('run --project gives each value under its name, and waits for the approval the policy asks, once for the run', async () => {
    const script =
      'for v in DATABASE_URL API_TOKEN DB_PASSWORD SIGNING_KEY; do eval "printf %s \\"\\$$v\\"" | sha256sum | cut -c1-64; done';
    const run = kwAsync(['run', '--project', sealed, '--', 'sh', '-c', script], alice.env);
    const id = await pendingId(alice);
    const waiting = JSON.parse(kw(['approvals', '--json'], { env: alice.env }).stdout) as Array<{
      target: string;
      also?: string[];
    }>;
    assert.equal(waiting.length, 1);
    assert.equal(waiting[0]?.target, `project:${PROJECT}/DB_PASSWORD`);
    // One approval covers both values of its rule, and says so: the request names the other.
    assert.deepEqual(waiting[0]?.also, [`project:${PROJECT}/SIGNING_KEY`]);
    assert.match(kw(['approvals'], { env: alice.env }).stdout, /and also "?project:.*SIGNING_KEY/);
    const ok = kw(['approve', id], { env: alice.env });
    assert.equal(ok.code, 0, ok.stderr);
    const r = await run;
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.deepEqual(r.stdout.trim().split('\n'), [
      sha(VALUES['DATABASE_URL'] ?? ''),
      sha(VALUES['API_TOKEN'] ?? ''),
      sha(VALUES['DB_PASSWORD'] ?? ''),
      sha(VALUES['SIGNING_KEY'] ?? ''),
    ]);
    const asked = auditEntries(alice).filter((e) => e.type === 'approval.requested');
    assert.equal(asked.length, 1, 'one approval for the run');
    const delivered = auditEntries(alice).filter((e) => e.type === 'credential.deliver');
    assert.deepEqual(
      delivered.map((e) => e.target).sort(),
      Object.keys(VALUES)
        .map((n) => `project:${PROJECT}/${n}`)
        .sort(),
    );
    // A value printed by the child is masked, as a vault secret's is (the password is asked
    // for again: its rule remembers nothing).
    const showing = kwAsync(
      ['run', '--project', sealed, '--', 'sh', '-c', 'printf %s "$API_TOKEN"'],
      alice.env,
    );
    assert.equal(kw(['approve', await pendingId(alice)], { env: alice.env }).code, 0);
    const shown = await showing;
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /concealed by keyward/);
    assert.ok(!shown.stdout.includes(VALUES['API_TOKEN'] ?? ''), shown.stdout);
  });

  test('removed, bob can open no new version (exit 4), while CI still can', async () => {
    const bobRecipient = identity(bob);
    const rm = kw(['project', 'recipients', 'rm', bobRecipient, sealed], { env: alice.env });
    assert.equal(rm.code, 0, rm.stderr);
    const r = await readAs(bob, 'API_TOKEN', sealed);
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /not a recipient/);
    const check = kw(['project', 'check', sealed, '--json'], { env: bob.env });
    assert.equal(check.code, 4);
    assert.equal((JSON.parse(check.stdout) as { recipient: boolean }).recipient, false);
    const c = await readAs(ci, 'API_TOKEN', sealed);
    assert.equal(c.code, 0, c.stderr);
    assert.equal(c.stdout, VALUES['API_TOKEN']);
    const mine = kw(['project', 'check', sealed, '--json'], { env: ci.env });
    assert.equal(mine.code, 0, mine.stderr);
    assert.deepEqual(
      (JSON.parse(mine.stdout) as { recipient: boolean; mac: string; project: string }).mac,
      'verified',
    );
  });

  test('tampering is exit 8 before anyone is asked: a flipped byte, swapped values, a removed line, an edited recipient', async () => {
    const text = fs.readFileSync(sealed, 'utf8');
    const lines = text.slice(0, -1).split('\n');
    const at = (n: string) => lines.findIndex((l) => l.startsWith(`${n}=`));
    const [a, b] = [at('API_TOKEN'), at('DB_PASSWORD')];
    const swapped = [...lines];
    swapped[a] = `API_TOKEN=${(lines[b] ?? '').split('=')[1] ?? ''}`;
    swapped[b] = `DB_PASSWORD=${(lines[a] ?? '').split('=')[1] ?? ''}`;
    const flipped = Buffer.from(text);
    const mid = text.indexOf('API_TOKEN=kw:') + 20;
    flipped[mid] = (flipped[mid] ?? 0) === 0x41 ? 0x42 : 0x41;
    const cases: Record<string, string> = {
      'a flipped byte': flipped.toString(),
      'values swapped between names': `${swapped.join('\n')}\n`,
      'a line removed': `${lines.filter((_, i) => i !== at('DATABASE_URL')).join('\n')}\n`,
      'a recipient edited': `${lines.filter((l) => l !== `recipient: ${ciRecipient}`).join('\n')}\n`,
      'the project renamed': text.replace(`project: ${PROJECT}`, 'project: scratch'),
    };
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-tampered-'));
    const before = auditEntries(alice).length;
    for (const [what, t] of Object.entries(cases)) {
      const f = path.join(dir, '.keyward.env');
      fs.writeFileSync(f, t);
      const r = await readAs(alice, 'API_TOKEN', f);
      assert.equal(r.code, 8, `${what}: ${r.stderr}`);
      assert.match(r.stderr, /damaged/, what);
      const check = await kwAsync(['project', 'check', f], alice.env);
      assert.equal(check.code, 8, `${what} (check): ${check.stderr}`);
    }
    // Nothing was asked of a person, and nothing released.
    assert.deepEqual(
      auditEntries(alice)
        .slice(before)
        .filter((e) => e.type.startsWith('approval.') || (e.target ?? '').startsWith('project:')),
      [],
    );
  });

  /**
   * A sealed file made outside keyward, with age and libsodium as docs/PROJECT-FILES.md
   * describes, the way an attacker would: anyone can seal to a public recipient, with a valid
   * MAC, any id and any names. Written as .keyward.env in a new directory; its path.
   */
  const forge = (recipient: string, values: Record<string, string>, id?: Buffer): string => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-forged-'));
    const dataKey = Buffer.alloc(32);
    sodium.randombytes_buf(dataKey);
    const keyFile = execFileSync('age', ['-r', recipient], { input: dataKey });
    const sub = (n: number) => {
      const k = Buffer.alloc(32);
      sodium.crypto_kdf_derive_from_key(k, n, Buffer.from('kwproj01'), dataKey);
      return k;
    };
    if (!id) {
      id = Buffer.alloc(16);
      sodium.randombytes_buf(id);
    }
    const fileId = id;
    const seal = (name: string, value: string) => {
      const nonce = Buffer.alloc(24);
      sodium.randombytes_buf(nonce);
      const out = Buffer.alloc(value.length + 16);
      sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out,
        Buffer.from(value),
        Buffer.concat([Buffer.from('keyward-project 1\n'), fileId, Buffer.from(name)]),
        null,
        nonce,
        sub(1),
      );
      return `${name}=kw:${Buffer.concat([nonce, out]).toString('base64url')}`;
    };
    const text = [
      fs.readFileSync(sealed, 'utf8').split('\n')[0],
      'keyward-project: 1',
      `project: ${PROJECT}`,
      `id: ${fileId.toString('base64url')}`,
      `recipient: ${recipient}`,
      `key: ${keyFile.toString('base64url')}`,
      ...Object.entries(values).map(([n, v]) => seal(n, v)),
      '',
    ].join('\n');
    const mac = Buffer.alloc(32);
    sodium.crypto_auth(mac, Buffer.from(text), sub(2));
    const file = path.join(dir, '.keyward.env');
    fs.writeFileSync(file, `${text}mac: ${mac.toString('base64url')}\n`);
    return file;
  };

  test('a file sealed outside keyward that sets NODE_OPTIONS is refused before anything runs or is asked', async () => {
    const forged = forge(identity(alice), {
      NODE_OPTIONS: `--require ${path.join(os.tmpdir(), 'steal.js')}`,
    });
    const before = auditEntries(alice).length;
    const r = await kwAsync(['run', '--project', forged, '--', 'true'], alice.env);
    assert.equal(r.code, 8, r.stderr);
    assert.match(r.stderr, /NODE_OPTIONS/);
    assert.deepEqual(
      auditEntries(alice)
        .slice(before)
        .filter((e) => e.type.startsWith('approval.') || e.type === 'credential.deliver'),
      [],
    );
  });

  test("a remembered approval of a run covers that file only: one with its id, project and names and values of another's is asked about again", async () => {
    const dave = await unlockedAgent(
      `version: 1\nrules:\n  - name: remembered\n    targets: ["project:${PROJECT}/*"]\n    decision: approve\n    approve: { mode: confirm, remember: { scope: executable, for: 10m } }\n`,
      homes,
    );
    const id = Buffer.alloc(16);
    sodium.randombytes_buf(id);
    const genuine = forge(identity(dave), { DATABASE_URL: 'postgres://db.internal/app' }, id);
    const planted = forge(identity(dave), { DATABASE_URL: 'postgres://evil.example/app' }, id);
    const run = (file: string) =>
      kwAsync(
        ['run', '--project', file, '--', 'sh', '-c', 'printf %s "$DATABASE_URL" | sha256sum'],
        dave.env,
      );
    dave.answer('yes');
    const first = await run(genuine);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, new RegExp(sha('postgres://db.internal/app')));
    dave.answer('no');
    const again = await run(genuine);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(dave.prompts().length, 1, 'the same file is remembered');
    // The planted file: same id, project and names, another value.
    const other = await run(planted);
    assert.notEqual(other.code, 0, other.stdout);
    assert.ok(!other.stdout.includes(sha('postgres://evil.example/app')), other.stdout);
    assert.equal(dave.prompts().length, 2, 'the planted file was asked about');
  });

  test('values are never in plain text on disk or in argv; the agent keeps no copy after a read', async () => {
    const disk = Buffer.concat([
      everyByteUnder(repo),
      ...[alice, bob, ci].map((h) => everyByteUnder(h.dir)),
    ]);
    for (const v of Object.values(VALUES)) assert.ok(!disk.includes(v), 'a value on disk');
    const r = await readAs(ci, 'API_TOKEN', sealed);
    assert.equal(r.code, 0, r.stderr);
    for (const h of [alice, bob, ci]) {
      const argv = fs.readFileSync(`/proc/${h.agentPid ?? 0}/cmdline`);
      for (const v of Object.values(VALUES)) assert.ok(!argv.includes(v));
    }
    if (rootTests && ci.agentPid) {
      const found = scanMemory(ci.agentPid, [Buffer.from(VALUES['API_TOKEN'] ?? '')]);
      assert.deepEqual(found, [], "the value is in the agent's memory after the read");
    }
  });

  test('in one run, a high_value rule asks for each of its values, and another rule for its own', async () => {
    const policy = path.join(ci.dir, 'hv.yaml');
    fs.writeFileSync(
      policy,
      `version: 1
rules:
  - name: hv
    targets: ["project:${PROJECT}/DB_PASSWORD", "project:${PROJECT}/SIGNING_KEY"]
    decision: approve
    high_value: true
    approve: { mode: passphrase, timeout: 2m }
  - name: other
    targets: ["project:${PROJECT}/DATABASE_URL"]
    decision: approve
    approve: { mode: passphrase, timeout: 2m }
  - name: rest
    targets: ["project:${PROJECT}/*"]
    decision: allow
`,
    );
    assert.equal(kw(['policy', 'apply', policy], { env: ci.env }).code, 0);
    const run = kwAsync(['run', '--project', sealed, '--', 'true'], ci.env);
    const seen: Array<{ target: string; also?: string[] }> = [];
    for (let i = 0; i < 3; i++) {
      let next: { id: string; target: string; also?: string[] } | undefined;
      await eventually(() => {
        const list = JSON.parse(
          kw(['approvals', '--json'], { env: ci.env }).stdout || '[]',
        ) as Array<{
          id: string;
          target: string;
          also?: string[];
        }>;
        next = list.find((p) => !seen.some((s) => s.target === p.target));
        return next !== undefined;
      }, 'the next approval');
      seen.push({ target: next?.target ?? '', ...(next?.also ? { also: next.also } : {}) });
      assert.equal(kw(['approve', next?.id ?? ''], { env: ci.env }).code, 0);
    }
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(seen, [
      { target: `project:${PROJECT}/DATABASE_URL` },
      { target: `project:${PROJECT}/DB_PASSWORD` },
      { target: `project:${PROJECT}/SIGNING_KEY` },
    ]);
  });

  test("found in review: what an unseal killed before its rename left beside the file is removed by the next, and a live writer's is not", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-unseal-'));
    const out = path.join(dir, '.env');
    // A process that has exited, and one that runs (this test's).
    const gone = spawnSync('true').pid;
    const left = path.join(dir, `..env.tmp-${gone}-789d81235e6e`);
    const live = path.join(dir, `..env.tmp-${process.pid}-0123456789ab`);
    fs.writeFileSync(left, 'API_TOKEN="left-behind"\n', { mode: 0o600 });
    fs.writeFileSync(live, 'API_TOKEN="being-written"\n', { mode: 0o600 });
    const r = kw(['unseal', sealed, '--output', out], { env: withoutAgent(alice) });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!fs.existsSync(left), 'the leftover of a process that is gone is removed');
    assert.ok(fs.existsSync(live), "a running writer's file is left to it");
    assert.ok(fs.existsSync(out));
  });

  test('unseal writes a plain file (0600) only with the passphrase, recorded; and a non-recipient is refused', () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-unseal-')), 'plain.env');
    const r = kw(['unseal', sealed, '--output', out], { env: withoutAgent(alice) });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /plain text/);
    assert.equal(fs.statSync(out).mode & 0o777, 0o600);
    const again = kw(['seal', out, '--no-self', '--recipient', ciRecipient, '--project', 'x/y'], {
      env: alice.env,
    });
    assert.equal(again.code, 0, again.stderr);
    assert.equal(
      kw(['unseal', sealed, '--output', out], { env: withoutAgent(alice) }).code,
      2,
      'an existing file is kept',
    );
    const text = fs.readFileSync(out, 'utf8');
    for (const [k, v] of Object.entries(VALUES)) assert.ok(text.includes(`${k}="${v}"`), k);
    const rec = auditEntries(alice).filter((e) => e.type === 'project.unsealed');
    assert.equal(rec.at(-1)?.target, `project:${PROJECT}`);
    const refused = kw(['unseal', sealed, '--output', `${out}.bob`], { env: withoutAgent(bob) });
    assert.equal(refused.code, 4, refused.stderr);
    assert.ok(!fs.existsSync(`${out}.bob`));
  });

  test("a read of the sealed file inside a run an MCP client asked for is the client's: refused where the rule lacks mcp_inline", async () => {
    // The run needs a vault secret of its own: a rule for it, after the project's.
    const p = path.join(alice.dir, 'with-mcp.yaml');
    fs.writeFileSync(
      p,
      `${POLICY}  - { name: run-secret, targets: ["mcp/run"], decision: allow }\n`,
    );
    assert.equal(kw(['policy', 'apply', p], { env: alice.env }).code, 0);
    assert.equal(
      kw(['secret', 'set', 'mcp/run'], { env: alice.env, input: 'run-value-1' }).code,
      0,
    );
    const client = await serveClient(alice.env, 'project-test', '1.0');
    try {
      const r = await client.callTool({
        name: 'run_with_credentials',
        arguments: {
          command: [process.execPath, BIN, 'read', '--project', 'API_TOKEN', '--file', sealed],
          env: { S: 'mcp/run' },
        },
      });
      const text = (r as { content: Array<{ text?: string }> }).content[0]?.text ?? '';
      assert.ok(!text.includes(VALUES['API_TOKEN'] ?? '-'), text);
      assert.match(
        text,
        /does not release project:github\.com\/acme\/api\/API_TOKEN inline to MCP clients/,
      );
    } finally {
      await client.close();
    }
  });
});
