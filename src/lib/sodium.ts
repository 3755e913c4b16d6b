/**
 * libsodium (sodium-native), loaded with require. An ESM `import` of this CommonJS package has
 * Node parse its 2,000-line index for named exports first: about 35 ms of every keyward process's
 * start, measured (docs/BENCHMARKS.md). Only the modules test/architecture.test.ts names import
 * this one.
 */
import fs from 'node:fs';
import Module, { createRequire } from 'node:module';
import path from 'node:path';
import type Sodium from 'sodium-native';

const require = createRequire(import.meta.url);

/** sodium-native's binding.js as the fast path below knows it: it only hands back the addon. */
const BINDING_JS =
  "require.addon = require('require-addon')\nmodule.exports = require.addon('.', __filename)\n";

/**
 * sodium-native finds its compiled addon through a general resolver (require-addon and
 * bare-addon-resolve: package files read, conditions matched), about 6 ms of every process that
 * loads it, for a file whose place is fixed: `prebuilds/PLATFORM-ARCH/sodium-native.node`. On
 * Linux, where that file is there, keyward loads it itself and gives it to the package as its
 * `binding.js` would have. Anything unexpected (another layout, a failed load) leaves the
 * package's own resolver to decide, as before; the result is the same library either way
 * (test/vectors.test.ts checks the fast path is the one taken here).
 */
function preloadAddon(): boolean {
  try {
    const dir = path.dirname(require.resolve('sodium-native'));
    const binding = path.join(dir, 'binding.js');
    const addon = path.join(
      dir,
      'prebuilds',
      `${process.platform}-${process.arch}`,
      'sodium-native.node',
    );
    if (
      process.platform !== 'linux' ||
      require.cache[binding] ||
      // Alpine's musl: the package's resolver looks for a -musl build; let it.
      fs.existsSync('/etc/alpine-release') ||
      // Another binding.js may do more than hand back the addon.
      fs.readFileSync(binding, 'utf8') !== BINDING_JS ||
      !fs.existsSync(addon)
    )
      return false;
    const m = new Module(binding);
    m.filename = binding;
    m.exports = require(addon);
    m.loaded = true;
    require.cache[binding] = m;
    return true;
  } catch {
    return false;
  }
}

/** Whether the addon was loaded without the package's resolver (for the test). */
export const sodiumPreloaded = preloadAddon();
export const sodium = require('sodium-native') as typeof Sodium;
