/**
 * Releases: a value leaving the agent to the process that asked (read, or fetch on a descriptor).
 * The names released are remembered for the MCP gateway's leak scans (mcp.ts). Every release is authorized
 * by the gate and durable in the audit log before it leaves (rule 4).
 */
import type { AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { sealedMemfd } from '../lib/process.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import { quote } from '../lib/text.js';
import { cacheIdleMs, evaluate } from '../policy/index.js';
import { assertValidName, type Vault } from '../vault/index.js';
import type { CredentialCache } from './cache.js';
import { needsHash, type Gate } from './gate.js';
import { actorOf, exeHashOf, type ProcessIdentity } from './identity.js';
import type { Peer } from './peer.js';
import { locked, usesSpent, type UnlockWindow } from './unlock.js';

export interface ReleaseHost {
  window: UnlockWindow;
  gate: Gate;
  cache: CredentialCache;
  record(r: AuditRecord): Promise<unknown>;
  /** The MCP client whose run the caller is part of (run-service.ts), if any. */
  insideMcpRun?: (id: Peer['id']) => string | undefined;
}

export interface Reply {
  meta: Record<string, unknown>;
  raw?: SecureBuffer;
  fd?: number;
  sent?: (() => void) | undefined;
}

export class Releases {
  /**
   * Names released since the agent started: the values the MCP gateway looks for. Kept across
   * locks: a value released before a lock is still in whatever received it, and `keyward lock`
   * (which needs no authentication) must not switch the scan off.
   */
  private readonly released = new Set<string>();
  /** The records released, as `name NUL id` (public ids): which values a rotation replaced. */
  private readonly releasedRecords = new Set<string>();

  constructor(private readonly host: ReleaseHost) {}

  /** identity -> policy -> approval -> audit (durable) -> release. */
  async read(
    asker: Peer,
    name: string,
    via: 'inline' | 'fd' = 'inline',
    mcp?: string,
  ): Promise<Reply> {
    // Before policy: a rule matching ** must never reach keyward's own @ records.
    assertValidName(name);
    const w = this.host.window;
    const v = w.unlocked();
    // A `keyward read` inside a run an MCP client asked for reads for that client: its output
    // goes back to the model like the run's.
    mcp ??= this.host.insideMcpRun?.(asker.id);
    if (mcp !== undefined) await refuseUnlessInline(this.host, v, asker, name, mcp);
    const { rule } = await this.host.gate.authorize(asker, {
      target: name,
      kind: 'secret',
      action: 'read',
      auditType: 'secret.read',
      what: `read the secret ${quote(name)}${mcp ? ` for an MCP client that calls itself ${quote(mcp)}` : ''}`,
      exists: v.has(name),
      ...(mcp === undefined ? {} : { mcpInline: true }),
    });
    if (!w.stillOpen(v)) throw locked();
    if (!w.take()) throw usesSpent();
    const { value, cached } = this.fetch(asker.id, v, name, rule);
    try {
      // Rule 4: durable in the audit log before the value leaves.
      await this.host.record({
        target: name,
        actor: actorOf(asker.id),
        type: 'secret.read',
        decision: 'allow',
        details: { rule: rule ?? null, bytes: value.length, cached, via, mcpClient: mcp ?? null },
      });
    } catch (e) {
      secureFree(value);
      throw e;
    }
    if (!w.stillOpen(v)) {
      // Locked (or unlocked anew) while the record was made durable: the unlock that allowed
      // this release is over, so the value stays here. The audit log shows the read; the
      // lock after it says it never left.
      secureFree(value);
      throw locked();
    }
    w.counted();
    if (via === 'fd') {
      // keyward/client: the value in a sealed memfd, passed with SCM_RIGHTS; the agent's copy
      // goes now, the descriptor once it is sent.
      let fd: number;
      try {
        fd = sealedMemfd('keyward-credential', [value]);
      } finally {
        secureFree(value);
      }
      return {
        meta: { name, fd: true },
        fd,
        sent: cached ? undefined : () => this.dropped(asker.id, name, 'released on a descriptor'),
      };
    }
    return {
      meta: { name },
      raw: value,
      // Not cached: once the kernel has the value, the agent holds no copy.
      sent: cached ? undefined : () => this.dropped(asker.id, name, 'released to the reader'),
    };
  }

  /**
   * A value for a release: from the cache when the deciding rule caches and it is there, else
   * decrypted from the vault (credential.fetch) and, when the rule caches, kept. The caller frees
   * the returned copy.
   */
  fetch(
    id: ProcessIdentity,
    v: Vault,
    name: string,
    ruleName: string | undefined,
  ): { value: SecureBuffer; cached: boolean } {
    const w = this.host.window;
    // Re-read the vault if it changed while a person decided (a rotated value, a removed one).
    if (w.unlocked() !== v) throw locked();
    const rule = w.currentPolicy(v).rules.find((r) => r.name === ruleName);
    const idle = cacheIdleMs(rule);
    this.released.add(name);
    const record = v.recordId(name);
    if (record !== undefined) this.releasedRecords.add(`${name}\0${record}`);
    const hit = idle === undefined || !rule ? undefined : this.host.cache.take(rule.name, name);
    if (hit) return { value: hit, cached: true };
    const value = v.reveal(name);
    void this.host
      .record({
        type: 'credential.fetch',
        decision: 'info',
        target: name,
        actor: actorOf(id),
        details: { rule: ruleName ?? null, cacheIdleMs: idle ?? null },
      })
      .catch(() => undefined);
    if (idle !== undefined && rule) this.host.cache.put(rule.name, name, value, idle);
    return { value, cached: idle !== undefined };
  }

  dropped(id: ProcessIdentity, name: string, reason: string): void {
    void this.host
      .record({
        type: 'credential.drop',
        decision: 'info',
        target: name,
        actor: actorOf(id),
        reason,
      })
      .catch(() => undefined);
  }

  /** Names released since the agent started: what the MCP gateway's scans look for. */
  releasedNames(): Iterable<string> {
    return this.released;
  }

  /**
   * Whether the record `id` of name was released (a value rotated away is looked for only if
   * it was, not every value the name had since).
   */
  releasedRecord(name: string, id: string): boolean {
    return this.releasedRecords.has(`${name}\0${id}`);
  }
}

/**
 * Inline to an MCP client means into a model's context: only where the deciding rule says so.
 * Checked before any approval, so nobody is asked to approve what will be refused; the refusal is
 * recorded. `target` is what the policy matches (a project file's `project:NAME/VAR` too).
 */
export async function refuseUnlessInline(
  host: Pick<ReleaseHost, 'window' | 'record'>,
  v: Vault,
  asker: Peer,
  name: string,
  mcp: string,
): Promise<void> {
  let policy = host.window.currentPolicy(v);
  // A rule on the executable's hash: the hash off the thread first, and one that can't be taken
  // is left to the gate, which records the refusal and counts it.
  if (needsHash(policy)) {
    await exeHashOf(asker.id)?.prepare();
    policy = host.window.currentPolicy(host.window.unlocked());
  }
  let decided: ReturnType<typeof evaluate>;
  try {
    decided = evaluate(policy, { target: name, kind: 'secret', action: 'read' }, asker.id);
  } catch (e) {
    if (e instanceof KeywardError) return;
    throw e;
  }
  const r = policy.rules.find((x) => x.name === decided.rule);
  if (decided.decision === 'deny' || r?.mcp_inline) return;
  const message = `the policy does not release ${name} inline to MCP clients (rule ${decided.rule ?? 'none'} lacks mcp_inline: true)`;
  await host.record({
    target: name,
    actor: actorOf(asker.id),
    type: 'secret.read',
    decision: 'deny',
    reason: message,
    details: { rule: decided.rule ?? null, mcpClient: mcp },
  });
  throw new KeywardError('POLICY_DENIED', message, {
    hint: 'use run_with_credentials, which never returns the value',
  });
}
