/**
 * Pending approvals and remembered grants (docs/PROTOCOL.md, "Approvals").
 *
 * A pending request is bound to one caller, action and target; it is resolved once (granted,
 * denied or expired) and never again, so an approval can't be replayed for another request.
 * The requesting process and its descendants can never approve it.
 */
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';

export type Outcome = 'granted' | 'denied' | 'expired';

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
}

interface Entry extends Pending {
  resolve: (o: Outcome) => void;
  timer: NodeJS.Timeout;
}

export class Broker {
  private pending = new Map<string, Entry>();

  /** Waits for a decision on this request, or its expiry. */
  wait(
    p: Omit<Pending, 'id' | 'expiresAt'>,
    timeoutMs: number,
  ): { id: string; outcome: Promise<Outcome> } {
    const id = randomBytes(4).toString('hex');
    let resolve!: (o: Outcome) => void;
    const outcome = new Promise<Outcome>((r) => (resolve = r));
    const timer = setTimeout(() => this.settle(id, 'expired'), timeoutMs);
    timer.unref();
    this.pending.set(id, { ...p, id, expiresAt: Date.now() + timeoutMs, resolve, timer });
    return { id, outcome };
  }

  list(): Pending[] {
    return [...this.pending.values()].map(({ resolve: _r, timer: _t, ...p }) => p);
  }

  get(id: string): Pending | undefined {
    return this.pending.get(id);
  }

  /** Resolves a pending request once. False when it is no longer pending. */
  settle(id: string, outcome: Outcome): boolean {
    const e = this.pending.get(id);
    if (!e) return false;
    this.pending.delete(id);
    clearTimeout(e.timer);
    e.resolve(outcome);
    return true;
  }

  /** Denies everything pending (lock, stop). */
  denyAll(): void {
    for (const id of [...this.pending.keys()]) this.settle(id, 'denied');
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

/**
 * Asks a person through an askpass program (the ssh-askpass convention): the prompt is its one
 * argument, exit 0 approves, anything else (or no answer within timeoutMs) denies.
 */
export function askpass(
  program: string,
  prompt: string,
  timeoutMs: number,
  env: NodeJS.ProcessEnv,
): Promise<boolean> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (ok: boolean) => {
      if (!done) {
        done = true;
        resolve(ok);
      }
    };
    let child;
    try {
      child = spawn(program, [prompt], {
        env: { ...env, SSH_ASKPASS_PROMPT: 'confirm' },
        stdio: ['ignore', 'ignore', 'ignore'],
      });
    } catch {
      finish(false);
      return;
    }
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      finish(false);
    }, timeoutMs);
    child.on('error', () => finish(false));
    child.on('exit', (code) => {
      clearTimeout(timer);
      finish(code === 0);
    });
  });
}
