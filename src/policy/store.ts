/**
 * Where the policy lives, how a version is applied, and how the one in force is loaded
 * (docs/POLICY.md, "Managing it" and "A policy edited behind keyward's back").
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { IntegrityError, KeywardError } from '../errors.js';
import { ensurePrivateDir, writeFileAtomic } from '../lib/files.js';
import type { AuditSink, Vault } from '../vault/index.js';
import { parsePolicy, type Policy, type PolicyProblem } from './schema.js';

export const DEFAULT_POLICY = `# keyward policy (docs/POLICY.md). The first matching rule decides; nothing matching is deny.
# The default: nothing is allowed silently. Every secret and key needs a person's confirmation,
# remembered for the asking process for 10 minutes.
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
`;

const SEAL_LABEL = 'policy-applied';

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
export function checkPolicyText(text: string, source: string): Policy {
  const r = parsePolicy(text);
  if (!r.ok) throw new PolicyInvalidError(source, r.problems);
  return r.policy;
}

export interface HistoryEntry {
  version: number;
  file: string;
  sha256: string;
  appliedAt: string;
  rules: number;
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
  return names.map((n) => {
    const file = path.join(p.history, n);
    const text = fs.readFileSync(file, 'utf8');
    const parsed = parsePolicy(text);
    return {
      version: Number(n.slice(0, 6)),
      file,
      sha256: sha256Hex(text),
      appliedAt: fs.statSync(file).mtime.toISOString(),
      rules: parsed.ok ? parsed.policy.rules.length : -1,
    };
  });
}

export interface PolicyDiff {
  added: string[];
  removed: string[];
  modified: string[];
  reordered: boolean;
  unlockChanged: boolean;
  summary: string;
}

export function diffPolicies(a: Policy, b: Policy): PolicyDiff {
  const byName = (p: Policy) => new Map(p.rules.map((r) => [r.name, JSON.stringify(r)]));
  const A = byName(a);
  const B = byName(b);
  const added = [...B.keys()].filter((n) => !A.has(n));
  const removed = [...A.keys()].filter((n) => !B.has(n));
  const modified = [...B.keys()].filter((n) => A.has(n) && A.get(n) !== B.get(n));
  const common = (p: Policy) => p.rules.map((r) => r.name).filter((n) => A.has(n) && B.has(n));
  const reordered = common(a).join('\n') !== common(b).join('\n');
  const unlockChanged = JSON.stringify(a.unlock) !== JSON.stringify(b.unlock);
  const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? '' : 's'}`;
  const parts = [
    `+${plural(added.length, 'rule')}`,
    `-${plural(removed.length, 'rule')}`,
    `~${modified.length} modified`,
  ];
  if (reordered) parts.push('order changed (first match decides)');
  if (unlockChanged) parts.push('unlock window changed');
  return { added, removed, modified, reordered, unlockChanged, summary: parts.join(', ') };
}

function sealApplied(p: PolicyPaths, v: Vault, version: number, sha: string): void {
  writeFileAtomic(p.applied, [v.sealState(SEAL_LABEL, Buffer.from(`${version}\n${sha}`, 'utf8'))]);
}

function openApplied(p: PolicyPaths, v: Vault): { version: number; sha256: string } | undefined {
  let sealed: Buffer;
  try {
    sealed = fs.readFileSync(p.applied);
  } catch {
    return undefined;
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

export interface Applied {
  version: number;
  sha256: string;
  previousSha256: string | undefined;
  summary: string;
}

/**
 * Installs a policy: validated, kept verbatim as the next history version, written to
 * policy.yaml atomically, its number and hash sealed in the vault, and recorded as
 * policy.changed before policy.yaml changes.
 */
