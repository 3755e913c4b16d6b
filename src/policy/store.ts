/**
 * Where the policy lives, how a version is applied, and how the one in force is loaded
 * (docs/POLICY.md, "Managing it" and "A policy edited behind keyward's back").
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { IntegrityError, KeywardError } from '../errors.js';
import { readOwnFile } from '../lib/files.js';
import { FULL_CHECK_EVERY, WatchedStamp } from '../lib/watch.js';
import { secureFree, secureTake } from '../lib/secure.js';
import type { AuditSink, Vault } from '../vault/index.js';
import { parsePolicies, parsePolicy } from './parse-thread.js';
import type { ParseResult, Policy, PolicyProblem } from './schema.js';

export const DEFAULT_POLICY = `# keyward policy (docs/POLICY.md). The first matching rule decides; nothing matching is deny.
# The default: no secret or key is released silently. Every one needs a person's confirmation,
# remembered for the asking process for 10 minutes. Names (never values) may be listed and the
# audit log verified through the agent without asking; reading the log's entries (who asked for
# what) is confirmed like a release.
version: 1
unlock:
  idle_timeout: 15m
  max_lifetime: 4h
rules:
  - name: default-secrets
    targets: ["**"]
    kind: secret
    decision: approve
    approve:
      mode: confirm
      remember: { scope: process, for: 10m }
  - name: default-keys
    targets: ["**"]
    kind: key
    decision: approve
    approve:
      mode: confirm
      remember: { scope: process, for: 10m }
  - name: default-lists
    targets: ["**"]
    kind: list
    decision: allow
  - name: default-audit-verify
    targets: [verify]
    kind: audit
    decision: allow
  - name: default-audit
    targets: ["**"]
    kind: audit
    decision: approve
    approve:
      mode: confirm
      remember: { scope: process, for: 10m }
`;

/** Vaults before 0.2 sealed only the applied version's number and hash, in policy/applied. */
const SEAL_LABEL = 'policy-applied';
/**
 * The applied policy itself, kept in the vault (an internal record, docs/FORMAT.md): what is in
 * force can't be changed, downgraded or deleted without the passphrase, whatever happens to the
 * files beside it.
 */
const APPLIED_RECORD = '@policy/applied';
const RECORD_MAGIC = 'keyward-policy 1';

export interface PolicyPaths {
  file: string;
  dir: string;
  history: string;
  applied: string;
}

export function policyPaths(home: string): PolicyPaths {
  const dir = path.join(home, 'policy');
  return {
    file: path.join(home, 'policy.yaml'),
    dir,
    history: path.join(dir, 'history'),
    applied: path.join(dir, 'applied'),
  };
}

export const sha256Hex = (text: string): string =>
  createHash('sha256').update(text, 'utf8').digest('hex');

export class PolicyInvalidError extends KeywardError {
  constructor(
    readonly source: string,
    readonly problems: PolicyProblem[],
  ) {
    super(
      'POLICY_INVALID',
      `${source} is not a valid policy (${problems.length} problem${problems.length === 1 ? '' : 's'})`,
      {
        hint: `fix the lines above, then: keyward policy check ${source}`,
      },
    );
  }
}

/** Parses or throws PolicyInvalidError carrying every problem with its position. */
export function checkPolicyText(text: string, source: string, lint = true): Policy {
  const r = parsePolicy(text);
  if (!r.ok) throw new PolicyInvalidError(source, r.problems);
  // What is valid but would not do what it reads as is refused where a person applies or checks
  // it; a policy applied before (loaded with lint false) is enforced as it was.
  if (lint && r.lint.length > 0) throw new PolicyInvalidError(source, r.lint);
  return r.policy;
}

export interface HistoryEntry {
  version: number;
  file: string;
  sha256: string;
  appliedAt: string;
  rules: number;
}

