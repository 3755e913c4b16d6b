/**
 * The few libc calls Node does not expose (libc-core.ts binds them): locks, hardening, the
 * terminal, peer credentials and pidfds, descriptors, renames. Starting programs, terminals and
 * glibc's malloc cache are in process.ts, Unix sockets with descriptors in unix.ts.
 */
import { EINTR, libc } from './libc-core.js';
import { socketPair } from './unix.js';

export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;
const EWOULDBLOCK = 11;

/** flock(2). Returns true when taken, false when LOCK_NB was asked and someone else holds it. */
export function flock(fd: number, op: number): boolean {
  const l = libc();
  // errno is read after the call returns to JS; a full CI run once saw ENOMEM there, from work
  // the runtime did in between. A real error (EBADF, ENOLCK) repeats; a clobbered errno doesn't.
  for (let unexpected = 0; ;) {
    if (l.flock(fd, op) === 0) return true;
    const err = l.errno();
    if (err === EINTR) continue;
    if (err === EWOULDBLOCK) return false;
    if (++unexpected >= 3) throw new Error(`flock failed (errno ${err})`);
  }
}

const PR_SET_DUMPABLE = 4;
const PR_GET_DUMPABLE = 3;
const RLIMIT_CORE = 4;
const M_PERTURB = -6;

/**
 * Makes this process non-dumpable (no core file; /proc/PID/mem and ptrace closed to other
 * processes of the same user) and sets the core size limit to 0. Idempotent. It also hides the
 * process's executable, cwd and environment from the agent: a CLI that talks to the agent
 * calls this once the agent has greeted it (docs/PROTOCOL.md, "Peer identity").
 */
let hardened = false;

export function hardenProcess(): void {
  if (hardened) return;
  hardened = true;
  const l = libc();
  l.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  l.setrlimit(RLIMIT_CORE, { cur: 0n, max: 0n });
  // glibc's M_PERTURB: free() overwrites what it frees. OpenSSL (through node:crypto, for ECDSA
  // and RSA signatures) frees some copies of key material without clearing them; this clears
  // them (docs/THREAT-MODEL.md, "ECDSA and RSA keys", and the test named there).
  l.mallopt(M_PERTURB, 0xa5);
}

export function isDumpable(): boolean {
  return libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) === 1;
}

export function coreLimit(): { soft: bigint; hard: bigint } {
  const out: { cur: bigint; max: bigint } = { cur: 0n, max: 0n };
  libc().getrlimit(RLIMIT_CORE, out);
  return { soft: BigInt(out.cur), hard: BigInt(out.max) };
}

/**
 * Whether fd is a terminal, as tty.isatty says, without node:tty (which loads node:net: the read
 * path loads neither).
 */
export function isTerminal(fd: number): boolean {
  return libc().isatty(fd) === 1;
}

// struct termios on Linux/glibc (x86_64 and aarch64): four 32-bit flag words, c_line, c_cc[32],
// then the two speeds: 60 bytes. We only touch c_lflag and two c_cc slots.
const TERMIOS_SIZE = 60;
const LFLAG_OFFSET = 12;
const CC_OFFSET = 17;
const VTIME = 5;
const VMIN = 6;
const ISIG = 0o1;
const ICANON = 0o2;
const ECHO = 0o10;
const TCSAFLUSH = 2;

/**
 * Whether this process's group is the terminal's foreground job: a background job (`cmd &`, a
 * process substitution) can't take the terminal (changing its mode stops the job with SIGTTOU,
 * or fails with EIO), so for it there is no terminal to ask on.
 */
export function isForeground(fd: number): boolean {
  const l = libc();
  const fg = l.tcgetpgrp(fd);
  return fg > 0 && fg === l.getpgrp();
}

/**
 * Puts a terminal in no-echo, byte-at-a-time mode with signals off (Ctrl-C arrives as a byte, so
 * the caller can restore the terminal before leaving). Returns the function that restores it.
 */
