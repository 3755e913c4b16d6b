/**
 * What the agent shows that is not a value: the names in the vault, the audit log, and what the
 * policy in force decides for a caller. Lists and the log are actions the policy decides (kinds
 * `list` and `audit`, docs/POLICY.md) and every one is audited; `explain` answers from the
 * policy in force, which the files beside it only claim to be.
 */
import {
  readEntries,
  verifyLog,
  type AuditRecord,
  type EntrySelection,
  type ReadEntry,
} from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { listKeys } from '../keys/index.js';
import { type Caller, type RequestKind } from '../policy/index.js';
import type { Gate } from './gate.js';
import { actorOf } from './identity.js';
import type { Peer } from './peer.js';
import { str } from './protocol.js';
import type { Reply } from './release.js';
import { jsonRaw } from './replies.js';
import { locked, type UnlockWindow } from './unlock.js';

export interface ViewsHost {
  home: string;
  window: UnlockWindow;
  gate: Gate;
  record(r: AuditRecord): Promise<unknown>;
}

/**
 * A page of `audit export`, or the most of a tail, through the agent: well under a frame (16 MiB),
 * however long the log or its entries.
 */
const PAGE_BYTES = 4 * 1024 * 1024;
/** `audit tail -n` through the agent: at most this many at once. */
const MAX_TAIL = 100_000;

function count(meta: Record<string, unknown>, key: string, min: number, max: number): number {
  const n = meta[key];
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max)
    throw new KeywardError('USAGE', `${key} must be a whole number from ${min} to ${max}`);
  return n;
}

const entryOut = (e: ReadEntry) => ({
  seq: e.seq,
  time: e.time,
  type: e.type,
  epoch: e.epoch,
  hash: e.hash,
  body: e.body,
});

export class Views {
  constructor(private readonly host: ViewsHost) {}

  /** Policy, approval and a denial's record, for a list or a read of the log. */
  private async authorize(
    asker: Peer,
    kind: Extract<RequestKind, 'list' | 'audit'>,
    target: string,
    what: string,
  ): Promise<string | undefined> {
    const { rule } = await this.host.gate.authorize(asker, {
      target,
      kind,
      action: kind,
      auditType: kind === 'list' ? 'vault.list' : 'audit.read',
      what,
      exists: true,
    });
    return rule;
  }

  /** Names and metadata of the secrets, or names and public halves of the keys: never a value. */
  async list(asker: Peer, meta: Record<string, unknown>): Promise<Reply> {
    const what = str(meta, 'kind') === 'keys' ? 'keys' : 'secrets';
    const w = this.host.window;
    // quiet: a convenience (key generate's "is the name taken?") that lists only where the
    // policy allows it outright: never a prompt, a denial on record, or a count toward the
    // circuit breaker. What it learns, the policy's decision, `policy explain` says anyway.
    if (meta['quiet'] === true) {
      const request = { target: what, kind: 'list' as const, action: 'list' };
      if (!this.host.gate.allowsOutright(w.currentPolicy(w.unlocked()), request, asker.id))
        return { meta: { withheld: true } };
    }
    const rule = await this.authorize(asker, 'list', what, `list the names of the ${what}`);
    const v = w.unlocked();
    const body =
      what === 'keys'
        ? {
            keys: listKeys(v).map((k) => ({
              name: k.name,
              type: k.type,
              bits: k.bits,
              publicBlob: k.publicBlob.toString('base64'),
            })),
          }
        : { entries: v.list() };
    const n = 'keys' in body ? body.keys.length : body.entries.length;
    await this.host.record({
      type: 'vault.list',
      target: what,
      actor: actorOf(asker.id),
      decision: 'allow',
      details: { rule: rule ?? null, count: n },
    });
    if (!w.stillOpen(v)) throw locked();
    // In raw, not the meta: a vault of many names outgrows a meta.
    return { meta: { count: n }, raw: jsonRaw(body) };
  }

