/**
 * Pending approvals and remembered grants (docs/PROTOCOL.md, "Approvals").
 *
 * A pending request is bound to one caller, action and target; it is resolved once (granted,
 * denied or expired) and never again, so an approval can't be replayed for another request.
 * The requesting process and its descendants can never approve it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { readOwnFile } from '../lib/files.js';
import { processTree } from '../lib/proc-tree.js';
import type { SecureBuffer } from '../lib/secure.js';
import { markupFree } from '../lib/text.js';
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

/**
 * What an askpass call came to: a person's yes or no (exit 0 or 1), or a failure of the program
 * itself, with its reason (it could not be run, it was killed, it said nothing in time).
 */
export type AskpassAnswer = { ok: boolean; failure?: undefined } | { ok: false; failure: string };

/**
 * Asks a person through an askpass program (the ssh-askpass convention): the prompt is its one
 * argument, exit 0 approves, anything else (or no answer within timeoutMs) denies.
 */
export function askpass(
  program: string,
  prompt: string,
  timeoutMs: number,
  env: NodeJS.ProcessEnv,
  ended?: AbortSignal,
): Promise<AskpassAnswer> {
  return new Promise((resolve) => {
    if (ended?.aborted) {
      resolve({ ok: false, failure: ENDED });
      return;
    }
    let done = false;
    const finish = (a: AskpassAnswer) => {
      if (!done) {
        done = true;
        resolve(a);
      }
    };
    // A program pinned at the agent's start runs only as it was then (askpassPin), and one that
    // was not pinned never runs (found by name on PATH at each prompt, it could be anything).
    const pin = pinned.get(program);
    if (!pin) {
      finish({ ok: false, failure: `${program} was not pinned at the agent's start: not run` });
      return;
    }
    if (contentHash(pin.path) !== pin.sha256) {
      finish({
        ok: false,
        failure: `${pin.path} changed since the agent started: not run (restart the agent to use the new one)`,
      });
      return;
    }
    let child;
    try {
      child = spawn(pin.path, [markupFree(prompt)], {
        env: askpassEnv(env),
        stdio: ['ignore', 'ignore', 'ignore'],
      });
    } catch (e) {
      finish({ ok: false, failure: `could not be run: ${(e as Error).message}` });
      return;
    }
    const spawned = child;
    // The program and whatever it started (a wrapper script's dialog is its child). Not a
    // process group of its own: that needs a session of its own, and an askpass that asks on
    // the terminal would lose it.
    // Walked before the kill: once the program is gone, what it started belongs to init.
    const end = () => {
      void (
        spawned.pid === undefined ? Promise.resolve([]) : processTree(spawned.pid, ASKPASS_TREE)
      ).then((tree) => {
        spawned.kill('SIGKILL');
        for (const pid of tree.slice(1)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone already
          }
        }
      });
    };
    const timer = setTimeout(() => {
      end();
      finish({ ok: false, failure: `gave no answer within ${Math.round(timeoutMs / 1000)} s` });
    }, timeoutMs);
    // Its request ended (its requester hung up, it was decided elsewhere, the agent locked):
    // the dialog goes, so nobody answers a question whose answer would go nowhere.
    const onEnded = () => {
      clearTimeout(timer);
      end();
      finish({ ok: false, failure: ENDED });
    };
    ended?.addEventListener('abort', onEnded, { once: true });
    child.on('exit', () => ended?.removeEventListener('abort', onEnded));
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      finish({ ok: false, failure: `could not be run (${e.code ?? e.message})` });
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0 || code === 1) finish({ ok: code === 0 });
      else if (signal) finish({ ok: false, failure: `was killed by ${signal}` });
      else finish({ ok: false, failure: `exited with status ${code}` });
    });
  });
}

/** The most processes of an askpass program's tree ended with it. */
const ASKPASS_TREE = 1024;

/** An askpass answer for a request that ended before the program answered (not a failure of it). */
export const ENDED = 'was ended with its request';

/** Larger askpass programs are not pinned (so not run): ssh-askpass is tens of KB. */
const ASKPASS_MAX_BYTES = 64 * 1024 * 1024;

/** Askpass programs pinned at the agent's start: where each was found, and its content's hash. */
const pinned = new Map<string, { path: string; sha256: string }>();

/** SHA-256 of a file's content, or undefined when it can't be read (public bytes). */
function contentHash(file: string): string | undefined {
  try {
    // A FIFO put there would hold the agent's thread; a huge file, its memory.
    const bytes = readOwnFile(file, { follow: true, maxBytes: ASKPASS_MAX_BYTES });
    return createHash('sha256').update(bytes).digest('hex');
  } catch {
    return undefined;
  }
}

