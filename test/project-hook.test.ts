/**
 * The pre-commit hook example (docs/examples/pre-commit), run by a real git on real commits.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { BIN, initHome, kw, ROOT } from './helpers.js';

const HOOK = path.join(ROOT, 'docs', 'examples', 'pre-commit');

describe('the pre-commit hook example', () => {
  const h = initHome();
  const repo = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-hook-'));
  // `keyward` on the hook's PATH is this checkout's.
  const bin = path.join(repo, '.bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(
    path.join(bin, 'keyward'),
    `#!/bin/sh\nexec '${process.execPath}' '${BIN}' "$@"\n`,
    { mode: 0o755 },
  );
  const env = {
    ...h.env,
    PATH: `${bin}:${process.env['PATH'] ?? '/usr/bin:/bin'}`,
    GIT_AUTHOR_NAME: 't',
    GIT_AUTHOR_EMAIL: 't@example.com',
    GIT_COMMITTER_NAME: 't',
    GIT_COMMITTER_EMAIL: 't@example.com',
  };
  const git = (...args: string[]) =>
    spawnSync('git', ['-C', repo, ...args], { env, encoding: 'utf8' });
  git('init', '-q');
  fs.copyFileSync(HOOK, path.join(repo, '.git', 'hooks', 'pre-commit'));
  fs.chmodSync(path.join(repo, '.git', 'hooks', 'pre-commit'), 0o755);
  fs.writeFileSync(path.join(repo, '.gitignore'), '.bin/\n');
  const plain = path.join(repo, 'plain.env');
  fs.writeFileSync(plain, 'API_TOKEN=tok_hook_0123456789\n');
  const sealedText = () => {
    const r = kw(['seal', plain, '--project', 'acme/hook', '--output', path.join(repo, 'x')], {
      env: h.env,
    });
    assert.equal(r.code, 0, r.stderr);
    const t = fs.readFileSync(path.join(repo, 'x'), 'utf8');
    fs.rmSync(path.join(repo, 'x'));
    return t;
  };
  const sealed = sealedText();
  fs.rmSync(plain);
  /** Stages `files` (name -> content) and commits; the hook's verdict and its words. */
  const commit = (files: Record<string, string>) => {
    for (const [name, text] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(repo, name)), { recursive: true });
      fs.writeFileSync(path.join(repo, name), text);
      git('add', '--', name);
    }
    const r = git('commit', '-q', '-m', 'change');
    if (r.status !== 0) git('reset', '-q');
    return r;
  };

  test('a sealed file, and an example file, are committed', () => {
    const r = commit({
      '.keyward.env': sealed,
      '.env.example': 'API_TOKEN=\n',
      'README.md': 'hi\n',
      '.gitignore': '.bin/\n',
    });
    assert.equal(r.status, 0, r.stderr);
  });

  test('a plain .env file is refused, wherever it is and however it is named', () => {
    for (const name of ['.env', 'config/prod.env', '.env.production', 'with space .env']) {
      const r = commit({ [name]: 'API_TOKEN=tok_hook_0123456789\n' });
      assert.notEqual(r.status, 0, `${name} was committed`);
      assert.match(r.stderr, /looks like a plain \.env file/, name);
      assert.ok(r.stderr.includes(name), name);
      assert.ok(!r.stderr.includes('tok_hook'), 'the value is not said');
    }
  });

  test("found in review: a file keyward left while writing (an unseal's temp file) is refused, whatever it is named", () => {
    for (const name of ['..env.tmp-3481-789d81235e6e', 'config/.prod.env.tmp-12-ab']) {
      const r = commit({ [name]: 'API_TOKEN="tok_hook_0123456789"\n' });
      assert.notEqual(r.status, 0, `${name} was committed`);
      assert.match(r.stderr, /a file keyward left while writing/, name);
      assert.ok(!r.stderr.includes('tok_hook'), 'the value is not said');
    }
  });

  test('a sealed file with an unsealed value added, or changed by hand, is refused', () => {
    const lines = sealed.trimEnd().split('\n');
    const added = [...lines.slice(0, -1), 'DB_PASSWORD=hunter2', ...lines.slice(-1)];
    const r = commit({ '.keyward.env': `${added.join('\n')}\n` });
    assert.notEqual(r.status, 0, 'an unsealed value was committed');
    assert.match(r.stderr, /not a well-formed sealed file/);
    assert.ok(!r.stderr.includes('hunter2'), 'the value is not said');
    // What is checked is the index: a good working tree does not pass a bad staged file.
    fs.writeFileSync(path.join(repo, '.keyward.env'), `${added.join('\n')}\n`);
    git('add', '.keyward.env');
    fs.writeFileSync(path.join(repo, '.keyward.env'), sealed);
    const staged = git('commit', '-q', '-m', 'x');
    assert.notEqual(staged.status, 0);
    git('reset', '-q');
    // Without keyward on PATH, the hook's own check still refuses it.
    fs.writeFileSync(path.join(repo, '.keyward.env'), `${added.join('\n')}\n`);
    git('add', '.keyward.env');
    const bare = spawnSync('git', ['-C', repo, 'commit', '-q', '-m', 'x'], {
      env: { ...env, PATH: '/usr/bin:/bin', KEYWARD_HOOK_KEYWARD: 'keyward-not-here' },
      encoding: 'utf8',
    });
    assert.notEqual(bare.status, 0);
    assert.match(bare.stderr, /a line that is not sealed/);
    git('reset', '-q');
    fs.writeFileSync(path.join(repo, '.keyward.env'), sealed);
  });
});
