/**
 * Operators' decisions on the requests their rules give them (docs/OPERATORS.md): an approval
 * is counted, and the request granted once `count` distinct operators approved it (two-person
 * control); a denial by any operator the rule accepts ends it. Whether an operator may decide a
 * request at all is the factor check's (factors.ts) for approvals, and checked here for denials.
 */
import type { Broker, How, Pending } from '../approval/index.js';
import type { AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { authorityOf, type OperatorIdentity, type OperatorRules } from '../operators/index.js';

export interface DeskHost {
  record(r: AuditRecord): Promise<unknown>;
  noteDenial(): void;
  operatorRules(): OperatorRules | undefined;
}

export class OperatorDesk {
  constructor(
    private readonly broker: Broker,
    private readonly host: DeskHost,
  ) {}

  /**
   * One operator's approval (already found allowed: how), counted. Each is recorded as it
   * comes; the grant, once there are enough, carries them all.
   */
  async vote(p: Pending, op: OperatorIdentity, how: How): Promise<Record<string, unknown>> {
    const needed = p.operators?.count ?? 1;
    const groups = typeof how['groups'] === 'string' ? how['groups'].split(',') : [];
    const votes = this.broker.vote(p.id, { operator: op.id, method: op.method, groups });
    if (votes === undefined)
      throw new KeywardError('REQUEST_NOT_FOUND', `request ${p.id} is no longer pending`);
    if (votes === 'again')
      throw new KeywardError(
        'OPERATOR_REFUSED',
        `operator ${op.id} approved request ${p.id} already: it needs ${needed} distinct operators`,
      );
    await this.host.record({
      type: 'approval.operator',
      decision: 'info',
      target: p.target,
      details: { request: p.id, rule: p.rule, ...how, votes: votes.length, needed },
    });
    if (votes.length >= needed) {
      // The operators, their methods and the groups that allowed each, for the grant's record.
      const operators = JSON.stringify(votes);
      if (!this.broker.settle(p.id, 'granted', { via: 'console', factor: 'operator', operators }))
        throw new KeywardError('REQUEST_NOT_FOUND', `request ${p.id} is no longer pending`);
    }
    return { approved: p.id, votes: votes.length, needed };
  }

  /** An operator denies a request, if its groups may decide it. */
  async deny(id: string, op: OperatorIdentity): Promise<void> {
    const p = this.broker.get(id);
    if (!p || p.mode !== 'operator' || !p.operators)
      throw new KeywardError('REQUEST_NOT_FOUND', `no pending operator request ${id}`);
    const a = authorityOf(op, p.rule, p.operators, this.host.operatorRules());
    if ('refused' in a) {
      this.host.noteDenial();
      await this.host.record({
        type: 'approval.denied',
        decision: 'deny',
        target: p.target,
        reason: a.refused,
        details: { request: id, operator: op.id, method: op.method },
      });
      throw new KeywardError('OPERATOR_REFUSED', a.refused);
    }
    if (
      !this.broker.settle(id, 'denied', {
        via: 'console',
        operator: op.id,
        method: op.method,
        groups: a.groups.join(','),
      })
    )
      throw new KeywardError('REQUEST_NOT_FOUND', `request ${id} is no longer pending`);
  }
}
