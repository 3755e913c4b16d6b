/**
 * Help (issue 18, item 9): `keyward --help` with the environment, exit statuses and examples;
 * `keyward help COMMAND`; shell completion sourced in a real bash and asked for completions the
 * way bash asks (COMP_WORDS, COMP_CWORD, the function it registered); the man page, generated
 * from the same command tree and read with the real man.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { makeManPage } from '../scripts/make-manpage.js';
import { kw, makeHome, ROOT } from './helpers.js';

const h = makeHome();
const script = path.join(h.dir, 'keyward.bash');
const generated = kw(['completion', 'bash'], { env: h.env });
fs.writeFileSync(script, generated.stdout);

/** What bash completes for the words typed (the last one is the word being completed). */
function complete(typed: string[], cwd = h.dir): string[] {
  const words = typed.map((w) => `'${w}'`).join(' ');
  const r = spawnSync(
    'bash',
    [
      '--norc',
      '-c',
      `source '${script}'; complete -p keyward >/dev/null || exit 9; COMP_WORDS=(${words}); COMP_CWORD=${typed.length - 1}; _keyward; printf '%s\\n' "\${COMPREPLY[@]}"`,
    ],
    { cwd, encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').filter(Boolean);
}

test('keyward completion bash: commands, subcommands, options and file arguments complete in a real bash', () => {
  assert.equal(generated.code, 0, generated.stderr);
  assert.deepEqual(complete(['keyward', 'sec']), ['secret']);
  assert.deepEqual(complete(['keyward', 'secret', '']).sort(), ['list', 'rm', 'set']);
  assert.deepEqual(complete(['keyward', 'key', 'generate', '--t']), ['--type']);
  assert.deepEqual(complete(['keyward', 'secret', 'set', '--r']), ['--raw']);
  // Global options before the command don't lose the place.
  assert.deepEqual(complete(['keyward', '--allow-debugger', 'aud']), ['audit']);
  // An option that takes a file completes file names.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-compl-'));
  fs.writeFileSync(path.join(dir, 'pass-file'), '');
  assert.deepEqual(complete(['keyward', '--passphrase-file', 'pass'], dir), ['pass-file']);
  // Every command `keyward --help` lists completes, and nothing else.
  const help = kw(['--help'], { env: h.env }).stdout;
  const commands = help.slice(
    help.indexOf('Commands:'),
    help.indexOf('\n\n', help.indexOf('Commands:')),
  );
  const listed = [...commands.matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map((m) => m[1] ?? '');
  const top = complete(['keyward', '']);
  assert.deepEqual([...top].sort(), listed.filter((c) => c !== 'help').sort());
});

test('keyward help COMMAND is COMMAND --help', () => {
  const viaHelp = kw(['help', 'secret'], { env: h.env });
  assert.equal(viaHelp.code, 0, viaHelp.stderr);
  assert.equal(viaHelp.stdout, kw(['secret', '--help'], { env: h.env }).stdout);
  assert.match(viaHelp.stdout, /^Usage: keyward secret/);
});

test('keyward completion zsh and fish print scripts for those shells; another shell is refused', () => {
  const zsh = kw(['completion', 'zsh'], { env: h.env });
  assert.equal(zsh.code, 0, zsh.stderr);
  assert.match(zsh.stdout, /^#compdef keyward/);
  assert.match(zsh.stdout, /complete -o default -F _keyward keyward/);
  const fish = kw(['completion', 'fish'], { env: h.env });
  assert.equal(fish.code, 0, fish.stderr);
  assert.match(fish.stdout, /complete -c keyward -n .* -a secret -d /);
  assert.match(fish.stdout, /-l passphrase-file -r -F/);
  const bad = kw(['completion', 'tcsh'], { env: h.env });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /no completion for the shell tcsh/);
});

test("every command's --help ends with the environment, its exit statuses and examples", () => {
  const paths = complete(['keyward', '']).flatMap((c) => [
    c,
    ...complete(['keyward', c, '']).map((s) => `${c} ${s}`),
  ]);
  assert.ok(paths.length > 40, `${paths.length} commands`);
  for (const p of paths) {
    const out = kw([...p.split(' '), '--help'], { env: h.env });
    assert.equal(out.code, 0, `${p}: ${out.stderr}`);
    assert.match(out.stdout, /^Environment: KEYWARD_HOME/m, p);
    assert.match(out.stdout, /^Exit status:\n {2}0 {3}success$/m, p);
    assert.match(out.stdout, /^Examples:\n {2}(keyward |\S+=|printf |eval |source )/m, p);
  }
});

test('keyward --help ends with the environment it reads, its exit statuses and examples', () => {
  const help = kw(['--help'], { env: h.env });
  assert.equal(help.code, 0, help.stderr);
  for (const v of [
    'KEYWARD_HOME',
    'KEYWARD_SOCKET_DIR',
    'KEYWARD_PASSPHRASE_FILE',
    'KEYWARD_ASKPASS',
  ])
    assert.match(help.stdout, new RegExp(`^  ${v} `, 'm'), v);
  assert.match(help.stdout, /^Exit status:\n {2}0 {3}success$/m);
  assert.match(help.stdout, /^ {2}8 {3}a damaged or tampered file/m);
  assert.match(help.stdout, /^Examples:\n {2}keyward init/m);
});

test('docs/keyward.1 is what the command tree makes today, and man reads it', async () => {
  const committed = fs.readFileSync(path.join(ROOT, 'docs/keyward.1'), 'utf8');
  assert.equal(committed, await makeManPage(), 'run: npm run man');
  const man = spawnSync('man', ['./docs/keyward.1'], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, MANPAGER: 'cat', MANWIDTH: '100' },
  });
  assert.equal(man.status, 0, man.stderr);
  assert.match(man.stdout, /^NAME\n\s+keyward\s+-\s/m);
  assert.match(man.stdout, /keyward secret set <name>/);
  assert.match(man.stdout, /^EXIT STATUS/m);
  assert.match(man.stdout, /KEYWARD_PASSPHRASE_FILE/);
});
