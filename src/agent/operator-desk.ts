/**
 * Operators' decisions on the requests their rules give them (docs/OPERATORS.md): an approval
 * is counted, and the request granted once `count` distinct operators approved it (two-person
 * control); a denial by any operator the rule accepts ends it. Whether an operator may decide a
 * request at all is the factor check's (factors.ts) for approvals, and checked here for denials.
 */
import type { Broker, How, Pending, Vote } from '../approval/index.js';
import type { AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import type { UnlockWindow } from './unlock.js';
import {
  authorityOf,
  keyOperator,
  readKeys,
  type OperatorIdentity,
  type OperatorRules,
  type StoredKey,
} from '../operators/index.js';

export interface DeskHost {
  record(r: AuditRecord): Promise<unknown>;
  noteDenial(): void;
  operatorRules(): OperatorRules | undefined;
  /** The operator as trusted now (a key still in the vault, an issuer still in policy), or not. */
  live(op: OperatorIdentity): OperatorIdentity | undefined;
}

/**
 * An operator as the vault and the policy in force trust it now: a key still in the vault (with
 * its groups), or an OIDC identity whose issuer the policy still names, with only the groups it
 * still allows. Undefined when trust was withdrawn since the login (or the vote).
 */
export function liveOperator(
  op: OperatorIdentity,
  keys: () => StoredKey[],
  oidc: { issuer: string; allowed_groups: readonly string[] } | undefined,
): OperatorIdentity | undefined {
  if (op.method === 'key') {
    const k = keys().find((x) => x.id === op.keyId);
    return k ? keyOperator(k) : undefined;
  }
  if (!oidc || op.issuer !== oidc.issuer) return undefined;
  const groups = op.groups.filter((g) => oidc.allowed_groups.includes(g));
  return groups.length > 0 ? { ...op, groups } : undefined;
}

/**
 * The groups that let op decide pending request p; otherwise the refusal is recorded, counted
 * toward the circuit breaker, and thrown (the request stays pending).
 */
export async function authorizeOperator(
  p: Pending,
  op: OperatorIdentity,
  host: Pick<DeskHost, 'record' | 'noteDenial' | 'operatorRules'>,
  still = '',
): Promise<string[]> {
  const a = p.operators
    ? authorityOf(op, p.rule, p.operators, host.operatorRules())
    : { refused: 'the request names no operators' };
  if ('groups' in a) return a.groups;
  host.noteDenial();
  await host.record({
    type: 'approval.denied',
    decision: 'deny',
    target: p.target,
    reason: a.refused,
    details: { request: p.id, operator: op.id, method: op.method },
  });
  throw new KeywardError('OPERATOR_REFUSED', `${a.refused}${still}`);
}

/** liveOperator against the agent's open vault and the policy in force. */
export function liveIn(window: UnlockWindow, op: OperatorIdentity): OperatorIdentity | undefined {
  // The policy in force now (read again if it changed since the last request).
  const v = window.unlocked();
  return liveOperator(op, () => readKeys(v), window.currentPolicy(v).operators?.oidc);
}

const shown = (votes: readonly Vote[]) =>
  JSON.stringify(votes.map((v) => ({ operator: v.operator, method: v.method, groups: v.groups })));

export class OperatorDesk {
  constructor(
    private readonly broker: Broker,
    private readonly host: DeskHost,
  ) {}

  /**
   * One operator's approval (already found allowed: how), recorded, then counted. Before each
   * count, votes whose operator is no longer trusted, or no longer allowed this rule, are
   * dropped (and that is recorded): a revoked key's vote never completes a grant.
   */
  async vote(p: Pending, op: OperatorIdentity, how: How): Promise<Record<string, unknown>> {
    const needed = p.operators?.count ?? 1;
    await this.prune(p);
    if ((this.broker.get(p.id)?.votes ?? []).some((v) => v.operator === op.id))
      throw new KeywardError(
        'OPERATOR_REFUSED',
        `operator ${op.id} approved request ${p.id} already: it needs ${needed} distinct operators`,
      );
    const groups = typeof how['groups'] === 'string' ? how['groups'].split(',') : [];
    const before = this.broker.get(p.id)?.votes?.length ?? 0;
    // Recorded before it counts: a vote the log doesn't hold never completes a grant.
    await this.host.record({
      type: 'approval.operator',
      decision: 'info',
      target: p.target,
      details: { request: p.id, rule: p.rule, ...how, votes: before + 1, needed },
    });
    const votes = this.broker.vote(p.id, {
      operator: op.id,
      method: op.method,
      groups,
      identity: op,
    });
    if (votes === undefined)
      throw new KeywardError('REQUEST_NOT_FOUND', `request ${p.id} is no longer pending`);
    if (votes === 'again')
      throw new KeywardError(
        'OPERATOR_REFUSED',
        `operator ${op.id} approved request ${p.id} already: it needs ${needed} distinct operators`,
      );
    // The record above took a moment: what was trusted then is checked again at the count.
    await this.prune(p);
    const counted = this.broker.get(p.id)?.votes ?? [];
    if (counted.length >= needed) {
      // The operators, their methods and the groups that allowed each, for the grant's record.
      const operators = shown(counted);
      if (!this.broker.settle(p.id, 'granted', { via: 'console', factor: 'operator', operators }))
        throw new KeywardError('REQUEST_NOT_FOUND', `request ${p.id} is no longer pending`);
    }
    return { approved: p.id, votes: counted.length, needed };
  }

  /** Drops, and records, the votes that no longer count. */
  private async prune(p: Pending): Promise<void> {
    const rules = this.host.operatorRules();
    const dropped = this.broker.pruneVotes(p.id, (v) => {
      const live = v.identity ? this.host.live(v.identity) : undefined;
      return (
        live !== undefined &&
        p.operators !== undefined &&
        'groups' in authorityOf(live, p.rule, p.operators, rules)
      );
    });
    for (const v of dropped)
      await this.host.record({
        type: 'approval.operator',
        decision: 'info',
        target: p.target,
        reason: `the vote of operator ${v.operator} no longer counts: its key was revoked, or the policy no longer allows it`,
        details: { request: p.id, rule: p.rule, operator: v.operator, method: v.method },
      });
  }

  /** An operator denies a request, if its groups may decide it. */
  async deny(id: string, op: OperatorIdentity): Promise<void> {
    const p = this.broker.get(id);
    if (!p || p.mode !== 'operator' || !p.operators)
      throw new KeywardError('REQUEST_NOT_FOUND', `no pending operator request ${id}`);
    const groups = await authorizeOperator(p, op, this.host);
    if (
      !this.broker.settle(id, 'denied', {
        via: 'console',
        operator: op.id,
        method: op.method,
        groups: groups.join(','),
      })
    )
      throw new KeywardError('REQUEST_NOT_FOUND', `request ${id} is no longer pending`);
  }
}
