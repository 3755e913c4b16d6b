/**
 * Whether a factor answers a pending request: the one the rule asked for, or
 * any of them for a `confirm` request. A wrong passphrase or code, or an unverified WebAuthn user
 * where the rule requires one, counts as a denial (the gate's circuit breaker). A TOTP code is
 * accepted once: the last accepted step is kept.
 */
import { TOTP_SECRET, verifyTotp, type Factor, type How, type Pending } from '../approval/index.js';
import type { Actor, AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { secureFree } from '../lib/secure.js';
import type { OperatorRules } from '../operators/index.js';
import { authorizeOperator } from './operator-desk.js';
import type { Vault } from '../vault/index.js';

export interface FactorHost {
  vault: () => Vault;
  /** The operators section of the policy in force (who is self, the group map). */
  operatorRules: () => OperatorRules | undefined;
  record: (r: AuditRecord) => Promise<unknown>;
  noteDenial: () => void;
}

/** Wrong passphrases or codes given for one request before it is denied. */
const WRONG_PER_REQUEST = 3;

export class FactorCheck {
  private lastTotpStep = -1;
  /** Wrong factors given per pending request (gone with the request). */
  private readonly wrong = new WeakMap<Pending, number>();

  constructor(private readonly host: FactorHost) {}

  /**
   * check(), with a wrong passphrase or code recorded (approval.factor_failed, with `by`, the
   * process that gave it) and counted: guessing leaves evidence, and the WRONG_PER_REQUEST-th
   * wrong answer for one request denies it (deny); a person who mistypes asks again.
   */
  async checkCounted(
    p: Pending,
    factor: Factor,
    via: string,
    by: Actor | undefined,
    deny: (reason: string) => void,
  ): Promise<How> {
    try {
      return await this.check(p, factor);
    } catch (e) {
      if (!(e instanceof KeywardError) || e.code !== 'VAULT_BAD_PASSPHRASE') throw e;
      const wrong = (this.wrong.get(p) ?? 0) + 1;
      this.wrong.set(p, wrong);
      const last = wrong >= WRONG_PER_REQUEST;
      await this.host.record({
        type: 'approval.factor_failed',
        decision: 'deny',
        target: p.target,
        reason: e.message,
        ...(by ? { actor: by } : {}),
        details: { request: p.id, factor: factor.kind, via, wrong, denied: last },
      });
      if (!last) throw e;
      deny(`${wrong} wrong ${factor.kind} answers`);
      throw new KeywardError(
        'VAULT_BAD_PASSPHRASE',
        `${e.message.replace(/; the request is still pending$/, '')}: ${wrong} wrong answers, the request is denied`,
      );
    }
  }

  /** Whether factor approves request p; throws (and counts a denial) when it doesn't. */
  async check(p: Pending, factor: Factor): Promise<How> {
    const wrongKind = () =>
      new KeywardError('USAGE', `this request needs ${p.mode} approval, not ${factor.kind}`, {
        hint:
          p.mode === 'totp'
            ? 'keyward approve ID --code (it asks for the code)'
            : p.mode === 'webauthn'
              ? 'approve it in the console (keyward console) with your security key'
              : p.mode === 'operator'
                ? 'an operator of the groups the rule names approves it (docs/OPERATORS.md)'
                : 'keyward approve ID',
      });
    // Operators answer only the requests a rule gave them (mode operator): a teammate's login
    // is never a local person's confirm, and no local factor stands in for an operator.
    if (p.mode !== factor.kind && (p.mode !== 'confirm' || factor.kind === 'operator'))
      throw wrongKind();
    const v = this.host.vault();
    switch (factor.kind) {
      case 'operator': {
        const op = factor.operator;
        const groups = await authorizeOperator(p, op, this.host, '; the request is still pending');
        return { factor: 'operator', operator: op.id, method: op.method, groups: groups.join(',') };
      }
      case 'session':
        return { factor: 'session', login: factor.login };
      case 'webauthn':
        if (p.userVerification === 'required' && !factor.userVerified) {
          this.host.noteDenial();
          await this.host.record({
            type: 'approval.denied',
            decision: 'deny',
            target: p.target,
            reason:
              'the rule requires user verification; the authenticator did not verify the user',
            details: { request: p.id, credential: factor.credential },
          });
          throw new KeywardError(
            'APPROVAL_REJECTED',
            'this rule requires user verification (a PIN or biometrics on the authenticator); the request is still pending',
          );
        }
        return {
          factor: 'webauthn',
          credential: factor.credential,
          userVerified: factor.userVerified,
        };
      case 'totp': {
        const secret = v.revealInternal(TOTP_SECRET);
        if (!secret)
          throw new KeywardError('USAGE', 'no TOTP is enrolled', { hint: 'keyward totp enroll' });
        let step: number | undefined;
        try {
          step = verifyTotp(secret, factor.code, Date.now(), this.lastTotpStep);
        } finally {
          secureFree(secret);
        }
        if (step === undefined) {
          this.host.noteDenial();
          throw new KeywardError(
            'VAULT_BAD_PASSPHRASE',
            'wrong or already used TOTP code; the request is still pending',
          );
        }
        this.lastTotpStep = step;
        return { factor: 'totp' };
      }
      case 'passphrase':
        if (!factor.secret || factor.secret.length === 0) {
          throw new KeywardError('USAGE', 'approving needs the passphrase', {
            hint: 'keyward approve ID asks for it (or --passphrase-file)',
          });
        }
        if (!(await v.checkPassphraseAsync(factor.secret))) {
          this.host.noteDenial();
          throw new KeywardError(
            'VAULT_BAD_PASSPHRASE',
            'wrong passphrase; the request is still pending',
          );
        }
        return { factor: 'passphrase' };
    }
  }
}
