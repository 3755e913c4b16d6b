/**
 * The import rules of docs/ARCHITECTURE.md, checked on the source so they can't be weakened
 * silently (STYLE.md, habit 7).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ROOT } from './helpers.js';

const SRC = path.join(ROOT, 'src');

function files(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
    const p = path.join(dir, d.name);
    return d.isDirectory() ? files(p) : p.endsWith('.ts') && !p.endsWith('.d.ts') ? [p] : [];
  });
}

interface Import {
  from: string;
  spec: string;
  /** The resolved source path for relative imports. */
  target?: string;
}

const sources = files(SRC);
const imports: Import[] = sources.flatMap((file) => {
  const text = fs.readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/(?:from|import)\s*\(?\s*'([^']+)'/g)].map((m) => m[1] ?? '');
  return specs.map((spec) =>
    spec.startsWith('.')
      ? { from: file, spec, target: path.resolve(path.dirname(file), spec).replace(/\.js$/, '.ts') }
      : { from: file, spec },
  );
});

const rel = (p: string) => path.relative(SRC, p);
const domainOf = (p: string) => rel(p).split(path.sep)[0] ?? '';
const DOMAINS = [
  'vault',
  'keys',
  'agent',
  'approval',
  'policy',
  'audit',
  'run',
  'client',
  'mcp',
  'cli',
  'doctor',
  'backup',
  'console',
  'operators',
  'project',
  'proxy',
];

test('other domains reach a domain only through its entry file (index.ts)', () => {
  const bad = imports.filter((i) => {
    if (!i.target) return false;
    const to = domainOf(i.target);
    return (
      DOMAINS.includes(to) && domainOf(i.from) !== to && path.basename(i.target) !== 'index.ts'
    );
  });
  assert.deepEqual(
    bad.map((i) => `${rel(i.from)} -> ${i.spec}`),
    [],
  );
});

test("only the vault, the keys, the audit key and body modules, the project files' age layer and lib/secure touch sodium-native (secret cryptography lives there)", () => {
  // sodium-native loads in one place (lib/sodium-addon.ts, with require: faster than an ESM
  // import), and only these modules import it or lib/sodium.ts.
  const SODIUM = path.join(SRC, 'lib', 'sodium.ts');
  const ADDON = path.join(SRC, 'lib', 'sodium-addon.ts');
  const loaders = sources.filter(
    (f) =>
      f !== ADDON &&
      /require\(\s*'sodium-native'\s*\)|from 'sodium-native'/.test(
        fs.readFileSync(f, 'utf8').replace(/import type [^;]+;/g, ''),
      ),
  );
  assert.deepEqual(loaders.map(rel), []);
  const users = imports
    .filter((i) => i.spec === 'sodium-native' || i.target === SODIUM || i.target === ADDON)
    .map((i) => rel(i.from))
    .filter(
      (f) => f !== path.join('lib', 'sodium.ts') && f !== path.join('lib', 'sodium-addon.ts'),
    );
  const allowed = (f: string) =>
    f.startsWith(`vault${path.sep}`) ||
    f.startsWith(`keys${path.sep}`) ||
    f === path.join('lib', 'secure.ts') ||
    f === path.join('audit', 'keys.ts') ||
    f === path.join('audit', 'body.ts') ||
    f.startsWith(`project${path.sep}`);
  assert.deepEqual(
    users.filter((f) => !allowed(f)),
    [],
  );
  assert.ok(users.length >= 7, 'the rule still sees the modules that use libsodium');
});

test('cli/ holds no secret bytes: it imports neither sodium-native nor the secure-memory helpers', () => {
  const bad = imports.filter(
    (i) =>
      domainOf(i.from) === 'cli' &&
      (i.spec === 'sodium-native' ||
        i.target === path.join(SRC, 'lib/secure.ts') ||
        i.target === path.join(SRC, 'lib/sodium.ts') ||
        i.target === path.join(SRC, 'lib/sodium-addon.ts') ||
        i.spec === 'node:crypto'),
  );
  // The demo draws a throwaway passphrase for a throwaway vault; that is not a user secret.
  const allowed = bad.filter(
    (i) => !(rel(i.from) === path.join('cli', 'demo.ts') && i.spec.endsWith('secure.js')),
  );
  assert.deepEqual(
    allowed.map((i) => `${rel(i.from)} -> ${i.spec}`),
    [],
  );
});

