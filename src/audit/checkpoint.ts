/**
 * Checkpoints and breaks (docs/AUDIT.md, "Checkpoints, breaks and acknowledgement").
 *
 * A checkpoint is the log's head (seq and hash) sealed with the vault's keys, so only a holder of
 * the vault can make one. It is kept in two places: the `checkpoint` file, sealed at every
 * unlocked operation, and the vault itself (the internal record @audit/checkpoint), set at every
 * save of the vault. Deleting the audit directory takes the first, not the second.
 *
 * A log that does not extend a checkpoint (shorter, or another entry at its seq) is broken. A
 * writer that finds it so records the break in the log itself (`audit.gap`, chained from the last
 * entry that is there) and never seals a new checkpoint over it: ordinary use can't heal the log.
 * Only `keyward audit acknowledge`, with the passphrase and recorded, seals the log as it now is.
 */
import { IntegrityError } from '../errors.js';
import { readOwnFile, writeFileAtomic } from '../lib/files.js';
import { secureFree, secureTake, type SecureBuffer } from '../lib/secure.js';
import type { Vault } from '../vault/index.js';
import type { AuditRecord } from './events.js';
import type { AuditLog, Head } from './log.js';
import { openBodies } from './read.js';
import { gapAuth, gapAuthOk, gapKey } from './keys.js';
import { seedOf } from './vault-keys.js';
import type { Checkpoint } from './verify.js';

const CHECKPOINT_LABEL = 'audit-checkpoint';
const ANCHOR = '@audit/checkpoint';
/**
 * The acknowledgements the person made (seq and hash of each `audit.acknowledged`), kept in the
 * vault: the state file holds the key that MACs new entries, so any process of the user can
 * write one that verifies. verify honours only those the vault knows, and those at or before its
 * first seq (the log as it was when this vault began keeping them: written by keyward before).
 */
const ACKS = '@audit/acknowledged';
/** Acknowledgements kept by seq; past this, the oldest are folded into the first seq. */
const ACKS_KEPT = 4096;

export interface SealedCheckpoint extends Checkpoint {
  /** Where it was kept: the checkpoint file, the vault, or the memory of the agent that wrote it. */
  where: 'file' | 'vault' | 'agent';
}

function encode(cp: Checkpoint): Buffer {
  const plain = Buffer.alloc(8 + 32);
  plain.writeBigUInt64BE(BigInt(cp.seq), 0);
  Buffer.from(cp.hash, 'hex').copy(plain, 8);
  return plain;
}

function decode(plain: Uint8Array, where: string): Checkpoint {
  if (plain.length !== 40)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `the audit checkpoint in the ${where} does not verify (tampered or from another vault)`,
    );
  const b = Buffer.from(plain);
  return { seq: Number(b.readBigUInt64BE(0)), hash: b.subarray(8).toString('hex') };
}

interface Acks {
  /** Acknowledgements at or before this seq are honoured (the log before the vault kept them). */
  through: number;
  made: Checkpoint[];
}

function readAcks(v: Vault): Acks | undefined {
  const raw = v.revealInternal(ACKS);
  if (!raw) return undefined;
  try {
    const b = Buffer.from(raw);
    if (b.length < 8 || (b.length - 8) % 40 !== 0)
      throw new IntegrityError(
        'AUDIT_CHAIN_BROKEN',
        "the vault's record of audit acknowledgements is malformed",
      );
    const made: Checkpoint[] = [];
    for (let at = 8; at < b.length; at += 40) made.push(decode(b.subarray(at, at + 40), 'vault'));
    return { through: Number(b.readBigUInt64BE(0)), made };
  } finally {
    secureFree(raw);
  }
}

function writeAcks(v: Vault, a: Acks): void {
  const b = Buffer.alloc(8 + 40 * a.made.length);
  b.writeBigUInt64BE(BigInt(a.through), 0);
  a.made.forEach((m, i) => encode(m).copy(b, 8 + 40 * i));
  const value = secureTake(b);
  try {
    v.setInternal(ACKS, value);
  } finally {
    secureFree(value);
  }
}

/**
 * Whether an `audit.acknowledged` entry is one the person made (verify, with the vault);
 * undefined when the vault keeps no record yet (made before keyward kept them: any save starts
 * one), and they can't be told apart.
 */
export function acknowledgedBy(v: Vault): ((seq: number, hash: string) => boolean) | undefined {
  const a = readAcks(v);
  if (!a) return undefined;
  const made = new Set(a.made.map((m) => `${m.seq}:${m.hash}`));
  return (seq, hash) => seq <= a.through || made.has(`${seq}:${hash}`);
}

