/**
 * Unix sockets beyond node:net: a descriptor passed with SCM_RIGHTS, a blocking connect, and
 * datagrams to the system log (through libc-core.ts).
 */
import { libc, type Msghdr } from './libc-core.js';

const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const CMSG_SPACE_ONE_FD = 24; // CMSG_SPACE(sizeof(int)) on 64-bit Linux
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
export const EAGAIN = 11;

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
 * One non-blocking recvmsg into buf: the bytes read (0 at end of stream, -errno on error, so
 * -EAGAIN when nothing is there yet) and the descriptor that came with them, if any (close-on-
 * exec). Descriptors beyond the first are closed.
 */
export function recvWithFd(sock: number, buf: Buffer): { n: number; fd: number | undefined } {
  const l = libc();
  const control = Buffer.alloc(64);
  const msg = msghdr(buf, control);
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

/**
 * A connected Unix stream socket (close-on-exec, blocking), or throws with errno. The connect
 * itself does not wait: a listener whose queue is full (one that never accepts) is EAGAIN at
 * once, as node:net says, where a blocking connect would wait for ever.
 */
export function unixConnect(path: string): number {
  const l = libc();
  const AF_UNIX = 1;
  const SOCK_STREAM = 1;
  const SOCK_CLOEXEC = 0o2000000;
  const SOCK_NONBLOCK = 0o4000;
  const F_GETFL = 3;
  const F_SETFL = 4;
  const fd = l.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
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
