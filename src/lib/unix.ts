/**
 * Unix sockets beyond node:net: a descriptor passed with SCM_RIGHTS, a blocking connect, and
 * datagrams to the system log (through libc-core.ts).
 */
import { EAGAIN, EINTR, libc, type Msghdr } from './libc-core.js';

export { EAGAIN, EINTR };

const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const CMSG_SPACE_ONE_FD = 24; // CMSG_SPACE(sizeof(int)) on 64-bit Linux
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;

/** A message header over one buffer and a control buffer, unnamed (a connected socket). */
function msghdr(data: Buffer, control: Buffer): Msghdr {
  return {
    name: null,
    namelen: 0,
    iov: [{ base: data, len: data.length }],
    iovlen: 1,
    control,
    controllen: control.length,
    flags: 0,
  };
}

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
  const n = Number(l.sendmsg(sock, msghdr(data, control), MSG_DONTWAIT | MSG_NOSIGNAL));
  return n < 0 ? -l.errno() : n;
}

/**
 * One recvmsg into buf, non-blocking unless `wait`: the bytes read (0 at end of stream, -errno
 * on error, so -EAGAIN when nothing is there yet) and the descriptor that came with them, if any
 * (close-on-exec). Descriptors beyond the first are closed.
 */
export function recvWithFd(
  sock: number,
  buf: Buffer,
  wait = false,
): { n: number; fd: number | undefined } {
  const l = libc();
  const control = Buffer.alloc(64);
  const msg = msghdr(buf, control);
  const n = Number(l.recvmsg(sock, msg, (wait ? 0 : MSG_DONTWAIT) | MSG_CMSG_CLOEXEC));
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

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const F_GETFL = 3;
const F_SETFL = 4;
const SO_RCVTIMEO = 20;
const SO_SNDTIMEO = 21;

/** A connected pair of Unix stream sockets, close-on-exec. */
export function socketPair(): [number, number] {
  const l = libc();
  const sv = Buffer.alloc(8);
  if (l.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) !== 0)
    throw new Error(`socketpair failed (errno ${l.errno()})`);
  return [sv.readInt32LE(0), sv.readInt32LE(4)];
}

/** struct sockaddr_un for path, and its length; undefined when the path is too long for one. */
function sockaddrUn(path: string): { addr: Buffer; len: number } | undefined {
  const p = Buffer.from(path, 'utf8');
  if (p.length >= 108) return undefined;
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(AF_UNIX, 0);
  p.copy(addr, 2);
  return { addr, len: 2 + p.length + 1 };
}

/**
 * A connected Unix stream socket (close-on-exec, blocking), or throws with errno. The connect
 * itself does not wait: a listener whose queue is full (one that never accepts) is EAGAIN at
 * once, as node:net says, where a blocking connect would wait for ever.
 */
export function unixConnect(path: string): number {
  const l = libc();
  const fd = l.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw new Error(`socket failed (errno ${l.errno()})`);
  const to = sockaddrUn(path);
  if (!to) {
    l.close(fd);
    const e = new Error('socket path too long') as NodeJS.ErrnoException;
    e.code = 'ENAMETOOLONG';
    throw e;
  }
  if (l.connect(fd, to.addr, to.len) !== 0) {
    const err = l.errno();
    l.close(fd);
    const e = new Error(`connect failed (errno ${err})`) as NodeJS.ErrnoException;
    e.code =
      err === 2 ? 'ENOENT' : err === 111 ? 'ECONNREFUSED' : err === EAGAIN ? 'EAGAIN' : 'EIO';
    throw e;
  }
  // Connected (a Unix socket's connect completes at once or fails): blocking from here.
  const flags = l.fcntl(fd, F_GETFL, 0);
  if (flags < 0 || l.fcntl(fd, F_SETFL, flags & ~SOCK_NONBLOCK) !== 0) {
    const err = l.errno();
    l.close(fd);
    throw new Error(`fcntl failed (errno ${err})`);
  }
  return fd;
}

