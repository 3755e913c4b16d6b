/**
 * Where an npm package is, found the way Node's require finds a bare name from a file: the first
 * `node_modules/NAME` with a package.json, from the file's directory up. require.resolve does the
 * same and more (package.json's exports, realpath), ~1-2 ms a package on the way to `keyward
 * read`; the two native addons need only their directory (lib/sodium-addon.ts, lib/koffi.ts).
 */
import fs from 'node:fs';
import path from 'node:path';

export function packageDir(name: string, fromDir: string): string | undefined {
  for (let dir = fromDir; ;) {
    if (path.basename(dir) !== 'node_modules') {
      const candidate = path.join(dir, 'node_modules', name);
      if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
    }
    const up = path.dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}
