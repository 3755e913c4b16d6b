/**
 * Shell completion (issue 18, item 9): `keyward completion bash` sourced in a real bash, asked
 * for completions the way bash asks (COMP_WORDS, COMP_CWORD, the function it registered).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { kw, makeHome } from './helpers.js';

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
  const listed = [...help.matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map((m) => m[1] ?? '');
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
