/**
 * The unlock window (docs/PROTOCOL.md, "The unlock window"): the open vault, the policy in force
 * for it, and the limits that close it (idle timeout, absolute cap, maximum uses). Closing wipes
 * the vault's keys; the agent clears everything derived from them at the same time.
 */
import { auditPaths, boxTrustOf, type AuditRecord, type BoxTrust } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { withFileLock, withFileLockAsync } from '../lib/files.js';
import type { WatchedStamp } from '../lib/watch.js';
import { secureFree } from '../lib/secure.js';
import {
  durationMs,
  loadPolicy,
  policyFilesDigest,
  policyStamp,
  type Loaded,
} from '../policy/index.js';
import {
  vaultPaths,
  type AuditSink,
  type Unlock,
  type Vault,
  type VaultPaths,
} from '../vault/index.js';
import { actorOf, type ProcessIdentity } from './identity.js';
import { locked, type WindowHost } from './window-host.js';
import {
  openForWindow,
  sealAtLock,
  stampIsOf,
  vaultFileStamp,
  watchVaultFile,
} from './window-vault.js';

export { locked, usesSpent, type WindowHost } from './window-host.js';

/** How long a write by the agent waits for another process's vault lock. */
const VAULT_LOCK_MS = 10_000;
/**
 * How long a lock waits for the vault's lock to move the vault's checkpoint (it holds the event
 * loop meanwhile): a writer's save takes milliseconds; past this the checkpoint stays.
 */
const ANCHOR_LOCK_MS = 250;

export class UnlockWindow {
  private vault: Vault | undefined;
  private policy: Loaded | undefined;
  private readonly vp: VaultPaths;
  /** Whether this agent holds the vault's flock (inside writeLocked). */
  private holding = false;
  private unlockedAt = 0;
  /** When the idle timeout last slid (wall clock, as unlockedAt). */
  private lastUse = 0;
  private usedInWindow = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private capTimer: NodeJS.Timeout | undefined;
  private vaultStamp = '';
  /** The stamp was compared in this synchronous run (cleared by a microtask): no second stat. */
  private stampFresh = false;
  /**
   * The vault file's stamp, taken again when its watch reports a change (unlocked()). Kept for
   * the agent's life: closing an inotify descriptor waits for the kernel (lib/watch.ts).
   */
  private vaultWatch: WatchedStamp | undefined;
  private policyStamp = '';
  /** Bumped at every unlock, lock and vault re-read: caches of vault contents key on it. */
  gen = 0;
  private box: { gen: number; trust: BoxTrust | undefined } | undefined;

  constructor(private readonly host: WindowHost) {
    this.vp = vaultPaths(host.home);
  }

  /**
   * The open vault's audit box keys, for the agent's writer (AuditLog.trustBoxKeys): worked out
   * again when the vault was (a rekey changes them); none while locked.
   */
  boxTrust(): BoxTrust | undefined {
    if (!this.vault) return undefined;
    let v: Vault;
    try {
      v = this.unlocked();
    } catch {
      return undefined;
    }
    if (this.box?.gen !== this.gen)
      this.box = {
        gen: this.gen,
        trust: boxTrustOf(v, auditPaths(this.host.home).dir, 'the agent'),
      };
    return this.box.trust;
  }

  get isOpen(): boolean {
    return this.vault !== undefined;
  }

  /** Whether v is still the open vault (no lock or new unlock since). */
  stillOpen(v: Vault): boolean {
    return this.vault === v;
  }

  /** The policy as last loaded (undefined while locked), for limits that need no re-read. */
  get loaded(): Loaded | undefined {
    return this.policy;
  }

