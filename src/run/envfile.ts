/**
 * `keyward run --env-file FILE` (docs/RUN.md): dotenv-style lines. A value `keyward:NAME` is a
 * reference the agent resolves; any other value passes through to the child as it is.
 *
 *   # comment
 *   export API_TOKEN=keyward:github/token
 *   REGION=eu-west-1
 *   GREETING="hello world"       (double or single quotes are removed; no escapes, no expansion)
 */
import { UsageError } from '../errors.js';

export const REF_PREFIX = 'keyward:';
const VAR_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export type EnvEntry = { var: string; ref: string } | { var: string; value: string };

export function assertVarName(name: string, where: string): void {
  if (!VAR_RE.test(name)) {
    throw new UsageError('USAGE', `${where}: ${JSON.stringify(name)} is not a variable name`, {
      hint: 'variable names are letters, digits and _, not starting with a digit',
    });
  }
}

/** Parses an env file's text; every problem names the line. */
export function parseEnvFile(text: string, file: string): EnvEntry[] {
  const out: EnvEntry[] = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const where = `${file}:${i + 1}`;
    let line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    if (line.startsWith('export ')) line = line.slice(7).trimStart();
    const eq = line.indexOf('=');
    if (eq <= 0) {
      throw new UsageError('USAGE', `${where}: expected NAME=VALUE`, {
        hint: 'each line is NAME=VALUE or NAME=keyward:SECRET',
      });
    }
    const name = line.slice(0, eq).trim();
    assertVarName(name, where);
    let value = line.slice(eq + 1).trim();
    const q = value[0];
    if ((q === '"' || q === "'") && value.length >= 2 && value.endsWith(q))
      value = value.slice(1, -1);
    out.push(
      value.startsWith(REF_PREFIX)
        ? { var: name, ref: value.slice(REF_PREFIX.length) }
        : { var: name, value },
    );
  });
  return out;
}
