/**
 * Which processes of this user have a file open under a directory, read from /proc. A restore
 * refuses to replace a home someone holds. A process that is not dumpable (every keyward
 * process makes itself so, the agent first) has its descriptors owned by root: only root can
 * list them. Such a process of this user that is keyward's (by its command line) counts as a
 * holder, fail closed: an agent started with another socket directory is one.
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
      if (hiddenKeyward(pid))
        found.push({ pid, exe: "keyward, not dumpable: its open files can't be listed" });
      continue;
    }
    if (fds.some((fd) => inside(link(`/proc/${pid}/fd/${fd}`))))
      found.push({ pid, exe: link(`/proc/${pid}/exe`) ?? '(unknown)' });
  }
  return found;
}

/** Whether pid is a process of this user, running keyward, whose descriptors are hidden. */
function hiddenKeyward(pid: number): boolean {
  const uid = process.getuid?.();
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
    // Uid: real, effective, saved, filesystem.
    const ids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status);
    if (!ids || !ids.slice(1).some((id) => Number(id) === uid)) return false;
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('keyward');
  } catch {
    return false;
  }
}
