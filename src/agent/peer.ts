/**
 * Who is on the other end of a connection (docs/PROTOCOL.md, "Peer identity"). Another uid is
 * disconnected before a byte is read, and recorded. The peer is pinned by a pidfd taken before
 * /proc is read and checked after, so a pid reused meanwhile is refused, never described as
 * someone else.
 *
 * Two things /proc alone can't give, and how this file gets them:
 *
 * - A process that made itself non-dumpable hides its executable, cwd and environment from
 *   every other process of its user. keyward's own CLI does that to protect what it holds, but
 *   only after an agent greeted it: the agent identified it while it could. The registry below
 *   remembers a process as it was then, so its later connections (made once it is hidden) carry
 *   the identity of its first. A process never seen readable is "hidden": it matches no rule on
 *   its executable and its prompt says it hid.
 *
 * - exec keeps the pid and the start time but runs another program. At identification the agent
 *   opens /proc/PID/maps: that descriptor is bound to the memory of the program running then, and
 *   reads nothing once the process exec'd (or exited). A request from a process whose handle
 *   reads nothing is refused; a remembered identity is used only while its handle reads.
 */
import fs from 'node:fs';
import type net from 'node:net';
import type { Pending } from '../approval/index.js';
import type { AuditRecord } from '../audit/index.js';
import { closeFd, dupFd, ENOPROTOOPT, peerCredentials, peerPidfd, pidfdOpen } from '../lib/libc.js';
import { socketFd } from '../lib/socket-fd.js';
import type { ExeHash } from './exe-hash.js';
import {
  bindExeHash,
  exeHashOf,
  identify,
  stillSameProcess,
  type ProcessIdentity,
} from './identity.js';

/** The program a process ran when it was identified: reads nothing once it exec'd or exited. */
export interface ProgramHandle {
  /** A descriptor of /proc/PID/maps opened at identification. */
  maps: number;
  /** The process's own pidfd (a duplicate), so the registry outlives connections. */
  pidfd: number;
  /** The process as last seen readable. */
  id: ProcessIdentity;
  /** Its executable's hash, taken on first use from a descriptor this handle holds (exe-hash.ts). */
  exe: ExeHash | undefined;
  lastUsed: number;
  /** Unique per handle: one program run, from its identification to its exec or exit. */
  serial: number;
  /**
   * Holders: the registry and each connection. The descriptors close when the last lets go:
   * a connection must never probe a descriptor number that was closed and reused.
   */
  refs: number;
}

/** Takes a hold on a handle (a connection that will probe it). */
export function holdProgram(h: ProgramHandle | undefined): void {
  if (h) h.refs += 1;
}

/** Lets go of a handle; the last holder closes its descriptors. */
export function releaseProgram(h: ProgramHandle | undefined): void {
  if (!h || h.refs <= 0) return;
  h.refs -= 1;
  if (h.refs === 0) {
    closeFd(h.maps);
    closeFd(h.pidfd);
    h.exe?.close();
  }
}

export interface Peer {
  id: ProcessIdentity;
  pidfd: number;
  /** Undefined when the process hid before it was ever seen: exec can't be told then. */
  program: ProgramHandle | undefined;
  /** Tells the requester at once that its request waits for a person (keyward's socket only). */
  notifyPending?: ((p: Pending) => void) | undefined;
  /** Set while a request of this peer waits: ends it when the peer goes away. */
  abandon?: (() => void) | undefined;
  /** The peer's connection closed (a request still on its way through the gate ends as gone). */
  gone?: boolean | undefined;
}

const probe = Buffer.alloc(1);

/** Whether the program identified with this handle still runs in its process. */
export function sameProgram(h: ProgramHandle): boolean {
  try {
    return fs.readSync(h.maps, probe, 0, 1, 0) === 1 && stillSameProcess(h.pidfd);
  } catch {
    return false;
  }
}

function openMaps(pid: number): number | undefined {
  try {
    return fs.openSync(`/proc/${pid}/maps`, fs.constants.O_RDONLY);
  } catch {
    return undefined;
  }
}

/**
 * Why a request from this peer can't be taken as coming from who connected: it exited, or it
 * exec'd another program since. Undefined when it is still the same.
 */
export function changedSince(p: Peer): string | undefined {
  // With a program handle, its maps' read and its pidfd's signal say both at once: the handle is
  // of the same process as p.pidfd (the registry keys handles by pid and start time, and
  // identifyPeer checked it against this pidfd). Which of the two, only when one failed.
  if (p.program ? sameProgram(p.program) : stillSameProcess(p.pidfd)) return undefined;
  if (!stillSameProcess(p.pidfd)) return 'the requesting process is gone';
  return 'the requesting process ran another program (exec) since it connected';
}

const SWEEP_AT = 64;
let serials = 0;
const MAX_REMEMBERED = 128;

/**
 * Processes the agent saw readable, while they live and run the program they ran then. Bounded:
 * a process forgotten early only shows as hidden later (more prompts, never fewer).
 */
export class ProcessRegistry {
  private readonly known = new Map<string, ProgramHandle>();

  private static key(pid: number, startTime: string | undefined): string | undefined {
    return startTime === undefined ? undefined : `${pid}:${startTime}`;
  }

