/**
 * A process's descendants, read from /proc (each thread's `children` list), for the proxy's
 * question "is this connection from the run's tree?" and for ending an askpass program with
 * what it started.
 */
import fsp from 'node:fs/promises';

/**
 * pid and the processes under it, pid first, nearest first, at most `max` (a fork bomb can't
 * make a walk cost more); only pid when it is gone or has no children.
 */
export async function processTree(pid: number, max: number): Promise<number[]> {
  const seen = new Set<number>([pid]);
  const queue = [pid];
  for (let i = 0; i < queue.length && seen.size < max; i++) {
    const p = queue[i] as number;
    let tasks: string[];
    try {
      tasks = await fsp.readdir(`/proc/${p}/task`);
    } catch {
      continue; // gone
    }
    for (const t of tasks) {
      let kids: string;
      try {
        kids = await fsp.readFile(`/proc/${p}/task/${t}/children`, 'latin1');
      } catch {
        continue;
      }
      for (const k of kids.split(' ')) {
        const n = Number(k);
        if (k !== '' && Number.isInteger(n) && n > 0 && !seen.has(n)) {
          seen.add(n);
          queue.push(n);
        }
      }
    }
  }
  return queue;
}
