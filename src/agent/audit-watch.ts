/**
 * What the agent does for the audit log beyond appending (server.ts keeps to sockets and
 * dispatch): it ships by the policy it holds, and at unlock says whether the log was cut.
 */
import {
  AuditLog,
  breakWarning,
  findBreak,
  recordedBreaks,
  gapRecord,
  readCheckpoints,
  readShipFile,
  sameShipping,
  shipConfigOf,
  writeShipFile,
  type AuditRecord,
} from '../audit/index.js';
import type { Loaded } from '../policy/index.js';
import type { Vault } from '../vault/index.js';

type Record_ = (r: AuditRecord) => Promise<unknown>;

/**
 * The agent ships by the applied policy it holds (and keeps doing so while locked). audit/ship,
 * which writers without the policy go by, is put back when it says otherwise, and that is
 * recorded.
 */
export function followShipping(log: AuditLog, loaded: Loaded, record: Record_): void {
  const cfg = shipConfigOf(loaded.policy.audit);
  log.setShipping(cfg);
  if (sameShipping(readShipFile(log.paths), cfg)) return;
  writeShipFile(log.paths, cfg);
  void record({
    type: 'policy.drift',
    decision: 'error',
    reason: `audit/ship did not match the applied policy's audit shipping (${cfg.kind}); put back`,
  }).catch(() => undefined);
}

/** Why the agent locks when the system log did not take the copies of `missed` entries. */
export function unshippedReason(log: AuditLog, missed: number): string {
  const cfg = log.shipping();
  return `the system log (${cfg.kind} at ${cfg.socket}) did not take the copy of ${missed} audit entr${missed === 1 ? 'y' : 'ies'}; with shipping on, nothing is released that the copy lacks (is the system log running, or is its socket flooded?)`;
}

/**
 * At unlock, with the vault's checkpoints at hand: a log cut since them is recorded (once,
 * chained from the last entry there) and said to the person who unlocked.
 */
export async function auditWarningAtUnlock(
  home: string,
  v: Vault,
  record: Record_,
): Promise<string | undefined> {
  const log = new AuditLog(home);
  const b = findBreak(log, readCheckpoints(log, v), undefined, recordedBreaks(log, v));
  if (b && !b.recorded) {
    await record(gapRecord(b, 'the agent at unlock', v));
    return breakWarning(b);
  }
  const recorded = log.unacknowledgedGaps();
  // Breaks found earlier (by this agent while it ran, say) are said at every unlock until a
  // person acknowledges them.
  return recorded.length > 0
    ? `WARNING: the audit log records ${recorded.length} break(s) not acknowledged (audit.gap at seq ${recorded.join(', ')}); see keyward audit verify (it prints the command that acknowledges it)`
    : undefined;
}
