/**
 * libsodium (sodium-native), loaded with require. An ESM `import` of this CommonJS package has
 * Node parse its 3,000-line index for named exports first: about 35 ms of every keyward process's
 * start, measured (docs/BENCHMARKS.md). Only the modules test/architecture.test.ts names import
 * this one; the addon itself is found by lib/sodium-addon.ts.
 */
import { sodiumPackage } from './sodium-addon.js';

export { sodiumPreloaded } from './sodium-addon.js';
export const sodium = sodiumPackage();
