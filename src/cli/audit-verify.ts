/**
 * What `keyward audit verify` says (docs/CLI.md): its findings refused with exit 8, what was
 * checked and by whom, and a comparison with a copy shipped off the machine.
 */
import fs from 'node:fs';
import { entryHashAt, verifyAgainst, type RecordedGap, type VerifyResult } from '../audit/index.js';
import { IntegrityError, UsageError } from '../errors.js';
import { keywardHome } from '../lib/paths.js';
import { printable } from '../lib/text.js';
import { note, type Io } from './report.js';

/**
 * Said when breaks were acknowledged and nothing could tell whether the person did it: any
 * process that can write the log can write an acknowledgement (docs/AUDIT.md).
 */
export function acksLine(r: VerifyResult & { acknowledgementsChecked?: boolean }): string[] {
  if (r.acknowledgementsChecked === true || !r.gaps.some((g) => g.acknowledged)) return [];
  return ["acknowledgements not checked (needs the vault: only it knows which are the person's)"];
}

/** A verify's result: its findings refused (exit 8), else what was checked; macs: by whom. */
export function report(io: Io, r: VerifyResult, extra: string[], macs?: string): void {
  refuseFindings(r);
  const done = r.gaps.map((g) => g.seq);
  if (done.length > 0)
    note(io, `${done.length} recorded break(s), acknowledged: audit.gap at seq ${done.join(', ')}`);
  io.stdout(
    `ok: ${r.entries} entries in ${r.segments} segment(s); head seq ${r.headSeq}, sha256 ${r.headHash}\n`,
  );
  io.stdout(
    `${macs ?? (r.macsChecked ? 'MACs verified with the audit key' : 'MACs NOT checked (no audit key): the chain only')}\n`,
  );
  for (const line of extra) io.stdout(`${line}\n`);
}

/** A verify's findings, refused (exit 8): a broken link or MAC, a recorded break not acknowledged. */
function refuseFindings(r: VerifyResult): asserts r is Extract<VerifyResult, { ok: true }> {
  const open = r.gaps.filter((g) => !g.acknowledged).map((g) => g.seq);
  const recorded =
    open.length > 0
      ? ` The log also records ${open.length} break(s) a writer found, not acknowledged: audit.gap at seq ${open.join(', ')}.`
      : '';
  if (!r.ok) {
    const f = r.finding;
    const where = `${f.file}${f.line > 0 ? ` line ${f.line}` : ''}${f.seq === undefined ? '' : ` (seq ${f.seq})`}`;
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `audit log broken at ${where}: ${f.reason}.${recorded}`,
      {
        hint: f.checkpoint
          ? `${r.entries} entries before it verified; keep a copy of the log as evidence before changing anything; ${r.headSeq === undefined ? 'keyward audit init starts a new log that records the loss' : `once you have looked: keyward audit acknowledge --head ${r.headSeq}:${r.headHash}`}`
          : `${r.entries} entries before it verified; keep a copy of the log as evidence before changing anything; a broken link or MAC is not acknowledged (docs/AUDIT.md): it stays reported`,
      },
    );
  }
  if (open.length > 0)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `the log records ${open.length} break(s) a writer found (entries deleted or cut), not acknowledged: audit.gap at seq ${open.join(', ')}`,
      {
        hint: `read them with keyward audit tail; keep a copy of the log as evidence; then keyward audit acknowledge --head ${r.headSeq}:${r.headHash}`,
      },
    );
}

const NOT_VERIFIED =
  "what answered on the agent's socket did not verify this log; check it here: keyward audit verify --passphrase-file FILE";

type AgentsVerify = VerifyResult & {
  checkpointChecked: boolean;
  acknowledgementsChecked?: boolean;
};

const seqOrNone = (x: unknown): x is number | undefined =>
  x === undefined || (typeof x === 'number' && Number.isSafeInteger(x) && x >= 0);

/**
 * An agent's verify answer, as keyward's agent gives one, its words made printable; anything
 * else is refused (review: an impostor's head left out passed, and its text reached the
 * terminal raw).
 */
function agentsVerify(x: unknown): AgentsVerify {
  const o = (typeof x === 'object' && x !== null ? x : {}) as Record<string, unknown>;
  const f = (
    typeof o['finding'] === 'object' && o['finding'] !== null ? o['finding'] : {}
  ) as Record<string, unknown>;
  const gaps = Array.isArray(o['gaps']) ? (o['gaps'] as unknown[]) : undefined;
  const wellFormed =
    typeof o['ok'] === 'boolean' &&
    typeof o['macsChecked'] === 'boolean' &&
    typeof o['checkpointChecked'] === 'boolean' &&
    (o['acknowledgementsChecked'] === undefined ||
      typeof o['acknowledgementsChecked'] === 'boolean') &&
    seqOrNone(o['entries']) &&
    seqOrNone(o['headSeq']) &&
    (o['headHash'] === undefined ||
      (typeof o['headHash'] === 'string' && /^[0-9a-f]{64}$/.test(o['headHash']))) &&
    gaps !== undefined &&
    gaps.every(
      (g) =>
        typeof g === 'object' &&
        g !== null &&
        seqOrNone((g as RecordedGap).seq) &&
        typeof (g as RecordedGap).acknowledged === 'boolean',
    ) &&
    (o['ok'] === true ||
      (typeof f['file'] === 'string' &&
        typeof f['reason'] === 'string' &&
        seqOrNone(f['line']) &&
        seqOrNone(f['seq'])));
  if (!wellFormed)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      "the agent's verify answer is not one keyward's agent gives",
      { hint: NOT_VERIFIED },
    );
  if (o['ok'] === false)
    o['finding'] = {
      ...f,
      file: printable(String(f['file'])),
      reason: printable(String(f['reason'])),
    };
  return o as unknown as AgentsVerify;
}