/** Starts the vault's record of acknowledgements (before a save): the log so far is keyward's. */
export function startAcks(v: Vault, head: number): void {
  // has(), not a read: reading a record authenticates every later one (a vault of 100,000
  // secrets: hundreds of ms at every save).
  if (!v.has(ACKS)) writeAcks(v, { through: head, made: [] });
}

export function noteAck(v: Vault, ack: Checkpoint, head: number): void {
  const a = readAcks(v) ?? { through: head - 1, made: [] };
  a.made.push(ack);
  while (a.made.length > ACKS_KEPT) a.through = Math.max(a.through, a.made.shift()?.seq ?? 0);
  writeAcks(v, a);
}

/** Every checkpoint this vault and log have: the file's and the vault's, when present. */
export function readCheckpoints(log: AuditLog, v: Vault): SealedCheckpoint[] {
  const out: SealedCheckpoint[] = [];
  let sealed: Buffer | undefined;
  try {
    sealed = readOwnFile(log.paths.checkpoint);
  } catch {
    sealed = undefined;
  }
  if (sealed) {
    // A file that does not open under this vault's key is no checkpoint: replaced, or sealed by a
    // rekey that a crash cut short. It counts as absent (which deleting it achieves as well);
    // the vault's own checkpoint still holds.
    const plain = v.openState(CHECKPOINT_LABEL, sealed);
    try {
      if (plain && plain.length === 40)
        out.push({ ...decode(plain, 'checkpoint file'), where: 'file' });
    } finally {
      secureFree(plain);
    }
  }
  const anchor = v.revealInternal(ANCHOR);
  if (anchor) {
    try {
      out.push({ ...decode(anchor, 'vault'), where: 'vault' });
    } finally {
      secureFree(anchor);
    }
  }
  return out;
}

/** Why the log does not extend a checkpoint: what was expected and what is there. */
export interface Break {
  checkpoint: SealedCheckpoint;
  /** The log's last entry now (seq 0 when empty or gone). */
  found: Checkpoint;
  reason: string;
  /**
   * 'cut': the log no longer holds the checkpoint's entry. 'fork': what follows it does not link
   * back to it (a line that chains to a forged history), or a segment file is out of place.
   */
  kind: 'cut' | 'fork';
  /** Other checkpoints the log fails to extend, not recorded either (one record names all). */
  others?: Checkpoint[];
  /** A recorded fork (findBreak returns one only when no unrecorded break is left). */
  recorded?: true;
}

/** Whether a recorded break (an `audit.gap` not acknowledged yet) names this checkpoint. */
export type Recorded = (cp: Checkpoint) => boolean;

/**
 * The first checkpoint the log fails to extend that no recorded break names (`recorded`), with
 * the others of the same kind; else a recorded fork (flagged `recorded`); else undefined.
 *
 * A recorded cut no longer stops anything being sealed: the checkpoint's entry is gone, so it
 * vouches for nothing more; the record is the evidence, and a checkpoint after it keeps the
 * record, and whatever follows, from being changed unseen. A fork, recorded or not, still stops
 * it: the checkpoint's entry is there, and what it pins (up to the entry a forged one would
 * replace) stays checked until a person acknowledges.
 */
export function findBreak(
  log: AuditLog,
  checkpoints: readonly SealedCheckpoint[],
  // The head a caller will seal when there is no break, read before the walk (which goes back
  // from the file's end, past it): a line appended after it stays after what is sealed.
  head = log.exists() ? log.head() : { seq: 0, hash: '', segment: 0 },
  recorded?: Recorded,
): Break | undefined {
  // The latest checkpoint is reached from the head through the links (chain.ts): a line put
  // after it that chains to a forged history is a break before anything is sealed over it. The
  // earlier ones by their seq (the links between them were walked when the later was sealed).
  const sorted = [...checkpoints].sort((a, b) => b.seq - a.seq);
  let first: Break | undefined;
  let fork: Break | undefined;
  // The walk goes to the latest checkpoint that is not a recorded cut (a cut's entry is gone:
  // the links below it, to the next one, are walked instead).
  let walked = false;
  for (const cp of sorted) {
    // The agent's own last entry is always walked to: no seal of a later checkpoint checked the
    // links down to it (a command that sealed one never knew it), and a search by seq finds a
    // copy of its line put anywhere below the end.
    const b = breakOf(log, cp, head, !walked || cp.where === 'agent');
    const skipped = b?.kind === 'cut' && recorded?.(cp) === true;
    if (!skipped) walked = true;
    if (b === undefined || skipped) continue;
    if (recorded?.(cp) === true) {
      fork ??= { ...b, recorded: true };
      continue;
    }
    if (first === undefined) first = b;
    else (first.others ??= []).push({ seq: cp.seq, hash: cp.hash });
  }
  return first ?? fork;
}

