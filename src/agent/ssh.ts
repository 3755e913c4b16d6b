/**
 * The OpenSSH agent protocol (draft-miller-ssh-agent): message numbers, framing, and what a
 * signature request is about, for the prompt and the audit log. The service is ssh-agent.ts.
 */
import { createHash } from 'node:crypto';
import { SshReader, u32 } from '../keys/index.js';
import {
  secureAlloc,
  secureFree,
  securePooled,
  secureRelease,
  zero,
  type SecureBuffer,
} from '../lib/secure.js';
import { quote } from '../lib/text.js';
import { inFlight } from './inflight.js';
import { hostKeyFingerprint } from './ssh-cert.js';

export const SSH = {
  FAILURE: 5,
  SUCCESS: 6,
  REQUEST_IDENTITIES: 11,
  IDENTITIES_ANSWER: 12,
  SIGN_REQUEST: 13,
  SIGN_RESPONSE: 14,
  ADD_IDENTITY: 17,
  REMOVE_IDENTITY: 18,
  REMOVE_ALL_IDENTITIES: 19,
  ADD_SMARTCARD_KEY: 20,
  REMOVE_SMARTCARD_KEY: 21,
  LOCK: 22,
  UNLOCK: 23,
  ADD_ID_CONSTRAINED: 25,
  ADD_SMARTCARD_KEY_CONSTRAINED: 26,
  EXTENSION: 27,
  EXTENSION_FAILURE: 28,
} as const;

export const CONSTRAIN_LIFETIME = 1;
export const CONSTRAIN_CONFIRM = 2;
export const CONSTRAIN_EXTENSION = 255;

export const MAX_SSH_MESSAGE = 256 * 1024;
/** Requests one connection may have waiting; OpenSSH clients send one and wait for the reply. */
export const MAX_QUEUED = 16;

/** A framed reply (public data only: identities, signatures, status). */
export function message(type: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat([Buffer.from([type]), ...parts]);
  return Buffer.concat([u32(body.length), body]);
}

/**
 * Splits the byte stream of one connection into messages, in secure memory: each chunk is copied
 * in and zeroed (an ssh-add request carries a private key), each message handed out as its own
 * secure buffer (from the pool) for the caller to give back with secureRelease.
 */
export class SshFrameReader {
  /** Its length is taken from the agent's in-flight budget (inflight.ts). */
  private buf: SecureBuffer = secureAlloc(0);
  private used = 0;

  /**
   * Takes a chunk (and zeroes it); returns the messages it completed. The buffer never holds more
   * than one message plus one chunk; more than MAX_QUEUED messages in one chunk is a flood.
   */
  push(chunk: Buffer): SecureBuffer[] {
    const out: SecureBuffer[] = [];
    try {
      if (this.used + chunk.length > this.buf.length) {
        const size = Math.max(4096, this.buf.length * 2, this.used + chunk.length);
        if (!inFlight.reserve(size - this.buf.length))
          throw new RangeError('the agent is holding too much request data');
        const bigger = secureAlloc(size);
        this.buf.copy(bigger, 0, 0, this.used);
        secureFree(this.buf);
        this.buf = bigger;
      }
      chunk.copy(this.buf, this.used);
      this.used += chunk.length;
      while (this.used >= 4) {
        const len = this.buf.readUInt32BE(0);
        if (len < 1 || len > MAX_SSH_MESSAGE) throw new RangeError(`bad SSH message length ${len}`);
        if (this.used < 4 + len) break;
        if (out.length >= MAX_QUEUED) throw new RangeError('too many messages at once');
        // Pooled (lib/secure.ts): the caller gives it back with secureRelease.
        const m = securePooled(len);
        this.buf.copy(m, 0, 4, 4 + len);
        out.push(m);
        this.buf.copy(this.buf, 0, 4 + len, this.used);
        this.buf.fill(0, this.used - (4 + len), this.used);
        this.used -= 4 + len;
      }
      // A large message's buffer goes back to the budget once it is read: an idle connection
      // holds at most 4 KiB of it (else a few hundred idle connections, each once sent a large
      // message, held the budget that lock, approve and deny need).
      if (this.used === 0 && this.buf.length > 4096) {
        inFlight.release(this.buf.length);
        secureFree(this.buf);
        this.buf = secureAlloc(0);
      }
      return out;
    } catch (e) {
      for (const m of out) secureRelease(m);
      throw e;
    } finally {
      zero(chunk);
    }
  }

  get pending(): boolean {
    return this.used > 0;
  }

  destroy(): void {
    inFlight.release(this.buf.length);
    secureFree(this.buf);
    this.used = 0;
  }
}

/**
 * What is being signed, for the prompt and the audit log: an SSHSIG signature (namespace "git"
 * means a git commit or tag), an SSH login (user, and the server's host key when the client
 * sends it), or else the SHA-256 of the data.
 */
export function describeSignData(data: Buffer): {
  text: string;
  details: Record<string, string>;
  /** What a remembered approval of it covers (gate.ts): the kind of data, not the data. */
  scope: string;
} {
  const sha = createHash('sha256').update(data).digest('hex');
  try {
    if (data.subarray(0, 6).toString('latin1') === 'SSHSIG') {
      const r = new SshReader(data.subarray(6));
      const namespace = r.text();
      r.string();
      const hashAlg = r.text();
      const hash = r.string().toString('hex');
      const what = namespace === 'git' ? 'a git commit or tag' : `namespace ${quote(namespace)}`;
      // Every field here is the caller's: the hash algorithm too is quoted unless it is one of
      // the two SSHSIG defines.
      const alg = hashAlg === 'sha256' || hashAlg === 'sha512' ? hashAlg : quote(hashAlg, 40);
      return {
        text: `an SSHSIG signature (${what}) over data with ${alg} ${hash.slice(0, 32)}...`,
        details: { kind: 'sshsig', namespace, hashAlg, hash },
        scope: JSON.stringify(['sshsig', namespace]),
      };
    }
    // A login's data starts with the session id (a string) and then byte 50; anything else is
    // told apart here without parsing into an exception (a stack trace per signature).
    const sessionIdEnd = data.length >= 4 ? 4 + data.readUInt32BE(0) : Infinity;
    const r = new SshReader(data);
    if (sessionIdEnd < data.length && data[sessionIdEnd] === 50) {
      r.string(); // session id
      r.byte();
      const user = r.text();
      const service = r.text();
      const method = r.text();
      if (method === 'publickey-hostbound-v00@openssh.com' || method === 'publickey') {
        r.byte();
        r.string();
        r.string();
        const hostKey = method.startsWith('publickey-hostbound')
          ? hostKeyFingerprint(r.string())
          : '';
        return {
          text: `an SSH login as ${quote(user)} (${quote(service)})${hostKey ? `, server host key ${hostKey}` : ''}`,
          details: { kind: 'ssh-login', user, ...(hostKey ? { hostKey } : {}) },
          // A client that doesn't say the host: this login only (its session id is in the data).
          scope: JSON.stringify(['ssh-login', user, service, hostKey || sha]),
        };
      }
    }
  } catch {
    // not a shape we know: fall through to the hash
  }
  return {
    text: `data with SHA-256 ${sha.slice(0, 32)}...`,
    details: { kind: 'data', sha256: sha },
    // Data of no known shape (a certificate to sign, say): the person saw only its hash, so a
    // grant covers these bytes alone.
    scope: JSON.stringify(['data', sha]),
  };
}
