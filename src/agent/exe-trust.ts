/**
 * When an executable's bytes, read by the agent, are the bytes a process runs (exe-hash.ts hashes
 * a caller's executable for `exe_sha256` rules, grants and prompts): fixedForUser, a file no
 * process of this user can change, whose hash may be remembered by its stat; and
 * notHeldWhileRunning, why a running file's bytes may not be the running ones. Each case here is
 * one an attack showed (docs/THREAT-MODEL.md, the `exe_sha256` row).
 */
import fs from 'node:fs';
import path from 'node:path';
import { LOCAL_FILE_SYSTEMS, OVERLAYFS } from '../lib/file-systems.js';
import { closeFd } from '../lib/libc.js';

/**
 * File systems whose files change only through this kernel's own writes to them: a file of
 * root's there is as fixed for a user as its mode says. Not FUSE (its server, which may be this
 * user's, answers each read as it likes) nor network file systems (another machine writes).
 */
const FIXED_FILE_SYSTEMS: ReadonlySet<number> = new Set([
  ...LOCAL_FILE_SYSTEMS,
  OVERLAYFS,
  0x73717368, // squashfs
  0xe0f5e1e2, // EROFS
]);

/**
 * Whether no process of this user can change the bytes of the file open at fd (stat: its
 * fstat): the agent is not root, the file is root's, its mode lets neither its group nor others
 * write (with an ACL, the group bits are its mask: no named entry can grant writing either), it
 * is on a file system of FIXED_FILE_SYSTEMS, reached through a mount of the agent's namespace,
 * and not on blocks the user writes. By the inode, never by access(2): a read-only mount the
 * user made says nothing of the file's other paths, and another user's file may be one the user
 * controls (the uids of its /etc/subuid range, in a namespace of its own). Nor by its owner
 * alone: a file of root's in an image the user built (mkfs.ext4 -d and debugfs need no
 * privilege) and mounted through a loop device (udisks) is rewritten through the image, its stat
 * unchanged; and an overlay the user mounted over such an image, in a namespace of its own, has
 * no block device to trace (both found in review). Only such a file's hash may be known later by
 * its key alone; this is asked again at every lookup, since a loop device's number is its next
 * image's too.
 */
export function fixedForUser(fd: number, stat: fs.BigIntStats): boolean {
  if ((process.getuid?.() ?? 0) === 0 || stat.uid !== 0n || (stat.mode & 0o022n) !== 0n)
    return false;
  try {
    return movable(fd, stat) === undefined;
  } catch {
    return false;
  }
}

/** Whether the mount a descriptor was opened through is one of the agent's mount namespace. */
function inAgentsMounts(fd: number): boolean {
  const m = /^mnt_id:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!m) return false;
  const id = `${m[1]} `;
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((line) => line.startsWith(id));
}