/**
 * An agent's verify, taken only for what this process can't check without the vault: the MACs,
 * the checkpoint, which acknowledgements are the person's. Whatever answers on the agent's
 * socket may be a process of the user's in its place (found in review: a changed log passed),
 * so the chain, its recorded breaks and its length are this process's own reading, and the
 * entry the agent says it verified to must be one of this chain's.
 */
export function reportAgents(io: Io, home: string, chain: VerifyResult, said: unknown): void {
  refuseFindings(chain);
  const agent = agentsVerify(said);
  refuseFindings(agent);
  // Its head must be an entry of this chain (review: a head it left out, or one the log does
  // not hold without a hash, passed).
  const found = agent.headSeq === undefined ? undefined : entryHashAt(home, agent.headSeq);
  if (agent.headSeq !== chain.headSeq && (found === undefined || found !== agent.headHash))
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `the agent says it verified the log to seq ${agent.headSeq ?? '(none)'}, sha256 ${agent.headHash ?? '(none)'}: this log holds no such entry`,
      { hint: NOT_VERIFIED },
    );
  if (agent.headSeq === chain.headSeq && agent.headHash !== chain.headHash)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `the agent says it verified the log to seq ${agent.headSeq}, sha256 ${agent.headHash ?? '(none)'}: this log's entry there is another`,
      { hint: NOT_VERIFIED },
    );
  const macs = agent.macsChecked
    ? `MACs verified with the audit key by the agent, to seq ${agent.headSeq}`
    : 'MACs NOT checked (the agent checked none)';
  const extra = [
    agent.checkpointChecked
      ? 'checkpoint sealed in the vault matches (checked by the agent)'
      : 'checkpoint not checked (needs the vault)',
    ...acksLine(agent),
    "the chain was read here; the MACs, the checkpoint and the acknowledgements are the agent's word (--passphrase-file checks them here)",
  ];
  report(io, chain, extra, macs);
}

/**
 * The local log against a copy off the machine: every entry the copy holds must be here, the
 * same. Entries the copy lacks are said (not shipped, or dropped), not failed.
 */
export function againstCopy(io: Io, file: string): void {
  if (!fs.existsSync(file)) throw new UsageError('USAGE', `no such file: ${file}`);
  const c = verifyAgainst(keywardHome(), file);
  const list = (xs: number[]) =>
    xs.length <= 12 ? xs.join(', ') : `${xs.slice(0, 12).join(', ')} and ${xs.length - 12} more`;
  io.stdout(`the copy holds ${c.inCopy} entries\n`);
  if (c.unreadable.length > 0)
    io.stdout(
      `${c.unreadable.length} lines of the copy look like keyward's entries and can't be read: line ${list(c.unreadable)}\n`,
    );
  if (c.foreign > 0)
    io.stdout(
      `${c.foreign} keyward-like journal entries come from another user's processes: not counted\n`,
    );
  if (c.notShipped.length > 0)
    io.stdout(
      `${c.notShipped.length} local entries are not in the copy (not shipped, or dropped on the way): seq ${list(c.notShipped)}\n`,
    );
  const problems: string[] = [];
  // Before the rest: a rollback written past again leaves both entries in the copy, and so does
  // a line forged into the system log; either way one of them is not the local one.
  if (c.conflicting.length > 0)
    problems.push(
      `the copy holds two or more different entries at ${c.conflicting.length} seqs (the log was rolled back and written again from there, or lines were forged into the system log): seq ${list(c.conflicting)}`,
    );
  if (c.missingLocally.length > 0)
    problems.push(
      `${c.missingLocally.length} entries of the copy are missing here (deleted): seq ${list(c.missingLocally)}`,
    );
  if (c.changed.length > 0)
    problems.push(
      `${c.changed.length} entries differ from the copy (changed here): seq ${list(c.changed)}`,
    );
  if (problems.length > 0)
    throw new IntegrityError(
      'AUDIT_CHAIN_BROKEN',
      `the local audit log does not match the copy in ${file}: ${problems.join('; ')}`,
      {
        hint: 'keep both as evidence; the copy off the machine is the one an attacker here could not change',
      },
    );
  io.stdout('every entry of the copy is here, unchanged\n');
}
