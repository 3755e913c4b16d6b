/**
 * The audit log as the rest of keyward uses it: start it with a vault, record events durably, and
 * seal checkpoints (verify and acknowledge: review.ts; reading entries back: read.ts).
 */
import { IntegrityError, KeywardError } from '../errors.js';
import { secureFree } from '../lib/secure.js';
import type { AuditSink, Vault } from '../vault/index.js';
import { isEventType, type AuditRecord } from './events.js';
import { boxKeypair, boxPublicOf } from './keys.js';
import { AuditLog, type AuditOptions, type Head } from './log.js';
import {
  findBreak,
  gapRecord,
  readCheckpoints,
  anchorAt,
  vaultAnchor,
  recordBreak,
  recordedBreaks,
  sealCheckpoint,
  sealFile,
  setAnchor,
  type Break,
} from './checkpoint.js';
import { listSegments, MAX_EPOCH_STEP, type Checkpoint } from './verify.js';
import {
  BOX_SECRET,
  rebuildState,
  rememberBoxKey,
  SEED,
  seedOf,
  storeNewKeys,
  trustVaultBoxKeys,
} from './vault-keys.js';
import type { ShipConfig } from './ship.js';
import { unwritable } from './state.js';

/** The hooks `init` passes to the vault: keys go in before the first save, the log starts after. */
export function auditInitHooks(
  home: string,
  options?: AuditOptions,
): { setup: (v: Vault) => void; afterSave: (v: Vault) => void } {
  return {
    setup: storeNewKeys,
    afterSave: (v) => {
      const log = new AuditLog(home, options);
      startLog(log, v);
      // From now on every save of this vault carries the log's head.
      v.beforeSave = () => setAnchor(log, v);
      log.append([{ type: 'vault.init', decision: 'info', details: { vaultId: v.id } }]);
      writeCheckpoint(log, v);
    },
  };
}

function startLog(log: AuditLog, v: Vault): void {
  const seed = seedOf(v);
  const sk = v.revealInternal(BOX_SECRET);
  try {
    if (!sk) throw new KeywardError('AUDIT_UNAVAILABLE', 'this vault has no audit box key');
    const pk = boxPublicOf(sk);
    log.create(seed, pk);
    // Beside the log, sealed: what the next writer checks the state's key against at once.
    rememberBoxKey(v, log.paths.dir, pk);
  } finally {
    secureFree(seed);
    secureFree(sk);
  }
}

/**
 * `keyward audit init`: gives a vault made before the audit log its keys and log, or rebuilds a
 * lost state file from the vault's seed (the next epoch after the log's last entry, so no key
 * that signed an existing entry is ever written again).
 */
export function initOrRepair(
  home: string,
  v: Vault,
  options?: AuditOptions,
): 'created' | 'repaired' | 'present' {
  const log = new AuditLog(home, options);
  if (log.exists()) return 'present';
  if (!v.has(SEED)) {
    storeNewKeys(v);
    v.save();
    startLog(log, v);
    log.append([
      { type: 'vault.init', decision: 'info', reason: 'audit log added to an existing vault' },
    ]);
    writeCheckpoint(log, v);
    return 'created';
  }
  const segments = listSegments(log.paths.dir);
  const last = segments.at(-1);
  if (!last) {
    startLog(log, v);
    // A vault whose checkpoint says its log had entries: the log was deleted, not never made.
    // The new log starts with that fact.
    const b = findBreak(log, readCheckpoints(log, v), undefined, recordedBreaks(log, v));
    if (b && !b.recorded) recordBreak(log, v, b, 'audit init');
    return 'created';
  }
  rebuildState(log, v, {
    type: 'audit.recovered',
    decision: 'info',
    reason: 'audit state rebuilt from the vault seed',
  });
  writeCheckpoint(log, v);
  return 'repaired';
}

/**
 * The first entry of a restored home (docs/BACKUP.md): a new state file from the vault (a backup
 * never holds one), then `audit.restored` naming the backup's head and the home it replaced, then
 * a checkpoint over it.
 */