/** A sysfs file's text, or undefined. */
function sysText(p: string): string | undefined {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** nbd: a block device whose blocks a process serves. */
const NBD_MAJOR = 43;

/**
 * Whether a loop device's backing file is root's alone: a regular file of root's that neither
 * group nor others may write, reached from / through directories of root's that neither may
 * write, with no link on the way. Anything else (a path the user could make name another file
 * by a link or a directory of its own; an image deleted while mounted, whose old path may name
 * anything now: found in review) is the user's.
 */
function rootsAlone(backing: string): boolean {
  if (!path.isAbsolute(backing) || backing.endsWith(' (deleted)')) return false;
  let at = '/';
  const parts = backing.split('/').filter((x) => x !== '');
  for (let i = 0; i <= parts.length; i++) {
    const st = fs.lstatSync(at);
    const last = i === parts.length;
    if (st.uid !== 0 || (st.mode & 0o022) !== 0) return false;
    if (last ? !st.isFile() : !st.isDirectory()) return false;
    if (!last) at = path.join(at, parts[i] as string);
  }
  return true;
}

/**
 * Whether a loop device's backing file, root's alone by its path, stands where the user writes
 * all the same: a file system whose bytes another party serves (FUSE says what owner it likes),
 * or blocks of the user's (an image of root's inside the user's own loop-mounted image: found in
 * review). Traced down the stack, as far as usersBlocks goes.
 */
function standsOnUsers(backing: string, depth: number): boolean {
  if (!FIXED_FILE_SYSTEMS.has(Number(fs.statfsSync(backing).type))) return true;
  return onUsersBlocks(fs.statSync(backing, { bigint: true }).dev, depth + 1);
}

/**
 * Whether the block device dir (in /sys/devices), or its disk, or a device it is stacked on
 * (device-mapper's slaves), is a loop device over an image that is not root's alone (its user may
 * write the blocks of a running file there, past the file's deny-write), or an nbd device. A loop
 * device is told by its `loop` directory: one whose backing file can't be named (a path past a
 * page, ENAMETOOLONG) is the user's too.
 */
function usersBlocks(dir: string, depth = 0): boolean {
  if (depth > 8) return true;
  for (const d of [dir, path.dirname(dir)]) {
    const dev = sysText(`${d}/dev`);
    if (dev !== undefined && Number(dev.split(':')[0]) === NBD_MAJOR) return true;
    if (fs.existsSync(`${d}/loop`)) {
      const backing = sysText(`${d}/loop/backing_file`);
      try {
        if (backing === undefined || !rootsAlone(backing) || standsOnUsers(backing, depth))
          return true;
      } catch {
        return true;
      }
    }
    let slaves: string[];
    try {
      slaves = fs.readdirSync(`${d}/slaves`);
    } catch {
      slaves = [];
    }
    for (const slave of slaves)
      if (usersBlocks(fs.realpathSync(`${d}/slaves/${slave}`), depth + 1)) return true;
  }
  return false;
}

/** Whether the file system of a file with this st_dev sits on blocks its user may write. */
function onUsersBlocks(dev: bigint, depth = 0): boolean {
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  // No block device (tmpfs, overlayfs; btrfs's devices are not traced: THREAT-MODEL.md).
  if (major === 0) return false;
  try {
    const dir = fs.realpathSync(`/sys/dev/block/${major}:${minor}`);
    // A disk (or its partition) is named by its bus; loop, nbd, device-mapper, md and the like
    // are virtual, and only they can stand on blocks a user writes. Asked for every root-owned
    // program a new caller runs (fixedForUser): a disk's answer takes one realpath.
    return dir.startsWith('/sys/devices/virtual/') && usersBlocks(dir, depth);
  } catch {
    return true;
  }
}

/**
 * Why the bytes of the file open at fd (stat: its fstat) may be changed by its user past its
 * inode (a file system another party serves or writes, a mount of the user's own, blocks the
 * user writes), or undefined: what fixedForUser and notHeldWhileRunning both ask. Throws when it
 * can't tell (each caller refuses then).
 */
function movable(fd: number, stat: fs.BigIntStats): string | undefined {
  const type = Number(fs.statfsSync(`/proc/self/fd/${fd}`).type);
  if (!FIXED_FILE_SYSTEMS.has(type))
    return `is on a file system whose bytes can change while it runs (type 0x${type.toString(16)})`;
  if (!inAgentsMounts(fd))
    return "is reached through a mount outside the agent's mount namespace (one its user may have made)";
  if (onUsersBlocks(stat.dev))
    return 'is on a loop (or nbd) device over an image its user can write, past the running file';
  return undefined;
}

/**
 * Why the bytes of the running executable open at fd (stat: its fstat) may not be the ones it
 * runs, or undefined when they are. A file a process runs can't be opened for writing (ETXTBSY),
 * and exec refuses a file open for writing or mapped writable, so from the exec on its bytes are
 * the running ones, on a local file system reached through a mount of the agent's own
 * namespace. Not:
 * - a memfd, sealed or not: its writers write on while it runs, and a seal added after a
 *   rewrite says nothing of the bytes it started with (told by its name, `/memfd:NAME`: its
 *   seals are a tmpfs file's until sealed);
 * - a file system whose bytes another party serves or writes (FUSE, NFS, SMB, 9p, virtiofs);
 * - a mount the user may have made, in a user and mount namespace of its own: an overlay there
 *   runs a lower file the user writes through another path, which no ETXTBSY covers;
 * - a file system on a loop device over an image that is not root's (or an nbd device): its
 *   user writes the running file's blocks through the image;
 * - a file the agent can open for writing now (not running it, or not held).
 */
export function notHeldWhileRunning(fd: number, stat: fs.BigIntStats): string | undefined {
  const self = `/proc/self/fd/${fd}`;
  try {
    if (fs.readlinkSync(self).startsWith('/memfd:'))
      return 'is a memfd, whose bytes can change while it runs';
    const why = movable(fd, stat);
    if (why !== undefined) return why;
  } catch {
    return 'can not be examined';
  }
  let w: number;
  try {
    w = fs.openSync(self, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
  } catch {
    // ETXTBSY (running, as it should be), or not the agent's to write (EACCES, EROFS).
    return undefined;
  }
  closeFd(w);
  return 'can be opened for writing while it runs';
}