  /** The open vault, re-read first when another process changed vault.kw. */
  unlocked(): Vault {
    const v = this.vault;
    if (!v)
      throw new KeywardError('AGENT_LOCKED', 'the agent is locked', { hint: 'keyward unlock' });
    // One request asks several times in one synchronous run (gate, channels, keys): the file
    // can change between runs, not within one, as far as this process can tell.
    if (this.stampFresh) return v;
    // The timers run on the monotonic clock, which stands still while the machine sleeps: the
    // window's deadlines are compared with the wall clock too, at every request.
    const over = this.overdue(Date.now());
    if (over !== undefined) {
      void this.host.lock(over);
      throw locked();
    }
    // Stat-ed again only when the watch on vault.kw and its directory saw a change (another
    // process's save renames over it), and every 64th time (lib/watch.ts).
    const stamp = (this.vaultWatch ??= watchVaultFile(this.vp.file)).get();
    if (stamp !== this.vaultStamp) {
      try {
        this.refresh(v);
        this.host.changed('the vault changed');
      } catch (e) {
        void this.host.lock(
          `the vault file changed and could not be re-read (${e instanceof Error ? e.message : 'error'})`,
        );
        throw e;
      }
      this.vaultStamp = stamp;
      this.gen += 1;
    }
    this.stampFresh = true;
    queueMicrotask(() => (this.stampFresh = false));
    return v;
  }

  /**
   * Changes the open vault and saves it, under the vault lock (the agent's own records: MCP
   * pins). fn sees the vault as it is on disk now and says whether to save. Caches keyed on the
   * vault stay: the agent wrote what changed, and knows it.
   */
  async write<T>(fn: (v: Vault) => { result: T; save: boolean }): Promise<T> {
    const v = this.unlocked();
    return this.writeLocked(v, fn);
  }

  private async writeLocked<T>(
    v: Vault,
    fn: (v: Vault) => { result: T; save: boolean },
  ): Promise<T> {
    return withFileLockAsync(this.vp.lock, VAULT_LOCK_MS, () => {
      // Synchronous: the flock is taken, used and let go in this one run, with `holding` true
      // exactly while it is held; a lock can run inside it only from here (its deadline found
      // in unlocked(), a failed write's own lock).
      this.holding = true;
      try {
        return this.writeHeld(v, fn);
      } finally {
        this.holding = false;
      }
    });
  }

  private writeHeld<T>(v: Vault, fn: (v: Vault) => { result: T; save: boolean }): T {
    if (!this.stillOpen(v)) throw locked();
    this.unlocked();
    // Read again under the lock whatever the file's stamp says: a write must start from the
    // vault as it is, or it would undo another process's.
    this.refresh(v);
    const policyWasCurrent = this.policyStamp === this.stampOfPolicy(v);
    let result: T;
    let save: boolean;
    try {
      ({ result, save } = fn(v));
      if (save) v.save();
    } catch (e) {
      // What fn changed in memory and could not be saved goes: the vault as it is on disk
      // (or, if even that can't be read back, the whole unlock).
      try {
        v.refresh();
      } catch {
        void this.host.lock('the vault could not be re-read after a failed write');
      }
      throw e;
    }
    if (save) {
      // The stamp of the file this save wrote: a file put at the path since (renamed over it,
      // or cut) differs from it, and the next request reads it (found in review).
      const stamp = vaultFileStamp(this.vp.file);
      const w = v.fileWritten();
      if (w !== undefined && stampIsOf(stamp, w)) this.vaultStamp = stamp;
      // The policy in the vault is the one loaded: only the generation moved.
      if (policyWasCurrent) this.policyStamp = this.stampOfPolicy(v);
    }
    return result;
  }

  /**
   * At a lock, before anything is wiped: the open vault read a last time (released values a
   * rotation replaced go to the host, as at any re-read), or undefined when locked. A read that
   * fails is let go: the lock goes on.
   */
  lastLook(): Vault | undefined {
    const v = this.vault;
    if (!v) return undefined;
    try {
      this.refresh(v);
    } catch {
      // Locking anyway; what could not be read is not kept.
    }
    return v;
  }

  /** v read again; released values it no longer holds go to the host (the leak scans). */
  private refresh(v: Vault): void {
    const replaced = v.refresh(this.host.released?.() ?? []);
    if (replaced.length === 0) return;
    if (this.host.replaced) this.host.replaced(replaced);
    else for (const r of replaced) secureFree(r.value);
  }

  private stampOfPolicy(v: Vault): string {
    return `${v.fileGeneration}|${policyStamp(this.host.home)}`;
  }