  /**
   * Remembers a freshly identified, readable process (or refreshes what was known of it), and
   * returns its handle with a hold for the caller. Takes ownership of `maps`.
   */
  remember(id: ProcessIdentity, pidfd: number, maps: number): ProgramHandle | undefined {
    const key = ProcessRegistry.key(id.pid, id.startTime);
    if (key === undefined) {
      closeFd(maps);
      return undefined;
    }
    const known = this.known.get(key);
    if (known && sameProgram(known)) {
      // The same program, seen again: one handle for all its connections, one executable hash.
      closeFd(maps);
      if (known.exe) {
        exeHashOf(id)?.close();
        bindExeHash(id, known.exe);
      } else known.exe = exeHashOf(id);
      known.id = id;
      known.lastUsed = Date.now();
      holdProgram(known);
      return known;
    }
    this.forget(key);
    const dup = dupFd(pidfd);
    if (dup === undefined) {
      closeFd(maps);
      return undefined;
    }
    if (this.known.size >= SWEEP_AT) this.sweep();
    const h: ProgramHandle = {
      maps,
      pidfd: dup,
      id,
      exe: exeHashOf(id),
      lastUsed: Date.now(),
      serial: ++serials,
      refs: 2,
    };
    this.known.set(key, h);
    return h;
  }

  /**
   * What a process that hides now was when it could be read, if it still runs that program;
   * with a hold for the caller.
   */
  recall(pid: number, startTime: string | undefined): ProgramHandle | undefined {
    const key = ProcessRegistry.key(pid, startTime);
    const h = key === undefined ? undefined : this.known.get(key);
    if (!h || key === undefined) return undefined;
    if (!sameProgram(h)) {
      this.forget(key);
      return undefined;
    }
    h.lastUsed = Date.now();
    holdProgram(h);
    return h;
  }

  private forget(key: string): void {
    const h = this.known.get(key);
    if (!h) return;
    this.known.delete(key);
    releaseProgram(h);
  }

  /** Drops processes that exited or exec'd; past the bound, the least recently seen. */
  private sweep(): void {
    for (const [key, h] of [...this.known]) if (!sameProgram(h)) this.forget(key);
    const byAge = [...this.known].sort((a, b) => a[1].lastUsed - b[1].lastUsed);
    while (this.known.size >= MAX_REMEMBERED) {
      const oldest = byAge.shift();
      if (!oldest) break;
      this.forget(oldest[0]);
    }
  }

  clear(): void {
    for (const key of [...this.known.keys()]) this.forget(key);
  }
}

/**
 * Identifies the peer of a freshly accepted connection. Undefined when the connection was
 * refused (and destroyed). The caller owns the returned pidfd and a hold on the program handle:
 * closePeer() gives both back.
 */
export function identifyPeer(
  socket: net.Socket,
  uid: number,
  registry: ProcessRegistry,
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
  const pinned = peerPidfd(fd as number);
  // A kernel without SO_PEERPIDFD (before 6.5): pidfd_open names whatever process has the pid
  // now, which may not be the one that connected (it exited and another got its pid, while the
  // agent was slow or stopped by a signal). Such a peer is "unpinned": described as it reads,
  // but no allow by who it is, and nothing remembered (policy/evaluate.ts, gate-caller.ts).
  // Any other failure (6.5 to 6.15 say EINVAL for a peer that exited) refuses it.
  const unpinned = typeof pinned !== 'number';
  if (unpinned && pinned.errno !== ENOPROTOOPT)
    return refused(
      `the kernel gave no pidfd for the peer (errno ${pinned.errno}; EINVAL: it exited): it can't be pinned, so it is not served`,
    );
  const pidfd = unpinned ? pidfdOpen(cred.pid) : pinned;
  if (pidfd === undefined)
    return refused(
      'no pidfd for the peer: keyward needs Linux 5.3 or later (6.5 for SO_PEERPIDFD)',
    );
  // The program handle before /proc: if the process exec'd while /proc was read, the handle
  // reads nothing afterwards and the identity is not trusted.
  const maps = openMaps(cred.pid);
  const seen = identify(cred.pid, cred.uid);
  if (unpinned) seen.unpinned = true;
  if (!stillSameProcess(pidfd)) {
    if (maps !== undefined) closeFd(maps);
    exeHashOf(seen)?.close();
    return refused('the peer exited before it could be identified', pidfd);
  }
  if (maps !== undefined && seen.exe !== undefined) {
    const program = registry.remember(seen, pidfd, maps);
    if (!program) {
      exeHashOf(seen)?.close();
      return refused('the agent could not keep a handle on the peer', pidfd);
    }
    if (!sameProgram(program)) {
      releaseProgram(program);
      return refused('the peer ran another program while it was identified', pidfd);
    }
    return { id: seen, pidfd, program };
  }
  if (maps !== undefined) closeFd(maps);
  exeHashOf(seen)?.close();
  // Hidden now: who it was when it could be read, if it still runs that program.
  const known = registry.recall(cred.pid, seen.startTime);
  if (known) return { id: unpinned ? { ...known.id, unpinned } : known.id, pidfd, program: known };
  // Whatever /proc showed between the handle and now (it may have exec'd or hidden midway)
  // is not trusted: only what anyone can read of any process stays.
  const hidden: ProcessIdentity = {
    pid: seen.pid,
    uid: seen.uid,
    startTime: seen.startTime,
    cmdline: seen.cmdline,
    ppid: seen.ppid,
    ancestors: seen.ancestors,
    hidden: true,
    ...(unpinned ? { unpinned } : {}),
  };
  return { id: hidden, pidfd, program: undefined };
}

/** Gives back what identifyPeer handed out, when the connection closes. */
export function closePeer(p: Peer): void {
  closeFd(p.pidfd);
  releaseProgram(p.program);
}
