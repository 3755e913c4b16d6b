/**
 * Writes docs/keyward.1 from keyward's command tree (src/cli/manual.ts), the same source as
 * `keyward --help`; test/completion.test.ts regenerates it and compares.
 *
 *   npm run man            writes docs/keyward.1; then: man ./docs/keyward.1
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildProgram, VERSION } from '../src/cli/main.js';
import { manPage } from '../src/cli/manual.js';

export async function makeManPage(): Promise<string> {
  const program = await buildProgram({ stdout: () => undefined, stderr: () => undefined }, []);
  return manPage(program, VERSION);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const out = path.resolve(here, '../../docs/keyward.1');
  fs.writeFileSync(out, await makeManPage());
  process.stdout.write(`wrote ${out}\n`);
}
