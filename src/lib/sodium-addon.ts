/**
 * libsodium's compiled addon, and the three functions of secure memory taken from it directly
 * (docs/PERFORMANCE.md, "keyward read"). The package's JavaScript index (3,000 lines that check
 * each function's arguments, with node:assert) costs ~6 ms of a process's start; a command that
 * only holds bytes in secure memory (`keyward read` through the agent) needs none of the rest.
 * lib/sodium.ts loads the whole package, on the same addon, for everything else.
 */
import fs from 'node:fs';
import Module, { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type Sodium from 'sodium-native';
import { processWide } from './once.js';
import { packageDir } from './package-dir.js';

const require = createRequire(import.meta.url);

/** sodium-native's binding.js as the fast path below knows it: it only hands back the addon. */
const BINDING_JS =
  "require.addon = require('require-addon')\nmodule.exports = require.addon('.', __filename)\n";

/**
 * The package's own wrappers of the three memory functions, as secureMemory below repeats them:
 * the addon's calling convention is the package's internal affair, so the fast path is taken only
 * while the package's index still calls the addon exactly so.
 */
const MEMORY_WRAPPERS = [
  'binding.sodium_memzero(buf)\n',
  'const buf = Buffer.from(binding.sodium_malloc(size))\n  buf.secure = true\n  return buf\n',
  'if (!buf || !buf.secure) return\n\n  binding.sodium_free(buf.buffer)\n',
  'const res = binding.sodium_mlock(buf)\n\n  if (res !== 0) ',
];

interface Addon {
  sodium_malloc(size: number): ArrayBuffer;
  sodium_free(ab: ArrayBufferLike): void;
  sodium_memzero(buf: Uint8Array): void;
  sodium_mlock(buf: Uint8Array): number;
}

/**
 * sodium-native finds its compiled addon through a general resolver (require-addon and
 * bare-addon-resolve: package files read, conditions matched), about 6 ms of every process that
 * loads it, for a file whose place is fixed: `prebuilds/PLATFORM-ARCH/sodium-native.node`. On
 * Linux, where that file is there, keyward loads it itself and gives it to the package as its
 * `binding.js` would have. Anything unexpected (another layout, a failed load) leaves the
 * package's own resolver to decide, as before; the result is the same library either way
 * (test/vectors.test.ts checks the fast path is the one taken here).
 */
function preloadAddon(): { addon: Addon; index: string } | undefined {
  try {
    // Alpine's musl: the package's resolver looks for a -musl build; let it.
    if (process.platform !== 'linux' || fs.existsSync('/etc/alpine-release')) return undefined;
    const dir = packageDir('sodium-native', path.dirname(fileURLToPath(import.meta.url)));
    if (dir === undefined) return undefined;
    const binding = path.join(dir, 'binding.js');
    const addon = path.join(
      dir,
      'prebuilds',
      `${process.platform}-${process.arch}`,
      'sodium-native.node',
    );
    if (
      require.cache[binding] ||
      // Another binding.js may do more than hand back the addon.
      fs.readFileSync(binding, 'utf8') !== BINDING_JS ||
      !fs.existsSync(addon)
    )
      return undefined;
    const m = new Module(binding);
    m.filename = binding;
    m.exports = require(addon);
    m.loaded = true;
    require.cache[binding] = m;
    return { addon: m.exports as Addon, index: path.join(dir, 'index.js') };
  } catch {
    return undefined;
  }
}

/**
 * Once per process, whichever copy of this module asks (the quick path's file and main.js's
 * chunks each hold one, scripts/bundle.ts): the second copy finds the addon the first loaded, and
 * the same package index beside it, instead of a binding it did not load itself.
 */
function preloaded(): { addon: Addon; index: string } | undefined {
  return processWide('sodium-addon', () => ({ found: preloadAddon() })).found;
}

/** Whether the addon was loaded without the package's resolver (for the test). */
export function sodiumPreloaded(): boolean {
  return preloaded() !== undefined;
}

let whole: typeof Sodium | undefined;

/**
 * The whole package, loaded at the first call: where the addon was loaded above, the index beside
 * it (so the memory functions below and the package's are one libsodium, never two copies).
 */
export function sodiumPackage(): typeof Sodium {
  return (whole ??= require(preloaded()?.index ?? 'sodium-native') as typeof Sodium);
}

export interface SecureMemory {
  sodium_malloc(size: number): Buffer;
  sodium_free(buf: Buffer): void;
  sodium_memzero(buf: Uint8Array): void;
  /** Locks buf's pages (and keeps them out of core dumps); throws when the kernel refuses. */
  sodium_mlock(buf: Uint8Array): void;
}

/** The addon's memory functions wrapped as the package's index wraps them, or undefined. */
function fromAddon(): SecureMemory | undefined {
  const found = preloaded();
  if (!found) return undefined;
  try {
    const index = fs.readFileSync(found.index, 'utf8');
    if (!MEMORY_WRAPPERS.every((w) => index.includes(w))) return undefined;
  } catch {
    return undefined;
  }
  const { addon } = found;
  return {
    sodium_malloc(size) {
      if (!(size >= 0)) throw new RangeError('invalid size');
      const buf = Buffer.from(addon.sodium_malloc(size)) as Buffer & { secure?: boolean };
      buf.secure = true;
      return buf;
    },
    sodium_free(buf) {
      if (!(buf as Buffer & { secure?: boolean }).secure) return;
      addon.sodium_free(buf.buffer);
    },
    sodium_memzero(buf) {
      if (!ArrayBuffer.isView(buf)) throw new TypeError('buf must be a typed array');
      addon.sodium_memzero(buf);
    },
    sodium_mlock(buf) {
      if (!ArrayBuffer.isView(buf)) throw new TypeError('buf must be a typed array');
      if (addon.sodium_mlock(buf) !== 0) throw new Error('memory lock failed');
    },
  };
}

let memory: { direct: boolean; calls: SecureMemory } | undefined;

/**
 * sodium_malloc, sodium_free and sodium_memzero: the package's own where the check failed. Made
 * at the first call, not when this module loads: `keyward read` connects to the agent first, and
 * the addon loads while the agent identifies it (docs/PERFORMANCE.md, "keyward read").
 */
export function secureMemory(): SecureMemory {
  if (memory === undefined) {
    const direct = fromAddon();
    memory = { direct: direct !== undefined, calls: direct ?? sodiumPackage() };
  }
  return memory.calls;
}

/** Whether secure memory comes straight from the addon (for the test). */
export function memoryFromAddon(): boolean {
  secureMemory();
  return memory?.direct === true;
}