export function resumeRestoredLog(
  home: string,
  v: Vault,
  details: Record<string, string | number | boolean | null>,
  ship: ShipConfig,
): void {
  const log = new AuditLog(home);
  log.setShipping(ship);
  rebuildState(
    log,
    v,
    { type: 'audit.restored', decision: 'info', reason: 'restored from a backup', details },
    MAX_EPOCH_STEP,
  );
  writeCheckpoint(log, v);
}

/** Seals the head at the end of an unlocked operation, unless the log is broken (recorded). */
export function writeCheckpoint(log: AuditLog, v: Vault): void {
  sealCheckpoint(log, v, 'a checkpoint');
}

/**
 * The end of an agent's unlock window (lock, stop, idle): the head sealed in the checkpoint file
 * and, through `underVaultLock`, in the vault itself (one record appended to vault.kw). The file
 * is the user's to delete; the vault's checkpoint moved only at the vault's own saves, so what an
 * agent released since the last `secret set` could be cut from the log, with the file, and
 * nothing would say so. `agentLast` is the last entry the agent wrote: a log cut behind it, or
 * forked after it, is a break too.
 *
 * On a break nothing is sealed over it, and its record is returned for the agent to write
 * (through its own writer: `log` takes no lock here, so the agent's thread never waits for the
 * audit lock its group committer may hold across an fsync). The vault keeps the agent's last
 * entry then (agentAtBreak): the window's entries are at or before it, so cutting them away once
 * the agent is gone is a break whatever becomes of the log, its record and the checkpoint file.
 * Each place is tried on its own; what became of them is returned, for the lock's own record.
 */
export function checkpointAtLock(
  log: AuditLog,
  v: Vault,
  agentLast: Checkpoint | undefined,
  underVaultLock: (save: () => void) => void,
): { checkpoints: string; gap?: AuditRecord } {
  const checkpoints = readCheckpoints(log, v);
  if (agentLast) checkpoints.push({ ...agentLast, where: 'agent' });
  // The head sealed below is read before the walk (which goes back from the file's end, past
  // it): a line appended meanwhile (racing this lock) stays after what is sealed, where it
  // can't take a release's place unseen.
  const exists = log.exists();
  const head = exists ? log.head() : { seq: 0, hash: '', segment: 0 };
  // A recorded cut does not stop the seal (checkpoint.ts, findBreak): what follows its record
  // is kept from then on.
  const b = findBreak(log, checkpoints, head, recordedBreaks(log, v));
  if (b) {
    const named = [b.checkpoint, ...(b.others ?? [])];
    const ownBroken =
      agentLast !== undefined &&
      named.some((c) => c.seq === agentLast.seq && c.hash === agentLast.hash);
    const kept = agentAtBreak(v, agentLast, ownBroken, underVaultLock);
    const checkpoints = `no checkpoint sealed: ${b.reason}${kept}`;
    if (b.recorded) return { checkpoints };
    return { checkpoints, gap: gapRecord(b, 'the agent at lock', v) };
  }
  if (!exists) return { checkpoints: 'no checkpoint sealed (no audit log)' };
  return { checkpoints: sealBoth(log, v, head, agentLast, underVaultLock) };
}

/**
 * At a lock that found a break, or could not look (the log unreadable): the vault keeps the
 * agent's last entry, which its memory vouches for. Always when the break is against that entry
 * (the log cut behind it, or forked after it: a newer checkpoint is then one sealed over the
 * cut), or when what broke can't be told (the log unreadable); otherwise only when the vault's
 * checkpoint is older (a newer one is evidence of its own). The checkpoint file is left as it
 * is. Returns what it did, for the lock's record.
 */
export function agentAtBreak(
  v: Vault,
  agentLast: Checkpoint | undefined,
  ownBroken: boolean,
  underVaultLock: (save: () => void) => void,
): string {
  if (agentLast === undefined) return '';
  try {
    let kept = false;
    underVaultLock(() => {
      const anchor = vaultAnchor(v);
      if (!ownBroken && anchor !== undefined && anchor.seq >= agentLast.seq) return;
      anchorAt(v, agentLast);
      v.save();
      kept = true;
    });
    return kept
      ? `; the vault keeps the agent's last entry, seq ${agentLast.seq}`
      : "; the vault's checkpoint left where it is (newer than the agent's last entry)";
  } catch (e) {
    return `; the vault's checkpoint not moved (${e instanceof Error ? e.message : 'failed'})`;
  }
}

