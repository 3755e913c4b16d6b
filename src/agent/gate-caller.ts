/**
 * The caller as the gate's approvals see it (gate.ts, gate-approval.ts): whom a remembered
 * approval belongs to, how a waiting request describes who asks (its hash, or why it has none),
 * what else one approval of a run covers, and whether a yes still stands under a policy applied
 * while it was asked.
 */
import type { RequesterRef } from '../approval/index.js';
import { KeywardError } from '../errors.js';
import { evaluate, type Decision, type Policy, type PolicyRequest } from '../policy/index.js';
import { describeCaller, type ProcessIdentity } from './identity.js';
import { quote } from '../lib/text.js';
import type { Peer } from './peer.js';
import type { GateRequest } from './gate-types.js';

/**
 * Whom a remembered approval belongs to, or undefined when it can't be remembered for this
 * caller. An executable grant: that executable's hash. A process grant: the process (pid and
 * start time) running that very executable (file and hash) in that very program run (its
 * program handle, peer.ts). After an exec, into anything (the same interpreter with another
 * script included), the grant is not the new program's; a process that hid before the agent
 * saw it, or whose executable it can't vouch for (identity.ts elsewhere), gets no grant at all.
 */
export function grantHolder(
  scope: 'once' | 'process' | 'executable',
  caller: Peer,
): string | undefined {
  const { id } = caller;
  // An environment that could not be read may hold any loader variable: no grant holds for it.
  // Nor for an executable the agent can't vouch for as it reads it (a namespace or root of the
  // caller's own, where the same file may run a library of its choosing): a grant is an allow.
  if (
    scope === 'once' ||
    id.hidden ||
    id.exeElsewhere === true ||
    id.unpinned === true ||
    id.exeSha256 === undefined ||
    id.loaderVars === undefined
  )
    return undefined;
  // The loader variables are part of what was approved: a grant to a clean git is not a grant
  // to git started with LD_PRELOAD, nor to a JAVA_TOOL_OPTIONS whose value the prompt did not
  // show (found in review: the key held only the names of those), cut, or left out: the digest
  // is of every one, whole.
  if (id.loaderDigest === undefined) return undefined;
  const loaders = id.loaderDigest;
  if (scope === 'executable') return `${id.exeSha256}:${loaders}`;
  if (!caller.program || id.startTime === undefined || id.exeFile === undefined) return undefined;
  // The handle's serial: a program exec'd in the same process gets a new handle, even when it
  // is the same interpreter running another script.
  return `${id.pid}:${id.startTime}:${id.exeFile}:${id.exeSha256}:${caller.program.serial}:${loaders}`;
}

/**
 * A use confirmed each time (a key added with ssh-add -c, a forwarded agent's request): whatever
 * the policy decided but a denial, a person is asked, and the answer is for this use only.
 */
export function confirmEachUse(evaluated: Decision, why: string): Decision {
  if (evaluated.decision === 'deny') return evaluated;
  return {
    decision: 'approve',
    rule: evaluated.rule,
    explanation: [...evaluated.explanation, why],
    highValue: evaluated.decision === 'approve' && evaluated.highValue,
    approval:
      evaluated.decision === 'approve'
        ? { ...evaluated.approval, remember: { scope: 'once' } }
        : { mode: 'confirm', remember: { scope: 'once' }, timeoutMs: 60_000, message: undefined },
  };
}

/** The rule named `rule` as text, to compare word for word ("null" when the policy has none). */
export function ruleText(p: Policy, rule: string | undefined): string {
  return JSON.stringify(p.rules.find((r) => r.name === rule) ?? null);
}

/** Whether the rule named `rule` is the same in both policies, word for word (or in neither). */
export function sameRule(a: Policy, b: Policy, rule: string | undefined): boolean {
  return a === b || ruleText(a, rule) === ruleText(b, rule);
}

/**
 * Why approvals given one rule at a time (a run's secrets: `rules`, each secret's deciding rule
 * then) no longer stand under the policy in force `now`, or undefined: a secret now denied,
 * decided by another rule, or by its rule changed since `asked` (word for word).
 */
export function rulesMoved(
  now: Policy,
  asked: Policy,
  rules: ReadonlyMap<string, string | null>,
  decide: (name: string) => { decision: string; rule: string | undefined },
): string | undefined {
  if (now === asked) return undefined;
  for (const [name, rule] of rules) {
    const d = decide(name);
    if (d.decision === 'deny' || (d.rule ?? null) !== rule || !sameRule(now, asked, d.rule))
      return `the policy changed while the run waited, and no longer gives ${quote(name)} by rule ${rule ?? '(none)'}`;
  }
  return undefined;
}

/** Whether target was shown to the person with an approval of a run under this very rule. */
export function shownTogether(
  together: GateRequest['together'],
  rule: string,
  target: string,
  policy: Policy,
): boolean {
  return (
    together?.approved.get(rule)?.has(target) === true &&
    together.texts?.get(rule) === ruleText(policy, rule)
  );
}

/** A run's approval under rule given: the targets the person was shown, and the rule's text. */
export function noteShown(
  together: NonNullable<GateRequest['together']>,
  rule: string,
  shown: readonly string[],
  policy: Policy,
): void {
  together.approved.set(rule, new Set([...(together.approved.get(rule) ?? []), ...shown]));
  (together.texts ??= new Map()).set(rule, ruleText(policy, rule));
}

