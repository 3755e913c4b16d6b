/**
 * Pending approvals and remembered grants (docs/PROTOCOL.md, "Approvals").
 *
 * A pending request is bound to one caller, action and target; it is resolved once (granted,
 * denied or expired) and never again, so an approval can't be replayed for another request.
 * The requesting process and its descendants can never approve it.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { SecureBuffer } from '../lib/secure.js';
import type { OperatorIdentity, OperatorNeed } from '../operators/index.js';

export type Outcome = 'granted' | 'denied' | 'expired';

/** How a request was decided, for the audit log: the channel and the factor (never a value). */
export type How = Record<string, string | boolean | null>;

/**
 * What a person gave to approve a request. A confirm request takes any of them; passphrase, totp
 * and webauthn requests take only their own factor.
 */
export type Factor =
  | { kind: 'passphrase'; secret: SecureBuffer | undefined }
  | { kind: 'totp'; code: string }
  /** A console session's login: enough for confirm, never for a second factor. */
  | { kind: 'session'; login: string }
  /** An assertion the console verified against the challenge bound to this very request. */
  | { kind: 'webauthn'; userVerified: boolean; credential: string }
  /** An operator the console authenticated (OIDC or API key): only for mode operator. */
  | { kind: 'operator'; operator: OperatorIdentity };

/** One operator's approval of a request that needs `count` distinct operators. */
export interface Vote {
  operator: string;
  method: 'oidc' | 'key';
  /** The operator's groups that gave it the right to approve this rule. */
  groups: string[];
  /** Who voted, as authenticated: checked again before the vote is counted (never shown). */
  identity?: OperatorIdentity;
}

export interface Settled {
  outcome: Outcome;
  how: How;
}

export interface RequesterRef {
  pid: number;
  startTime: string | undefined;
  /** As a person reads it: caller-controlled parts quoted and cut with a marker. */
  description: string;
  /** The whole facts, uncut, for `keyward approvals --json`. */
  exe?: string | null;
  cmdline?: string[];
  cwd?: string | null;
  hidden?: boolean;
  exeSha256?: string | null;
  /** Why exeSha256 is null for a program that has one: its bytes can't be vouched for. */
  exeUnknown?: string;
  parents?: Array<{ pid: number; exe: string | null }>;
  loaderVars?: Array<{ name: string; value: string | null }>;
}

export interface Pending {
  id: string;
  requester: RequesterRef;
  action: string;
  target: string;
  rule: string;
  mode: string;
  expiresAt: number;
  message: string | undefined;
  /** webauthn: whether the authenticator must verify the person. */
  userVerification?: 'required' | 'preferred';
  /** operator: who may approve, how many must, whether the machine's own user may be one. */
  operators?: OperatorNeed;
  /** operator: the approvals counted so far (distinct operators). */
  votes?: Vote[];
  /** The other targets one approval of this request covers (a run's values under its rule). */
  also?: string[];
  /**
   * What is asked, as the prompt says it ("run "/usr/bin/gh" as: ...", "send the secret ... to
   * ..."): built by the agent with every part the requester controls quoted.
   */
  what?: string;
  /** A run's whole command line, as the agent will run it: `what` may cut a long one. */
  command?: string[];
  /**
   * SHA-256 (hex) over everything above: what a WebAuthn approval's challenge is bound to, so an
   * assertion made for one request can't approve another (docs/PROTOCOL.md, "Approvals").
   */
  digest: string;
}

interface Entry extends Pending {
  resolve: (s: Settled) => void;
  timer: NodeJS.Timeout;
}

/** The digest of a pending request: SHA-256 over its fields in a fixed order. */
export function requestDigest(p: Omit<Pending, 'digest' | 'votes'>): string {
  const r = p.requester;
  const fields = [
    'keyward approval request v1',
    p.id,
    p.action,
    p.target,
    p.rule,
    p.mode,
    String(p.expiresAt),
    p.userVerification ?? '',
    JSON.stringify(p.operators ?? null),
    JSON.stringify(p.also ?? []),
    p.what ?? '',
    String(r.pid),
    r.startTime ?? '',
    r.exe ?? '',
    JSON.stringify(r.cmdline ?? []),
    r.cwd ?? '',
    r.exeSha256 ?? '',
    JSON.stringify(r.parents ?? []),
    JSON.stringify(r.loaderVars ?? []),
    r.description,
    // Only when there is one: older requests' digests are as they were.
    ...(p.command ? [JSON.stringify(p.command)] : []),
  ];
  return createHash('sha256').update(JSON.stringify(fields)).digest('hex');
}

