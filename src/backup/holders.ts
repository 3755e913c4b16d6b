/**
 * Which processes of this user have a file open under a directory,
 * read from /proc: those whose descriptors this process may read, which are all of the user's
 * own (and every process, for root). A restore refuses to replace a home someone holds.
 */
import fs from 'node:fs';
import path from 'node:path';

export function holders(dir: string): Array<{ pid: number; exe: string }> {
  const inside = (p: string | undefined) =>
    p !== undefined && (p === dir || p.startsWith(`${dir}${path.sep}`));
  const link = (p: string) => {
    try {
      return fs.readlinkSync(p);
    } catch {
      return undefined;
    }
  };
  const found: Array<{ pid: number; exe: string }> = [];
  for (const name of fs.readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    if (fds.some((fd) => inside(link(`/proc/${pid}/fd/${fd}`))))
      found.push({ pid, exe: link(`/proc/${pid}/exe`) ?? '(unknown)' });
  }
  return found;
}
