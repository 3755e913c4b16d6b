/**
 * libsodium (sodium-native), loaded with require. An ESM `import` of this CommonJS package has
 * Node parse its 2,000-line index for named exports first: about 35 ms of every keyward process's
 * start, measured (docs/BENCHMARKS.md). Only the modules test/architecture.test.ts names import
 * this one.
 */
import { createRequire } from 'node:module';
import type Sodium from 'sodium-native';

export const sodium = createRequire(import.meta.url)('sodium-native') as typeof Sodium;
