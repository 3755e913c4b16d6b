/**
 * The gate: the one path every release and signature takes (docs/PROTOCOL.md, "The request
 * path"): identity -> policy -> limits -> approval -> the go-ahead. The caller then makes its
 * release durable in the audit log and releases. Reads, fetches, runs, signatures and the MCP
 * tools all come through authorize(); approvals from another terminal come through approve().
 *
 * Like Teleport's Authorizer, the gate returns what it decided, so a handler can't forget a check:
 * it has nothing to release until authorize() resolved.
 */
import {
  Broker,
  Grants,
  mayApprove,
  TOTP_SECRET,
  type Factor,
  type Pending,
} from '../approval/index.js';
import { KeywardError } from '../errors.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import {
  evaluate,
  TokenBucket,
  UseCounter,
  withChannels,
  type ApprovalMode,
  type Caller,
  type Decision,
  type Policy,
  type PolicyRequest,
} from '../policy/index.js';
import { FactorCheck } from './factors.js';
import { askApproval, LOCKED } from './gate-approval.js';
import { liveIn, OperatorDesk } from './operator-desk.js';
import { boundRefusal, confirmEachUse, needsHash } from './gate-caller.js';
import { actorOf, exeHashOf, type ProcessIdentity } from './identity.js';
import { changedSince, type Peer } from './peer.js';
import type { GateHost, GateRequest } from './gate-types.js';
import { locked } from './unlock.js';

export type { GateHost, GateRequest } from './gate-types.js';

export { needsHash } from './gate-caller.js';

const BREAKER_DENIALS = 5;
const BREAKER_WINDOW_MS = 60_000;

export class Gate {
  private readonly broker = new Broker();
  private readonly grants = new Grants();
  private readonly uses = new UseCounter();
  private readonly buckets = new Map<string, TokenBucket>();
  private denials: number[] = [];
  private readonly factors: FactorCheck;
  /** Operators' approvals and denials (operator-desk.ts). */
  readonly desk: OperatorDesk;

  constructor(private readonly host: GateHost) {
    // The operators section of the policy in force (read again if it changed since).
    const operatorRules = () => host.window.currentPolicy(host.window.unlocked()).operators;
    this.factors = new FactorCheck({
      vault: () => host.window.unlocked(),
      record: (r) => host.record(r),
      noteDenial: () => this.noteDenial(),
      operatorRules,
    });
    this.desk = new OperatorDesk(this.broker, {
      record: (r) => host.record(r),
      noteDenial: () => this.noteDenial(),
      operatorRules,
      live: (op) => liveIn(host.window, op),
    });
  }

  /**
   * Everything a lock ends: pending requests (denied), remembered grants, counters, and the
   * circuit breaker's count (the next unlock, which takes the passphrase, starts it afresh).
   */
  reset(): void {
    this.denials = [];
    // Denied as ended by the lock: no probe, so not counted toward the next unlock's breaker.
    this.broker.denyAll(LOCKED);
    this.grants.clear();
    this.uses.reset();
    this.buckets.clear();
  }

  /**
   * A policy was applied: what the old one's rules remembered ends (a request pending is decided
   * again when answered: answerOverruled).
   */
  policyChanged(): void {
    this.grants.clear();
  }

  pending(): Pending[] {
    return this.broker.list();
  }

  /** Five denials within a minute lock the agent: someone is probing. */
  noteDenial(): void {
    const now = Date.now();
    this.denials = this.denials.filter((t) => now - t < BREAKER_WINDOW_MS);
    this.denials.push(now);
    if (this.denials.length >= BREAKER_DENIALS && this.host.window.isOpen) {
      this.denials = [];
      void this.host.lock(
        `circuit breaker: ${BREAKER_DENIALS} denials within ${BREAKER_WINDOW_MS / 1000} s`,
      );
    }
  }

  /** Calls fn whenever a request starts or ends waiting (the console's live list). */
  onPendingChange(fn: () => void): () => void {
    return this.broker.onChange(fn);
  }

  /**
   * The approval modes some channel can give here. `wanted` is the mode the rule asks for: the
   * registered security keys are read from the vault only when it is webauthn, not on every
   * request.
   */
  private channels(wanted: ApprovalMode | undefined): Set<ApprovalMode> {
    const c = new Set<ApprovalMode>();
    if (this.host.askpass || this.host.terminal || this.host.console) c.add('confirm');
    if (wanted === 'webauthn' && this.host.console?.hasWebauthn()) c.add('webauthn');
    // Operators log in to the console: with an identity provider in policy, or an API key.
    if (wanted === 'operator' && this.host.console?.hasOperators()) c.add('operator');
    // `keyward approve ID` from another terminal: with the passphrase, or a TOTP code once enrolled.
    c.add('passphrase');
    if (this.host.window.isOpen && this.host.window.unlocked().has(TOTP_SECRET)) c.add('totp');
    return c;
  }

