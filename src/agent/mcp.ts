/**
 * What `keyward mcp wrap` asks of the agent (docs/MCP.md, "The gateway"; docs/PROTOCOL.md, the
 * mcp request), by meta.op:
 * - policy: the verified policy's mcp section;
 * - review: a server's tool definitions (their hashes) checked against the pins in the vault;
 *   what must be pinned or remembered is written to the vault here, by the agent, under the
 *   vault lock, and audited with the asker's identity;
 * - pins: the pins of one server or all, for `keyward mcp pins list` and `diff`;
 * - scan: which released values a message holds (docs/MCP.md, "Leak blocking"), with a copy in
 *   which the verbatim ones are concealed. Values never leave the agent;
 * - call: a tools/call about to be forwarded: its arguments scanned (when the gateway sends
 *   them: leak blocking on) and, when they hold no released value, its mcp.call record made
 *   durable here, with the asker's identity as the actor, before the answer.
 * No request returns a keyed hash or anything else only the vault could make.
 */
import { createHash } from 'node:crypto';
import type { AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { secureFree, secureRelease, secureTake, type SecureBuffer } from '../lib/secure.js';
import { TokenBucket, type McpPolicy } from '../policy/index.js';
import { Masker } from '../run/index.js';
import type { Replaced, Vault } from '../vault/index.js';
import { actorOf } from './identity.js';
import { ScanViews } from './leak-scan.js';
import { ReleasedValues, type ReleasedHost } from './mcp-released.js';
import { readPinRecord, reviewPins, writePinRecord, type ReviewRequest } from './mcp-pins.js';
import type { Peer } from './peer.js';
import { ProtocolError, str, type Frame } from './protocol.js';
import type { Reply } from './release.js';
import { jsonRaw } from './replies.js';
import type { UnlockWindow } from './unlock.js';

export interface McpHost extends ReleasedHost {
  window: UnlockWindow;
  record(r: AuditRecord): Promise<unknown>;
}

const DEFAULT_MCP: McpPolicy = {
  tool_policy: 'none',
  allowed_tools: [],
  denied_tools: [],
  version_pinning: { enabled: true, on_change: 'block', auto_trust_first: true, on_new: 'block' },
  rate_limits: { per_tool: [] },
  leak_blocking: true,
};

const SERVER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const HEX64 = /^[0-9a-f]{64}$/;
/** The id a gateway forwards a call under (base64url and digits): recorded with the call. */
const CALL_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** A scan costs a token per 64 KiB looked at (at least one). */
const SCAN_TOKEN_BYTES = 64 * 1024;

const mcpShas = new WeakMap<object, string>();

/** The SHA-256 of an mcp section as the agent sends it (op policy): what a call names. */
function mcpSha256(mcp: McpPolicy): string {
  let sha = mcpShas.get(mcp);
  if (sha === undefined) {
    sha = createHash('sha256').update(JSON.stringify(mcp)).digest('hex');
    mcpShas.set(mcp, sha);
  }
  return sha;
}

export class McpService {
  /**
   * Per connection (a gateway keeps one): one process can't starve another's scans. The oracle
   * a scan is ("is this a released value?") is bounded by the length a value needs to be looked
   * for at all (SCAN_MIN_BYTES), not by this rate.
   */
  private readonly scanBuckets = new WeakMap<Peer, TokenBucket>();

  /** The released values a scan looks for, and their forms (mcp-released.ts). */
  private readonly values: ReleasedValues;

  constructor(private readonly host: McpHost) {
    this.values = new ReleasedValues(host);
  }

  /** Wipes every kept value and form (the agent locks); see ReleasedValues.forget. */
  forget(v?: Vault): void {
    this.values.forget(v);
  }

  /** Released values a re-read of the vault replaced or removed (ReleasedValues.replaced). */
  replaced(values: Replaced[]): void {
    this.values.replaced(values);
  }

  async handle(asker: Peer, f: Frame): Promise<Reply> {
    const w = this.host.window;
    const op = str(f.meta, 'op');
    try {
      const v = w.unlocked();
      if (op === 'policy') {
        const mcp = w.currentPolicy(v).mcp ?? DEFAULT_MCP;
        return { meta: { mcp, mcpSha256: mcpSha256(mcp) } };
      }
      if (op === 'scan') return this.scan(asker, v, f, f.meta['redact'] === true);
      if (op === 'call') return await this.call(asker, v, f);
      if (op === 'review') return await this.review(asker, v, f);
      if (op === 'pins') {
        const all = readPinRecord(v).servers;
        const server = str(f.meta, 'server');
        const servers =
          server === undefined ? all : Object.hasOwn(all, server) ? { [server]: all[server] } : {};
        // In raw: a record of many servers outgrows a frame's meta.
        return { meta: {}, raw: jsonRaw({ servers }) };
      }
      throw new ProtocolError(`unknown mcp operation ${op ?? ''}`);
    } finally {
      // Given back once: the caller's error path (server.ts) frees what is left in f.raw.
      secureRelease(f.raw);
      f.raw = undefined;
    }
  }

  private async review(asker: Peer, v: Vault, f: Frame): Promise<Reply> {
    // Names and hashes: public, so a string here holds nothing secret.
    let body: unknown;
    try {
      body = f.raw && f.raw.length > 0 ? JSON.parse(f.raw.toString('utf8')) : {};
    } catch {
      throw new ProtocolError('review: the body is not JSON');
    }
    // Parsed: the bytes go before anything waits (the vault's lock, the audit log's).
    secureRelease(f.raw);
    f.raw = undefined;
    const req = parseReview({ ...(body as Record<string, unknown>), ...f.meta });
    const w = this.host.window;
    const pinning = (w.currentPolicy(v).mcp ?? DEFAULT_MCP).version_pinning;
    let result = reviewPins(readPinRecord(v), req, pinning);
    if (result.changed) {
      // Again under the vault lock, on the vault as it is now: another gateway or a pins trust
      // may have written since; only what this review learned is added to that.
      result = await w.write((fresh) => {
        const record = readPinRecord(fresh);
        const again = reviewPins(record, req, pinning);
        if (again.changed) writePinRecord(fresh, record);
        return { result: again, save: again.changed };
      });
    }
    for (const e of result.events) {
      await this.host.record({
        type: 'mcp.call',
        target: req.server,
        actor: actorOf(asker.id),
        decision: e.decision,
        reason: e.reason,
        details: e.details,
      });
    }
    return {
      meta: {},
      raw: jsonRaw({ tools: result.tools, instructions: result.instructions ?? null }),
    };
  }

  /**
   * A tools/call the gateway will forward once this answers: recorded: true when its record is
   * durable. Arguments that hold a released value are not recorded here (found says which; the
   * gateway refuses the call and records that). The record is the agent's, so its actor is the
   * gateway as the agent identified it, and it rides the agent's group commit.
   */
  private async call(asker: Peer, v: Vault, f: Frame): Promise<Reply> {
    const server = str(f.meta, 'server') ?? '';
    if (!SERVER_NAME.test(server)) throw new ProtocolError('call: a server name');
    const tool = f.meta['tool'];
    if (typeof tool !== 'string' || tool.length > 1024)
      throw new ProtocolError('call: a tool name');
    const argsSha256 = f.meta['argsSha256'];
    if (typeof argsSha256 !== 'string' || !HEX64.test(argsSha256))
      throw new ProtocolError('call: argsSha256, a SHA-256 in hex');
    // Optional (a gateway of an older keyward sends none).
    const callId = f.meta['call'];
    if (callId !== undefined && (typeof callId !== 'string' || !CALL_ID.test(callId)))
      throw new ProtocolError('call: the id, up to 64 of A-Z a-z 0-9 _ -');
    // The mcp section the gateway decided the call under (op policy's mcpSha256): a call decided
    // under another than the one in force is not recorded; the gateway reads it again and
    // decides again (its copy may be up to a second old).
    const decidedUnder = f.meta['policy'];
    if (typeof decidedUnder !== 'string' || !HEX64.test(decidedUnder))
      throw new ProtocolError(
        'call: policy, the SHA-256 of the mcp section the call was decided under',
      );
    const inForce = this.host.window.currentPolicy(v).mcp ?? DEFAULT_MCP;
    if (decidedUnder !== mcpSha256(inForce))
      return { meta: { found: [], hidden: [], recorded: false, stale: true } };
    if (f.raw) {
      const { meta } = this.scan(asker, v, f, false);
      if ((meta['found'] as string[]).length > 0) return { meta: { ...meta, recorded: false } };
    } else {
      // Without raw, nothing to scan: only while the policy has leak blocking off; and each
      // record costs the asker a token all the same (no free flood of appends).
      if ((this.host.window.currentPolicy(v).mcp ?? DEFAULT_MCP).leak_blocking)
        throw new KeywardError(
          'POLICY_DENIED',
          'leak blocking is on: a call is recorded only with its arguments, scanned',
        );
      if (!this.bucket(asker).take(Date.now(), 1))
        throw new KeywardError('POLICY_DENIED', 'too many calls recorded; try again in a moment');
    }
    // The scanned bytes go now, not after the record: a record that waits (the log's lock held
    // by another process, up to its timeout) must not keep secure memory pinned.
    secureRelease(f.raw);
    f.raw = undefined;
    await this.host.record({
      type: 'mcp.call',
      target: server,
      actor: actorOf(asker.id),
      decision: 'allow',
      details: { server, tool, argsSha256, ...(callId === undefined ? {} : { call: callId }) },
    });
    return { meta: { found: [], hidden: [], recorded: true } };
  }

  /**
   * raw: the message as it will be sent, then (meta.parts gives the lengths) the concatenation
   * of its strings. found: the names whose values it holds; hidden: those found only in a
   * transformed form, which can't be concealed in place (the gateway withholds the message).
   */
  /** The asker's budget of scans (and of calls recorded without one). */
  private bucket(asker: Peer): TokenBucket {
    let bucket = this.scanBuckets.get(asker);
    if (!bucket) this.scanBuckets.set(asker, (bucket = new TokenBucket(6000, 1000, Date.now())));
    return bucket;
  }

  private scan(asker: Peer, v: Vault, f: Frame, redact: boolean): Reply {
    const data = f.raw ?? Buffer.alloc(0);
    const watched = this.values.current(v);
    // Nothing released, nothing to find: no budget spent, no view built.
    if (watched.length === 0) return { meta: { found: [], hidden: [] } };
    if (!this.bucket(asker).take(Date.now(), 1 + Math.floor(data.length / SCAN_TOKEN_BYTES)))
      throw new KeywardError('POLICY_DENIED', 'too many leak scans; try again in a moment');
    const lengths = Array.isArray(f.meta['parts']) ? (f.meta['parts'] as unknown[]) : [data.length];
    // The message, its strings, its strings with keys: never more.
    if (lengths.length > 3) throw new ProtocolError('scan: at most three parts');
    const parts: Uint8Array[] = [];
    let at = 0;
    for (const n of lengths) {
      if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0 || at + n > data.length)
        throw new ProtocolError('scan: parts must add up to the bytes sent');
      parts.push(data.subarray(at, at + n));
      at += n;
    }
    if (at !== data.length) throw new ProtocolError('scan: parts must add up to the bytes sent');
    const found: string[] = [];
    const hidden: string[] = [];
    // Kept by this service (formsOf): not freed here.
    const values: Array<{ name: string; value: SecureBuffer; forms: SecureBuffer[] }> = [];
    const views = new ScanViews(parts);
    let after: ScanViews | undefined;
    try {
      for (const w of watched) {
        const { value, forms } = this.values.formsOf(w);
        if (!value) continue;
        const { name } = w;
        values.push({ name, value, forms });
        const where = views.find(value, forms);
        // One name may stand for values of two versions of a sealed file: said once.
        if (where && !found.includes(name)) found.push(name);
        if (where === 'hidden' && !hidden.includes(name)) hidden.push(name);
      }
      if (!redact || found.length === 0 || hidden.length > 0) return { meta: { found, hidden } };
      // Concealed where the forms stand, in the message and in its strings; then every view is
      // searched again: a copy in another form (hex beside the plain value, say) is still a
      // leak, and the message is withheld.
      const all = values.flatMap((x) => x.forms);
      const concealed = parts.map((p) => {
        if (p.length === 0) return secureTake(Buffer.from(' '));
        const masker = new Masker(all);
        try {
          return secureTake(Buffer.concat([masker.push(Buffer.from(p)), masker.flush()]));
        } finally {
          masker.destroy();
        }
      });
      after = new ScanViews(concealed);
      for (const x of values)
        if (after.find(x.value, x.forms) && !hidden.includes(x.name)) hidden.push(x.name);
      for (const c of concealed.slice(1)) secureFree(c);
      const out = concealed[0];
      if (hidden.length > 0 || !out) {
        secureFree(out);
        return { meta: { found, hidden } };
      }
      return { meta: { found, hidden }, raw: out };
    } finally {
      views.destroy();
      after?.destroy();
    }
  }
}