  /**
   * The audit log read with the vault this agent holds. `tail`: the last `count` entries, bodies
   * open; `entries`: those after seq `after`, a page at a time (`audit export --decrypt`);
   * `verify`: the chain, every MAC and the checkpoint. The read is recorded after it is made, so
   * a tail doesn't show itself.
   */
  async audit(asker: Peer, meta: Record<string, unknown>): Promise<Reply> {
    const op = str(meta, 'op');
    if (op !== 'tail' && op !== 'entries' && op !== 'verify')
      throw new KeywardError('USAGE', `unknown audit operation ${op ?? '(none)'}`);
    // Checked before the policy is asked: a malformed request never reaches a person.
    const which: EntrySelection =
      op === 'tail'
        ? { last: count(meta, 'count', 1, MAX_TAIL), maxBytes: PAGE_BYTES }
        : op === 'entries'
          ? { after: count(meta, 'after', 0, Number.MAX_SAFE_INTEGER), maxBytes: PAGE_BYTES }
          : {};
    const target = op === 'verify' ? 'verify' : 'tail';
    const what =
      op === 'verify'
        ? 'verify the audit log with its key'
        : 'read the audit log (who asked for what, and what was decided)';
    const rule = await this.authorize(asker, 'audit', target, what);
    const w = this.host.window;
    const v = w.unlocked();
    let reply: Reply;
    let details: Record<string, string | number | boolean | null>;
    if (op === 'verify') {
      const r = verifyLog({ home: this.host.home, vault: v });
      details = { op, ok: r.ok, entries: r.entries };
      reply = { meta: { ok: r.ok }, raw: jsonRaw(r) };
    } else {
      const entries = readEntries(this.host.home, v, undefined, which);
      details = { op, entries: entries.length, from: entries[0]?.seq ?? null };
      // A tail cut to the page's bytes says so: the CLI tells the person to export the rest.
      const cut = op === 'tail' && entries.length < (which.last ?? 0) && entries[0]?.seq !== 1;
      reply = {
        meta: { count: entries.length },
        raw: jsonRaw({ entries: entries.map(entryOut), ...(cut ? { cut: true } : {}) }),
      };
    }
    await this.host.record({
      type: 'audit.read',
      target,
      actor: actorOf(asker.id),
      decision: 'allow',
      details: { rule: rule ?? null, ...details },
    });
    if (!w.stillOpen(v)) throw locked();
    return reply;
  }

  /**
   * The decision the policy in force (the applied one, held in the vault) makes for the caller
   * the request describes. Facts, not a release: not asked of the policy, not recorded.
   */
  explain(meta: Record<string, unknown>): Reply {
    const w = this.host.window;
    const v = w.unlocked();
    const kind = str(meta, 'kind');
    if (kind !== 'secret' && kind !== 'key' && kind !== 'list' && kind !== 'audit')
      throw new KeywardError('USAGE', `unknown kind ${kind ?? '(none)'}`);
    const target = str(meta, 'target');
    if (target === undefined) throw new KeywardError('USAGE', 'explain needs a target');
    const c = (meta['caller'] ?? {}) as Record<string, unknown>;
    const strings = (x: unknown) =>
      Array.isArray(x) ? x.filter((s): s is string => typeof s === 'string') : [];
    const caller: Caller = {
      exe: str(c, 'exe'),
      exeSha256: str(c, 'exeSha256'),
      uid: typeof c['uid'] === 'number' ? c['uid'] : undefined,
      cwd: str(c, 'cwd'),
      ancestors: strings(c['ancestors']).map((exe) => ({ exe })),
      loaderVars: strings(c['loaderVars']).map((name) => ({ name })),
    };
    const d = this.host.gate.explain(
      w.currentPolicy(v),
      { target, kind, action: 'explain' },
      caller,
    );
    const loaded = w.loaded;
    return {
      meta: { version: loaded?.version ?? null, sha256: loaded?.sha256 ?? null },
      raw: jsonRaw(d),
    };
  }
}