  /**
   * What the policy in force decides for a request, as the gate would first decide it: an
   * approval no channel here can give is a denial (policy explain through the agent).
   */
  explain(policy: Policy, request: PolicyRequest, caller: Caller): Decision {
    const d = evaluate(policy, request, caller);
    return withChannels(d, this.channels(d.decision === 'approve' ? d.approval.mode : undefined));
  }

  /**
   * Whether the policy allows a request outright, with nothing that could refuse it later (no
   * rate limit, no use count, no approval): a convenience may then ask without leaving a
   * denial, a prompt or a count behind (key generate's name check).
   */
  allowsOutright(policy: Policy, request: PolicyRequest, caller: Caller): boolean {
    const d = evaluate(policy, request, caller);
    const rule = policy.rules.find((r) => r.name === d.rule);
    return (
      d.decision === 'allow' &&
      rule?.rate_limit === undefined &&
      rule?.max_uses_per_unlock === undefined
    );
  }

  /**
   * Policy, limits and approval for one request; records every denial. Returns the deciding rule
   * when the request may go ahead; the caller then records the release (durably) and releases.
   */
  async authorize(caller: Peer, req: GateRequest): Promise<{ rule: string | undefined }> {
    const { id } = caller;
    const name = req.target;
    const request = { target: name, kind: req.kind, action: req.action };
    const w = this.host.window;
    let v = w.unlocked();
    let policy = w.currentPolicy(v);
    // The executable's hash, when this request needs it (a rule on exe_sha256, or an approval:
    // its grants and its prompt), is read off the thread first (a large one delays this
    // request, not the agent); what the vault and the policy are is read again after it. A
    // policy that names no hash is evaluated without it, once, when no wait came between.
    let first = needsHash(policy) ? undefined : evaluate(policy, request, id);
    if (first === undefined || req.confirmEachUse !== undefined || first.decision === 'approve') {
      await exeHashOf(id)?.prepare();
      v = w.unlocked();
      policy = w.currentPolicy(v);
      first = undefined;
    }
    const base = { target: name, actor: actorOf(id) };
    // The caller's executable hash before anything reads it (agent/exe-hash.ts): one that can't
    // be taken (the file changed, can't be read, or can change while it runs) is a recorded
    // denial that counts toward the lock, never an unknown hash that leaves a deny rule
    // unmatched. Taken here, on the thread, only when the policy changed during the wait.
    const hashed = async (): Promise<void> => {
      try {
        void id.exeSha256;
      } catch (e) {
        if (!(e instanceof KeywardError)) throw e;
        await this.host.record({
          ...base,
          type: req.auditType,
          decision: 'deny',
          reason: e.message,
          details: { rule: null },
        });
        this.noteDenial();
        throw e;
      }
    };
    if (needsHash(policy)) await hashed();
    let evaluated = first ?? evaluate(policy, request, id);
    if (req.confirmEachUse !== undefined) evaluated = confirmEachUse(evaluated, req.confirmEachUse);
    // Only an approval depends on the channels at hand (withChannels keeps any other decision).
    const decision =
      evaluated.decision === 'approve'
        ? withChannels(evaluated, this.channels(evaluated.approval.mode))
        : evaluated;
    const refuse = async (
      message: string,
      code: 'POLICY_DENIED' | 'APPROVAL_REJECTED' | 'APPROVAL_TIMEOUT',
      hint?: string,
      probing = true,
    ): Promise<never> => {
      await this.host.record({
        ...base,
        type: req.auditType,
        decision: 'deny',
        reason: message,
        details: { rule: decision.rule ?? null },
      });
      // A list or a read of the log refused gives nothing away, and an owner whose policy
      // predates kinds list and audit must not be locked out by running secret list.
      if (probing && req.kind !== 'list' && req.kind !== 'audit') this.noteDenial();
      throw new KeywardError(code, message, hint === undefined ? {} : { hint });
    };
    if (decision.decision === 'deny') {
      return refuse(
        `denied by policy: ${decision.explanation.at(-1) ?? 'no rule matches'}`,
        'POLICY_DENIED',
        (req.kind === 'list' || req.kind === 'audit') && decision.rule === undefined
          ? `no rule of kind ${req.kind} matches (docs/POLICY.md, "Lists and the audit log"); see: keyward policy explain --kind ${req.kind} --target ${name}`
          : 'see: keyward policy explain --target NAME --exe PATH',
      );
    }
    if (!req.exists) {
      // Recorded and counted as probing: a caller that may not list names must not learn them
      // by asking for one after another without a trace.
      await this.host.record({
        ...base,
        type: req.auditType,
        decision: 'deny',
        reason: `no ${req.kind} named ${name}`,
        details: { rule: decision.rule ?? null },
      });
      this.noteDenial();
      throw new KeywardError('SECRET_NOT_FOUND', `no ${req.kind} named ${name}`);
    }
    const rule = policy.rules.find((r) => r.name === decision.rule);
    const bound = boundRefusal(rule, req, name, decision.rule);
    if (bound) return refuse(bound.message, 'POLICY_DENIED', bound.hint);
    if (req.kind === 'secret' && !req.proxied) {
      // A process of a proxied run asking for what its proxy holds: the run was approved on the
      // promise that its processes never hold the value.
      const held = await this.host.heldByProxy?.(id.pid, name);
      if (held !== undefined) return refuse(held, 'POLICY_DENIED');
    }
    if (rule?.rate_limit) {
      // A bucket a rule name, under the limits in force: a policy applied that changes them
      // carries what is left over (TokenBucket.under), never a full bucket.
      const { per_minute: per, burst } = rule.rate_limit;
      let b = this.buckets.get(rule.name);
      if (!b?.limits(per, burst))
        this.buckets.set(
          rule.name,
          (b = b ? b.under(per, burst, Date.now()) : new TokenBucket(per, burst, Date.now())),
        );
      if (!b.take(Date.now()))
        return refuse(`rate limit of rule ${rule.name} reached`, 'POLICY_DENIED', 'wait a little');
    }
    if (decision.decision === 'approve')
      await askApproval(
        { host: this.host, broker: this.broker, grants: this.grants },
        { caller, req, request, v, policy, decision, base, refuse },
      );
    if (
      rule?.max_uses_per_unlock !== undefined &&
      !this.uses.use(`rule:${rule.name}`, rule.max_uses_per_unlock)
    ) {
      return refuse(
        `rule ${rule.name} reached its uses for this unlock`,
        'POLICY_DENIED',
        'keyward lock, then keyward unlock',
      );
    }
    // A person may have taken a minute: the process must still be there, running what it ran.
    const gone = changedSince(caller);
    if (gone) return refuse(gone, 'POLICY_DENIED');
    if (!w.isOpen) throw locked();
    return { rule: decision.rule };
  }

