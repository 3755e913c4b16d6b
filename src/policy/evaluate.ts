/**
 * The policy decision: a pure function of the policy, the request and the caller
 * (docs/POLICY.md, "Precedence"). First matching rule in file order decides; no match is deny.
 */
import path from 'node:path';
import picomatch from 'picomatch';
import { undeleted } from '../lib/paths.js';
import { durationMs, type ApprovalMode, type Policy, type PolicyRule } from './schema.js';

/** What keyward knows about the calling process. A fact it could not establish is undefined. */
export interface Caller {
  uid?: number | undefined;
  pid?: number | undefined;
  exe?: string | undefined;
  /**
   * The agent can't take the executable as it reads it: the caller runs in a mount namespace or
   * root of its own, or the path names another file in the agent's view. No allow rule on
   * `exe`, `exe_sha256` or `ancestor` matches it; deny and approve rules still do.
   */
  exeElsewhere?: boolean | undefined;
  /**
   * The kernel can't say this is the process that connected (no SO_PEERPIDFD: the agent read
   * whatever process has its pid now). No allow rule on who asks matches it; every deny or
   * approve rule on who asks does.
   */
  unpinned?: boolean | undefined;
  exeSha256?: string | undefined;
  cwd?: string | undefined;
  /** Parent first, then grandparent, and so on (elsewhere: as exeElsewhere, for that process). */
  ancestors?:
    | ReadonlyArray<{ pid?: number | undefined; exe?: string | undefined; elsewhere?: boolean }>
    | undefined;
  /** Loader variables its environment sets (LD_PRELOAD...); undefined when it can't be read. */
  loaderVars?: ReadonlyArray<{ name: string }> | undefined;
}

/**
 * What a request is about: a secret or a key (by name), or, through the agent, a list of names
 * (target `secrets` or `keys`) or the audit log (target `tail` or `verify`).
 */
export type RequestKind = 'secret' | 'key' | 'list' | 'audit';

export interface PolicyRequest {
  target: string;
  kind: RequestKind;
  /** What is asked: read, sign, run... (recorded and shown; rules match on target and kind). */
  action: string;
}

export type Remember =
  { scope: 'once' } | { scope: 'process' | 'executable'; forMs: number; uses: number | undefined };

export interface ApprovalNeeded {
  mode: ApprovalMode;
  remember: Remember;
  timeoutMs: number;
  message: string | undefined;
  /** webauthn: whether the authenticator must verify the person (default preferred). */
  userVerification?: 'required' | 'preferred';
  /** operator: the groups that may approve, how many distinct operators must, and whether the
   * machine's own user (operators.self) may be one of them. */
  operators?: OperatorApproval;
}

export interface OperatorApproval {
  groups: string[];
  count: number;
  allowSelf: boolean;
}

export type Decision =
  | { decision: 'allow'; rule: string; explanation: string[] }
  | {
      decision: 'approve';
      rule: string;
      approval: ApprovalNeeded;
      highValue: boolean;
      explanation: string[];
    }
  | { decision: 'deny'; rule: string | undefined; explanation: string[] };

const matchers = new Map<string, (s: string) => boolean>();
function glob(pattern: string): (s: string) => boolean {
  let m = matchers.get(pattern);
  if (!m) {
    m = picomatch(pattern, { dot: true, nonegate: true, noextglob: true });
    matchers.set(pattern, m);
  }
  return m;
}

const KIND_WORDS: Record<RequestKind | 'any', string> = {
  secret: 'secrets',
  key: 'keys',
  list: 'lists of names',
  audit: 'the audit log',
  any: 'secrets and keys',
};
const ASKED: Record<RequestKind, string> = {
  secret: 'a secret',
  key: 'a key',
  list: 'a list of names',
  audit: 'the audit log',
};