/** A struct timeval of ms (tv_sec, tv_usec: 64-bit each), for SO_RCVTIMEO and SO_SNDTIMEO. */
function timeval(ms: number): Buffer {
  const tv = Buffer.alloc(16);
  tv.writeBigInt64LE(BigInt(Math.floor(ms / 1000)), 0);
  tv.writeBigInt64LE(BigInt(Math.floor(ms % 1000) * 1000), 8);
  return tv;
}

/** How long the next receive on a blocking socket may wait, in ms (0: for ever). */
export function setReceiveTimeout(sock: number, ms: number): void {
  const tv = timeval(ms);
  if (libc().setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, tv, tv.length) !== 0)
    throw new Error(`setsockopt failed (errno ${libc().errno()})`);
}

/**
 * One blocking receive into buf's own memory (no copy: it may be secure memory): the bytes read,
 * 0 at the end of the stream, or -errno (-EAGAIN once a receive timeout passed). EINTR is retried,
 * unless interruptible: a caller with a deadline gets -EINTR and sets what is left of it (a
 * receive timeout starts whole again at every call, so signals would otherwise outlast it).
 */
export function unixRecv(sock: number, buf: Buffer, interruptible = false): number {
  const l = libc();
  for (;;) {
    const n = Number(l.recvInto(sock, buf, buf.length, 0));
    if (n >= 0) return n;
    const err = l.errno();
    if (err !== EINTR || interruptible) return -err;
  }
}

/** Sends all of data on a connected stream socket (blocking); false when the peer is gone. */
export function unixSendAll(sock: number, data: Buffer): boolean {
  const l = libc();
  const none = Buffer.alloc(0);
  for (let off = 0; off < data.length;) {
    const n = Number(l.sendto(sock, data.subarray(off), data.length - off, MSG_NOSIGNAL, none, 0));
    if (n < 0) {
      if (l.errno() === EINTR) continue;
      return false;
    }
    off += n;
  }
  return true;
}

/** A non-blocking, close-on-exec Unix datagram socket (the system log's kind). */
export function unixDatagramSocket(): number {
  const l = libc();
  const fd = l.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error(`socket failed (errno ${l.errno()})`);
  return fd;
}

/**
 * A blocking, close-on-exec Unix datagram socket whose sends wait at most waitMs for room in
 * the reader's queue (SO_SNDTIMEO), then fail with EAGAIN.
 */
export function unixDatagramSocketWaiting(waitMs: number): number {
  const l = libc();
  const fd = l.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error(`socket failed (errno ${l.errno()})`);
  const tv = timeval(waitMs);
  if (l.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, tv, tv.length) !== 0) {
    const err = l.errno();
    l.close(fd);
    throw new Error(`setsockopt failed (errno ${err})`);
  }
  return fd;
}

/**
 * Sends one datagram to the Unix socket at path: without waiting, or (waitMs, on a socket of
 * unixDatagramSocketWaiting) up to waitMs in all for room. Returns 0 when sent, else the errno
 * (EAGAIN: the reader is behind; ENOENT or ECONNREFUSED: nobody listens there).
 */
export function sendDatagram(fd: number, path: string, data: Buffer, waitMs = 0): number {
  const l = libc();
  const to = sockaddrUn(path);
  if (!to) return 36; // ENAMETOOLONG
  // A signal ends a blocking send early, and its timeout starts whole again at the next: one
  // deadline across them, so signals can't make it wait for ever (found in review).
  const deadline = Date.now() + waitMs;
  for (;;) {
    const n = l.sendto(fd, data, data.length, waitMs > 0 ? 0 : MSG_DONTWAIT, to.addr, to.len);
    if (Number(n) === data.length) return 0;
    const err = l.errno();
    if (err !== EINTR || waitMs <= 0) return err;
    if (Date.now() >= deadline) return EAGAIN;
  }
}
