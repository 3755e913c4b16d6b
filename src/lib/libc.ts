/**
 * The few libc calls Node does not expose, through koffi. Loaded lazily so that commands that
 * need none of them (help, version) start without the FFI.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import type Koffi from 'koffi';

// With require: an ESM import of this CommonJS package costs its export scan (~10 ms a process).
const koffi = createRequire(import.meta.url)('koffi') as typeof Koffi;

interface Libc {
  flock: (fd: number, op: number) => number;
  prctl: (option: number, a2: number, a3: number, a4: number, a5: number) => number;
  setrlimit: (resource: number, rlim: { cur: bigint; max: bigint }) => number;
  getrlimit: (resource: number, rlim: unknown) => number;
  tcgetattr: (fd: number, termios: Buffer) => number;
  tcsetattr: (fd: number, when: number, termios: Buffer) => number;
  tcgetpgrp: (fd: number) => number;
  getpgrp: () => number;
  getsockopt: (fd: number, level: number, name: number, out: Buffer, len: number[]) => number;
  syscall4: (nr: number, a: number, b: number, c: null, d: number) => number;
  close: (fd: number) => number;
  mallopt: (param: number, value: number) => number;
  memfdCreate: (name: string, flags: number) => number;
  fcntl: (fd: number, cmd: number, arg: number) => number;
  lseek: (fd: number, offset: number, whence: number) => number;
  execvpe: (file: string, argv: (string | null)[], envp: (Buffer | null)[]) => number;
  setsid: () => number;
  ioctl: (fd: number, req: number, arg: number) => number;
  ioctlBuf: (fd: number, req: number, arg: Buffer) => number;
  posixOpenpt: (flags: number) => number;
  signal: (sig: number, handler: null) => unknown;
  closeRange: (first: number, last: number, flags: number) => number;
  grantpt: (fd: number) => number;
  unlockpt: (fd: number) => number;
  ptsnameR: (fd: number, buf: Buffer, len: number) => number;
  sendmsg: (fd: number, msg: unknown, flags: number) => number | bigint;
  recvmsg: (fd: number, msg: Msghdr, flags: number) => number | bigint;
  socket: (domain: number, type: number, proto: number) => number;
  connect: (fd: number, addr: Buffer, len: number) => number;
  sendto: (
    fd: number,
    data: Buffer,
    len: number,
    flags: number,
    addr: Buffer,
    addrLen: number,
  ) => number | bigint;
  errno: () => number;
  renameat2: (
    olddir: number,
    oldpath: string,
    newdir: number,
    newpath: string,
    flags: number,
  ) => number;
}

interface Msghdr {
  name: null;
  namelen: number;
  iov: Array<{ base: Buffer; len: number }>;
  iovlen: number;
  control: Buffer | null;
  controllen: number;
  flags: number;
}

let cached: Libc | undefined;

function libc(): Libc {
  if (cached) return cached;
  const lib = koffi.load('libc.so.6');
  const Rlimit = koffi.struct('keyward_rlimit', { cur: 'uint64', max: 'uint64' });
  koffi.struct('keyward_iovec', { base: 'void *', len: 'size_t' });
  koffi.struct('keyward_msghdr', {
    name: 'void *',
    namelen: 'uint32_t',
    iov: 'keyward_iovec *',
    iovlen: 'size_t',
    control: 'void *',
    controllen: 'size_t',
    flags: 'int',
  });
  cached = {
    flock: lib.func('int flock(int, int)'),
    prctl: lib.func('int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long)'),
    setrlimit: lib.func('setrlimit', 'int', ['int', koffi.pointer(Rlimit)]),
    getrlimit: lib.func('getrlimit', 'int', ['int', koffi.out(koffi.pointer(Rlimit))]),
    tcgetattr: lib.func('int tcgetattr(int, _Out_ uint8_t *)'),
    tcsetattr: lib.func('int tcsetattr(int, int, const uint8_t *)'),
    tcgetpgrp: lib.func('int tcgetpgrp(int)'),
    getpgrp: lib.func('int getpgrp(void)'),
    getsockopt: lib.func('int getsockopt(int, int, int, _Out_ uint8_t *, _Inout_ uint32_t *)'),
    syscall4: lib.func('long syscall(long, int, int, void *, unsigned int)'),
    close: lib.func('int close(int)'),
    mallopt: lib.func('int mallopt(int, int)'),
    memfdCreate: lib.func('int memfd_create(const char *, unsigned int)'),
    fcntl: lib.func('int fcntl(int, int, int)'),
    lseek: lib.func('int64_t lseek(int, int64_t, int)'),
    execvpe: lib.func('int execvpe(const char *, const char **, uint8_t **)'),
    setsid: lib.func('int setsid(void)'),
    ioctl: lib.func('int ioctl(int, unsigned long, int)'),
    ioctlBuf: lib.func('ioctl', 'int', ['int', 'unsigned long', 'uint8_t *']),
    posixOpenpt: lib.func('int posix_openpt(int)'),
    signal: lib.func('void *signal(int, void *)'),
    closeRange: lib.func('int close_range(unsigned int, unsigned int, int)'),
    grantpt: lib.func('int grantpt(int)'),
    unlockpt: lib.func('int unlockpt(int)'),
    ptsnameR: lib.func('int ptsname_r(int, _Out_ uint8_t *, size_t)'),
    sendmsg: lib.func('long sendmsg(int, const keyward_msghdr *, int)'),
    recvmsg: lib.func('long recvmsg(int, _Inout_ keyward_msghdr *, int)'),
    socket: lib.func('int socket(int, int, int)'),
    connect: lib.func('int connect(int, const uint8_t *, uint32_t)'),
    sendto: lib.func('long sendto(int, const uint8_t *, size_t, int, const uint8_t *, uint32_t)'),
    errno: () => koffi.errno(),
    renameat2: lib.func('int renameat2(int, const char *, int, const char *, unsigned int)'),
  };
  return cached;
}

export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;
const EWOULDBLOCK = 11;
const EINTR = 4;

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

/**
 * A pidfd for the peer (Linux 6.5+), so that a later check can tell whether the process that
 * connected is still the one behind the pid. Undefined where the kernel has none.
 */