/** What of the agent's environment an askpass program gets: what it needs to reach the person. */
const ASKPASS_KEEPS =
  /^(DISPLAY|WAYLAND_DISPLAY|XAUTHORITY|DBUS_SESSION_BUS_ADDRESS|XDG_RUNTIME_DIR|XDG_SESSION_TYPE|HOME|USER|LOGNAME|LANG|LANGUAGE|LC_\w+|TERM|TZ)$/;

/**
 * The askpass program's environment: the display, the session bus, the locale and who the user
 * is, nothing else of the agent's (a BASH_ENV or PYTHONPATH there would make a wrapper run code of
 * the user's). What it runs by name is looked up only where root alone can write: a directory of
 * the user's own on PATH (~/.local/bin) would let any process of the user put its own `exit 0`
 * there; and Python leaves out the user's site directory (~/.local/lib/python3.X), where a
 * usercustomize.py runs first (both found in review). A program that reads its settings from the
 * user's home (GTK's modules in ~/.config) is still the user's to change: THREAT-MODEL.md.
 */
export function askpassEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) if (ASKPASS_KEEPS.test(k)) out[k] = v;
  return {
    ...out,
    PATH: rootOnlyPath(env['PATH']),
    PYTHONNOUSERSITE: '1',
    SSH_ASKPASS_PROMPT: 'confirm',
  };
}

/**
 * The directories of a PATH that only root can change: absolute, every part of the way owned by
 * root, none writable by group or others but a sticky one's entries (/tmp's, which root owns).
 * A process of the user can put nothing in them, nor swap them for directories of its own: each is
 * kept as its real path (a link of the user's on the way, as ~/.nix-profile is, could be pointed
 * elsewhere once checked: found in review). None such: a PATH that names nothing, never an empty
 * one (which a shell reads as the working directory).
 */
export function rootOnlyPath(envPath: string | undefined): string {
  const kept: string[] = [];
  for (const dir of (envPath ?? '').split(':')) {
    if (!path.isAbsolute(dir)) continue;
    try {
      const real = fs.realpathSync(dir);
      if (kept.includes(real)) continue;
      const parts = real.split('/').filter((x) => x !== '');
      let ok = true;
      for (let i = 0; i <= parts.length && ok; i++) {
        const st = fs.statSync(`/${parts.slice(0, i).join('/')}`);
        const last = i === parts.length;
        const shared = (st.mode & 0o022) !== 0;
        ok = st.isDirectory() && st.uid === 0 && (!shared || (!last && (st.mode & 0o1000) !== 0));
      }
      if (ok) kept.push(real);
    } catch {
      // not there, or not to be read: not a place to look
    }
  }
  return kept.length > 0 ? kept.join(':') : '/nonexistent';
}

/** Where a program (a path, or a name on PATH) is: its first executable regular file. */
function locate(program: string, envPath: string | undefined): string | undefined {
  const candidates = program.includes('/')
    ? [program]
    : (envPath ?? '')
        .split(':')
        .filter((d) => d !== '')
        .map((d) => path.join(d, program));
  return candidates.find((c) => {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return fs.statSync(c).isFile();
    } catch {
      return false;
    }
  });
}

/**
 * Pins the askpass program as it is at the agent's start: found once on PATH (not again at each
 * prompt), and its content hashed. A program replaced or edited since (by any process of the
 * user: `exit 0` approves everything) is not run, and the request is not approved by it.
 */
export function askpassPin(program: string, envPath: string | undefined): void {
  const found = locate(program, envPath);
  const sha256 = found === undefined ? undefined : contentHash(found);
  if (found !== undefined && sha256 !== undefined)
    pinned.set(program, { path: path.resolve(found), sha256 });
}

/**
 * Why an askpass program can't be run, or undefined when it can: a path (or a name on PATH) to
 * an executable regular file. Checked at agent start and by doctor.
 */
export function askpassProblem(program: string, envPath: string | undefined): string | undefined {
  if (!program.includes('/') && !(envPath ?? '').split(':').some((d) => d !== ''))
    return `${program} is not a path and there is no PATH`;
  const found = locate(program, envPath);
  if (found !== undefined)
    return contentHash(found) === undefined
      ? `it can't be read (or is over ${ASKPASS_MAX_BYTES / 1024 / 1024} MiB): the agent pins an askpass program's content at its start, so that one replaced since is never run`
      : undefined;
  return program.includes('/')
    ? `${program} is not an executable file`
    : `${program} was not found on PATH`;
}