/** Why the log does not extend one checkpoint (walked back to from the head, or by its seq). */
function breakOf(
  log: AuditLog,
  cp: SealedCheckpoint,
  head: Checkpoint & { segment: number },
  walked: boolean,
): Break | undefined {
  const found = { seq: head.seq, hash: head.hash };
  const where =
    cp.where === 'vault'
      ? 'the vault'
      : cp.where === 'agent'
        ? 'the agent (its last entry)'
        : 'the checkpoint file';
  if (head.seq < cp.seq)
    return {
      checkpoint: cp,
      found,
      kind: 'cut',
      reason: `the log ends at seq ${head.seq}, but ${where} sealed seq ${cp.seq}: ${cp.seq - head.seq} entries are missing`,
    };
  const walk: { found?: string | undefined; broken?: string } = walked
    ? log.chainBackTo(cp.seq, head.segment)
    : { found: log.hashAt(cp.seq) };
  if (walk.broken !== undefined)
    return {
      checkpoint: cp,
      found,
      // Lines that do not link back (or a segment out of place): never a cut a record can
      // pass, whatever entry a search by seq finds (a forged line can carry any seq).
      kind: 'fork',
      reason: `the entries after seq ${cp.seq}, which ${where} sealed, do not link back to it (${walk.broken}): a line was put after it that chains to something else`,
    };
  if (walk.found !== cp.hash)
    return {
      checkpoint: cp,
      found,
      kind: 'cut',
      reason: `the entry at seq ${cp.seq} is not the one ${where} sealed: the log was changed at or before it (cut there and written again, or rewritten from an earlier entry)`,
    };
  return undefined;
}

/**
 * Which checkpoints the recorded breaks name: each `audit.gap` since the last acknowledgement in
 * the log's own segments up to the head's, its body opened with the vault's box keys, counted
 * only when its `auth` (a MAC under a key derived from the vault's seed, which the state file
 * does not hold) verifies over what it names. Anyone can seal a body to the public box key and
 * MAC a line with the state's key: a gap they write names nothing here (verify still reports
 * it). Asked only of a checkpoint the log fails to extend; read once.
 */
export function recordedBreaks(log: AuditLog, v: Vault): Recorded {
  let named: Set<string> | undefined;
  return (cp) => {
    named ??= namedByGaps(log, v);
    return named.has(`${cp.seq}:${cp.hash}`);
  };
}

function namedByGaps(log: AuditLog, v: Vault): Set<string> {
  const named = new Set<string>();
  const gaps = log.exists() ? log.unacknowledgedGapLines(log.head().segment) : [];
  if (gaps.length === 0) return named;
  const bodies = openBodies(
    v,
    gaps.map((g) => g.body),
  );
  if (!bodies) return named;
  const key = gapAuthKey(v);
  try {
    for (const body of bodies) {
      const d = (body as { details?: Record<string, unknown> } | undefined)?.details;
      if (d === undefined) continue;
      const { expectedSeq: seq, expectedHash: hash, alsoExpected: also, auth } = d;
      if (typeof seq !== 'number' || typeof hash !== 'string' || typeof auth !== 'string') continue;
      const others = typeof also === 'string' ? also : '';
      if (!gapAuthOk(key, gapSubject(seq, hash, others), auth)) continue;
      named.add(`${seq}:${hash}`);
      for (const c of others.split(',')) if (c !== '') named.add(c);
    }
  } finally {
    secureFree(key);
  }
  return named;
}

/** What a break's `auth` covers: the checkpoint it names, and the others (seq:hash,...). */
const gapSubject = (seq: number, hash: string, others: string) => `${seq}:${hash}:${others}`;

function gapAuthKey(v: Vault): SecureBuffer {
  const seed = seedOf(v);
  try {
    return gapKey(seed);
  } finally {
    secureFree(seed);
  }
}

/** A long-running writer's last line is not where it wrote it: the break's record. */
export function cutBehindRecord(
  expected: Checkpoint,
  now: Checkpoint,
): { record: AuditRecord; reason: string } {
  return agentBreak(
    expected,
    now,
    now.seq < expected.seq
      ? `the log ends at seq ${now.seq}, but the agent wrote seq ${expected.seq}: ${expected.seq - now.seq} entries are missing`
      : `the entry at seq ${expected.seq} is not the one the agent wrote: the log was changed at or before it (cut there and written again, or rewritten from an earlier entry)`,
  );
}

