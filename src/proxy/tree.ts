/**
 * Who is on the other end of a loopback TCP connection, and whether it is in a run's process tree
 * (docs/THREAT-MODEL.md, "The credential proxy"). Linux gives no peer credentials for TCP, so the
 * proxy finds them the way `ss -p` does:
 *
 * 1. /proc/net/tcp lists every TCP socket of this network namespace with its owner's uid and its
 *    inode; the client's end of the connection is the one whose local address is the peer's and
 *    whose remote address is the proxy's.
 * 2. The run's tree is walked from its first process down (/proc/PID/task/TID/children), and each
 *    process's descriptors are read (/proc/PID/fd): the connection belongs to the tree when one of
 *    them holds that inode.
 *
 * A process that left the tree (double fork to init, a daemon) is outside it: it is refused, as is
 * any other process of the user. What this can't tell apart is in THREAT-MODEL.md.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { processTree } from '../lib/proc-tree.js';

/** The most processes a tree walk visits (a fork bomb can't make each connection cost more). */
const MAX_TREE = 4096;

/** `127.0.0.1:443` as /proc/net/tcp writes it: the address's bytes in host order, hex. */
function procAddress(ip: string, port: number): string | undefined {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255))
    return undefined;
  const [a, b, c, d] = parts as [number, number, number, number];
  // Little-endian hosts (x86-64, arm64): the u32 printed with %08X shows the bytes reversed.
  const hex = [d, c, b, a].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.toUpperCase()}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** The inode and uid of the socket with this local and remote address, from /proc/net/tcp. */
export function socketOf(
  local: { ip: string; port: number },
  remote: { ip: string; port: number },
): { inode: number; uid: number } | undefined {
  const l = procAddress(local.ip, local.port);
  const r = procAddress(remote.ip, remote.port);
  if (!l || !r) return undefined;
  let text: string;
  try {
    text = fs.readFileSync('/proc/net/tcp', 'latin1');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
    if (f[1] === l && f[2] === r) {
      const uid = Number(f[7]);
      const inode = Number(f[9]);
      if (Number.isInteger(uid) && Number.isInteger(inode) && inode > 0) return { inode, uid };
    }
  }
  return undefined;
}

/** The most descriptors a lookup reads (a tree that holds more is refused, not walked). */
const MAX_FDS = 65_536;

/** A process pinned by its start time (field 22 of /proc/PID/stat): a reused pid is not it. */
export interface Pinned {
  pid: number;
  start: string;
}

/** pid's start time, or undefined when it is gone. */
export function startTime(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ).
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** The processes of the tree under root, root first (at most MAX_TREE); none if root is gone. */
export async function treeOf(root: Pinned): Promise<number[]> {
  if (startTime(root.pid) !== root.start) return [];
  return processTree(root.pid, MAX_TREE);
}

/** pid's parent, or undefined when it is gone. */
function parentOf(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    return Number.isInteger(ppid) ? ppid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether pid descends from root now: its parents, read after its descriptors were, lead to root
 * (pinned by its start time). A pid the walk listed may have been taken since by another
 * process (the listed one exited, and the pid was handed out again to a process of the user
 * outside the tree, which then held a connection of its own): that process's parents are its
 * own, not the tree's.
 */
export function descendsFrom(pid: number, root: Pinned): boolean {
  let p = pid;
  for (let i = 0; i < MAX_TREE; i++) {
    if (p === root.pid) return startTime(root.pid) === root.start;
    const parent = parentOf(p);
    if (parent === undefined || parent <= 1) return false;
    p = parent;
  }
  return false;
}

/**
 * The process of root's tree that holds the socket with this inode, or undefined. Read without
 * blocking the agent, and bounded: a tree of very many descriptors is refused, not walked.
 */
export async function holderInTree(root: Pinned, inode: number): Promise<number | undefined> {
  return holderAmong(await treeOf(root), root, inode);
}

/**
 * The process among pids (a walk of root's tree) that holds the socket, if it still descends
 * from root once its descriptors are read (descendsFrom), or undefined.
 */
export async function holderAmong(
  pids: readonly number[],
  root: Pinned,
  inode: number,
): Promise<number | undefined> {
  const want = `socket:[${inode}]`;
  let visited = 0;
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await fsp.readdir(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      if (++visited > MAX_FDS) return undefined;
      try {
        if ((await fsp.readlink(`/proc/${pid}/fd/${fd}`)) === want)
          return descendsFrom(pid, root) ? pid : undefined;
      } catch {
        // closed meanwhile
      }
    }
  }
  return undefined;
}