/** The newest history file, its version and hash, without parsing any policy. */
export function lastHistory(home: string): { version: number; file: string } | undefined {
  const p = policyPaths(home);
  let names: string[];
  try {
    names = fs.readdirSync(p.history).filter((n) => /^\d{6}\.yaml$/.test(n));
  } catch {
    return undefined;
  }
  const last = names.sort().at(-1);
  return last ? { version: Number(last.slice(0, 6)), file: path.join(p.history, last) } : undefined;
}

/**
 * A digest of what the policy files hold now (policy.yaml, the history's names and its last
 * file): two loads that found the same drift in the same bytes say the same thing.
 */
export function policyFilesDigest(home: string): string {
  const p = policyPaths(home);
  const h = createHash('sha256');
  const add = (f: string | undefined) => {
    try {
      // Never a FIFO or a device in a file's place (readOwnFile refuses them: '-' then).
      h.update(f === undefined ? '-' : readOwnFile(f, { maxBytes: 1 << 20 }));
    } catch {
      h.update('-');
    }
    h.update('\0');
  };
  add(p.file);
  let names: string[] = [];
  try {
    names = fs.readdirSync(p.history).sort();
  } catch {
    // none
  }
  h.update(names.join('/'));
  h.update('\0');
  add(lastHistory(home)?.file);
  return h.digest('hex');
}

export function readHistory(home: string): HistoryEntry[] {
  const p = policyPaths(home);
  let names: string[];
  try {
    names = fs
      .readdirSync(p.history)
      .filter((n) => /^\d{6}\.yaml$/.test(n))
      .sort();
  } catch {
    return [];
  }
  const files = names.map((n) => path.join(p.history, n));
  const texts = files.map((f) => readOwnFile(f).toString('utf8'));
  const parsed = parsePolicies(texts);
  return names.map((n, i) => {
    const file = files[i] as string;
    const text = texts[i] as string;
    const r = parsed[i] as ParseResult;
    return {
      version: Number(n.slice(0, 6)),
      file,
      sha256: sha256Hex(text),
      appliedAt: fs.statSync(file).mtime.toISOString(),
      rules: r.ok ? r.policy.rules.length : -1,
    };
  });
}

/** The applied policy as kept in the vault: its version, hash and text. */
export interface SealedPolicy {
  version: number;
  sha256: string;
  text: string;
}

export function storeApplied(v: Vault, sealed: SealedPolicy): void {
  const record = secureTake(
    Buffer.from(`${RECORD_MAGIC}\n${sealed.version}\n${sealed.sha256}\n${sealed.text}`, 'utf8'),
  );
  try {
    v.setInternal(APPLIED_RECORD, record);
  } finally {
    secureFree(record);
  }
}

/** The applied policy in the vault, or undefined when this vault never had one stored. */
export function readApplied(v: Vault): SealedPolicy | undefined {
  const record = v.revealInternal(APPLIED_RECORD);
  if (!record) return undefined;
  try {
    // The record is authenticated by the vault; its shape is checked all the same.
    const text = Buffer.from(record).toString('utf8');
    const m = /^keyward-policy 1\n(\d{1,9})\n([0-9a-f]{64})\n/.exec(text);
    const body = m ? text.slice(m[0].length) : '';
    if (!m || sha256Hex(body) !== m[2])
      throw tampered('the applied policy kept in the vault is malformed');
    return { version: Number(m[1]), sha256: m[2] ?? '', text: body };
  } finally {
    secureFree(record);
  }
}

export function openApplied(
  p: PolicyPaths,
  v: Vault,
): { version: number; sha256: string } | undefined {
  let sealed: Buffer;
  try {
    sealed = readOwnFile(p.applied);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw tampered(`the sealed record of the applied policy (${p.applied}) can't be read`);
  }
  const plain = v.openState(SEAL_LABEL, sealed);
  const m = plain ? /^(\d+)\n([0-9a-f]{64})$/.exec(plain.toString('utf8')) : null;
  if (!m) throw tampered('the sealed record of the applied policy does not verify');
  return { version: Number(m[1]), sha256: m[2] ?? '' };
}

function tampered(why: string): IntegrityError {
  return new IntegrityError('POLICY_TAMPERED', why, {
    hint: 'someone changed keyward policy files directly; check policy/history, then apply a policy you trust',
  });
}