export class Broker {
  private pending = new Map<string, Entry>();
  private readonly listeners = new Set<() => void>();

  /** Calls fn whenever a request starts or ends waiting; returns the unsubscribe. */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn();
  }

  /** Waits for a decision on this request, or its expiry. */
  wait(
    p: Omit<Pending, 'id' | 'expiresAt' | 'digest'>,
    timeoutMs: number,
  ): { id: string; pending: Pending; outcome: Promise<Settled> } {
    const id = randomBytes(4).toString('hex');
    let resolve!: (s: Settled) => void;
    const outcome = new Promise<Settled>((r) => (resolve = r));
    const timer = setTimeout(() => this.settle(id, 'expired'), timeoutMs);
    timer.unref();
    const base = { ...p, id, expiresAt: Date.now() + timeoutMs };
    const pending: Pending = { ...base, digest: requestDigest(base) };
    this.pending.set(id, { ...pending, resolve, timer });
    this.changed();
    return { id, pending, outcome };
  }

  list(): Pending[] {
    return [...this.pending.values()].map(({ resolve: _r, timer: _t, votes, ...p }) =>
      votes
        ? {
            ...p,
            votes: votes.map((v) => ({
              operator: v.operator,
              method: v.method,
              groups: [...v.groups],
            })),
          }
        : p,
    );
  }

  /**
   * Counts one operator's approval of a pending request that needs `needed` distinct operators:
   * 'again' when this operator approved it already, else the votes so far. Settling, once there
   * are enough, is the caller's (with the votes in its record).
   */
  /** Drops the votes `keep` says no longer count (their operator revoked, or no longer allowed). */
  pruneVotes(id: string, keep: (v: Vote) => boolean): Vote[] {
    const e = this.pending.get(id);
    if (!e?.votes) return [];
    const dropped = e.votes.filter((v) => !keep(v));
    if (dropped.length > 0) {
      e.votes = e.votes.filter((v) => !dropped.includes(v));
      this.changed();
    }
    return dropped;
  }

  vote(id: string, v: Vote): Vote[] | 'again' | undefined {
    const e = this.pending.get(id);
    if (!e) return undefined;
    e.votes ??= [];
    if (e.votes.some((x) => x.operator === v.operator)) return 'again';
    e.votes.push(v);
    this.changed();
    return e.votes;
  }

  get(id: string): Pending | undefined {
    return this.pending.get(id);
  }

  /** Resolves a pending request once. False when it is no longer pending. */
  settle(id: string, outcome: Outcome, how: How = {}): boolean {
    const e = this.pending.get(id);
    if (!e) return false;
    this.pending.delete(id);
    clearTimeout(e.timer);
    e.resolve({ outcome, how });
    this.changed();
    return true;
  }

  /** Denies everything pending (lock, stop). */
  denyAll(reason?: string): void {
    for (const id of [...this.pending.keys()])
      this.settle(id, 'denied', reason === undefined ? {} : { reason });
  }
}

/**
 * Whether `approver` may decide a request made by `requester`: never the same process, and never
 * one of its descendants (whose ancestor chain contains the requester).
 */
export function mayApprove(
  requester: RequesterRef,
  approver: { pid: number; ancestors: ReadonlyArray<{ pid: number }> },
): boolean {
  if (approver.pid === requester.pid) return false;
  return !approver.ancestors.some((a) => a.pid === requester.pid);
}

export interface GrantScope {
  key: string;
  expiresAt: number;
  usesLeft: number | undefined;
}

/** Remembered approvals, each for one rule and target and one process or executable. All end at lock. */
export class Grants {
  private grants = new Map<string, GrantScope>();

  static keyFor(
    rule: string,
    target: string,
    scope: 'process' | 'executable',
    who: string,
  ): string {
    return `${rule}\u0000${target}\u0000${scope}\u0000${who}`;
  }

  remember(key: string, forMs: number, uses: number | undefined, now: number): void {
    this.grants.set(key, { key, expiresAt: now + forMs, usesLeft: uses });
  }

  /** Uses a remembered grant if one is live; false otherwise. */
  use(key: string, now: number): boolean {
    const g = this.grants.get(key);
    if (!g) return false;
    if (now >= g.expiresAt || g.usesLeft === 0) {
      this.grants.delete(key);
      return false;
    }
    if (g.usesLeft !== undefined) g.usesLeft -= 1;
    return true;
  }

  clear(): void {
    this.grants.clear();
  }
}