export function rawNoEcho(fd: number): () => void {
  const l = libc();
  const saved = Buffer.alloc(TERMIOS_SIZE);
  if (l.tcgetattr(fd, saved) !== 0) throw new Error(`tcgetattr failed (errno ${l.errno()})`);
  const raw = Buffer.from(saved);
  const lflag = raw.readUInt32LE(LFLAG_OFFSET) & ~(ECHO | ICANON | ISIG);
  raw.writeUInt32LE(lflag >>> 0, LFLAG_OFFSET);
  raw[CC_OFFSET + VMIN] = 1;
  raw[CC_OFFSET + VTIME] = 0;
  if (l.tcsetattr(fd, TCSAFLUSH, raw) !== 0)
    throw new Error(`tcsetattr failed (errno ${l.errno()})`);
  return () => {
    l.tcsetattr(fd, TCSAFLUSH, saved);
  };
}

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const SO_PEERPIDFD = 77;
const SYS_PIDFD_SEND_SIGNAL = 424;
const SYS_PIDFD_OPEN = 434;

/** The peer of a connected Unix socket, as the kernel saw it at connect time. */
export function peerCredentials(fd: number): { pid: number; uid: number; gid: number } {
  const l = libc();
  const out = Buffer.alloc(12);
  if (l.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, out, [12]) !== 0) {
    throw new Error(`SO_PEERCRED failed (errno ${l.errno()})`);
  }
  return { pid: out.readInt32LE(0), uid: out.readUInt32LE(4), gid: out.readUInt32LE(8) };
}

/** getsockopt's answer for an option the kernel does not know (SO_PEERPIDFD before 6.5). */
export const ENOPROTOOPT = 92;

/**
 * A pidfd for the peer (Linux 6.5+), so that a later check can tell whether the process that
 * connected is still the one behind the pid; else the errno (ENOPROTOOPT where the kernel has no
 * such option; EINVAL from 6.5 to 6.15 for a peer that already exited).
 */
export function peerPidfd(fd: number): number | { errno: number } {
  const l = libc();
  const out = Buffer.alloc(4);
  if (l.getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, out, [4]) !== 0) return { errno: l.errno() };
  return out.readInt32LE(0);
}

/**
 * Whether this kernel answers SO_PEERPIDFD: asked of a socket pair of this process's own, so
 * what the agent will get from its peers, on this kernel and under any filter this process runs
 * under. 0 when it works; else the errno (ENOPROTOOPT: the kernel has no such option).
 */
export function peerPidfdProbe(): number {
  const l = libc();
  let a: number;
  let b: number;
  try {
    [a, b] = socketPair();
  } catch {
    return l.errno();
  }
  try {
    const pinned = peerPidfd(a);
    if (typeof pinned !== 'number') return pinned.errno;
    l.close(pinned);
    return 0;
  } finally {
    l.close(a);
    l.close(b);
  }
}

/**
 * pidfd_open(2) (Linux 5.3+): a pidfd for whatever process has this pid now. Weaker than
 * SO_PEERPIDFD, which names the process that connected; used only where the kernel lacks it.
 */
export function pidfdOpen(pid: number): number | undefined {
  const fd = libc().syscall4(SYS_PIDFD_OPEN, pid, 0, null, 0);
  return fd >= 0 ? fd : undefined;
}

/** Whether the process a pidfd refers to is still alive (signal 0 through the pidfd). */
export function pidfdAlive(pidfd: number): boolean {
  return libc().syscall4(SYS_PIDFD_SEND_SIGNAL, pidfd, 0, null, 0) === 0;
}

const FIONREAD = 0x541b;

/** How many bytes wait unread on a socket (FIONREAD), or -1 when the kernel won't say. */
export function queuedBytes(fd: number): number {
  const out = Buffer.alloc(4);
  if (libc().ioctlBuf(fd, FIONREAD, out) !== 0) return -1;
  return out.readInt32LE(0);
}

