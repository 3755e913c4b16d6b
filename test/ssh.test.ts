/**
 * Signing through keyward's SSH agent socket with real OpenSSH clients and git.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { agentHome, type AgentHome, startAgent, stopAgent, withoutAgent } from './agent-helpers.js';
import { kw } from './helpers.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

const hasOpenSsh =
  spawnSync('sh', ['-c', 'command -v ssh-keygen && command -v ssh-add && command -v git'])
    .status === 0;
// CI installs them (.ci/run); a developer without them is told which, rather than a silent pass.
const skip = !hasOpenSsh && process.env['CI'] !== 'true' ? 'needs openssh-client and git' : false;

const ALLOW_SIGNING =
  'version: 1\nrules:\n  - { name: sign, targets: ["git-signing"], kind: key, decision: allow }\n' +
  // key list and audit tail through the agent (docs/POLICY.md, "Lists and the audit log").
  '  - { name: names, targets: [keys], kind: list, decision: allow }\n' +
  '  - { name: log, targets: [tail], kind: audit, decision: allow }\n';

async function withKey(
  policy?: string,
): Promise<{ h: AgentHome; pub: string; env: NodeJS.ProcessEnv }> {
  const h = agentHome(policy);
  homes.push(h);
  const g = kw(['key', 'generate', 'git-signing'], { env: h.env });
  assert.equal(g.code, 0, g.stderr);
  const pub = path.join(h.dir, 'git-signing.pub');
  fs.writeFileSync(pub, g.stdout);
  await startAgent(h);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  const sock = /SSH_AUTH_SOCK=(\S+)/.exec(kw(['ssh-env'], { env: h.env }).stdout)?.[1];
  assert.ok(sock);
  return { h, pub, env: { ...h.env, SSH_AUTH_SOCK: sock } };
}

const run = (cmd: string, args: string[], env: NodeJS.ProcessEnv, input?: string) =>
  spawnSync(cmd, args, { env, encoding: 'utf8', input: input ?? '', timeout: 30_000 });

test(
  'key generate prints an OpenSSH public key; key list shows the fingerprint ssh-keygen computes',
  { skip },
  async () => {
    const { h, pub } = await withKey(ALLOW_SIGNING);
    const expected = run('ssh-keygen', ['-lf', pub], h.env).stdout.trim();
    assert.match(expected, /^256 SHA256:\S+ git-signing \(ED25519\)$/);
    assert.equal(kw(['key', 'list'], { env: h.env }).stdout.trim(), expected);
    assert.ok(
      !kw(['secret', 'list'], { env: h.env }).stdout.includes('git-signing'),
      'keys are not listed as secrets',
    );
  },
);

test(
  'ssh-add -l and -L list the key through keyward; a locked agent shows none',
  { skip },
  async () => {
    const { h, pub, env } = await withKey(ALLOW_SIGNING);
    assert.equal(
      run('ssh-add', ['-l'], env).stdout.trim(),
      run('ssh-keygen', ['-lf', pub], h.env).stdout.trim(),
    );
    assert.equal(run('ssh-add', ['-L'], env).stdout.trim(), fs.readFileSync(pub, 'utf8').trim());
    kw(['lock'], { env: h.env });
    const r = run('ssh-add', ['-l'], env);
    assert.equal(r.status, 1);
    assert.match(r.stdout, /The agent has no identities/);
  },
);

test(
  'ssh-keygen -Y sign -n git signs through keyward and ssh-keygen -Y verify accepts it; the signature is audited',
  { skip },
  async () => {
    const { h, pub, env } = await withKey(ALLOW_SIGNING);
    const msg = path.join(h.dir, 'msg');
    fs.writeFileSync(msg, 'a commit to sign\n');
    const s = run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pub, msg], env);
    assert.equal(s.status, 0, s.stderr);
    const allowed = path.join(h.dir, 'allowed_signers');
    fs.writeFileSync(allowed, `me@example ${fs.readFileSync(pub, 'utf8')}`);
    const v = run(
      'ssh-keygen',
      ['-Y', 'verify', '-f', allowed, '-I', 'me@example', '-n', 'git', '-s', `${msg}.sig`],
      env,
      'a commit to sign\n',
    );
    assert.equal(v.status, 0, v.stderr);
    assert.match(v.stdout, /Good "git" signature for me@example with ED25519 key/);
    const rows = kw(['audit', 'tail', '--json', '-n', '20'], { env: withoutAgent(h) })
      .stdout.trim()
      .split('\n')
      .map(
        (l) =>
          JSON.parse(l) as {
            type: string;
            body: { target: string; actor: { exe: string }; details: Record<string, string> };
          },
      );
    const sign = rows.find((r) => r.type === 'key.sign');
    assert.ok(sign);
    assert.equal(sign.body.target, 'git-signing');
    assert.match(sign.body.actor.exe, /ssh-keygen$/);
    assert.equal(sign.body.details['namespace'], 'git');
  },
);

test(
  'git commit -S with gpg.format=ssh signs through keyward; git verify-commit accepts it',
  { skip },
  async () => {
    const { h, pub, env } = await withKey(ALLOW_SIGNING);
    const repo = path.join(h.dir, 'repo');
    const allowed = path.join(h.dir, 'allowed_signers');
    fs.writeFileSync(allowed, `me@example ${fs.readFileSync(pub, 'utf8')}`);
    const git = (...args: string[]) =>
      run('git', ['-C', repo, ...args], { ...env, GIT_CONFIG_NOSYSTEM: '1', HOME: h.dir });
    assert.equal(run('git', ['init', '-q', repo], env).status, 0);
    for (const [k, v] of [
      ['user.name', 'Me'],
      ['user.email', 'me@example'],
      ['gpg.format', 'ssh'],
      ['user.signingkey', pub],
      ['gpg.ssh.allowedSignersFile', allowed],
    ]) {
      git('config', k ?? '', v ?? '');
    }
    const c = git('commit', '-q', '-S', '--allow-empty', '-m', 'signed by keyward');
    assert.equal(c.status, 0, c.stderr);
    const v = git('verify-commit', 'HEAD');
    assert.equal(v.status, 0, v.stderr);
    assert.match(v.stderr, /Good "git" signature for me@example/);
  },
);

test(
  'under the default policy a signature needs approval: denied, ssh-keygen fails; the prompt says what is signed',
  { skip },
  async () => {
    const { h, pub, env } = await withKey();
    const msg = path.join(h.dir, 'msg');
    fs.writeFileSync(msg, 'x\n');
    h.answer('no');
    const denied = run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pub, msg], env);
    assert.notEqual(denied.status, 0);
    assert.equal(fs.existsSync(`${msg}.sig`), false);
    const prompt = h.prompts().at(-1) ?? '';
    assert.match(
      prompt,
      /a request to sign with the key "git-signing" \(ED25519 SHA256:\S+\): an SSHSIG signature \(a git commit or tag\).* Asked by .*ssh-keygen" \(pid \d+\)/,
    );
    h.answer('yes');
    assert.equal(run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pub, msg], env).status, 0);
  },
);
