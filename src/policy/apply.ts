/**
 * Applying a policy (docs/POLICY.md, "Managing it"): what is in force before, as far as it can be
 * verified; what would change, for the person to see; the write itself.
 */
import path from 'node:path';
import fs from 'node:fs';
import { KeywardError } from '../errors.js';
import { ensurePrivateDir, writeFileAtomic } from '../lib/files.js';
import type { AuditSink, Vault } from '../vault/index.js';
import { diffPolicies, type PolicyDiff } from './diff.js';
import { parsePolicy } from './parse-thread.js';
import type { Policy } from './schema.js';
import {
  checkPolicyText,
  DEFAULT_POLICY,
  lastHistory,
  openApplied,
  policyPaths,
  readApplied,
  readOptional,
  sha256Hex,
  storeApplied,
} from './store.js';

export interface Applied {
  version: number;
  sha256: string;
  previousSha256: string | undefined;
  summary: string;
}

/**
 * What is in force before an apply, as far as it can be verified: the vault's copy (whatever the
 * files say); for a vault from before the policy was kept in it, the newest history file only
 * when it is the version and hash sealed then. Anything else is not known (`policy` undefined):
 * the changes are then shown against the defaults, every field. Versions are numbered from what
 * the vault holds: a history file planted with a high number moves nothing.
 */
function inForce(
  home: string,
  v: Vault,
): { policy: Policy | undefined; sha256: string | null; version: number; why?: string } {
  const inVault = readApplied(v);
  if (inVault) {
    const r = parsePolicy(inVault.text);
    return r.ok
      ? { policy: r.policy, sha256: inVault.sha256, version: inVault.version }
      : {
          policy: undefined,
          sha256: inVault.sha256,
          version: inVault.version,
          why: 'the policy in force does not parse with this version of keyward',
        };
  }
  let legacy: { version: number; sha256: string } | undefined;
  try {
    legacy = openApplied(policyPaths(home), v);
  } catch {
    legacy = undefined;
  }
  const last = lastHistory(home);
  const text = last ? readOptional(last.file) : undefined;
  if (legacy && last && text !== undefined && last.version === legacy.version) {
    const sha = sha256Hex(text);
    const r = sha === legacy.sha256 ? parsePolicy(text) : undefined;
    if (r?.ok) return { policy: r.policy, sha256: sha, version: legacy.version };
  }
  // Numbered past the files too: the new version must be the history's newest, or the files
  // would disagree with the vault from the start.
  // A file planted near the last number would leave no room for the next apply: then the
  // files are drift, and the number comes from the sealed record alone.
  const files = last !== undefined && last.version < 900_000 ? last.version : 0;
  return {
    policy: undefined,
    sha256: null,
    version: Math.max(legacy?.version ?? 0, files),
    why: 'the policy in force could not be verified (the vault keeps none, or the history is not what was sealed)',
  };
}

/** The baseline when nothing in force is known: every field of the new policy is a change. */
function nothingKnown(): Policy {
  const r = parsePolicy('version: 1\nrules: []\n');
  if (!r.ok) throw new Error('the empty policy does not parse');
  return r.policy;
}

/**
 * What `policy apply` would change, against the policy in force (the vault's copy): shown to the
 * person before anything is written. `inForce` binds the write to what was shown.
 */
export function previewApply(
  home: string,
  text: string,
  source: string,
  v: Vault,
): { diff: PolicyDiff; inForce: string | null; unknown?: string } {
  const next = checkPolicyText(text, source);
  const before = inForce(home, v);
  return {
    diff: diffPolicies(before.policy ?? nothingKnown(), next),
    inForce: before.sha256,
    ...(before.why === undefined ? {} : { unknown: before.why }),
  };
}

/** The sha256 of the policy in force (the vault's copy), or null before the first apply. */
export function inForceSha(home: string, v: Vault): string | null {
  return readApplied(v)?.sha256 ?? inForce(home, v).sha256;
}

/**
 * Installs a policy: validated, recorded as policy.changed, kept verbatim as the next history
 * version and in policy.yaml, and stored in the vault, which is saved: the caller holds the
 * vault's write lock (useVault 'write', or init). The vault's copy is what is in force.
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
  const before = inForce(home, v);
  const diff = diffPolicies(before.policy ?? nothingKnown(), next);
  const version = before.version + 1;
  if (version > 999_999)
    throw new KeywardError('POLICY_INVALID', 'the policy history has reached version 999999');
  const sha = sha256Hex(text);
  audit.record({
    type: 'policy.changed',
    decision: 'info',
    reason: diff.summary,
    details: {
      version,
      sha256: sha,
      previousSha256: before.sha256,
      source: path.basename(source),
    },
  });
  writeFileAtomic(path.join(p.history, `${String(version).padStart(6, '0')}.yaml`), [
    Buffer.from(text, 'utf8'),
  ]);
  writeFileAtomic(p.file, [Buffer.from(text, 'utf8')]);
  storeApplied(v, { version, sha256: sha, text });
  v.save();
  // The hash-only seal of older versions would only go stale.
  fs.rmSync(p.applied, { force: true });
  return {
    version,
    sha256: sha,
    previousSha256: before.sha256 ?? undefined,
    summary: diff.summary,
  };
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