  /**
   * The policy load's records go through the agent's own writer (group commit, not awaited):
   * a second writer in this process would wait on this thread for the audit lock the first
   * holds across its fsync, which can't end while the thread waits: every request stalled for
   * the lock's 10 s, and failed ("another keyward process holds audit/lock").
   */
  private readonly policySink: AuditSink = {
    record: (r) => {
      // The same load said again (a touch of a policy file makes the agent read it again, and
      // any process of the user can touch it): recorded once a window, not at every touch. An
      // edit of the files' bytes is said again, whatever the record's words.
      const said = JSON.stringify([r.type, r.reason, r.details, this.policyFiles]);
      if (this.policySaid.get(r.type) === said) return;
      this.policySaid.set(r.type, said);
      this.host.record(r as AuditRecord).catch(() => undefined);
    },
    checkpoint: () => undefined,
  };
  /** What the policy's loads last recorded, by record type, in this window. */
  private readonly policySaid = new Map<string, string>();
  /** The policy files' digest, taken once for the load under way (its records share it). */
  private policyFiles = '';

  /** The policy in force, re-loaded (and re-verified against the vault) after `policy apply`. */
  currentPolicy(v: Vault): Loaded['policy'] {
    // The vault (re-read when it changed: a policy apply) holds the applied policy; the files
    // are watched only to report drift, never to decide.
    const stamp = this.stampOfPolicy(v);
    if (!this.policy || stamp !== this.policyStamp) {
      // A new policy may cache less, or differently: what the old one cached goes.
      if (this.policy) this.host.changed('the policy changed');
      const before = this.policy?.sha256;
      this.policyFiles = policyFilesDigest(this.host.home);
      this.policy = loadPolicy(this.host.home, v, this.policySink);
      this.policyStamp = stamp;
      // Another policy (not the same one read again after a write to the vault): what the old
      // one's rules remembered ends.
      if (before !== undefined && before !== this.policy.sha256) this.host.policyReplaced?.();
      this.host.policyLoaded?.(this.policy);
      // Another policy's unlock limits hold from now, the absolute one counted from the unlock:
      // a shorter one already past locks, and this request is refused. (The same policy read
      // again, after a touch of its files, changes nothing: it must not slide the idle timeout.)
      if (before !== undefined && before !== this.policy.sha256 && this.vault) {
        clearTimeout(this.capTimer);
        this.capTimer = undefined;
        if (this.capLeftMs() <= 0) {
          void this.host.lock('absolute unlock limit');
          throw locked();
        }
        this.arm();
      }
    }
    return this.policy.policy;
  }

  /** Opens the vault and starts a window; a wrong passphrase is recorded and counted. */
  async open(
    unlock: Unlock,
    by: ProcessIdentity,
    method: 'keyring' | 'passphrase',
    mode: 'agent' | 'ssh-agent',
  ): Promise<void> {
    if (this.vault) return;
    const v = await openForWindow(this.host, this.vp, unlock, by, mode);
    // Another unlock finished while this one derived its key: that one stands.
    if (this.vault) {
      v.close();
      return;
    }
    try {
      this.policy = undefined;
      this.policySaid.clear();
      this.currentPolicy(v);
    } catch (e) {
      v.close();
      throw e;
    }
    this.vault = v;
    this.vaultStamp = '';
    this.gen += 1;
    this.unlockedAt = this.lastUse = Date.now();
    this.usedInWindow = 0;
    await this.host.record({
      type: 'vault.unlock',
      decision: 'allow',
      actor: actorOf(by),
      details: { method, mode },
    });
    this.arm();
  }

  /** Why the window is over by the wall clock (a sleep the timers did not count), if it is. */
  private overdue(now: number): string | undefined {
    const u = this.policy?.policy.unlock;
    if (!u) return undefined;
    if (now - this.unlockedAt >= durationMs(u.max_lifetime)) return 'absolute unlock limit';
    if (now - this.lastUse >= durationMs(u.idle_timeout)) return 'idle timeout';
    return undefined;
  }

