/**
 * Caller paths a policy names that this machine resolves elsewhere. The agent matches `exe` and
 * `ancestor` against the file a process runs (/proc/PID/exe: every symbolic link resolved), and
 * `cwd` against /proc/PID/cwd (resolved too: /home is a link on some systems), so a
 * rule on `/usr/bin/python3`, a link to python3.11, matches no process at all: a deny so written
 * denies nothing (found in review). Checked where a person checks or applies a policy, on this
 * machine's files; the agent never reads the file system to decide.
 */
import fs from 'node:fs';
import { printable } from '../lib/text.js';
import { isGlob, type Policy } from './schema.js';

/** One line per rule whose `exe`, `ancestor` or `cwd` is a path that goes through a link. */
export function linkedCallerPaths(policy: Policy): string[] {
  const out: string[] = [];
  for (const r of policy.rules)
    for (const field of ['exe', 'ancestor', 'cwd'] as const) {
      const p = r.callers[field];
      if (p === undefined || !p.startsWith('/') || isGlob(p)) continue;
      let real: string;
      try {
        real = fs.realpathSync(p);
      } catch {
        continue; // not on this machine: nothing to say of it here
      }
      if (real !== p)
        out.push(
          `rule ${printable(r.name)}'s ${field} ${printable(p)} goes through a symbolic link to ${printable(real)}: the agent sees ${field === 'cwd' ? 'the directory' : 'the file'} a process ${field === 'cwd' ? 'is in' : 'runs'}, so this rule matches no process. Write ${printable(real)}, or a glob that matches it (one that follows upgrades, such as /usr/bin/python3*, where the file's name has a version)`,
        );
    }
  return out;
}
