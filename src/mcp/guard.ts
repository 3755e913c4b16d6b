/**
 * What the gateway asks before a message passes (docs/MCP.md, "The gateway"): the policy's mcp
 * section, the agent's review of tool definitions and instructions against the pins in the
 * vault, and the agent's leak scan. The gateway (gateway.ts) routes messages; this decides.
 */
import { jsonBody } from '../agent/index.js';
import type { AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { secureRelease, secureTake, type SecureBuffer } from '../lib/secure.js';
import { quote } from '../lib/text.js';
import type { McpPolicy } from '../policy/index.js';
import type { AgentLink } from './agent-link.js';
import { methodLabel } from './messages.js';
import { definitionHash, loadDefinitions, recordDefinitions, toolDefinition } from './pins.js';
import { allowedByPolicy } from './tools.js';
import type { Json } from './upstream.js';

interface Verdict {
  state: string;
  blocked: boolean;
  alert: boolean;
  what?: string;
}

export interface Scanned {
  /** The message, with the values found concealed (when it was asked to conceal). */
  out: Json;
  found: string[];
  /** Found in a form that can't be concealed in place (or the result could not be read). */
  withheld: boolean;
  /** Not scanned: the agent could not, and the message's method may pass so (unscanned). */
  blind?: true;
}

const POLICY_TTL_MS = 1000;

export const message = (e: unknown): string => (e instanceof Error ? e.message : 'error');
/** The agent can't scan: locked (it can't read the values) or not running. */
const cannotScan = (e: unknown) =>
  e instanceof KeywardError && (e.code === 'AGENT_LOCKED' || e.code === 'AGENT_UNAVAILABLE');

/**
 * Every string (and number) value in a message, in order (with keys too, when keys is set):
 * joined, they show a value split across fields.
 */
function stringsOf(value: unknown, keys: boolean, out: string[] = []): string[] {
  if (typeof value === 'string') out.push(value);
  else if (typeof value === 'number' || typeof value === 'bigint') out.push(String(value));
  else if (Array.isArray(value)) for (const v of value) stringsOf(v, keys, out);
  else if (value !== null && typeof value === 'object')
    for (const [k, v] of Object.entries(value)) {
      if (keys) out.push(k);
      stringsOf(v, keys, out);
    }
  return out;
}

/**
 * What the agent scans of a message: the message as sent, its strings joined, its strings and
 * keys joined (meta.parts gives their lengths), in secure memory.
 */
function scanBody(m: Json): { parts: number[]; raw: SecureBuffer } {
  const pieces = [JSON.stringify(m), stringsOf(m, false).join(''), stringsOf(m, true).join('')].map(
    (t) => Buffer.from(t, 'utf8'),
  );
  const parts = pieces.map((b) => b.length);
  const raw = secureTake(Buffer.concat(pieces), true);
  for (const b of pieces) b.fill(0);
  return { parts, raw };
}

/** A JSON body for an agent request, in secure memory like any raw bytes. */
const body = (o: unknown): SecureBuffer => secureTake(Buffer.from(JSON.stringify(o), 'utf8'));

/**
 * Which released values m holds, as the agent scans it (with redact, a concealed copy, scanned
 * again as it will be sent: a copy split across fields beside a verbatim one is still there after
 * concealing). unscanned: m carries nothing a model wrote, and may pass when the agent can't scan.
 */
export async function scanWith(
  link: AgentLink,
  m: Json,
  redact: boolean,
  unscanned = false,
): Promise<Scanned> {
  const clean = { out: m, found: [], withheld: false };
  const { parts, raw } = scanBody(m);
  let f;
  try {
    f = await link.mcp({ op: 'scan', parts, redact }, raw);
  } catch (e) {
    if (unscanned && cannotScan(e)) return { ...clean, blind: true };
    throw e;
  }
  const found = (f.meta['found'] ?? []) as string[];
  const hidden = (f.meta['hidden'] ?? []) as string[];
  try {
    if (found.length === 0) return clean;
    if (!redact || hidden.length > 0 || !f.raw) return { out: m, found, withheld: true };
    let out: Json;
    try {
      out = JSON.parse(f.raw.toString('utf8')) as Json;
    } catch {
      return { out: m, found, withheld: true };
    }
    const again = await scanWith(link, out, false);
    return again.found.length > 0
      ? { out: m, found, withheld: true }
      : { out, found, withheld: false };
  } finally {
    secureRelease(f.raw);
  }
}

export class Guard {
  /** Tools the client may see and call, by name (with their hash), with why others may not. */
  visible = new Map<string, string>();
  refused = new Map<string, string>();
  /** The client's capabilities (from initialize): which tools a server lists depends on them. */
  clientCaps: string[] = [];
  private cachedPolicy: { at: number; p: McpPolicy } | undefined;
  /** Each policy read's SHA-256 as the agent gave it: a call names the one it was decided under. */
  private readonly shas = new WeakMap<McpPolicy, string>();

  constructor(
    private readonly name: string,
    private readonly home: string,
    private readonly link: AgentLink,
    private readonly record: (r: AuditRecord) => void,
    private readonly log: (line: string) => void,
  ) {}

  /**
   * The policy's mcp section, from the agent (it is the verified policy), at most a second old
   * (fresh: read now). A call is decided under the one in force all the same: the agent refuses
   * to record one decided under another (call, stale), and the gateway decides it again. A list,
   * and whether a message is scanned, follow a copy at most a second old. Errors are never cached.
   */
  async policy(fresh = false): Promise<McpPolicy | { error: string }> {
    const c = this.cachedPolicy;
    if (!fresh && c && Date.now() - c.at < POLICY_TTL_MS) return c.p;
    try {
      const { meta } = await this.link.mcp({ op: 'policy' });
      const p = meta['mcp'] as McpPolicy;
      const sha = meta['mcpSha256'];
      if (typeof sha !== 'string')
        throw new Error(
          'the agent is older than this keyward; restart it (keyward agent stop, then keyward agent start)',
        );
      this.shas.set(p, sha);
      this.cachedPolicy = { at: Date.now(), p };
      return p;
    } catch (e) {
      this.cachedPolicy = undefined;
      return { error: message(e) };
    }
  }

  /**
   * A tools/call about to be forwarded (under callId, which its records name), in one round
   * trip to the agent: its arguments scanned (with leak blocking) and, when they hold no
   * released value, its mcp.call record made durable by the agent. Returns the names found
   * (then nothing was recorded); throws when the call could not be checked or recorded.
   */
  async call(
    m: Json,
    tool: string,
    argsSha256: string,
    callId: string,
    p: McpPolicy,
  ): Promise<string[] | 'stale'> {
    const meta = {
      op: 'call',
      server: this.name,
      tool,
      argsSha256,
      call: callId,
      policy: this.shas.get(p) ?? '',
    };
    let f;
    try {
      if (p.leak_blocking) {
        const { parts, raw } = scanBody(m);
        f = await this.link.mcp({ ...meta, parts }, raw);
      } else f = await this.link.mcp(meta);
    } catch (e) {
      if (e instanceof KeywardError && /unknown mcp operation/.test(e.message))
        throw new Error(
          'the agent is older than this keyward; restart it (keyward agent stop, then keyward agent start)',
          { cause: e },
        );
      throw e;
    }
    if (f.meta['stale'] === true) return 'stale';
    const found = (f.meta['found'] ?? []) as string[];
    if (found.length > 0) return found;
    if (f.meta['recorded'] !== true) throw new Error('the agent did not record the call');
    return [];
  }

  /** An mcp.call record; one that can't be written is said on stderr, not thrown. */
  audit(r: Omit<AuditRecord, 'type'>): void {
    try {
      this.record({ type: 'mcp.call', ...r });
    } catch (e) {
      this.log(`keyward mcp wrap: the audit log could not be written (${message(e)})`);
    }
  }

  leakAudit(what: string, found: string[], decision: 'deny' | 'info', reason: string): void {
    this.audit({
      target: this.name,
      decision,
      reason,
      details: {
        server: this.name,
        method: methodLabel(what),
        secrets: found.join(','),
        event: 'leak',
      },
    });
  }

  /**
   * Which released values m holds, as the agent scans it (with redact, a concealed copy).
   * unscanned: m carries nothing a model wrote, and may pass when the agent can't scan.
   */
  async scan(m: Json, redact: boolean, unscanned = false): Promise<Scanned> {
    const p = await this.policy();
    if (!('error' in p) && !p.leak_blocking) return { out: m, found: [], withheld: false };
    return scanWith(this.link, m, redact, unscanned);
  }

  /** Hashes an older keyward pinned for this server: they can only restrict. */
  private legacy(): {
    tools?: Record<string, string> | undefined;
    instructions?: string | undefined;
  } {
    try {
      const f = loadDefinitions(this.home);
      return { tools: f.legacy[this.name], instructions: f.legacyInstructions?.[this.name] };
    } catch {
      return {};
    }
  }

  private fileDefinitions(defs: string[]): void {
    try {
      recordDefinitions(this.home, this.name, defs);
    } catch (e) {
      this.log(`keyward mcp wrap: definitions were not filed for pins diff (${message(e)})`);
    }
  }

  /**
   * Checks a whole tools/list against the policy and the pins (the agent's review); returns the
   * tools to show and sets what may be called.
   */
  async reviewTools(tools: Json[]): Promise<Json[]> {
    const name = this.name;
    const p = await this.policy();
    // Built aside and swapped in at the end: a call during a review sees the last whole one.
    const nextVisible = new Map<string, string>();
    const nextRefused = new Map<string, string>();
    const defs = tools.map((t) => ({
      name: String(t['name']),
      definition: toolDefinition(t),
      sha256: definitionHash(toolDefinition(t)),
      body: definitionHash(toolDefinition(t, false)),
    }));
    let verdicts: Record<string, Verdict> | undefined;
    let failed = 'error' in p ? `the gateway policy could not be read (${p.error})` : undefined;
    if (!failed) {
      try {
        // The listing goes in the body: a server with many tools outgrows a frame's meta.
        const r = await this.link.mcp(
          { op: 'review', server: name, caps: this.clientCaps },
          body({
            tools: defs.map(({ name: n, sha256: h, body: b }) => ({ name: n, sha256: h, body: b })),
            legacy: this.legacy().tools ?? null,
          }),
        );
        verdicts = jsonBody<{ tools?: Record<string, Verdict> }>(r).tools;
      } catch (e) {
        failed = `the pins could not be checked (${message(e)})`;
      }
    }
    this.fileDefinitions(defs.map((d) => d.definition));
    const shown: Json[] = [];
    for (const [i, t] of tools.entries()) {
      const d = defs[i];
      if (!d) continue;
      const v = verdicts && Object.hasOwn(verdicts, d.name) ? verdicts[d.name] : undefined;
      let why: string | undefined;
      // The server names its tools: quoted, so a name can't write a sentence of its own.
      const tn = quote(d.name);
      if (failed || !v || 'error' in p) why = `${failed ?? 'no verdict on the tool'}: fail closed`;
      else if (v.state === 'untrusted')
        why = `tool ${tn} is not trusted yet: keyward mcp pins trust ${name} ${tn}`;
      else if (v.blocked)
        why = `tool ${tn} was blocked: ${v.what ?? v.state} (keyward mcp pins diff ${name} ${tn})`;
      else if (!allowedByPolicy(p, name, d.name, d.sha256))
        why = `tool ${tn} is not allowed by the policy (mcp.${p.tool_policy})`;
      if (!why && v?.alert) this.log(`keyward mcp wrap: ${name}: tool ${tn} ${v.what ?? v.state}`);
      if (why) nextRefused.set(d.name, why);
      else {
        nextVisible.set(d.name, d.sha256);
        shown.push(t);
      }
    }
    this.visible = nextVisible;
    this.refused = nextRefused;
    return shown;
  }

  /** An initialize answer's instructions reach the model only as the pins trust them. */
  async reviewInstructions(m: Json): Promise<void> {
    const result = m['result'] as Json | undefined;
    if (!result || typeof result !== 'object' || !('instructions' in result)) return;
    const text = result['instructions'];
    if (typeof text !== 'string') {
      // Instructions are text (MCP's InitializeResult). Anything else is reviewed by no pin, and
      // a client that turns it into text (or reads a list of them) would show it to the model.
      this.log(`keyward mcp wrap: ${this.name}: instructions dropped (not text)`);
      delete result['instructions'];
      return;
    }
    this.fileDefinitions([text]);
    try {
      const legacy = this.legacy().instructions;
      const r = await this.link.mcp({
        op: 'review',
        server: this.name,
        caps: this.clientCaps,
        instructions: definitionHash(text),
        ...(legacy ? { legacyInstructions: legacy } : {}),
      });
      const v = jsonBody<{ instructions?: Verdict | null }>(r).instructions;
      if (!v || v.blocked) delete result['instructions'];
      else if (v.alert)
        this.log(`keyward mcp wrap: ${this.name}: the instructions ${v.what ?? v.state}`);
    } catch (e) {
      // Unchecked instructions don't reach the model.
      this.log(`keyward mcp wrap: ${this.name}: instructions dropped (${message(e)})`);
      delete result['instructions'];
    }
  }
}
