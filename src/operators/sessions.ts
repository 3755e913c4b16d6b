/**
 * Operator sessions: an operator logs in once (an OIDC token or an API key) and gets a bearer
 * token for the console's operator API, kept only in the agent's memory and ended at lock.
 * The API key itself is sent once, in a login's body, into secure memory; what a client then
 * carries in its Authorization header is this token, which dies with the session.
 */
import { randomBytes } from 'node:crypto';
import type { OperatorIdentity } from './types.js';

export const OPERATOR_IDLE_MS = 10 * 60_000;
export const OPERATOR_MAX_MS = 60 * 60_000;
const MAX_SESSIONS = 64;
/** Sign-ins waiting for their page to claim them (each page claims its own at once). */
const MAX_HANDOFFS = 256;
/** A sign-in's session waits this long for its page to claim it (the page does at once). */
export const HANDOFF_MS = 60_000;

export interface OperatorSession {
  token: string;
  operator: OperatorIdentity;
  created: number;
  lastSeen: number;
}

export class OperatorSessions {
  private readonly byToken = new Map<string, OperatorSession>();
  private readonly handoffs = new Map<
    string,
    { token: string; expiresAt: number } | { refusal: string; expiresAt: number }
  >();

  /**
   * A one-use handle for a session made by a sign-in in the browser: the redirect back to the
   * page carries the handle (in the URL's fragment, which no server sees), and the page trades it
   * for the bearer token. The token itself is never in a URL.
   */
  handOff(s: OperatorSession, now: number): string {
    this.sweepHandoffs(now);
    const handle = randomBytes(32).toString('base64url');
    this.handoffs.set(handle, { token: s.token, expiresAt: now + HANDOFF_MS });
    return handle;
  }

  /**
   * A one-use handle for why a sign-in was refused: the page shows only what the agent said,
   * claimed like a session, never text from its URL (a link could put any there).
   */
  handOffRefusal(why: string, now: number): string {
    this.sweepHandoffs(now);
    const handle = randomBytes(32).toString('base64url');
    this.handoffs.set(handle, { refusal: why, expiresAt: now + HANDOFF_MS });
    return handle;
  }

  /** Drops handles past their minute, and the oldest beyond MAX_HANDOFFS. */
  private sweepHandoffs(now: number): void {
    for (const [h, x] of this.handoffs) if (x.expiresAt <= now) this.handoffs.delete(h);
    for (const h of this.handoffs.keys()) {
      if (this.handoffs.size < MAX_HANDOFFS) break;
      this.handoffs.delete(h);
    }
  }

  /**
   * The session a handle was made for, or the refusal, once; undefined when unknown, used or
   * late.
   */
  claim(handle: unknown, now: number): OperatorSession | { refusal: string } | undefined {
    if (typeof handle !== 'string') return undefined;
    const x = this.handoffs.get(handle);
    this.handoffs.delete(handle);
    if (!x || x.expiresAt <= now) return undefined;
    if ('refusal' in x) return { refusal: x.refusal };
    return this.byToken.get(x.token);
  }

  create(operator: OperatorIdentity, now: number): OperatorSession {
    this.sweep(now);
    while (this.byToken.size >= MAX_SESSIONS) {
      const oldest = [...this.byToken.values()].sort((a, b) => a.lastSeen - b.lastSeen)[0];
      if (oldest) this.byToken.delete(oldest.token);
    }
    const s = {
      token: randomBytes(32).toString('base64url'),
      operator,
      created: now,
      lastSeen: now,
    };
    this.byToken.set(s.token, s);
    return s;
  }

  /** The live session an Authorization header names, or undefined. */
  find(authorization: string | undefined, now: number): OperatorSession | undefined {
    const m = /^Bearer ([A-Za-z0-9_-]{43})$/.exec(authorization ?? '');
    const s = m ? this.byToken.get(m[1] ?? '') : undefined;
    if (!s) return undefined;
    if (now - s.lastSeen > OPERATOR_IDLE_MS || now - s.created > OPERATOR_MAX_MS) {
      this.byToken.delete(s.token);
      return undefined;
    }
    s.lastSeen = now;
    return s;
  }

  end(s: OperatorSession): void {
    this.byToken.delete(s.token);
  }

  clear(): void {
    this.byToken.clear();
    this.handoffs.clear();
  }

  private sweep(now: number): void {
    for (const s of this.byToken.values())
      if (now - s.lastSeen > OPERATOR_IDLE_MS || now - s.created > OPERATOR_MAX_MS)
        this.byToken.delete(s.token);
  }
}