const F_DUPFD_CLOEXEC = 1030;

const AT_FDCWD = -100;
const RENAME_EXCHANGE = 2;

/**
 * Swaps two paths in one step (renameat2 RENAME_EXCHANGE): at every instant each name holds one
 * of the two, so a crash leaves either the old arrangement or the new. Throws with the errno.
 */
export function renameExchange(a: string, b: string): void {
  const l = libc();
  if (l.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) !== 0)
    throw new Error(`renameat2(${a}, ${b}, RENAME_EXCHANGE) failed: errno ${l.errno()}`);
}

const RENAME_NOREPLACE = 1;

/**
 * Renames a to b only if nothing is at b (renameat2 RENAME_NOREPLACE): what appears at b between
 * a check and the rename is never replaced, and so never lost. Throws with the errno (EEXIST).
 */
export function renameNoReplace(a: string, b: string): void {
  const l = libc();
  if (l.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_NOREPLACE) !== 0)
    throw new Error(`renameat2(${a}, ${b}, RENAME_NOREPLACE) failed: errno ${l.errno()}`);
}

/** A close-on-exec duplicate of fd, or undefined. */
export function dupFd(fd: number): number | undefined {
  const d = libc().fcntl(fd, F_DUPFD_CLOEXEC, 3);
  return d >= 0 ? d : undefined;
}

export function closeFd(fd: number): void {
  libc().close(fd);
}

/** What statWithoutTimes gives: a file's identity, kind and size. */
export interface FileIdentity {
  dev: bigint;
  ino: bigint;
  size: bigint;
  nlink: number;
  isFile: boolean;
}

const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_EMPTY_PATH = 0x1000;
// STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_INO | STATX_SIZE: no times.
const STATX_NO_TIMES = 0x1 | 0x2 | 0x4 | 0x100 | 0x200;
const ENOENT = 2;
const statxOut = Buffer.alloc(256);

/**
 * A file's device, inode, size and kind, by statx(2) with a mask that asks for no times: the
 * path itself (never followed), or an open descriptor when file is a number. Undefined when the
 * path names nothing. Why no times: on this kernel (multigrain timestamps, Linux 6.13 on) a
 * query of a file's change time makes its next write take a fine-grained one, which dirties the
 * inode, and a later fdatasync then writes the inode too: node:fs asks for every field, and cost
 * the audit journal a third of its speed (docs/PERFORMANCE.md, 2026-12-07 (eleventh session)).
 */
export function statWithoutTimes(file: string | number): FileIdentity | undefined {
  const l = libc();
  const r =
    typeof file === 'number'
      ? l.statx(file, '', AT_EMPTY_PATH, STATX_NO_TIMES, statxOut)
      : l.statx(AT_FDCWD, file, AT_SYMLINK_NOFOLLOW, STATX_NO_TIMES, statxOut);
  if (r !== 0) {
    const err = l.errno();
    if (err === ENOENT) return undefined;
    throw Object.assign(new Error(`statx failed (errno ${err})`), { errno: err });
  }
  // struct statx (linux/stat.h): nlink at 16, mode at 28, ino at 32, size at 40, dev major and
  // minor at 136.
  const mode = statxOut.readUInt16LE(28);
  const major = BigInt(statxOut.readUInt32LE(136));
  const minor = BigInt(statxOut.readUInt32LE(140));
  return {
    // glibc's makedev, as node:fs reports st_dev: the same number for the same device.
    dev:
      (minor & 0xffn) |
      ((major & 0xfffn) << 8n) |
      ((minor & ~0xffn) << 12n) |
      ((major & ~0xfffn) << 32n),
    ino: statxOut.readBigUInt64LE(32),
    size: statxOut.readBigUInt64LE(40),
    nlink: statxOut.readUInt32LE(16),
    isFile: (mode & 0o170000) === 0o100000,
  };
}
