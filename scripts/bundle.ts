/**
 * The second half of `npm run build`: bundles what bin/keyward.js runs (docs/ARCHITECTURE.md,
 * "How the command starts"). Node 20 loads an ES module graph a file at a time, each read through
 * the thread pool: the agent's ~150 modules cost it ~40 ms of its start, and every command a few.
 * esbuild joins tsc's output (dist/src) into dist/src/bundle: one file per entry and shared chunks,
 * with every dynamic import kept a split point, so a command still loads only its own code, and a
 * module shared by two paths is one instance. npm packages stay outside (loaded from
 * node_modules as before). The library (dist/src/*) is unchanged: tests and other programs import
 * it as they did.
 *
 * The bundle sits at the same depth as dist/src/cli, so the paths modules find beside themselves
 * (`../../../bin/keyward.js`, the console's web directory, `./exec-helper.js` and
 * `./parse-worker.js`, entries themselves)
 * are the same from either place.
 */
import { build, type Plugin } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const SRC = path.join(ROOT, 'dist/src');
const OUT = path.join(SRC, 'bundle');
/** The QR encoder the console's page loads (src/console/static.ts serves it as /vendor/qr.js). */
const WEB_VENDOR_QR = path.join(OUT, 'console-qr.js');

/**
 * What bin/keyward.js imports when the command is not one of the quick ones, the agent itself in
 * the shapes `agent start` runs it (cli/agent-run.ts), the exec step `keyward run` starts as a
 * script of its own, and the agent's policy-parsing worker: ES modules, with shared chunks.
 */
export const BUNDLE_ENTRIES = [
  'lib/runtime-guard.js',
  'cli/report.js',
  'cli/main.js',
  'cli/agent-run.js',
  'run/exec-helper.js',
  'policy/parse-worker.js',
];

/**
 * Entries built as one CommonJS file each (`NAME.cjs`), which bin/keyward.js loads with require:
 * the runtime guard it runs first, `read NAME`, `lock` and `agent stop` (cli/quick.ts), and `agent
 * start` (cli/quick-start.ts, a file of its own: it spawns, and the read path loads none of it). Node 20
 * loads an ES module through its asynchronous loader, each file read through the thread pool; a
 * CommonJS file is read and compiled at once (docs/PERFORMANCE.md, "keyward read"). The quick
 * path's modules are then a second instance beside main.js's when quick() hands the command to
 * main.ts (no agent answered): the runtime guard's state is one object for the process whichever
 * copy reads it, and what holds process-wide resources (libc's and OpenSSL's koffi bindings) keeps
 * them in one place for every instance (lib/once.ts). quick.cjs requires the guard beside it
 * rather than a copy of its own.
 */
export const CJS_ENTRIES = ['lib/runtime-guard.js', 'cli/quick.js', 'cli/quick-start.js'];

/** The file an entry of CJS_ENTRIES becomes. */
export const cjsName = (entry: string): string => path.basename(entry).replace(/\.js$/, '.cjs');

/** Imports of the runtime guard, resolved to the guard's own CommonJS file (one instance). */
const guardExternal: Plugin = {
  name: 'runtime-guard-external',
  setup(b) {
    b.onResolve({ filter: /\/runtime-guard\.js$/ }, () => ({
      path: './runtime-guard.cjs',
      external: true,
    }));
  },
};

/**
 * esbuild gives a default import of a Node module (`import fs from 'node:fs'`) in CommonJS output
 * as `__toESM(require('node:fs'), 1)`: a new object with a getter for each of the module's
 * properties, ~0.15 ms for each of the quick path's fifteen (~2 ms of `keyward read`). The same
 * reads through an object whose prototype is the module, with the module as its `default`, cost
 * nothing; test/architecture.test.ts checks no such copy is left.
 */
function builtinsWithoutCopies(file: string): void {
  const text = fs.readFileSync(file, 'utf8');
  const helper =
    'const __keywardBuiltin = (m) => Object.create(m, { default: { value: m, enumerable: true } });\n';
  const out = text.replace(
    /__toESM\(require\("(node:[a-z_/]+)"\), 1\)/g,
    (_, name: string) => `__keywardBuiltin(require("${name}"))`,
  );
  if (out === text) return;
  // After the banner's "use strict" (the file's first line).
  const nl = out.indexOf('\n') + 1;
  fs.writeFileSync(file, out.slice(0, nl) + helper + out.slice(nl));
}

export async function bundle(): Promise<void> {
  fs.rmSync(OUT, { recursive: true, force: true });
  for (const e of CJS_ENTRIES)
    await build({
      entryPoints: [path.join(SRC, e)],
      outfile: path.join(OUT, cjsName(e)),
      bundle: true,
      format: 'cjs',
      platform: 'node',
      target: 'node20',
      packages: 'external',
      logLevel: 'warning',
      keepNames: true,
      // createRequire(import.meta.url) and the paths modules find beside themselves: the file's
      // own URL, as an ES module would have it.
      define: { 'import.meta.url': '__keywardModuleUrl' },
      // "use strict" first: tsc's modules are strict, and a banner before esbuild's own directive
      // would make it a plain string.
      banner: {
        js: "'use strict';\nconst __keywardModuleUrl = require('node:url').pathToFileURL(__filename).href;",
      },
      plugins: e === 'lib/runtime-guard.js' ? [] : [guardExternal],
    });
  for (const e of CJS_ENTRIES) builtinsWithoutCopies(path.join(OUT, cjsName(e)));
  await build({
    entryPoints: BUNDLE_ENTRIES.map((e) => path.join(SRC, e)),
    outdir: OUT,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    packages: 'external',
    entryNames: '[name]',
    chunkNames: 'chunk-[hash]',
    logLevel: 'warning',
    // tsc's output is already what Node runs: keep names (errors print them) and the code as is.
    keepNames: true,
  });
  // The console page draws a TOTP enrolment's QR code itself, with the qrcode package's encoder
  // (a global, keywardQr, for the page's plain scripts): the agent never runs the library, whose
  // arrays would copy the secret into its heap (docs/THREAT-MODEL.md).
  await build({
    stdin: {
      contents: "export { create } from 'qrcode/lib/core/qrcode.js';",
      resolveDir: ROOT,
      sourcefile: 'console-qr.js',
    },
    outfile: WEB_VENDOR_QR,
    bundle: true,
    format: 'iife',
    globalName: 'keywardQr',
    platform: 'browser',
    target: 'es2020',
    logLevel: 'warning',
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await bundle();
