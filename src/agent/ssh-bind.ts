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
import { fingerprint, verifySshSignature, type SshReader } from '../keys/index.js';
import { undeleted } from '../lib/paths.js';
import type { Peer } from './peer.js';
import { certifiedKeyBlob } from './ssh-cert.js';

export const SESSION_BIND = 'session-bind@openssh.com';

/** OpenSSH's agent keeps at most this many sessions a connection (AGENT_MAX_SESSION_IDS). */
const MAX_SESSIONS = 16;
/** A session id is a hash: SHA-512's 64 bytes at most. */
const MAX_SESSION_ID = 64;

interface Bound {
  sessions: Array<{ id: string; hostKey: string; forwarding: boolean }>;
  /** The host key (its fingerprint) of the first host this connection's agent was forwarded to. */
  forwardedTo?: string;
}

/** A program's file name, as /proc shows it (an updated one too). */
function fileName(exe: string | undefined): string | undefined {
  return exe === undefined ? undefined : undeleted(exe).split('/').at(-1);
}

export class SessionBindings {
  private readonly bound = new WeakMap<Peer, Bound>();

  private of(who: Peer): Bound {
    let b = this.bound.get(who);
    if (!b) this.bound.set(who, (b = { sessions: [] }));
    return b;
  }

  /** Takes a session-bind's body (after its name); true when it is accepted (SUCCESS). */
  bind(who: Peer, r: SshReader): boolean {
    const hostKey = r.string();
    const sessionId = r.string();
    const signature = r.string();
    const forwarding = r.byte() !== 0;
    // A host certificate: the server signs with the key it certifies, which names the host as
    // ssh-keygen -l does (found in test: every login to a host with a certificate was taken for
    // a relay, and asked of a person).
    const key = certifiedKeyBlob(hostKey);
    let fp: string;
    try {
      fp = fingerprint(key);
    } catch {
      fp = 'of an unreadable host key';
    }
    // A session id is a hash; ids of the message's size, kept 16 a connection over a thousand
    // connections, were gigabytes the in-flight budget never saw (found in review).
    const verified =
      sessionId.length <= MAX_SESSION_ID && verifySshSignature(key, sessionId, signature);
    if (forwarding) {
      const b = this.of(who);
      b.forwardedTo ??= verified ? fp : `${fp} (its signature did not verify)`;
    }
    // Only a bind that verifies is kept (found in review: a bind with a bad signature made a
    // relayed connection look bound).
    if (!verified) return false;
    const b = this.of(who);
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

  /**
   * Why a signature on this connection is not its process's own, or undefined when it is: the
   * connection serves an agent forwarded to a host (that host named), or it is ssh's and the
   * signature is not one of ssh's own logins. ssh signs, for itself, only a login's request, and
   * OpenSSH 8.9 and later first bind the login's session to the connection. So on a connection
   * of ssh's, anything else (an SSHSIG signature, data), or a login of a session no bind named,
   * comes from something ssh relays: `ssh -R PATH:$SSH_AUTH_SOCK`, a ControlMaster's forward
   * (found in review), or it is an ssh before 8.9, which is told apart from a relay no other way.
   * A bind proves nothing of who sent it (a relay's far side can sign a session of its own), so a
   * login whose session a bind named still passes: THREAT-MODEL.md says what that leaves.
   * `loginSession`: the session id a login's signed data starts with, or undefined for other data;
   * `loginHostKey`: the host key a host-bound login names (its fingerprint), when it names one.
   */
  relayed(
    who: Peer,
    loginSession: Uint8Array | undefined,
    loginHostKey?: string,
  ): string | undefined {
    const b = this.bound.get(who);
    if (b?.forwardedTo !== undefined)
      return `an agent forwarded to the host with key ${b.forwardedTo}`;
    if (fileName(who.id.exe) !== 'ssh') return undefined;
    if (loginSession === undefined)
      return 'a connection of ssh asking for a signature ssh never asks for itself (a relay of the agent, as ssh -R makes)';
    const id = Buffer.from(loginSession).toString('hex');
    const session = b?.sessions.find((s) => s.id === id && !s.forwarding);
    if (session === undefined)
      return 'a connection of ssh that named no SSH session for this login (a relay of the agent, as ssh -R makes, or an ssh before 8.9)';
    // As ssh-agent: a login bound to a host names that host's key, the one its session was bound
    // with (found in review: another host's key in the login's data passed).
    if (loginHostKey !== undefined && loginHostKey !== session.hostKey)
      return `a connection of ssh asking for a login to another host (key ${loginHostKey}) than the one its session was bound to (key ${session.hostKey})`;
    return undefined;
  }

  /** Whether this is a connection of ssh's that bound no session: it changes nothing. */
  unboundSsh(who: Peer): boolean {
    return fileName(who.id.exe) === 'ssh' && (this.bound.get(who)?.sessions.length ?? 0) === 0;
  }

  /** The host this connection's agent was forwarded to (its host key), or undefined. */
  forwardedTo(who: Peer): string | undefined {
    return this.bound.get(who)?.forwardedTo;
  }
}

/** Why each use of a key is asked of a person, or undefined when the policy decides alone. */
export function confirmReason(addedWithConfirm: boolean, relayed: string | undefined) {
  const why = [
    ...(addedWithConfirm ? ['the key was added with confirm (ssh-add -c)'] : []),
    ...(relayed === undefined ? [] : [`the request came through ${relayed}`]),
  ];
  return why.length === 0 ? undefined : why.join('; ');
}
