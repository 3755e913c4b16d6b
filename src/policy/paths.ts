/**
 * Caller paths a policy names that this machine resolves elsewhere. The agent matches `exe` and
 * `ancestor` against the file a process runs (/proc/PID/exe: every symbolic link resolved), so a
 * rule on `/usr/bin/python3`, a link to python3.11, matches no process at all: a deny so written
 * denies nothing (found in review). Checked where a person checks or applies a policy, on this
 * machine's files; the agent never reads the file system to decide.
 */
import fs from 'node:fs';
import { printable } from '../lib/text.js';
import type { Policy } from './schema.js';

/** A glob's characters: a pattern is not one path to resolve. */
const GLOB = /[*?[\]{}!]/;

/** One line per rule whose `exe` or `ancestor` is a path that is (or goes through) a link. */
export function linkedCallerPaths(policy: Policy): string[] {
  const out: string[] = [];
  for (const r of policy.rules)
    for (const field of ['exe', 'ancestor'] as const) {
      const p = r.callers[field];
      if (p === undefined || !p.startsWith('/') || GLOB.test(p)) continue;
      let real: string;
      try {
        real = fs.realpathSync(p);
      } catch {
        continue; // not on this machine: nothing to say of it here
      }
      if (real !== p)
        out.push(
          `rule ${printable(r.name)}'s ${field} ${printable(p)} goes through a symbolic link to ${printable(real)}: the agent matches the file a process runs, so this rule matches no process. Write ${printable(real)} (or a glob that matches it)`,
        );
    }
  return out;
}