test('no module uses node:crypto key objects: secret cryptography goes through sodium-native', () => {
  const bad = sources.filter((f) =>
    /createSecretKey\(|createPrivateKey\(|KeyObject\.from\(/.test(fs.readFileSync(f, 'utf8')),
  );
  assert.deepEqual(bad.map(rel), []);
});

test('entry files name what they export (no export *)', () => {
  const bad = sources.filter((f) => /export \*/.test(fs.readFileSync(f, 'utf8')));
  assert.deepEqual(bad.map(rel), []);
});

test('no source file passes 500 lines: one that grows past it is split (docs/ARCHITECTURE.md, rule 5)', () => {
  const long = sources
    .map((f) => ({ f: rel(f), lines: fs.readFileSync(f, 'utf8').split('\n').length - 1 }))
    .filter((x) => x.lines > 500);
  assert.deepEqual(long, []);
});

test('lib/ is shared helpers: it imports no domain', () => {
  const bad = imports.filter(
    (i) => domainOf(i.from) === 'lib' && i.target && DOMAINS.includes(domainOf(i.target)),
  );
  assert.deepEqual(
    bad.map((i) => `${rel(i.from)} -> ${i.spec}`),
    [],
  );
});

test('bin/keyward.js runs the bundle (scripts/bundle.ts), built from what tsc compiled last', async () => {
  const { BUNDLE_ENTRIES, CJS_ENTRIES, cjsName } = await import('../scripts/bundle.js');
  const outputs = [
    ...BUNDLE_ENTRIES.map((e) => path.basename(e)),
    ...CJS_ENTRIES.map((e) => cjsName(e)),
  ];
  const bin = fs.readFileSync(path.join(ROOT, 'bin/keyward.js'), 'utf8');
  const loaded = [...bin.matchAll(/(?:import|require)\('(\.[^']+)'\)/g)].map((m) => m[1]);
  assert.ok(loaded.length > 0);
  for (const spec of loaded) {
    assert.match(spec ?? '', /^\.\.\/dist\/src\/bundle\/[a-z-]+\.c?js$/, `bin loads ${spec}`);
    const name = path.basename(spec ?? '');
    assert.ok(outputs.includes(name), `${name} is an entry of the bundle`);
  }
  // A bundle older than a file it joins runs code the tests don't see: after editing dist/src by
  // hand, run `node dist/scripts/bundle.js`.
  const dist = path.join(ROOT, 'dist/src');
  const bundled = path.join(dist, 'bundle');
  const built = Math.min(...outputs.map((o) => fs.statSync(path.join(bundled, o)).mtimeMs));
  const compiled = (dir: string): string[] =>
    fs.readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
      const p = path.join(dir, d.name);
      if (p === bundled) return [];
      return d.isDirectory() ? compiled(p) : p.endsWith('.js') ? [p] : [];
    });
  const newer = compiled(dist).filter((f) => fs.statSync(f).mtimeMs > built);
  assert.deepEqual(
    newer.map((f) => path.relative(dist, f)),
    [],
    'compiled after the bundle was built',
  );
  // The CommonJS entries load nothing of keyward's but the runtime guard beside them, so its
  // state is the one bin/keyward.js set; the guard loads nothing of keyward's at all.
  for (const e of CJS_ENTRIES) {
    const text = fs.readFileSync(path.join(bundled, cjsName(e)), 'utf8');
    const local = [...text.matchAll(/(?:from|import|require)\s*\(?\s*["'](\.[^"']+)["']/g)].map(
      (m) => m[1],
    );
    assert.deepEqual(
      [...new Set(local)],
      e === 'lib/runtime-guard.js' ? [] : ['./runtime-guard.cjs'],
      `${e} loads ${local.join(' ')}`,
    );
    // Node's modules are used in place, not copied a property at a time (scripts/bundle.ts).
    assert.doesNotMatch(text, /__toESM\(require\("node:/, `${e} copies a Node module`);
  }
});