function parseReview(meta: Record<string, unknown>): ReviewRequest {
  const server = str(meta, 'server') ?? '';
  if (!SERVER_NAME.test(server)) throw new ProtocolError('review: a server name');
  const caps = meta['caps'];
  if (!Array.isArray(caps) || caps.some((c) => typeof c !== 'string' || c.length > 64))
    throw new ProtocolError('review: caps, a list of names');
  const tools = meta['tools'];
  if (tools !== undefined && tools !== null) {
    if (!Array.isArray(tools) || tools.length > 10_000)
      throw new ProtocolError('review: tools, a list');
    for (const t of tools as unknown[]) {
      const o = t as Record<string, unknown>;
      if (
        typeof o !== 'object' ||
        o === null ||
        typeof o['name'] !== 'string' ||
        o['name'].length > 1024 ||
        typeof o['sha256'] !== 'string' ||
        !HEX64.test(o['sha256']) ||
        typeof o['body'] !== 'string' ||
        !HEX64.test(o['body'])
      )
        throw new ProtocolError('review: each tool has a name, sha256 and body');
    }
  }
  const instructions = meta['instructions'];
  if (instructions !== undefined && instructions !== null)
    if (typeof instructions !== 'string' || !HEX64.test(instructions))
      throw new ProtocolError('review: instructions, a SHA-256 in hex');
  const legacyInstructions = meta['legacyInstructions'];
  if (legacyInstructions !== undefined && legacyInstructions !== null)
    if (typeof legacyInstructions !== 'string' || !HEX64.test(legacyInstructions))
      throw new ProtocolError('review: legacyInstructions, a SHA-256 in hex');
  const legacy = meta['legacy'];
  if (legacy !== undefined && legacy !== null)
    if (
      typeof legacy !== 'object' ||
      Object.values(legacy).some((h) => typeof h !== 'string' || !HEX64.test(h))
    )
      throw new ProtocolError('review: legacy, names and SHA-256 hashes');
  return {
    server,
    caps: caps as string[],
    ...(Array.isArray(tools) ? { tools: tools as NonNullable<ReviewRequest['tools']> } : {}),
    ...(typeof instructions === 'string' ? { instructions } : {}),
    ...(legacy && typeof legacy === 'object' ? { legacy: legacy as Record<string, string> } : {}),
    ...(typeof legacyInstructions === 'string' ? { legacyInstructions } : {}),
  };
}
