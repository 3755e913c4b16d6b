/**
 * The libc binding through koffi, loaded once on first use: what libc.ts, process.ts and unix.ts
 * call. Loaded lazily so that commands that need none of them (help, version) start without the
 * FFI.
 */
import { koffi } from './koffi.js';
import { processWide } from './once.js';

/** errno values the callers of these functions test for (asm-generic/errno-base.h). */
export const EINTR = 4;
export const EAGAIN = 11;

export interface Libc {
  flock: (fd: number, op: number) => number;
  prctl: (option: number, a2: number, a3: number, a4: number, a5: number) => number;
  setrlimit: (resource: number, rlim: { cur: bigint; max: bigint }) => number;
  getrlimit: (resource: number, rlim: unknown) => number;
  tcgetattr: (fd: number, termios: Buffer) => number;
  tcsetattr: (fd: number, when: number, termios: Buffer) => number;
  tcgetpgrp: (fd: number) => number;
  getpgrp: () => number;
  getsockopt: (fd: number, level: number, name: number, out: Buffer, len: number[]) => number;
  socketpair: (domain: number, type: number, protocol: number, sv: Buffer) => number;
  dup3: (oldfd: number, newfd: number, flags: number) => number;
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
  inotifyInit1: (flags: number) => number;
  inotifyAddWatch: (fd: number, path: string, mask: number) => number;
  inotifyRmWatch: (fd: number, wd: number) => number;
  /** recv(2) into buf's own memory (a pointer, no copy: it may be secure memory). */
  recvInto: (fd: number, buf: Buffer, len: number, flags: number) => number | bigint;
  setsockopt: (fd: number, level: number, name: number, val: Buffer, len: number) => number;
  isatty: (fd: number) => number;
  statx: (dirfd: number, path: string, flags: number, mask: number, out: Buffer) => number;
  read: (fd: number, buf: Buffer, len: number) => number | bigint;
  renameat2: (
    olddir: number,
    oldpath: string,
    newdir: number,
    newpath: string,
    flags: number,
  ) => number;
}

export interface Msghdr {
  name: null;
  namelen: number;
  iov: Array<{ base: Buffer; len: number }>;
  iovlen: number;
  control: Buffer | null;
  controllen: number;
  flags: number;
}

let cached: Libc | undefined;

export function libc(): Libc {
  return (cached ??= processWide('libc', bind));
}

/**
 * Each function is declared at its first use: a declaration parses its C prototype, and a
 * command uses a few of the ~30 (`keyward read` three), ~0.5 ms of its start for all of them.
 */
function bind(): Libc {
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
  const declare: { [K in keyof Libc]: () => Libc[K] } = {
    flock: () => lib.func('int flock(int, int)'),
    prctl: () =>
      lib.func('int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long)'),
    setrlimit: () => lib.func('setrlimit', 'int', ['int', koffi.pointer(Rlimit)]),
    getrlimit: () => lib.func('getrlimit', 'int', ['int', koffi.out(koffi.pointer(Rlimit))]),
    tcgetattr: () => lib.func('int tcgetattr(int, _Out_ uint8_t *)'),
    tcsetattr: () => lib.func('int tcsetattr(int, int, const uint8_t *)'),
    tcgetpgrp: () => lib.func('int tcgetpgrp(int)'),
    getpgrp: () => lib.func('int getpgrp(void)'),
    getsockopt: () =>
      lib.func('int getsockopt(int, int, int, _Out_ uint8_t *, _Inout_ uint32_t *)'),
    socketpair: () => lib.func('int socketpair(int, int, int, _Out_ uint8_t *)'),
    dup3: () => lib.func('int dup3(int, int, int)'),
    syscall4: () => lib.func('long syscall(long, int, int, void *, unsigned int)'),
    close: () => lib.func('int close(int)'),
    mallopt: () => lib.func('int mallopt(int, int)'),
    memfdCreate: () => lib.func('int memfd_create(const char *, unsigned int)'),
    fcntl: () => lib.func('int fcntl(int, int, int)'),
    lseek: () => lib.func('int64_t lseek(int, int64_t, int)'),
    execvpe: () => lib.func('int execvpe(const char *, const char **, uint8_t **)'),
    setsid: () => lib.func('int setsid(void)'),
    ioctl: () => lib.func('int ioctl(int, unsigned long, int)'),
    ioctlBuf: () => lib.func('ioctl', 'int', ['int', 'unsigned long', 'uint8_t *']),
    posixOpenpt: () => lib.func('int posix_openpt(int)'),
    signal: () => lib.func('void *signal(int, void *)'),
    closeRange: () => lib.func('int close_range(unsigned int, unsigned int, int)'),
    grantpt: () => lib.func('int grantpt(int)'),
    unlockpt: () => lib.func('int unlockpt(int)'),
    ptsnameR: () => lib.func('int ptsname_r(int, _Out_ uint8_t *, size_t)'),
    sendmsg: () => lib.func('long sendmsg(int, const keyward_msghdr *, int)'),
    recvmsg: () => lib.func('long recvmsg(int, _Inout_ keyward_msghdr *, int)'),
    socket: () => lib.func('int socket(int, int, int)'),
    connect: () => lib.func('int connect(int, const uint8_t *, uint32_t)'),
    sendto: () =>
      lib.func('long sendto(int, const uint8_t *, size_t, int, const uint8_t *, uint32_t)'),
    errno: () => () => koffi.errno(),
    inotifyInit1: () => lib.func('int inotify_init1(int)'),
    inotifyAddWatch: () => lib.func('int inotify_add_watch(int, const char *, uint32_t)'),
    inotifyRmWatch: () => lib.func('int inotify_rm_watch(int, int)'),
    recvInto: () => lib.func('long recv(int, void *, size_t, int)'),
    setsockopt: () => lib.func('int setsockopt(int, int, int, const uint8_t *, uint32_t)'),
    isatty: () => lib.func('int isatty(int)'),
    read: () => lib.func('long read(int, _Out_ uint8_t *, size_t)'),
    renameat2: () => lib.func('int renameat2(int, const char *, int, const char *, unsigned int)'),
    statx: () => lib.func('int statx(int, const char *, int, unsigned int, _Out_ uint8_t *)'),
  };
  const out = {} as Libc;
  for (const k of Object.keys(declare) as Array<keyof Libc>)
    Object.defineProperty(out, k, {
      configurable: true,
      enumerable: true,
      get() {
        const f = declare[k]();
        Object.defineProperty(out, k, { value: f, enumerable: true, writable: false });
        return f;
      },
    });
  return out;
}