/**
 * Where the deciding rule binds its value, and this request is not there, or undefined: a
 * `proxy_only` rule gives it to a run's proxy only, and a value going back to an MCP client needs
 * `mcp_inline` (checked before the gate too, release.ts; again here, under the policy this
 * decision is of: one applied while the caller's hash was taken may have another rule).
 */
export function boundRefusal(
  rule: Policy['rules'][number] | undefined,
  req: GateRequest,
  name: string,
  decided: string | undefined,
): { message: string; hint: string } | undefined {
  if (rule?.proxy_only && !req.proxied)
    return {
      message: `rule ${rule.name} gives ${name} only through keyward run --proxy, never to a process`,
      hint: 'keyward run --proxy --env VAR=NAME -- COMMAND (docs/PROXY.md)',
    };
  if (req.mcpInline && !rule?.mcp_inline)
    return {
      message: `the policy does not release ${name} inline to MCP clients (rule ${decided ?? 'none'} lacks mcp_inline: true)`,
      hint: 'use run_with_credentials, which never returns the value',
    };
  return undefined;
}

/** Whether a rule of the policy decides by the caller's executable hash. */
export function needsHash(policy: Policy): boolean {
  return policy.rules.some((r) => r.callers.exe_sha256 !== undefined);
}

/**
 * Why a person's yes, given to the question `asked` put (its rule `rule`), no longer stands
 * under the policy in force `now`, or undefined: a policy applied while the prompt waited that
 * denies the request, gives it by another rule (or by a rule of the same name that now says
 * something else), allows it (under limits of its own this request never met), or names a hash
 * the caller's program has none of.
 */
export function answerOverruled(
  now: Policy,
  asked: Policy,
  request: PolicyRequest,
  id: ProcessIdentity,
  rule: string | undefined,
  confirmEach: string | undefined = undefined,
): string | undefined {
  if (now === asked) return undefined;
  const why = needsHash(now) ? unvouchedHash(id) : undefined;
  // Evaluated as the question was: a key added with confirm asks under an allow rule too.
  const evaluated = why === undefined ? evaluate(now, request, id) : undefined;
  const again =
    evaluated && confirmEach !== undefined ? confirmEachUse(evaluated, confirmEach) : evaluated;
  // The same rule, word for word: a rule of that name that now asks for another factor is
  // another question. So is an allow: its own limits (proxy_only, uses, rate, mcp_inline) were
  // never checked for this request; asked again, the new policy decides it whole.
  if (again?.decision === 'approve' && again.rule === rule && sameRule(now, asked, rule))
    return undefined;
  return `the policy changed while the request waited, and no longer gives it by rule ${rule ?? '(none)'}${why === undefined ? '' : ` (${why})`}`;
}

/**
 * Why the caller's executable has no hash the agent can vouch for (exe-hash.ts: the file changed
 * since it connected, can't be read, is too large, or may change while it runs), or undefined.
 */
export function unvouchedHash(id: ProcessIdentity): string | undefined {
  try {
    void id.exeSha256;
    return undefined;
  } catch (e) {
    if (e instanceof KeywardError) return e.message;
    throw e;
  }
}

/**
 * The requester of a waiting request: the description, and every value it had to cut, whole.
 * unvouched: why its executable has no hash (unvouchedHash), said in the description itself, so
 * every place that shows the request says it.
 */
export function requesterOf(id: ProcessIdentity, unvouched?: string): RequesterRef {
  const description = describeCaller(id);
  return {
    pid: id.pid,
    startTime: id.startTime,
    description:
      unvouched === undefined
        ? description
        : `${description} (its program's sha-256 is unknown: ${unvouched}; this approval is for this request only)`,
    // Whole, for `keyward approvals --json`: what the description had to cut is here.
    exe: id.exe ?? null,
    ...(id.exeElsewhere ? { exeElsewhere: true } : {}),
    ...(id.unpinned ? { unpinned: true } : {}),
    cmdline: id.cmdline,
    cwd: id.cwd ?? null,
    hidden: id.hidden === true,
    exeSha256: unvouched === undefined ? (id.exeSha256 ?? null) : null,
    ...(unvouched === undefined ? {} : { exeUnknown: unvouched }),
    parents: id.ancestors.map((x) => ({
      pid: x.pid,
      exe: x.exe ?? null,
      ...(x.elsewhere ? { elsewhere: true } : {}),
    })),
    loaderVars: (id.loaderVars ?? []).map((x) => ({ name: x.name, value: x.value ?? null })),
  };
}

/** What one approval of a run also gives, said in its prompt: the first 20 named, and how many. */
export function coversText(also: readonly string[]): string {
  if (also.length === 0) return '';
  // Not .map(quote): map's index would be quote's length limit (the first name cut to nothing).
  const named = also
    .slice(0, 20)
    .map((t) => quote(t))
    .join(', ');
  return ` This approval also gives it ${also.length > 20 ? `${also.length} more, among them ` : ''}${named}.`;
}

/** What an approval covered besides its target, for its audit records (the first 50 named). */
export function alsoDetails(also: readonly string[]): Record<string, string | number> {
  if (also.length === 0) return {};
  return { also: also.slice(0, 50).join(','), alsoCount: also.length };
}
