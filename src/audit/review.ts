/**
 * What a person checks of the audit log (docs/AUDIT.md): `audit verify` in each of its modes, and
 * `audit acknowledge`, which seals the log as verified once its recorded breaks were seen.
 */
import fs from 'node:fs';
import { IntegrityError } from '../errors.js';
import { refuseIfProblem } from '../lib/files.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import type { Vault } from '../vault/index.js';
import {
  acknowledgedBy,
  anchorAt,
  findBreak,
  noteAck,
  readCheckpoints,
  recordedBreaks,
  sealFile,
  startAcks,
} from './checkpoint.js';
import { AuditLog, type Head } from './log.js';
import { readSeedFile } from './seed.js';
import { hashAt } from './history.js';
import { auditPaths, checkAuditDir } from './state.js';
import { seedOf, trustVaultBoxKeys } from './vault-keys.js';
import { listSegments, verifySegments, type Checkpoint, type VerifyResult } from './verify.js';

/** The hint of every refused acknowledgement but a broken link's. */
const LOOK_AGAIN = {
  hint: 'run keyward audit verify again and look at what it reports before you acknowledge',
};

export interface VerifyRequest {
  home: string;
  /** An open vault: its seed checks the MACs and its sealed checkpoint the tail. */
  vault?: Vault | undefined;
  /** An exported audit key (hex) instead of the vault: MACs checked, checkpoint not. */
  keyFile?: string | undefined;
  /** One segment file on its own (--path) instead of the whole log. */
  file?: string | undefined;
  onProgress?: ((done: number, total: number) => void) | undefined;
}

/** Every mode of `audit verify`: with the vault, with an exported key, or the chain only. */
export function verifyLog(
  req: VerifyRequest,
): VerifyResult & { checkpointChecked: boolean; acknowledgementsChecked: boolean } {
  const log = new AuditLog(req.home);
  const standalone = req.file !== undefined;
  // The log's directory as its writers take it: a link (keyward makes none), or one others can
  // change, is refused here too (found in review: verify read through a link and said ok, where
  // every writer refuses it).
  if (!standalone && fs.lstatSync(log.paths.dir, { throwIfNoEntry: false })) {
    checkAuditDir(log.paths.dir);
    // And its writers' state, which they open without following a link.
    if (fs.lstatSync(log.paths.state, { throwIfNoEntry: false })?.isSymbolicLink())
      refuseIfProblem(log.paths.state, 'file', 'it is a symbolic link');
  }
  const files = req.file !== undefined ? [req.file] : listSegments(log.paths.dir);
  let seed: SecureBuffer | undefined;
  try {
    seed =
      req.keyFile !== undefined
        ? readSeedFile(req.keyFile)
        : req.vault
          ? seedOf(req.vault)
          : undefined;
    const checkpoints = req.vault && !standalone ? readCheckpoints(log, req.vault) : [];
    const reached = Math.max(0, ...checkpoints.map((c) => c.seq));
    if (files.length === 0 && reached > 0) {
      // The checkpoints live in the vault too: a deleted log is not an empty one.
      return {
        ok: false,
        entries: 0,
        macsChecked: seed !== undefined,
        gaps: [],
        checkpointChecked: true,
        acknowledgementsChecked: false,
        finding: {
          file: log.paths.dir,
          line: 0,
          reason: `the log is missing: the vault's checkpoint says it reached seq ${reached}, so ${reached} entries are gone`,
          checkpoint: true,
        },
      };
    }
    const acknowledged = req.vault ? acknowledgedBy(req.vault) : undefined;
    const r = verifySegments(
      files,
      { seed, checkpoints, acknowledged, onProgress: req.onProgress },
      standalone,
    );
    return {
      ...r,
      checkpointChecked: checkpoints.length > 0,
      acknowledgementsChecked: acknowledged !== undefined,
    };
  } finally {
    secureFree(seed);
  }
}

/**
 * `keyward audit acknowledge`: records that the person saw the recorded breaks and seals the
 * log as it is now (file and vault; the caller saves the vault). Returns the breaks covered.
 *
 * Only the log the person looked at: `seen` is the head `audit verify` showed them, and a log
 * that no longer extends it (anything up to it changed, or a line after it that links
 * elsewhere), or that records a break after it, is refused. And only
 * while the log's own chain holds (every link and MAC from seq 1, every acknowledgement the
 * vault's): what a person acknowledges is a recorded break (a cut, a deleted log), never a
 * link. A line that chains to a forged entry, sealed here, would let its writer put that entry
 * in place of the one it follows (a release) later, and every link would hold again.
 */