/**
 * Seals `head` in the vault (through `underVaultLock`) and in the checkpoint file; says where
 * each went, or why not. A log no longer holding `head` once the vault's lock is taken (changed
 * since the walk) is a break found late: nothing is sealed, and agentAtBreak keeps the agent's
 * last entry, as for a break against it (what changed can't be told).
 */
function sealBoth(
  log: AuditLog,
  v: Vault,
  head: Checkpoint,
  agentLast: Checkpoint | undefined,
  underVaultLock: (save: () => void) => void,
): string {
  const why = (e: unknown) => (e instanceof Error ? e.message : 'failed');
  let vault = `the vault's at seq ${head.seq}`;
  let rekeyed = false;
  let changed = false;
  try {
    // The caller takes the vault's lock and reads the vault again (another process may have
    // saved it since), then saves through this.
    underVaultLock(() => {
      // The head sealed above is still there: a short walk from the end, not the whole since.
      let same: boolean;
      try {
        same = log.hashAt(head.seq) === head.hash;
      } catch {
        same = false;
      }
      if (!same) {
        changed = true;
        return;
      }
      anchorAt(v, head);
      v.save();
    });
  } catch (e) {
    vault = `the vault's not moved (${why(e)})`;
    rekeyed = e instanceof KeywardError && e.code === 'KEYRING_KEY_MISMATCH';
  }
  if (changed)
    return `no checkpoint sealed: the log changed, or could not be read, under the lock${agentAtBreak(v, agentLast, true, underVaultLock)}`;
  // After a rekey this vault's keys are stale: a file sealed with them would not open, and would
  // take the place of the one the rekey sealed.
  let file = `the checkpoint file at seq ${head.seq}`;
  if (rekeyed) file = 'the checkpoint file left as the rekey sealed it';
  else {
    try {
      sealFile(log, v, head);
    } catch (e) {
      file = `the checkpoint file not sealed (${why(e)})`;
    }
  }
  return `${file}; ${vault}`;
}

/** The sink the CLI hands to vault sessions: every record durable, or the operation fails. */
export function auditSink(home: string, options?: AuditOptions): AuditSink {
  const log = new AuditLog(home, options);
  return {
    record(r) {
      if (!isEventType(r.type)) throw new Error(`unknown audit event type ${r.type}`);
      const head = log.append([{ ...r, type: r.type }]);
      // Another process changed the log while this was written (appendAt): recorded after it;
      // the command goes no further, as the agent locks.
      if (head.moved !== undefined)
        throw new IntegrityError(
          'AUDIT_CHAIN_BROKEN',
          `the audit log was changed while this command wrote to it (${head.moved}); it is recorded as audit.gap, and nothing was released`,
          { hint: 'keep a copy of the log as evidence; run keyward audit verify' },
        );
    },
    checkpoint(v) {
      writeCheckpoint(log, v);
    },
    attach(v) {
      // Before this session writes anything: a log cut short since the last checkpoint is
      // recorded now, chained from the last entry that is there, and said.
      if (!log.exists()) return undefined;
      // Bodies are sealed to the vault's box key, whatever the state file names (log.ts).
      trustVaultBoxKeys(log, v, 'the command line');
      const boxed = log.checkBoxKey();
      const b = findBreak(log, readCheckpoints(log, v), undefined, recordedBreaks(log, v));
      if (!b) return boxed === undefined ? undefined : boxWarning(boxed);
      if (!b.recorded) recordBreak(log, v, b, 'the command line');
      return breakWarning(b);
    },
    beforeSave(v) {
      setAnchor(log, v);
    },
    rekey(v, replaceKey) {
      const kept = log.exists()
        ? readCheckpoints(log, v).find((c) => c.where === 'file')
        : undefined;
      replaceKey();
      // The same checkpoint, not the head: a rekey is no way to seal over a cut log. Sealed once
      // the vault with the new key is saved; a crash in between leaves a file that opens under
      // neither key, which counts as no file (the vault's own checkpoint holds).
      const save = v.afterSave;
      v.afterSave = () => {
        save?.();
        try {
          if (kept) sealFile(log, v, kept);
        } catch (e) {
          // The vault is saved by now: a disk that refuses the checkpoint is the log's trouble,
          // said as such (found in review: an ENOSPC here said "a bug in keyward").
          throw unwritable(e);
        }
      };
    },
  };
}