export function peerPidfd(fd: number): number | undefined {
  const l = libc();
  const out = Buffer.alloc(4);
  if (l.getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, out, [4]) !== 0) return undefined;
  return out.readInt32LE(0);
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

/** A close-on-exec duplicate of fd, or undefined. */
export function dupFd(fd: number): number | undefined {
  const d = libc().fcntl(fd, F_DUPFD_CLOEXEC, 3);
  return d >= 0 ? d : undefined;
}

export function closeFd(fd: number): void {
  libc().close(fd);
}

const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const F_SETFD = 2;
const F_ADD_SEALS = 1033;
const F_SEAL_SEAL = 1;
const F_SEAL_SHRINK = 2;
const F_SEAL_GROW = 4;
const F_SEAL_WRITE = 8;

/**
 * An anonymous file holding exactly these bytes, sealed: nobody (the receiver included) can
 * change, grow or shrink it afterwards. Close-on-exec in this process; a child gets it only where
 * it is handed over explicitly (spawn's stdio). Written with write(2) from the caller's buffers,
 * so secret bytes go from secure memory to the kernel without a copy in this process.
 */
export function sealedMemfd(name: string, pieces: readonly Uint8Array[]): number {
  const l = libc();
  const fd = l.memfdCreate(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) throw new Error(`memfd_create failed (errno ${l.errno()})`);
  try {
    for (const p of pieces) {
      let off = 0;
      while (off < p.length) off += fs.writeSync(fd, p, off, p.length - off);
    }
    const seals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
    if (l.fcntl(fd, F_ADD_SEALS, seals) !== 0)
      throw new Error(`sealing the memfd failed (errno ${l.errno()})`);
    // The receiver shares this file offset: it reads from the start.
    if (l.lseek(fd, 0, 0) !== 0) throw new Error(`lseek failed (errno ${l.errno()})`);
    return fd;
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Clears FD_CLOEXEC, so the descriptor survives an exec (Node marks even 0, 1 and 2). */
export function keepAcrossExec(fd: number): void {
  const l = libc();
  if (l.fcntl(fd, F_SETFD, 0) !== 0) throw new Error(`fcntl(${fd}) failed (errno ${l.errno()})`);
}

/**
 * A new session (so the child is not in the agent's process group: a `kill 0` in it can't reach
 * the agent), with the terminal on fd 0 as its controlling terminal when it is a pty.
 */
export function newSession(withTerminal: boolean): void {
  const l = libc();
  const TIOCSCTTY = 0x540e;
  if (l.setsid() < 0) throw new Error(`setsid failed (errno ${l.errno()})`);
  if (withTerminal && l.ioctl(0, TIOCSCTTY, 0) !== 0)
    throw new Error(`TIOCSCTTY failed (errno ${l.errno()})`);
}

/**
 * Undoes what Node set up that a program would inherit across exec: SIGPIPE and SIGXFSZ ignored
 * (so `yes | head` would misbehave), and descriptors 3 and up left open without close-on-exec.
 */
export function cleanForExec(): void {
  const l = libc();
  const SIGPIPE = 13;
  const SIGXFSZ = 25;
  l.signal(SIGPIPE, null); // SIG_DFL
  l.signal(SIGXFSZ, null);
  const CLOSE_RANGE_CLOEXEC = 4;
  if (l.closeRange(3, 0xffffffff, CLOSE_RANGE_CLOEXEC) !== 0)
    throw new Error(`close_range failed (errno ${l.errno()})`);
}

/**
 * execvpe(3): replaces this process. envp entries are NUL-terminated byte strings (Buffers, so
 * values never become JS strings). Returns only on failure, with errno.
 */
export function execvpe(file: string, argv: string[], envp: Buffer[]): number {
  const l = libc();
  l.execvpe(file, [...argv, null], [...envp, null]);
  return l.errno();
}

const TIOCSWINSZ = 0x5414;

/** Sets a terminal's size (rows and columns), as a resize of the window would. */
export function setWindowSize(fd: number, rows: number, cols: number): void {
  const ws = Buffer.alloc(8);
  ws.writeUInt16LE(rows, 0);
  ws.writeUInt16LE(cols, 2);
  libc().ioctlBuf(fd, TIOCSWINSZ, ws);
}

/**
 * A new pseudo-terminal: the master (kept by the caller) and the slave, opened, for a child's
 * stdio. Both close-on-exec here; spawn hands the slave to the child explicitly.
 */
export function openPty(rows: number, cols: number): { master: number; slave: number } {
  const l = libc();
  const O_RDWR = 2;
  const O_NOCTTY = 0o400;
  const O_CLOEXEC = 0o2000000;
  const master = l.posixOpenpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) throw new Error(`posix_openpt failed (errno ${l.errno()})`);
  try {
    if (l.grantpt(master) !== 0 || l.unlockpt(master) !== 0)
      throw new Error(`grantpt/unlockpt failed (errno ${l.errno()})`);
    const name = Buffer.alloc(128);
    if (l.ptsnameR(master, name, name.length) !== 0)
      throw new Error(`ptsname failed (errno ${l.errno()})`);
    const slavePath = name.subarray(0, name.indexOf(0)).toString('utf8');
    const slave = fs.openSync(slavePath, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
    setWindowSize(master, rows, cols);
    return { master, slave };
  } catch (e) {
    fs.closeSync(master);
    throw e;
  }
}

const SCM_RIGHTS = 1;
const CMSG_SPACE_ONE_FD = 24; // CMSG_SPACE(sizeof(int)) on 64-bit Linux
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
export const EAGAIN = 11;

/**
 * Sends data with one descriptor attached (SCM_RIGHTS) on a Unix socket. Returns the bytes sent,
 * or -errno. Non-blocking: the caller sends only when nothing else is queued on the socket.
 */
export function sendWithFd(sock: number, data: Buffer, fd: number): number {
  const l = libc();
  const control = Buffer.alloc(CMSG_SPACE_ONE_FD);
  control.writeBigUInt64LE(20n, 0); // CMSG_LEN(sizeof(int))
  control.writeInt32LE(SOL_SOCKET, 8);
  control.writeInt32LE(SCM_RIGHTS, 12);
  control.writeInt32LE(fd, 16);
  const msg: Msghdr = {
    name: null,
    namelen: 0,
    iov: [{ base: data, len: data.length }],
    iovlen: 1,
    control,
    controllen: control.length,
    flags: 0,
  };
  const n = Number(l.sendmsg(sock, msg, MSG_DONTWAIT | MSG_NOSIGNAL));
  return n < 0 ? -l.errno() : n;
}

/**
 * One non-blocking recvmsg into buf: the bytes read (0 at end of stream, -errno on error, so
 * -EAGAIN when nothing is there yet) and the descriptor that came with them, if any (close-on-
 * exec). Descriptors beyond the first are closed.
 */
export function recvWithFd(sock: number, buf: Buffer): { n: number; fd: number | undefined } {
  const l = libc();
  const control = Buffer.alloc(64);
  const msg: Msghdr = {
    name: null,
    namelen: 0,
    iov: [{ base: buf, len: buf.length }],
    iovlen: 1,
    control,
    controllen: control.length,
    flags: 0,
  };
  const n = Number(l.recvmsg(sock, msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
  if (n < 0) return { n: -l.errno(), fd: undefined };
  let fd: number | undefined;
  let off = 0;
  const end = Math.min(msg.controllen, control.length);
  while (off + 16 <= end) {
    const len = Number(control.readBigUInt64LE(off));
    if (len < 16 || off + len > end) break;
    if (
      control.readInt32LE(off + 8) === SOL_SOCKET &&
      control.readInt32LE(off + 12) === SCM_RIGHTS
    ) {
      for (let p = off + 16; p + 4 <= off + len; p += 4) {
        const got = control.readInt32LE(p);
        if (fd === undefined) fd = got;
        else l.close(got);
      }
    }
    off += (len + 7) & ~7;
  }
  return { n, fd };
}

/** A connected Unix stream socket (close-on-exec), or throws with errno. */
export function unixConnect(path: string): number {
  const l = libc();
  const AF_UNIX = 1;
  const SOCK_STREAM = 1;
  const SOCK_CLOEXEC = 0o2000000;
  const fd = l.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error(`socket failed (errno ${l.errno()})`);
  const p = Buffer.from(path, 'utf8');
  if (p.length >= 108) {
    l.close(fd);
    throw new Error('socket path too long');
  }
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(AF_UNIX, 0);
  p.copy(addr, 2);
  if (l.connect(fd, addr, 2 + p.length + 1) !== 0) {
    const err = l.errno();
    l.close(fd);
    const e = new Error(`connect failed (errno ${err})`) as NodeJS.ErrnoException;
    e.code = err === 2 ? 'ENOENT' : err === 111 ? 'ECONNREFUSED' : 'EIO';
    throw e;
  }
  return fd;
}

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;

/** A non-blocking, close-on-exec Unix datagram socket (the system log's kind). */
export function unixDatagramSocket(): number {
  const l = libc();
  const fd = l.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error(`socket failed (errno ${l.errno()})`);
  return fd;
}

/**
 * Sends one datagram to the Unix socket at path without waiting. Returns 0 when sent, else the
 * errno (EAGAIN: the reader is behind; ENOENT or ECONNREFUSED: nobody listens there).
 */
export function sendDatagram(fd: number, path: string, data: Buffer): number {
  const l = libc();
  const p = Buffer.from(path, 'utf8');
  if (p.length >= 108) return 36; // ENAMETOOLONG
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(AF_UNIX, 0);
  p.copy(addr, 2);
  const n = l.sendto(fd, data, data.length, MSG_DONTWAIT, addr, 2 + p.length + 1);
  return Number(n) === data.length ? 0 : l.errno();
}

const NO_TCACHE = 'glibc.malloc.tcache_count=0';

/** env with glibc's malloc cache off (for a process started with it: no exec needed then). */
export function mallocCacheOff(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const current = env['GLIBC_TUNABLES'];
  if (current?.split(':').includes(NO_TCACHE)) return env;
  return { ...env, GLIBC_TUNABLES: current ? `${current}:${NO_TCACHE}` : NO_TCACHE };
}

/**
 * Makes this process run with glibc's per-thread malloc cache (tcache) off, by executing itself
 * again (same pid, same descriptors) with GLIBC_TUNABLES set, unless it already is. Blocks freed
 * into tcache skip M_PERTURB's overwrite, so a copy of a key OpenSSL freed could stay readable
 * there (docs/THREAT-MODEL.md, "ECDSA and RSA keys"). Call it first, before anything is held.
 * Returns only when the tunable is in force; keeps `keep` (and 0, 1, 2) open across the exec.
 */
export function withoutMallocCache(keep: readonly number[] = []): void {
  if (process.env['GLIBC_TUNABLES']?.split(':').includes(NO_TCACHE)) return;
  const env = mallocCacheOff(process.env);
  const envp = Object.entries(env).flatMap(([k, v]) =>
    v === undefined ? [] : [Buffer.from(`${k}=${v}\0`)],
  );
  for (const fd of [0, 1, 2, ...keep]) keepAcrossExec(fd);
  const errno = execvpe(
    process.execPath,
    [process.argv0, ...process.execArgv, ...process.argv.slice(1)],
    envp,
  );
  throw new Error(`could not start again without glibc's malloc cache (errno ${errno})`);
}