export function applyPolicy(
  home: string,
  text: string,
  source: string,
  v: Vault,
  audit: AuditSink,
): Applied {
  const next = checkPolicyText(text, source);
  const p = policyPaths(home);
  ensurePrivateDir(p.dir);
  ensurePrivateDir(p.history);
  const history = readHistory(home);
  const last = history.at(-1);
  const previous = last ? parsePolicy(fs.readFileSync(last.file, 'utf8')) : undefined;
  const diff = previous?.ok
    ? diffPolicies(previous.policy, next)
    : diffPolicies({ ...next, rules: [] }, next);
  const version = (last?.version ?? 0) + 1;
  const sha = sha256Hex(text);
  audit.record({
    type: 'policy.changed',
    decision: 'info',
    reason: diff.summary,
    details: {
      version,
      sha256: sha,
      previousSha256: last?.sha256 ?? null,
      source: path.basename(source),
    },
  });
  writeFileAtomic(path.join(p.history, `${String(version).padStart(6, '0')}.yaml`), [
    Buffer.from(text, 'utf8'),
  ]);
  writeFileAtomic(p.file, [Buffer.from(text, 'utf8')]);
  sealApplied(p, v, version, sha);
  return { version, sha256: sha, previousSha256: last?.sha256, summary: diff.summary };
}

export interface Loaded {
  policy: Policy;
  version: number | undefined;
  sha256: string;
  /** policy.yaml differs from the applied version, which is what is in force. */
  drift: boolean;
  /** The sealed record was checked (the vault was open). */
  verified: boolean;
}

/**
 * The policy in force: the last applied version. When policy.yaml was edited behind keyward's
 * back, that edit is ignored and reported (drift). With the vault open, the applied version is
 * checked against its sealed hash (fail closed on a mismatch). Every load is recorded.
 */
export function loadPolicy(
  home: string,
  v: Vault | undefined,
  audit: AuditSink | undefined,
): Loaded {
  const p = policyPaths(home);
  const last = readHistory(home).at(-1);
  let loaded: Loaded;
  if (!last) {
    // No policy applied yet (a vault made before policies): the safe default, in memory.
    loaded = {
      policy: checkPolicyText(DEFAULT_POLICY, 'the default policy'),
      version: undefined,
      sha256: sha256Hex(DEFAULT_POLICY),
      drift: fs.existsSync(p.file),
      verified: false,
    };
  } else {
    const sealed = v ? openApplied(p, v) : undefined;
    if (v && (!sealed || sealed.version !== last.version || sealed.sha256 !== last.sha256)) {
      throw tampered(
        sealed
          ? `policy history version ${last.version} (${last.sha256.slice(0, 12)}) is not the applied version ${sealed.version} (${sealed.sha256.slice(0, 12)})`
          : 'the policy history has no sealed record of the applied version',
      );
    }
    const text = fs.readFileSync(last.file, 'utf8');
    let live: string | undefined;
    try {
      live = fs.readFileSync(p.file, 'utf8');
    } catch {
      live = undefined;
    }
    loaded = {
      policy: checkPolicyText(text, last.file),
      version: last.version,
      sha256: last.sha256,
      drift: live === undefined || sha256Hex(live) !== last.sha256,
      verified: v !== undefined,
    };
  }
  audit?.record({
    type: 'policy.loaded',
    decision: loaded.drift ? 'error' : 'info',
    ...(loaded.drift
      ? { reason: 'policy.yaml differs from the applied version; the applied version is in force' }
      : {}),
    details: {
      version: loaded.version ?? null,
      sha256: loaded.sha256,
      drift: loaded.drift,
      verified: loaded.verified,
    },
  });
  return loaded;
}

/** For `init`: the default policy as version 1, sealed. Any previous policy files are moved aside. */
export function installDefaultPolicy(
  home: string,
  v: Vault,
  audit: AuditSink,
  stamp: string,
): void {
  const p = policyPaths(home);
  for (const old of [p.dir, p.file]) {
    if (fs.existsSync(old)) fs.renameSync(old, `${old}.bak-${stamp}`);
  }
  applyPolicy(home, DEFAULT_POLICY, 'the default policy', v, audit);
}