export interface Loaded {
  policy: Policy;
  /** The policy's text as applied (what `policy show` prints). */
  text: string;
  version: number | undefined;
  sha256: string;
  /** The files beside the vault differ from the policy in force (which is the applied one). */
  drift: boolean;
  /** What differs, one sentence each (empty without drift). */
  driftReasons: string[];
  /** The policy in force was read from the vault (or checked against it). */
  verified: boolean;
  /** The vault predates keeping the policy in it: only its hash is sealed (re-apply to fix). */
  legacy: boolean;
}

export function readOptional(file: string): string | undefined {
  try {
    return readOwnFile(file).toString('utf8');
  } catch {
    return undefined;
  }
}

/** How the files compare with the applied policy: one sentence per difference. */
function differences(home: string, applied: { version: number; sha256: string }): string[] {
  const p = policyPaths(home);
  const reasons: string[] = [];
  const last = lastHistory(home);
  const lastText = last ? readOptional(last.file) : undefined;
  const lastSha = lastText === undefined ? '' : sha256Hex(lastText);
  if (!last || lastText === undefined) reasons.push('the policy history is missing');
  else if (last.version !== applied.version || lastSha !== applied.sha256)
    reasons.push(
      `the policy history ends at version ${last.version} (${lastSha.slice(0, 12)}), not at the applied version ${applied.version} (${applied.sha256.slice(0, 12)})`,
    );
  const live = readOptional(p.file);
  if (live === undefined) reasons.push('policy.yaml is missing');
  else if (sha256Hex(live) !== applied.sha256)
    reasons.push('policy.yaml differs from the applied version');
  return reasons;
}

/**
 * The policy in force. With the vault open: the applied policy kept in it, whatever the files
 * say; files that differ (edited, replaced by an older version, deleted) change no decision and
 * are reported as drift (`policy.drift`). A vault with neither its applied policy nor (from
 * before it kept one) the sealed record of it is refused: never the default in its place.
 * Without the vault (commands that need no passphrase): the files, unverified. Every load is
 * recorded.
 */
export function loadPolicy(
  home: string,
  v: Vault | undefined,
  audit: AuditSink | undefined,
): Loaded {
  const p = policyPaths(home);
  const sealed = v ? readApplied(v) : undefined;
  let loaded: Loaded;
  if (sealed) {
    const reasons = differences(home, sealed);
    loaded = {
      policy: checkPolicyText(sealed.text, 'the applied policy kept in the vault', false),
      text: sealed.text,
      version: sealed.version,
      sha256: sealed.sha256,
      drift: reasons.length > 0,
      driftReasons: reasons,
      verified: true,
      legacy: false,
    };
  } else {
    const last = readHistory(home).at(-1);
    const legacy = v ? openApplied(p, v) : undefined;
    if (v && legacy) {
      // A vault from before the policy was kept in it: the history, checked against the hash
      // sealed then. Nothing else can be trusted, so a mismatch is refused (fail closed).
      if (!last || legacy.version !== last.version || legacy.sha256 !== last.sha256) {
        throw tampered(
          last
            ? `policy history version ${last.version} (${last.sha256.slice(0, 12)}) is not the applied version ${legacy.version} (${legacy.sha256.slice(0, 12)})`
            : `the policy history is missing; the applied version was ${legacy.version}`,
        );
      }
    }
    if (v && !legacy) {
      // A vault keeps the policy applied with it (init applies the default); one from before
      // that kept its hash in policy/applied. Neither here means that file was deleted (or the
      // vault is older than any policy): the default would put a deny rule's secrets behind a
      // confirmation. Refused; applying a policy with the passphrase is the way on.
      throw tampered(
        `this vault keeps no applied policy, and the sealed record of one (${p.applied}) is missing`,
      );
    } else if (last) {
      const text = readOwnFile(last.file).toString('utf8');
      // What is enforced is what was checked: the file, read again, must be the text hashed
      // above (found in review: a file renamed in between, and back after, was obeyed while
      // the record said the sealed hash was verified).
      if (sha256Hex(text) !== last.sha256)
        throw tampered(`policy history version ${last.version} changed while it was read`);
      const live = readOptional(p.file);
      const reasons =
        live === undefined
          ? ['policy.yaml is missing']
          : sha256Hex(live) !== last.sha256
            ? ['policy.yaml differs from the applied version']
            : [];
      loaded = {
        policy: checkPolicyText(text, last.file, false),
        text,
        version: last.version,
        sha256: last.sha256,
        drift: reasons.length > 0,
        driftReasons: reasons,
        verified: v !== undefined,
        legacy: v !== undefined,
      };
    } else {
      loaded = defaultLoaded(fs.existsSync(p.file) ? ['policy.yaml was never applied'] : [], false);
    }
  }
  audit?.record({
    type: 'policy.loaded',
    decision: loaded.drift ? 'error' : 'info',
    ...(loaded.drift
      ? {
          reason:
            'the policy files differ from the applied version; the applied version is in force',
        }
      : {}),
    details: {
      version: loaded.version ?? null,
      sha256: loaded.sha256,
      drift: loaded.drift,
      verified: loaded.verified,
    },
  });
  if (loaded.drift && loaded.verified)
    audit?.record({
      type: 'policy.drift',
      decision: 'error',
      reason: loaded.driftReasons.join('; '),
      details: { version: loaded.version ?? null, sha256: loaded.sha256 },
    });
  return loaded;
}