/** A break the agent found against its own last entry, as the log records it. */
function agentBreak(
  expected: Checkpoint,
  found: Checkpoint,
  reason: string,
): { record: AuditRecord; reason: string } {
  const b: Break = {
    checkpoint: { seq: expected.seq, hash: expected.hash, where: 'agent' },
    found: { seq: found.seq, hash: found.hash },
    kind: 'cut',
    reason,
  };
  return { record: gapRecord(b, 'the agent'), reason };
}

/**
 * A long-running writer found that what follows its last entry does not link to it (a line put
 * after it that chains to something else, or a state file naming a segment no rotation leads
 * to): the break's record, written before anything is built on the log.
 */
export function strayRecord(
  expected: Checkpoint,
  reason: string,
): { record: AuditRecord; reason: string } {
  return agentBreak(expected, expected, reason);
}

/**
 * The record of a break, as the log keeps it. With the vault, what it names is authenticated
 * (recordedBreaks counts it); without (the agent's own batches), it is reported all the same.
 */
export function gapRecord(b: Break, by: string, v?: Vault): AuditRecord {
  const others = b.others?.map((c) => `${c.seq}:${c.hash}`).join(',') ?? '';
  let auth: string | null = null;
  if (v) {
    const key = gapAuthKey(v);
    try {
      auth = gapAuth(key, gapSubject(b.checkpoint.seq, b.checkpoint.hash, others));
    } finally {
      secureFree(key);
    }
  }
  return {
    type: 'audit.gap',
    decision: 'error',
    reason: b.reason,
    details: {
      expectedSeq: b.checkpoint.seq,
      expectedHash: b.checkpoint.hash,
      checkpoint: b.checkpoint.where,
      foundSeq: b.found.seq,
      foundHash: b.found.hash,
      detectedBy: by,
      // The other checkpoints the same break leaves unextended (a record names them all).
      alsoExpected: others === '' ? null : others,
      auth,
    },
  };
}

/** Records a break that no recorded one names (findBreak with `recorded`); returns the head. */
export function recordBreak(log: AuditLog, v: Vault, b: Break, by: string): Head {
  return log.append([gapRecord(b, by, v)]);
}

export function sealFile(log: AuditLog, v: Vault, cp: Checkpoint): void {
  writeFileAtomic(log.paths.checkpoint, [v.sealState(CHECKPOINT_LABEL, encode(cp))]);
}

/**
 * Puts the head into the vault (before a save): only when it extends what the vault had, or
 * every break it finds is recorded.
 */
export function setAnchor(log: AuditLog, v: Vault, force = false): void {
  if (!log.exists()) return;
  const head = log.head();
  startAcks(v, head.seq);
  if (!force && findBreak(log, readCheckpoints(log, v), head, recordedBreaks(log, v)) !== undefined)
    return;
  anchorAt(v, head);
}

/** The vault's own checkpoint (the log's head at its last save or agent lock), if it has one. */
export function vaultAnchor(v: Vault): Checkpoint | undefined {
  const anchor = v.revealInternal(ANCHOR);
  if (!anchor) return undefined;
  try {
    return decode(anchor, 'vault');
  } finally {
    secureFree(anchor);
  }
}

/** Puts this head into the vault (before a save), checked by the caller. */
export function anchorAt(v: Vault, head: Checkpoint): void {
  const value = secureTake(encode(head));
  try {
    v.setInternal(ANCHOR, value);
  } finally {
    secureFree(value);
  }
}

/**
 * Seals the log's head in the checkpoint file. A break no record names yet is recorded first
 * (`audit.gap`, chained from the last entry there), and then its record is what is sealed: from
 * it on the log is kept as any other, and verify reports the break until a person acknowledges
 * it. Returns the break recorded, if any.
 */
export function sealCheckpoint(log: AuditLog, v: Vault, by: string): Break | undefined {
  const head = log.head();
  const recorded = recordedBreaks(log, v);
  const b = findBreak(log, readCheckpoints(log, v), head, recorded);
  if (b === undefined) {
    sealFile(log, v, head);
    return undefined;
  }
  const after = b.recorded ? head : recordBreak(log, v, b, by);
  // A fork stops the seal (findBreak); a cut, once recorded, does not, unless a fork is left.
  const left = findBreak(log, readCheckpoints(log, v), after, recordedBreaks(log, v));
  if (left === undefined) sealFile(log, v, after);
  return b;
}