  /** Slides the idle timeout; starts the absolute cap once. */
  private arm(): void {
    const u = this.policy?.policy.unlock;
    if (!u) return;
    this.lastUse = Date.now();
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(
      () => void this.host.lock('idle timeout'),
      durationMs(u.idle_timeout),
    );
    this.idleTimer.unref();
    if (!this.capTimer) {
      this.capTimer = setTimeout(
        () => void this.host.lock('absolute unlock limit'),
        Math.max(0, this.capLeftMs()),
      );
      this.capTimer.unref();
    }
  }

  /** What is left of the window under the policy's max_lifetime, counted from the unlock. */
  private capLeftMs(): number {
    const u = this.policy?.policy.unlock;
    return u ? this.unlockedAt + durationMs(u.max_lifetime) - Date.now() : Infinity;
  }

  /**
   * Takes n uses of the window for a release, in the same synchronous step as the check (right
   * after its authorization, before any wait): false when `max_uses` would be passed, and the
   * release is refused. Concurrent requests can't all pass a check made before their waits.
   */
  take(n = 1): boolean {
    const max = this.policy?.policy.unlock?.max_uses;
    if (max !== undefined && this.usedInWindow + n > max) return false;
    this.usedInWindow += n;
    return true;
  }

  /** After a release (its uses taken): slides the idle timeout, or locks once they are spent. */
  counted(): void {
    const u = this.policy?.policy.unlock;
    if (u?.max_uses !== undefined && this.usedInWindow >= u.max_uses)
      setImmediate(() => void this.host.lock('maximum uses per unlock reached'));
    else this.arm();
  }

  /**
   * Ends the window: timers stop, the checkpoints are sealed and the vault's keys are wiped.
   * Returns what became of the checkpoints (for the lock's record) and the record of a break
   * found (for the agent to write), or undefined when no vault was open. `agentLast` is the
   * agent's last audit entry: a log cut behind it seals nothing.
   */
  close(agentLast?: {
    seq: number;
    hash: string;
  }): { checkpoints: string; gap?: AuditRecord } | undefined {
    clearTimeout(this.idleTimer);
    clearTimeout(this.capTimer);
    this.idleTimer = this.capTimer = undefined;
    this.gen += 1;
    const v = this.vault;
    this.vault = undefined;
    if (!v) return undefined;
    const underVault = (save: () => void): void => {
      const sealed = () => {
        v.refresh();
        // As write() does: the policy held stays the one in force, only the generation moved.
        const policyWasCurrent = this.policyStamp === this.stampOfPolicy(v);
        save();
        if (policyWasCurrent) this.policyStamp = this.stampOfPolicy(v);
      };
      // A lock that starts inside this agent's own write (its deadline found there, or a failed
      // read) runs in the write's synchronous stretch, under the flock this process already
      // holds: the seal is made under it (a second flock of its own would wait for it). A write
      // still waiting for the lock holds nothing, and ends on stillOpen once it has it.
      if (this.holding) return sealed();
      // The vault's lock, when it is free soon: past that the vault's checkpoint stays where
      // its last save put it.
      withFileLock(this.vp.lock, ANCHOR_LOCK_MS, sealed);
    };
    const done = sealAtLock(this.host.home, v, agentLast, underVault);
    v.close();
    return done;
  }

  /** What `status` shows of the window (under the policy in force: read again if applied). */
  status(now: number): Record<string, unknown> {
    if (this.vault) {
      try {
        this.currentPolicy(this.unlocked());
      } catch {
        return {}; // locked by it (a shorter max_lifetime already past), or the vault unreadable
      }
    }
    const u = this.policy?.policy.unlock;
    if (!this.vault || !u) return {};
    const p = this.policy;
    return {
      // The applied policy in force, and what the files beside it say differently.
      policy: p ? { version: p.version ?? null, drift: p.driftReasons } : null,
      unlockedAt: new Date(this.unlockedAt).toISOString(),
      absoluteLeftMs: Math.max(0, this.unlockedAt + durationMs(u.max_lifetime) - now),
      usesLeft: u.max_uses === undefined ? null : Math.max(0, u.max_uses - this.usedInWindow),
    };
  }
}
