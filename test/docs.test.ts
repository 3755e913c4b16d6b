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

const VECTOR_DIRS = ['test/vectors/vault', 'test/vectors/vault-v1'];

test('docs/FORMAT.md lists every committed vault vector, and names none that is not committed', () => {
  const doc = read('docs/FORMAT.md');
  const committed = new Set<string>();
  for (const dir of VECTOR_DIRS)
    for (const f of fs.readdirSync(path.join(ROOT, dir))) {
      if (!f.endsWith('.kwv')) continue;
      committed.add(f);
      assert.match(doc, new RegExp(`\`${f.replace('.', '\\.')}\``), f);
    }
  for (const [, f] of doc.matchAll(/`([\w.-]+\.kwv)`/g))
    assert.ok(
      committed.has(f ?? ''),
      `FORMAT.md names ${f}, which is not in ${VECTOR_DIRS.join(' or ')}`,
    );
});

/** Every test and describe title in a test file (the string literal after `test(` or `describe(`). */
function titles(file: string): string[] {
  const src = read(file);
  const out: string[] = [];
  for (const m of src.matchAll(/\b(?:test|describe)\(\s*(['"`])((?:\\.|(?!\1)[^\\])*)\1/g))
    out.push((m[2] ?? '').replace(/\\(['"`\\])/g, '$1'));
  return out;
}

/** A quoted fragment matches a title when its parts (split at "...") appear in it in order. */
function fragmentIn(fragment: string, title: string): boolean {
  let at = 0;
  for (const part of fragment.replace(/\\\*/g, '*').split('...')) {
    const p = part.trim();
    if (p === '') continue;
    const i = title.indexOf(p, at);
    if (i < 0) return false;
    at = i + p.length;
  }
  return true;
}

test('every claim in THREAT-MODEL.md names evidence that exists: a test file and its test by title, or a vector', () => {
  const doc = read('docs/THREAT-MODEL.md');
  const table = doc.slice(doc.indexOf('## Protected now'), doc.indexOf('## Not protected'));
  const rows = table.split('\n').filter((l) => l.startsWith('| ') && !/^\| (claim|---)/.test(l));
  assert.ok(rows.length > 50, `only ${rows.length} claims found: the table's shape changed`);
  const vectors = new Set(VECTOR_DIRS.flatMap((d) => fs.readdirSync(path.join(ROOT, d))));
  const problems: string[] = [];
  for (const row of rows) {
    const cells = row.split(/(?<!\\)\|/).map((c) => c.trim());
    const [claim, , shownBy] = [cells[1] ?? '', cells[2], cells[3] ?? ''];
    const refs = [...shownBy.matchAll(/`(test\/[\w./-]+\.test\.ts)`((?:(?!`test\/).)*)/g)];
    const named = [...shownBy.matchAll(/`([\w.-]+\.kwv)`/g)].map((m) => m[1] ?? '');
    if (refs.length === 0 && named.length === 0) problems.push(`no test named for: ${claim}`);
    for (const v of named) if (!vectors.has(v)) problems.push(`no vector ${v} for: ${claim}`);
    for (const [, file, rest] of refs) {
      if (!file || !fs.existsSync(path.join(ROOT, file))) {
        problems.push(`no file ${file} for: ${claim}`);
        continue;
      }
      const all = titles(file);
      for (const [, fragment] of (rest ?? '').matchAll(/"([^"]+)"/g))
        if (!all.some((t) => fragmentIn(fragment ?? '', t)))
          problems.push(`${file} has no test titled like "${fragment}" (for: ${claim})`);
    }
  }
  assert.deepEqual(problems, []);
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
