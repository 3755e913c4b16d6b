/**
 * The gate's approval step (gate.ts decides when a rule asks for one): a yes remembered, or given
 * once for the whole run, stands; otherwise a person is asked, the request waits for the answer,
 * and a yes stands only if nothing that decided the question changed meanwhile.
 */
import { Grants, type Broker } from '../approval/index.js';
import type { AuditRecord } from '../audit/index.js';
import { printable, quote } from '../lib/text.js';
import { evaluate, type Decision, type Policy, type PolicyRequest } from '../policy/index.js';
import type { Vault } from '../vault/index.js';
import { askLocally } from './gate-local.js';
import {
  alsoDetails,
  answerOverruled,
  coversText,
  grantHolder,
  noteShown,
  requesterOf,
  shownTogether,
  unvouchedHash,
} from './gate-caller.js';
import type { Peer } from './peer.js';
import type { GateHost, GateRequest } from './gate-types.js';
import { locked } from './unlock.js';

const GONE = 'the requester went away';
export const LOCKED = 'the agent was locked';

/** What the gate is deciding when its rule asks for an approval (gate.ts, authorize()). */
export interface Approving {
  caller: Peer;
  req: GateRequest;
  request: PolicyRequest;
  /** The open vault the request was decided under, and its policy. */
  v: Vault;
  policy: Policy;
  decision: Extract<Decision, { decision: 'approve' }>;
  base: { target: string; actor: NonNullable<AuditRecord['actor']> };
  /** A recorded denial: it throws (authorize()'s refuse). */
  refuse(
    message: string,
    code: 'POLICY_DENIED' | 'APPROVAL_REJECTED' | 'APPROVAL_TIMEOUT',
    hint?: string,
    probing?: boolean,
  ): Promise<never>;
}

/**
 * The approval the rule asks for: returns when it was given (or a remembered one stands); a
 * refusal is recorded and thrown through refuse.
 */
