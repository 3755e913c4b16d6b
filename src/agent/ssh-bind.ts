/**
 * session-bind@openssh.com (OpenSSH's PROTOCOL.agent): on each connection it makes to the agent,
 * ssh says for which SSH session, with the server's host key and its signature over the session
 * id, and whether the connection serves an agent forwarded to that server (`ssh -A`).
 *
 * A forwarded connection's requests come from the far host, or from whatever drives the ssh
 * there (a process of the user can run ssh into an sshd of its own, through ProxyCommand), yet
 * they arrive on a connection of the local ssh process: the caller the agent identifies is that
 * ssh. So its requests are never taken as that ssh's own: each use is asked of a person, no
 * remembered approval covers it, and the prompt and the record name the host (found in review).
 * A claim of forwarding counts whether its signature verifies or not: it can only make the
 * connection's requests ask.
 */
import type { SshReader } from '../keys/index.js';
import { fingerprint, verifySshSignature } from '../keys/index.js';
import type { Peer } from './peer.js';

export const SESSION_BIND = 'session-bind@openssh.com';

/** OpenSSH's agent keeps at most this many sessions a connection (AGENT_MAX_SESSION_IDS). */
const MAX_SESSIONS = 16;

interface Bound {
  sessions: Array<{ id: string; hostKey: string; forwarding: boolean }>;
  /** The host key (its fingerprint) of the first host this connection's agent was forwarded to. */
  forwardedTo?: string;
}

export class SessionBindings {
  private readonly bound = new WeakMap<Peer, Bound>();

  /** Takes a session-bind's body (after its name); true when it is accepted (SUCCESS). */
  bind(who: Peer, r: SshReader): boolean {
    const hostKey = r.string();
    const sessionId = r.string();
    const signature = r.string();
    const forwarding = r.byte() !== 0;
    let b = this.bound.get(who);
    if (!b) this.bound.set(who, (b = { sessions: [] }));
    const verified = verifySshSignature(hostKey, sessionId, signature);
    let fp: string;
    try {
      fp = fingerprint(hostKey);
    } catch {
      fp = 'of an unreadable host key';
    }
    if (forwarding && b.forwardedTo === undefined)
      b.forwardedTo = verified ? fp : `${fp} (its signature did not verify)`;
    if (!verified) return false;
    // As OpenSSH's agent: a connection bound for a login takes no other session after it.
    const last = b.sessions.at(-1);
    if (last !== undefined && !last.forwarding) return false;
    const id = Buffer.from(sessionId).toString('hex');
    const same = b.sessions.find((s) => s.id === id);
    if (same) return same.hostKey === fp;
    if (b.sessions.length >= MAX_SESSIONS) return false;
    b.sessions.push({ id, hostKey: fp, forwarding });
    return true;
  }

  /** The host this connection's agent was forwarded to (its host key), or undefined. */
  forwardedTo(who: Peer): string | undefined {
    return this.bound.get(who)?.forwardedTo;
  }
}

/** Why each use of a key is asked of a person, or undefined when the policy decides alone. */
export function confirmReason(addedWithConfirm: boolean, forwardedTo: string | undefined) {
  const why = [
    ...(addedWithConfirm ? ['the key was added with confirm (ssh-add -c)'] : []),
    ...(forwardedTo === undefined
      ? []
      : [`the request came through an agent forwarded to the host with key ${forwardedTo}`]),
  ];
  return why.length === 0 ? undefined : why.join('; ');
}
