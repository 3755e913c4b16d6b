/**
 * The documents stay true: the README's test command is what CI runs, and every error code is
 * documented.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ERROR_CODES } from '../src/errors.js';
import { ROOT } from './helpers.js';

const read = (p: string) => fs.readFileSync(path.join(ROOT, p), 'utf8');

test("CI runs exactly the README's test command", () => {
  const ciLast = read('.ci/run').trim().split('\n').pop();
  assert.equal(ciLast, 'npm ci && npm test');
  assert.match(read('README.md'), /```sh\nnpm ci && npm test\n```/);
});

test('docs/CLI.md documents every error code with its exit code', () => {
  const doc = read('docs/CLI.md');
  for (const [code, exit] of Object.entries(ERROR_CODES)) {
    assert.match(doc, new RegExp(`\\| \`${code}\` \\| ${exit} \\|`), code);
  }
});

test('docs/FORMAT.md lists every committed vault vector', () => {
  const doc = read('docs/FORMAT.md');
  for (const dir of ['test/vectors/vault', 'test/vectors/vault-v1'])
    for (const f of fs.readdirSync(path.join(ROOT, dir))) {
      if (f.endsWith('.kwv')) assert.match(doc, new RegExp(`\`${f.replace('.', '\\.')}\``), f);
    }
});

test('docs/INTERFACE.md is the outside contract, and no doc points outside the repository', (t) => {
  const copy = read('docs/INTERFACE.md');
  const original = path.join(ROOT, '..', 'shared', 'INTERFACE.md');
  for (const f of ['README.md', 'docs/CLI.md'])
    assert.doesNotMatch(read(f), /\.\.\/shared\//, `${f} points outside the repository`);
  if (!fs.existsSync(original)) {
    t.skip('the original contract (../shared/INTERFACE.md) is not beside this clone');
    return;
  }
  assert.ok(copy.endsWith(fs.readFileSync(original, 'utf8')), 'docs/INTERFACE.md drifted');
});
