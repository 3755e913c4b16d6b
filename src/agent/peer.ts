/**
 * Who is on the other end of a connection (docs/PROTOCOL.md, "Peer identity"). Another uid is
 * disconnected before a byte is read, and recorded. The peer is pinned by a pidfd taken before
 * /proc is read and checked after, so a pid reused meanwhile is refused, never described as
 * someone else.
 */
import type net from 'node:net';
import type { AuditRecord } from '../audit/index.js';
import { closeFd, peerCredentials, peerPidfd, pidfdOpen } from '../lib/libc.js';
import { identify, stillSameProcess, type ProcessIdentity } from './identity.js';

export interface Peer {
  id: ProcessIdentity;
  pidfd: number;
}

/** The descriptor under a net.Socket (Node keeps it on the handle). */
export function socketFd(socket: net.Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return fd === undefined || fd < 0 ? undefined : fd;
}

/**
 * Identifies the peer of a freshly accepted connection. Undefined when the connection was
 * refused (and destroyed).
 */
export function identifyPeer(
  socket: net.Socket,
  uid: number,
  record: (r: AuditRecord) => Promise<unknown>,
): Peer | undefined {
  const fd = socketFd(socket);
  let cred: { pid: number; uid: number };
  try {
    if (fd === undefined) throw new Error('no descriptor');
    cred = peerCredentials(fd);
  } catch {
    socket.destroy();
    return undefined;
  }
  const refused = (reason: string, pidfd?: number) => {
    if (pidfd !== undefined) closeFd(pidfd);
    socket.destroy();
    void record({
      type: 'peer.rejected',
      decision: 'deny',
      reason,
      actor: { uid: cred.uid, pid: cred.pid },
    }).catch(() => undefined);
    return undefined;
  };
  if (cred.uid !== uid) return refused(`peer uid ${cred.uid} is not the agent's uid ${uid}`);
  // The pidfd first, /proc second, then the pidfd again: a peer that exited (its pid free for
  // reuse) before or while /proc was read is refused, never described as someone else.
  const pidfd = peerPidfd(fd as number) ?? pidfdOpen(cred.pid);
  if (pidfd === undefined)
    return refused(
      'no pidfd for the peer: keyward needs Linux 5.3 or later (6.5 for SO_PEERPIDFD)',
    );
  const id = identify(cred.pid, cred.uid);
  if (!stillSameProcess(pidfd))
    return refused('the peer exited before it could be identified', pidfd);
  return { id, pidfd };
}