/** Why rule r does not match, or undefined when it does. */
function mismatch(r: PolicyRule, req: PolicyRequest, c: Caller): string | undefined {
  if (r.kind === 'any' ? req.kind !== 'secret' && req.kind !== 'key' : r.kind !== req.kind)
    return `it is for ${KIND_WORDS[r.kind]}, this is ${ASKED[req.kind]}`;
  if (!r.targets.some((t) => glob(t)(req.target))) return `no target of it matches ${req.target}`;
  const w = r.callers;
  if (w.uid !== undefined && c.uid !== w.uid)
    return `the caller's uid is ${c.uid ?? 'unknown'}, not ${w.uid}`;
  // A caller the kernel can't pin (no SO_PEERPIDFD) may be another process than the one read:
  // no allow by who it is, and every deny or approve by who it is holds for it (fail closed).
  const allows = r.decision === 'allow';
  const byWho = w.exe ?? w.exe_sha256 ?? w.ancestor ?? w.cwd ?? w.loader_vars;
  if (byWho !== undefined && c.unpinned === true)
    return allows
      ? "the kernel can't tell the agent which process connected (no SO_PEERPIDFD: Linux before 6.5), and an allow by who asks needs it to"
      : undefined;
  // A program updated under a running process (a new file renamed over it) shows in /proc as its
  // path and " (deleted)": a deny or approve rule still names it (found in review: an AI tool's
  // update turned off the rules on it). Never an allow: such a path is not vouched for (exeElsewhere, below).
  const named = (m: (p: string) => boolean, p: string) =>
    m(p) || (!allows && undeleted(p) !== p && m(undeleted(p)));
  if (w.exe !== undefined && (c.exe === undefined || !named(glob(w.exe), c.exe))) {
    return `the caller's executable ${c.exe ?? '(unknown)'} does not match ${w.exe}`;
  }
  // An executable the agent can't take as it reads it (a mount or user namespace or root of
  // the caller's own, where the real file may run a library of its choosing, or a path that names
  // another file) still matches a deny or approve rule, never an allow: what it claims can't
  // make a caller less restricted (as unknown loader variables, below).
  if ((w.exe ?? w.exe_sha256) !== undefined && c.exeElsewhere === true && allows) {
    return `the caller's executable ${c.exe ?? '(unknown)'} runs where the agent can't vouch for it (a mount or user namespace or root of its own, or another file by that path), and an allow needs it to`;
  }
  if (w.exe_sha256 !== undefined && c.exeSha256 !== w.exe_sha256) {
    return `the caller's executable hash ${c.exeSha256 ?? '(unknown)'} is not ${w.exe_sha256}`;
  }
  if (w.ancestor !== undefined) {
    const m = glob(w.ancestor);
    const all = c.ancestors ?? [];
    if (
      !all.some((a) => a.exe !== undefined && !(a.elsewhere === true && allows) && named(m, a.exe))
    )
      return all.some((a) => a.exe !== undefined && a.elsewhere === true && m(a.exe))
        ? `the ancestor that matches ${w.ancestor} runs where the agent can't vouch for it (a mount or user namespace or root of its own, or another file by that path), and an allow needs it to`
        : `no ancestor's executable matches ${w.ancestor}`;
  }
  if (w.loader_vars !== undefined) {
    // Unknown (the caller hid its environment) counts as present: a deny rule on them catches
    // a caller that hides, and an allow rule for clean callers doesn't take it for clean.
    const names = c.loaderVars?.map((v) => v.name);
    const present = names === undefined || names.length > 0;
    if (w.loader_vars === 'absent' && present)
      return names === undefined
        ? "the caller's environment can't be read"
        : `the caller's environment sets ${names.join(', ')}`;
    if (w.loader_vars === 'present' && !present)
      return "the caller's environment sets no loader variable";
  }
  if (w.cwd !== undefined) {
    const rel = c.cwd === undefined ? '..' : path.relative(w.cwd, c.cwd);
    // Outside: '..' or '../x'; a directory named '..repo' inside is inside.
    if (rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel))
      return `the caller's directory ${c.cwd ?? '(unknown)'} is not under ${w.cwd}`;
  }
  return undefined;
}

export function evaluate(policy: Policy, req: PolicyRequest, caller: Caller): Decision {
  const explanation: string[] = [];
  for (const r of policy.rules) {
    const why = mismatch(r, req, caller);
    if (why !== undefined) {
      explanation.push(`rule ${r.name} does not match: ${why}`);
      continue;
    }
    explanation.push(`rule ${r.name} matches and decides: ${r.decision}`);
    if (r.decision === 'allow') return { decision: 'allow', rule: r.name, explanation };
    if (r.decision === 'deny') return { decision: 'deny', rule: r.name, explanation };
    const a = r.approve;
    if (!a)
      return {
        decision: 'deny',
        rule: r.name,
        explanation: [...explanation, 'approve without a mode: denied'],
      };
    const remember: Remember =
      a.remember === 'once' || r.high_value
        ? { scope: 'once' }
        : { scope: a.remember.scope, forMs: durationMs(a.remember.for), uses: a.remember.uses };
    return {
      decision: 'approve',
      rule: r.name,
      approval: {
        mode: a.mode,
        remember,
        timeoutMs: durationMs(a.timeout),
        message: a.message,
        ...(a.mode === 'webauthn' ? { userVerification: a.user_verification ?? 'preferred' } : {}),
        ...(a.mode === 'operator'
          ? {
              operators: {
                groups: a.groups ?? [],
                count: a.count ?? 1,
                allowSelf: a.allow_self === true,
              },
            }
          : {}),
      },
      highValue: r.high_value,
      explanation,
    };
  }
  explanation.push('no rule matches: denied (nothing matching means deny)');
  return { decision: 'deny', rule: undefined, explanation };
}

/**
 * The decision once the approval channels at hand are known. `approve` stays `approve` only when
 * some channel can give the approval the rule asks for; otherwise it is an immediate deny with
 * that reason. It never becomes allow.
 */
export function withChannels(d: Decision, channels: ReadonlySet<ApprovalMode>): Decision {
  if (d.decision !== 'approve' || channels.has(d.approval.mode)) return d;
  return {
    decision: 'deny',
    rule: d.rule,
    explanation: [
      ...d.explanation,
      `no approval channel can give ${d.approval.mode} approval here, so the request is denied`,
    ],
  };
}
