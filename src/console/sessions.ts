/**
 * Console sessions and the one-use WebAuthn challenges they hold.
 *
 * A session is two random values: the cookie (HttpOnly, SameSite=Strict) and a CSRF token the
 * page keeps in its own memory and sends in a header on every API request. Browsers send a
 * localhost cookie to every port of localhost, so the cookie alone is worth nothing: a page
 * served by another local process on another port gets the cookie but never the token, which
 * only this console's own origin ever received.
 */
import { randomBytes } from 'node:crypto';
import { processWide } from '../lib/once.js';
import {
  randomBytes as publicRandom,
  secretKeyedDigest,
  secureEqual,
  secureRandom,
  type SecureBuffer,
} from '../lib/secure.js';

export const SESSION_IDLE_MS = 10 * 60_000;
export const SESSION_MAX_MS = 60 * 60_000;
export const CHALLENGE_MS = 2 * 60_000;
const MAX_SESSIONS = 16;

/**
 * The key login challenges are made under. A login challenge is given to anyone who asks (no
 * session yet), so it is kept nowhere: its handle is its own proof (random bytes, when it
 * expires, and their MAC: keyed BLAKE2b), and the challenge is derived from the handle. A
 * table of 16, the oldest pushed out, let any process keep a person's security-key login from
 * ever finishing.
 */
const loginKey = (): SecureBuffer => processWide('console-login-key', () => secureRandom(32));
const HANDLE_BODY = 16 + 8;
const TAG = 32;

/** The MAC (keyed BLAKE2b) of data under the login key, for one use (label). */
function loginTag(label: string, data: Uint8Array): Buffer {
  return secretKeyedDigest(
    Buffer.concat([Buffer.from(`keyward-login-${label}\n`), data]),
    loginKey(),
  );
}

export type LoginMethod = 'passphrase' | 'webauthn';

export interface Challenge {
  /** base64url, as it went into the options. */
  challenge: string;
  /** What it was issued for: a registration, or the approval of one request. */
  purpose: 'register' | `approve:${string}`;
  expiresAt: number;
}

export interface Session {
  id: string;
  csrf: string;
  login: LoginMethod;
  credential: string | null;
  created: number;
  lastSeen: number;
  /** At most one outstanding challenge per purpose; each is taken (and gone) when used. */
  challenges: Map<string, Challenge>;
}

const expired = (s: Session, now: number): boolean =>
  now - s.lastSeen > SESSION_IDLE_MS || now - s.created > SESSION_MAX_MS;

export class Sessions {
  private readonly sessions = new Map<string, Session>();
  /** Login handles an assertion was accepted for, until they expire: each logs in once. */
  private readonly usedLogins = new Map<string, number>();

  create(login: LoginMethod, credential: string | null, now: number): Session {
    this.sweep(now);
    // The oldest goes when too many are open: a login never fails for lack of room.
    while (this.sessions.size >= MAX_SESSIONS) {
      const oldest = [...this.sessions.values()].sort((a, b) => a.lastSeen - b.lastSeen)[0];
      if (oldest) this.sessions.delete(oldest.id);
    }
    const s: Session = {
      id: randomBytes(32).toString('base64url'),
      csrf: randomBytes(32).toString('base64url'),
      login,
      credential,
      created: now,
      lastSeen: now,
      challenges: new Map(),
    };
    this.sessions.set(s.id, s);
    return s;
  }

  /**
   * The live session for this cookie value and CSRF token, or undefined. Both must match (the
   * token compared in constant time); a match slides the idle timeout.
   */
  find(cookie: string | undefined, csrf: string | undefined, now: number): Session | undefined {
    if (!cookie || !csrf) return undefined;
    const s = this.sessions.get(cookie);
    if (!s || !this.alive(s, now)) return undefined;
    const a = Buffer.from(csrf);
    const b = Buffer.from(s.csrf);
    if (a.length !== b.length || !secureEqual(a, b)) return undefined;
    s.lastSeen = now;
    return s;
  }

  end(s: Session): void {
    this.sessions.delete(s.id);
  }

  /** Whether a session still stands: not ended, not idle too long, not too old. */
  alive(s: Session, now: number): boolean {
    const live = this.sessions.get(s.id) === s && !expired(s, now);
    if (!live) this.sessions.delete(s.id);
    return live;
  }

  /**
   * Every session ends (the agent locked: whoever logged in logs in again). The used login
   * handles stay until they expire: an accepted assertion never logs in twice.
   */
  clear(): void {
    this.sessions.clear();
  }

  /** A challenge for a login that has no session yet, and the handle that proves it (kept nowhere). */
  issueLogin(now: number): { handle: string; challenge: string } {
    const body = Buffer.concat([publicRandom(16), Buffer.alloc(8)]);
    body.writeBigUInt64BE(BigInt(now + CHALLENGE_MS), 16);
    const handle = Buffer.concat([body, loginTag('handle', body)]).toString('base64url');
    return { handle, challenge: loginTag('challenge', Buffer.from(handle)).toString('base64url') };
  }

  /** The challenge of a login handle this console issued, unexpired and not used to log in yet. */
  loginChallenge(handle: unknown, now: number): string | undefined {
    if (typeof handle !== 'string') return undefined;
    for (const [h, until] of this.usedLogins) if (until <= now) this.usedLogins.delete(h);
    const raw = Buffer.from(handle, 'base64url');
    const body = raw.subarray(0, HANDLE_BODY);
    if (
      raw.length !== HANDLE_BODY + TAG ||
      raw.toString('base64url') !== handle ||
      !secureEqual(raw.subarray(HANDLE_BODY), loginTag('handle', body)) ||
      Number(body.readBigUInt64BE(16)) <= now ||
      this.usedLogins.has(handle)
    )
      return undefined;
    return loginTag('challenge', Buffer.from(handle)).toString('base64url');
  }

  /**
   * Marks a handle used once its assertion was accepted; false if it was already (two logins
   * with one assertion, at once): checked and marked in one step, with nothing awaited between.
   */
  useLogin(handle: string, now: number): boolean {
    if (this.usedLogins.has(handle)) return false;
    const raw = Buffer.from(handle, 'base64url');
    this.usedLogins.set(handle, raw.length >= HANDLE_BODY ? Number(raw.readBigUInt64BE(16)) : now);
    return true;
  }

  /** Sets a session's challenge for a purpose (replacing one not yet used). */
  issue(s: Session, purpose: Challenge['purpose'], challenge: string, now: number): void {
    s.challenges.set(purpose, { challenge, purpose, expiresAt: now + CHALLENGE_MS });
  }

  /** Takes a session's challenge for a purpose: used once, whatever the outcome. */
  take(s: Session, purpose: Challenge['purpose'], now: number): string | undefined {
    const c = s.challenges.get(purpose);
    s.challenges.delete(purpose);
    return c && c.expiresAt > now ? c.challenge : undefined;
  }

  private sweep(now: number): void {
    for (const [k, s] of this.sessions) if (expired(s, now)) this.sessions.delete(k);
  }
}