export function acknowledge(home: string, v: Vault, seen: Checkpoint): number[] {
  const log = new AuditLog(home);
  // Its entry's body is sealed to the vault's box key, whatever the state file names by then: a
  // key swapped in since the command opened the vault is a break found first (writtenAlone).
  trustVaultBoxKeys(log, v, 'audit acknowledge');
  // The head read first: a line appended while the chain is checked is not taken as checked.
  const head = log.head();
  // What came after it (this command's own records, an agent's) must link to it, and the entry
  // the person saw must still be the same line: a change of anything up to it changes its hash.
  const walk = head.seq < seen.seq ? {} : log.chainBackTo(seen.seq, head.segment);
  if (walk.broken !== undefined || walk.found !== seen.hash)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `nothing acknowledged: the log does not extend the head you looked at (seq ${seen.seq}, sha256 ${seen.hash}): it changed since${walk.broken === undefined ? '' : ` (${walk.broken})`}`,
      LOOK_AGAIN,
    );
  // Breaks recorded after it are not what the person saw (a rewrite since, found against a
  // checkpoint sealed after the head they looked at).
  const later = log.unacknowledgedGaps().filter((g) => g > seen.seq);
  if (later.length > 0)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `nothing acknowledged: a break was recorded after the head you looked at (audit.gap at seq ${later.join(', ')})`,
      LOOK_AGAIN,
    );
  const seed = seedOf(v);
  let r: VerifyResult;
  try {
    r = verifySegments(listSegments(log.paths.dir), { seed, acknowledged: acknowledgedBy(v) });
  } finally {
    secureFree(seed);
  }
  if (!r.ok)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `nothing acknowledged: the log's chain is broken at ${r.finding.file} line ${r.finding.line}${r.finding.seq === undefined ? '' : ` (seq ${r.finding.seq})`}: ${r.finding.reason}`,
      {
        hint: 'an acknowledgement covers recorded breaks (audit.gap), not a broken link, which sealed would let its writer replace the entry before it unseen; keep a copy of the log as evidence',
      },
    );
  if (r.headSeq !== head.seq || r.headHash !== head.hash)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `nothing acknowledged: the log changed while its chain was checked (seq ${head.seq} became ${r.headSeq})`,
      LOOK_AGAIN,
    );
  return acknowledgeBreaks(log, v, head);
}

/**
 * `keyward audit acknowledge`: the person has seen the breaks. Recorded (with the breaks it
 * covers) as the entry right after `checked` (the head whose chain the caller checked: the
 * append refuses any other last entry, so the record's hash commits to that history whatever
 * the files hold later), then that record sealed in the file and, at the caller's save, the
 * vault.
 */
function acknowledgeBreaks(log: AuditLog, v: Vault, checked: Head): number[] {
  const gaps = log.unacknowledgedGaps();
  // Every break there is must be one recorded (the command records what it finds when it opens
  // the vault, and the person looks before acknowledging). One that is not came after that: a
  // cut of what was sealed since the person looked, which sealed here would go unseen.
  const b = findBreak(log, readCheckpoints(log, v), checked, recordedBreaks(log, v));
  if (b !== undefined && !b.recorded)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `nothing acknowledged: the log changed while this command ran (${b.reason})`,
      LOOK_AGAIN,
    );
  const ack = log.append(
    [
      {
        type: 'audit.acknowledged',
        decision: 'info',
        reason:
          gaps.length > 0
            ? `the person acknowledged ${gaps.length} recorded break(s) of the audit log`
            : 'the person acknowledged the log as it is',
        details: { gaps: gaps.join(',') || null },
      },
    ],
    checked,
  );
  // Another process's change while the entry was written (recorded after it; what the write
  // found before it refused the append: writtenAlone): the vault must not take this entry for
  // the person's (found in review: the command said it acknowledged, and sealed the gap).
  if (ack.gap !== undefined)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `nothing acknowledged: the log changed while this command wrote its entry (${ack.gap}); that is recorded as audit.gap`,
      LOOK_AGAIN,
    );
  // The vault knows this one is the person's (the caller saves it).
  noteAck(v, { seq: ack.seq, hash: ack.hash }, ack.seq);
  // What is sealed is the acknowledgement itself, not whatever the log's end is by then.
  sealFile(log, v, ack);
  startAcks(v, ack.seq);
  anchorAt(v, ack);
  return gaps;
}

/**
 * The hash of the log's entry at seq, as this process reads the log (no key needed); undefined
 * when the log holds no such entry.
 */
export function entryHashAt(home: string, seq: number): string | undefined {
  return hashAt(auditPaths(home).dir, seq);
}