function defaultLoaded(reasons: string[], verified: boolean): Loaded {
  return {
    policy: checkPolicyText(DEFAULT_POLICY, 'the default policy'),
    text: DEFAULT_POLICY,
    version: undefined,
    sha256: sha256Hex(DEFAULT_POLICY),
    drift: reasons.length > 0,
    driftReasons: reasons,
    verified,
    legacy: false,
  };
}

/**
 * What the agent watches to know when to load the policy again: the files (for drift) and the
 * vault's generation (for the applied policy itself).
 */
/** The history directory's stamp and the last entry it held then, per home (policyStamp). */
const lastSeen = new Map<
  string,
  { dir: string; last: { version: number; file: string } | undefined }
>();

/** What the tests attack: the watch's own full-check interval (lib/watch.ts). */
export const POLICY_FULL_CHECK_EVERY = FULL_CHECK_EVERY;

/** Per home: the policy files' stamp, taken again when its watch reports a change. */
const watched = new Map<string, WatchedStamp>();

/**
 * The policy files' stamp (for drift: the vault decides). While the watch (lib/watch.ts) on what
 * the stamp is made of (policy.yaml, the history's last entry, the history directory) and on
 * the directories above them up to home has seen nothing, the last stamp stands, and every
 * POLICY_FULL_CHECK_EVERY-th call stats all the same; three stats a request were ~10% of the
 * agent's time at concurrency 8.
 */
export function policyStamp(home: string): string {
  let w = watched.get(home);
  if (!w) {
    const p = policyPaths(home);
    w = new WatchedStamp(
      () => {
        const last = lastSeen.get(home)?.last?.file;
        return [home, p.dir, p.history, p.file, ...(last ? [last] : [])].filter((f) =>
          fs.existsSync(f),
        );
      },
      () => statPolicy(home),
    );
    watched.set(home, w);
  }
  return w.get();
}

function statPolicy(home: string): string {
  const p = policyPaths(home);
  // ctime too: touch can set mtime back, not ctime.
  const stamp = (f: string) => {
    const st = fs.statSync(f, { throwIfNoEntry: false, bigint: true });
    return st ? `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}` : '-';
  };
  // A directory's ctime and mtime move with every entry made, removed or renamed in it: while
  // its stamp holds, its last entry is the one read before (no readdir per request).
  const dir = stamp(p.history);
  const seen = lastSeen.get(home);
  const last = seen && seen.dir === dir ? seen.last : lastHistory(home);
  lastSeen.set(home, { dir, last });
  return [stamp(p.file), dir, last ? stamp(last.file) : '-'].join('|');
}
