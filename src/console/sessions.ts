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
import { secureEqual } from '../lib/secure.js';

export const SESSION_IDLE_MS = 10 * 60_000;
export const SESSION_MAX_MS = 60 * 60_000;
export const CHALLENGE_MS = 2 * 60_000;
const MAX_SESSIONS = 16;
const MAX_LOGIN_CHALLENGES = 16;

export type LoginMethod = 'passphrase' | 'webauthn';

export interface Challenge {
  /** base64url, as it went into the options. */
  challenge: string;
  /** What it was issued for: login, registration, or the approval of one request. */
  purpose: 'login' | 'register' | `approve:${string}`;
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
  private readonly loginChallenges = new Map<string, Challenge>();

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

  /** Every session ends (the agent locked: whoever logged in logs in again). */
  clear(): void {
    this.sessions.clear();
    this.loginChallenges.clear();
  }

  /** A challenge for a login that has no session yet, keyed by a random handle. */
  issueLogin(now: number): { handle: string; challenge: string } {
    this.sweep(now);
    if (this.loginChallenges.size >= MAX_LOGIN_CHALLENGES) {
      const first = this.loginChallenges.keys().next().value;
      if (first !== undefined) this.loginChallenges.delete(first);
    }
    const handle = randomBytes(16).toString('base64url');
    const challenge = randomBytes(32).toString('base64url');
    this.loginChallenges.set(handle, {
      challenge,
      purpose: 'login',
      expiresAt: now + CHALLENGE_MS,
    });
    return { handle, challenge };
  }

  /** Takes a login challenge: it is gone whatever the assertion turns out to be. */
  takeLogin(handle: unknown, now: number): string | undefined {
    if (typeof handle !== 'string') return undefined;
    const c = this.loginChallenges.get(handle);
    this.loginChallenges.delete(handle);
    return c && c.expiresAt > now ? c.challenge : undefined;
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
    for (const [k, c] of this.loginChallenges)
      if (c.expiresAt <= now) this.loginChallenges.delete(k);
  }
}