export function boxWarning(reason: string): string {
  return `WARNING: the audit log was tampered with: ${reason}. It is recorded as audit.gap; see keyward audit verify (it prints the command that acknowledges it)`;
}

export function breakWarning(b: Break): string {
  return `WARNING: the audit log was cut: ${b.reason}. It is recorded as audit.gap; see keyward audit verify (it prints the command that acknowledges it)`;
}

/**
 * For commands that read the log itself (verify, tail, export) and release nothing: they must
 * still work on a broken log, so a record that can't be written is reported, not fatal.
 * Records made before the log exists (audit init) are kept and written by flush().
 */
export function lenientAuditSink(
  home: string,
  onProblem: (message: string) => void,
): AuditSink & { flush(): void } {
  const strict = auditSink(home);
  const log = new AuditLog(home);
  const held: Parameters<AuditSink['record']>[0][] = [];
  return {
    record(r) {
      if (!log.exists()) {
        held.push(r);
        return;
      }
      try {
        strict.record(r);
      } catch (e) {
        onProblem(
          `could not record ${r.type} in the audit log: ${e instanceof Error ? e.message : 'unknown error'}`,
        );
      }
    },
    checkpoint(v) {
      if (!log.exists()) return;
      try {
        strict.checkpoint(v);
      } catch (e) {
        onProblem(
          `could not seal an audit checkpoint: ${e instanceof Error ? e.message : 'unknown error'}`,
        );
      }
    },
    attach(v) {
      try {
        return strict.attach?.(v);
      } catch (e) {
        onProblem(
          `could not check the audit log against its checkpoints: ${e instanceof Error ? e.message : 'unknown error'}`,
        );
        return undefined;
      }
    },
    beforeSave(v) {
      strict.beforeSave?.(v);
    },
    rekey(v, replaceKey) {
      if (strict.rekey) strict.rekey(v, replaceKey);
      else replaceKey();
    },
    flush() {
      for (const r of held.splice(0)) strict.record(r);
    },
  };
}

/**
 * `keyward audit rekey`: a new box key pair for the bodies of new entries. The old secret keys
 * stay in the vault (@audit/box-secret.N) so older bodies still open.
 */
export function rekeyBox(home: string, v: Vault): number {
  const log = new AuditLog(home);
  const current = v.revealInternal(BOX_SECRET);
  if (!current)
    throw new KeywardError('AUDIT_UNAVAILABLE', 'this vault has no audit box key', {
      hint: 'run: keyward audit init',
    });
  const retired = v.internalNames(`${BOX_SECRET}.`).length + 1;
  const { publicKey, secretKey } = boxKeypair();
  try {
    v.setInternal(`${BOX_SECRET}.${retired}`, current);
    v.setInternal(BOX_SECRET, secretKey);
  } finally {
    secureFree(current);
    secureFree(secretKey);
  }
  v.save();
  log.replaceBoxKey(publicKey);
  rememberBoxKey(v, log.paths.dir, publicKey);
  // Its own entry sealed to the vault's new key, whatever the state names by then (review).
  trustVaultBoxKeys(log, v, 'audit rekey');
  log.append([{ type: 'audit.rekeyed', decision: 'info', details: { retiredKeys: retired } }]);
  writeCheckpoint(log, v);
  return retired;
}

export function headOf(home: string): Head {
  return new AuditLog(home).head();
}