  /**
   * `keyward approve ID` (with the passphrase or a TOTP code) and the console (a login, a
   * passphrase, a TOTP code or a verified WebAuthn assertion). The factor must be the one the
   * rule asked for; any of them also answers a `confirm` request. approver is the approving
   * process, when there is one to check (the console's person has none: its factor is the proof).
   */
  async approveWith(
    reqId: string,
    approver: ProcessIdentity | undefined,
    factor: Factor,
    via: 'cli' | 'console',
  ): Promise<Record<string, unknown>> {
    try {
      const p = this.broker.get(reqId);
      if (!p)
        throw new KeywardError('REQUEST_NOT_FOUND', `no pending request ${reqId}`, {
          hint: 'see: keyward approvals',
        });
      if (approver && !mayApprove(p.requester, approver)) {
        await this.host.record({
          type: 'approval.denied',
          decision: 'deny',
          target: p.target,
          reason: 'self-approval refused',
          actor: actorOf(approver),
        });
        throw new KeywardError(
          'SELF_APPROVAL',
          "a process cannot approve its own request, nor one of its ancestors' requests",
          {
            hint: 'approve from another terminal',
          },
        );
      }
      const how = await this.factors.checkCounted(
        p,
        factor,
        via,
        approver && actorOf(approver),
        (reason) => this.broker.settle(reqId, 'denied', { via, reason }),
      );
      if (factor.kind === 'operator') return await this.desk.vote(p, factor.operator, how);
      const approvedBy = approver
        ? { approverPid: String(approver.pid), approverExe: approver.exe ?? null }
        : {};
      if (!this.broker.settle(reqId, 'granted', { via, ...how, ...approvedBy }))
        throw new KeywardError('REQUEST_NOT_FOUND', `request ${reqId} is no longer pending`);
      return { approved: reqId };
    } finally {
      if (factor.kind === 'passphrase') secureFree(factor.secret);
    }
  }

  /** `keyward approve ID`: with the passphrase (factor) or a TOTP code. */
  approve(
    approver: ProcessIdentity,
    reqId: string,
    factor: SecureBuffer | undefined,
    code: string | undefined,
  ): Promise<Record<string, unknown>> {
    if (code !== undefined) {
      secureFree(factor);
      return this.approveWith(reqId, approver, { kind: 'totp', code }, 'cli');
    }
    return this.approveWith(reqId, approver, { kind: 'passphrase', secret: factor }, 'cli');
  }

  /** `keyward deny ID`, or Deny in the console. */
  deny(
    reqId: string,
    via: 'cli' | 'console' = 'cli',
    by?: ProcessIdentity,
  ): Record<string, unknown> {
    const p = this.broker.get(reqId);
    // Who denied, as for an approval: `keyward deny` needs no factor, so any process of the user
    // can deny (a documented denial of service); the record says which one did.
    const denier = by ? { denierPid: String(by.pid), denierExe: by.exe ?? null } : {};
    if (!p || !this.broker.settle(reqId, 'denied', { via, ...denier }))
      throw new KeywardError('REQUEST_NOT_FOUND', `no pending request ${reqId}`);
    return { denied: reqId };
  }
}