export async function askApproval(
  gate: { host: GateHost; broker: Broker; grants: Grants },
  approving: Approving,
): Promise<void> {
  const { host, broker, grants } = gate;
  const { caller, req, request, v, policy, decision, base, refuse } = approving;
  const { id } = caller;
  const name = req.target;
  const w = host.window;
  // A hash the agent can't vouch for (a policy that names none: one that does was refused
  // by authorize()) is no reason to refuse a person the question: the prompt says the hash is
  // unknown and why, and nothing of the answer is remembered.
  const unvouched = unvouchedHash(id);
  const a = decision.approval;
  const who = unvouched === undefined ? grantHolder(a.remember.scope, caller) : undefined;
  // What the person approved: the action (a remembered run is not a remembered read), the
  // target, and what else the prompt showed of the request (grantScope).
  const approved = (t: string) => `${req.action}\u0000${t}\u0000${req.grantScope ?? ''}`;
  const grantKey =
    a.remember.scope === 'once' || who === undefined
      ? undefined
      : Grants.keyFor(decision.rule, approved(name), a.remember.scope, who);
  const together = decision.highValue ? undefined : req.together;
  // Shown under this very rule, word for word (a policy applied since may keep its name).
  const asked = shownTogether(together, decision.rule, name, policy);
  if (!asked && !(grantKey && !decision.highValue && grants.use(grantKey, Date.now()))) {
    const requester = requesterOf(id, unvouched);
    const { description } = requester;
    const also = (together?.targets ?? []).filter(
      (t) => t !== name && evaluate(policy, { ...request, target: t }, id).rule === decision.rule,
    );
    await host.record({
      ...base,
      type: 'approval.requested',
      decision: 'info',
      details: {
        rule: decision.rule,
        mode: a.mode,
        ...alsoDetails(also),
        ...(unvouched === undefined ? {} : { exeUnknown: unvouched }),
      },
    });
    // Command lines, paths, names, SSH user names and SSHSIG namespaces come from the
    // requester: each is quoted where it is put into the sentence (quote()), so quotes,
    // control characters and look-alikes can't end it or write one of their own. The rule
    // name and message come from the applied policy.
    const covers = coversText(also);
    // What a yes is remembered for, when it is: the person decides for those requests too.
    const remembers =
      grantKey && !decision.highValue && a.remember.scope !== 'once'
        ? rememberedText(a.remember, id.exe)
        : '';
    // The question first, in keyward's words; who asks after it (found in review: a caller's
    // environment, directory and arguments, thousands of characters, pushed the question out
    // of an askpass dialog's sight, behind a sentence of the caller's own).
    const pending = broker.wait(
      {
        requester,
        action: req.action,
        target: name,
        rule: decision.rule,
        mode: a.mode,
        message: a.message,
        ...(a.userVerification ? { userVerification: a.userVerification } : {}),
        ...(a.operators ? { operators: a.operators } : {}),
        ...(also.length > 0 ? { also } : {}),
        what: req.what,
        ...(req.command ? { command: [...req.command] } : {}),
      },
      a.timeoutMs,
    );
    // The requester hears at once that its request waits, and where a person can decide it.
    caller.notifyPending?.(pending.pending);
    // A requester that hangs up (killed, Ctrl-C) takes its request with it: nobody is shown
    // a request whose answer would go nowhere.
    caller.abandon = () => broker.settle(pending.id, 'denied', { reason: GONE });
    // It may have hung up while the request was being recorded, before abandon was set.
    if (caller.gone) caller.abandon();
    else if (a.mode === 'confirm') {
      // The request's id, which the requesting command prints as it waits: a process of the
      // user that ends this request (keyward deny) and makes one that reads the same gets
      // another id (found in review: a swapped request under the same words took the yes).
      const prompt = `keyward, request ${pending.id}: ${host.warning ? `${host.warning} ` : ''}a request to ${req.what} (rule ${decision.rule}).${covers}${a.message ? ` ${printable(a.message, 500)}` : ''}${remembers} Asked by ${description}. Allow?`;
      askLocally(host, broker, pending.id, prompt, a.timeoutMs, base, pending.outcome);
    }
    const { outcome, how } = await pending.outcome.finally(() => (caller.abandon = undefined));
    if (outcome !== 'granted') {
      await host.record({
        ...base,
        type: outcome === 'expired' ? 'approval.expired' : 'approval.denied',
        decision: 'deny',
        details: { rule: decision.rule, ...how },
      });
      // A requester that hung up, or a request a lock ended, is not a probe: it doesn't
      // count toward the breaker.
      const hungUp = how['reason'] === GONE || how['reason'] === LOCKED;
      return outcome === 'expired'
        ? refuse('the approval request expired', 'APPROVAL_TIMEOUT')
        : refuse(notApproved(how), 'APPROVAL_REJECTED', undefined, !hungUp);
    }
    await host.record({
      ...base,
      type: 'approval.granted',
      decision: 'allow',
      details: {
        rule: decision.rule,
        mode: a.mode,
        ...how,
        ...alsoDetails(also),
        ...(unvouched === undefined ? {} : { exeUnknown: unvouched }),
      },
    });
    // Locked while the grant was recorded (and perhaps unlocked again since): the approval
    // was of the window that lock ended, and every grant ends at lock.
    if (!w.stillOpen(v)) throw locked();
    // A policy applied while the person read the prompt: the answer was to the question the
    // old one asked. It stands only for this very rule, word for word (and a hash where the
    // new policy names one); anything else is refused and asks again (answerOverruled).
    const overruled = answerOverruled(
      w.currentPolicy(w.unlocked()),
      policy,
      request,
      id,
      decision.rule,
      req.confirmEachUse,
    );
    if (overruled !== undefined) return refuse(overruled, 'POLICY_DENIED', 'ask again', false);
    if (grantKey && who !== undefined && !decision.highValue && a.remember.scope !== 'once') {
      // Remembered for every target the person saw, as each would have been on its own.
      for (const t of [name, ...also]) {
        const key = Grants.keyFor(decision.rule, approved(t), a.remember.scope, who);
        grants.remember(key, a.remember.forMs, a.remember.uses, Date.now());
      }
    }
    if (together) noteShown(together, decision.rule, [name, ...also], policy);
  }
}

/** ` A yes is remembered for 10 min, for this process only.`: what an answer will cover. */
function rememberedText(
  r: { scope: 'process' | 'executable'; forMs: number; uses: number | undefined },
  exe: string | undefined,
): string {
  const s = Math.round(r.forMs / 1000);
  const time = s % 3600 === 0 ? `${s / 3600} h` : s % 60 === 0 ? `${s / 60} min` : `${s} s`;
  const uses = r.uses === undefined ? '' : ` (${r.uses} ${r.uses === 1 ? 'use' : 'uses'})`;
  const whom =
    r.scope === 'process'
      ? 'this process only'
      : `every process of this program (${JSON.stringify(printable(exe ?? '?', 200))}, by its SHA-256) with the same loader variables`;
  return ` A yes is remembered for ${time}${uses}, for ${whom}.`;
}

/**
 * Why a request was not approved, as its requester hears it: a denial by another process of the
 * user (keyward deny) names that process, since it may be one that goes on to make a request
 * that reads the same (found in review).
 */
function notApproved(how: Record<string, unknown>): string {
  const pid = how['denierPid'];
  if (typeof pid !== 'string') return 'the request was not approved';
  const exe = typeof how['denierExe'] === 'string' ? `, ${quote(how['denierExe'])}` : '';
  return `the request was denied by another process of yours (pid ${pid}${exe}, keyward deny): if that was not you, a program running as you did it, and the next request a prompt shows may be its own; compare the request id in the prompt with the one this command printed`;
}
