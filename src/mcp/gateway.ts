/**
 * `keyward mcp wrap --name NAME -- CMD ARGS` (docs/MCP.md, "The gateway"): a stdio proxy between
 * any MCP client (this process's stdin and stdout) and any MCP server (the child), working on
 * JSON-RPC messages, one per line. It passes everything through except what it guards:
 *
 * - tools/list results: tools the policy doesn't allow, and tools whose definition changed from
 *   its pin (on_change: block) or was never trusted, disappear; pins are checked and recorded
 *   (keyed hashes from the agent); a tool renamed with the same definition is recognised.
 * - initialize results: the server's instructions are pinned the same way.
 * - tools/call requests: refused with a JSON-RPC error when the tool is not allowed, blocked,
 *   over a rate limit, or when the arguments hold a value keyward released (any encoding).
 * - tools/call results: released values are redacted.
 * - notifications/tools/list_changed: the gateway re-lists the tools itself before passing it on.
 *
 * Every tools/call is audited (server, tool, decision, hash of the arguments). Without the
 * policy (agent locked or not running) it fails closed: no tool is listed or callable.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import readline from 'node:readline';
import picomatch from 'picomatch';
import { call } from '../agent/index.js';
import type { AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { secureFree, secureTake } from '../lib/secure.js';
import { TokenBucket, type McpPolicy } from '../policy/index.js';
import { loadPins, savePins, serverPins, toolDefinition, type Pin } from './pins.js';

export interface WrapOptions {
  name: string;
  command: string[];
  home: string;
  agentSocket: string;
  record: (r: AuditRecord) => void;
  log: (line: string) => void;
}

type Json = Record<string, unknown>;
type Id = string | number;

const ERR_REFUSED = -32001;
const ERR_SERVER_GONE = -32002;
const POLICY_TTL_MS = 1000;

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

export async function wrapMcp(o: WrapOptions): Promise<number> {
  const [cmd, ...args] = o.command;
  if (!cmd) throw new KeywardError('USAGE', 'mcp wrap needs the server command after --');
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  let serverGone: string | undefined;
  const toClient = (m: Json): void => {
    process.stdout.write(`${JSON.stringify(m)}\n`);
  };
  const toServer = (m: Json) => {
    if (!serverGone && child.stdin.writable) child.stdin.write(`${JSON.stringify(m)}\n`);
  };
  const errorReply = (id: Id, code: number, message: string): void =>
    toClient({ jsonrpc: '2.0', id, error: { code, message } });

  // What the client asked the server, by id, so the answers can be looked at.
  const pending = new Map<Id, { method: string; tool?: string; argsHash?: string }>();
  // The gateway's own requests to the server.
  let ownId = 0;
  const own = new Map<string, (m: Json) => void>();
  const ask = (method: string, params: Json = {}) =>
    new Promise<Json>((resolve) => {
      const id = `keyward-gateway-${++ownId}`;
      own.set(id, resolve);
      toServer({ jsonrpc: '2.0', id, method, params });
    });

  const agent = async (op: string, meta: Json, data?: string) => {
    const raw = data === undefined ? undefined : secureTake(Buffer.from(data, 'utf8'));
    return call(o.agentSocket, 'mcp', { op, ...meta }, raw);
  };
  /**
   * The policy's mcp section, from the agent (it is the verified policy), at most a second old:
   * a policy change or a lock takes effect within a second, and a call costs one agent request
   * less. Errors are never cached.
   */
  let cachedPolicy: { at: number; p: McpPolicy } | undefined;
  const policy = async (): Promise<McpPolicy | { error: string }> => {
    if (cachedPolicy && Date.now() - cachedPolicy.at < POLICY_TTL_MS) return cachedPolicy.p;
    const p = await readPolicy();
    cachedPolicy = 'error' in p ? undefined : { at: Date.now(), p };
    return p;
  };
  const readPolicy = async (): Promise<McpPolicy | { error: string }> => {
    try {
      const f = await agent('policy', {});
      const m = f.meta['mcp'] as McpPolicy | null;
      return (
        m ?? {
          tool_policy: 'none',
          allowed_tools: [],
          denied_tools: [],
          version_pinning: { enabled: true, on_change: 'block', auto_trust_first: true },
          rate_limits: { per_tool: [] },
          leak_blocking: true,
        }
      );
    } catch (e) {
      return { error: e instanceof Error ? e.message : 'the policy could not be read' };
    }
  };
  const mac = async (label: string, data: string) =>
    String((await agent('mac', { label: `${o.name} ${label}` }, data)).meta['mac']);

  const matches = (refs: McpPolicy['allowed_tools'], tool: string, hash: string) =>
    refs.some(
      (r) =>
        picomatch(r.server, { dot: true })(o.name) &&
        picomatch(r.tool, { dot: true })(tool) &&
        (r.content_hash === undefined || r.content_hash === hash),
    );
  const allowedByPolicy = (p: McpPolicy, tool: string, hash: string) =>
    p.tool_policy === 'allowlist'
      ? matches(p.allowed_tools, tool, hash)
      : p.tool_policy === 'denylist'
        ? !matches(p.denied_tools, tool, hash)
        : true;

  /** Tools the client may see and call, by name, with why others may not. */
  let visible = new Map<string, string>();
  const refused = new Map<string, string>();
  let listed: Promise<void> | undefined;

  const audit = (r: Omit<AuditRecord, 'type'>) => {
    try {
      o.record({ type: 'mcp.call', ...r });
    } catch (e) {
      o.log(
        `keyward mcp wrap: the audit log could not be written (${e instanceof Error ? e.message : 'error'})`,
      );
    }
  };

  /** Checks a tools/list result against the policy and the pins; returns the tools to show. */
  const review = async (tools: Json[]): Promise<Json[]> => {
    const p = await policy();
    visible = new Map();
    refused.clear();
    if ('error' in p) {
      for (const t of tools)
        refused.set(
          String(t['name']),
          `the gateway policy could not be read (${p.error}): fail closed`,
        );
      return [];
    }
    const pins = loadPins(o.home);
    const sp = serverPins(pins, o.name);
    const pinning = p.version_pinning;
    const now = new Date().toISOString();
    const current = new Set(tools.map((t) => String(t['name'])));
    const shown: Json[] = [];
    let changed = false;
    for (const t of tools) {
      const name = String(t['name']);
      const definition = toolDefinition(t);
      const pin: Pin = {
        hash: await mac('tool', definition),
        bodyHash: await mac('tool body', toolDefinition(t, false)),
        definition,
        at: now,
      };
      let why: string | undefined;
      if (pinning.enabled) {
        const pinned = sp.tools[name];
        if (pinned && pinned.hash === pin.hash) {
          // As trusted.
        } else {
          const renamedFrom = pinned
            ? undefined
            : Object.entries(sp.tools).find(
                ([n, x]) => x.bodyHash === pin.bodyHash && !current.has(n),
              )?.[0];
          if (!pinned && !renamedFrom && pinning.auto_trust_first) {
            sp.tools[name] = pin;
            changed = true;
            audit({
              target: o.name,
              decision: 'info',
              reason: `pinned ${name} on first sight`,
              details: { server: o.name, tool: name, event: 'pinned', hash: pin.hash },
            });
          } else {
            const what = renamedFrom
              ? `renamed from ${renamedFrom} (same definition otherwise)`
              : pinned
                ? 'its definition changed since it was trusted'
                : 'it is new and not yet trusted';
            const before = sp.pending[name];
            if (!before || before.hash !== pin.hash) {
              sp.pending[name] = pin;
              changed = true;
              audit({
                target: o.name,
                decision: pinning.on_change === 'block' || !pinned ? 'deny' : 'info',
                reason: `tool ${name}: ${what}`,
                details: {
                  server: o.name,
                  tool: name,
                  event: 'changed',
                  hash: pin.hash,
                  on_change: pinning.on_change,
                },
              });
            }
            if (!pinned && !renamedFrom)
              why = `tool ${name} is not trusted yet: keyward mcp pins trust ${o.name} ${name}`;
            else if (pinning.on_change === 'block')
              why = `tool ${name} was blocked: ${what} (keyward mcp pins diff ${o.name} ${name})`;
            else if (pinning.on_change === 'alert')
              o.log(`keyward mcp wrap: ${o.name}: tool ${name} ${what}`);
          }
        }
      }
      if (!why && !allowedByPolicy(p, name, pin.hash))
        why = `tool ${name} is not allowed by the policy (mcp.${p.tool_policy})`;
      if (why) refused.set(name, why);
      else {
        visible.set(name, pin.hash);
        shown.push(t);
      }
    }
    if (changed) savePins(o.home, pins);
    return shown;
  };

  const relist = () => {
    listed = (async () => {
      const r = await ask('tools/list');
      const result = r['result'] as Json | undefined;
      await review(Array.isArray(result?.['tools']) ? (result['tools'] as Json[]) : []);
    })().catch((e: unknown) =>
      o.log(`keyward mcp wrap: listing tools failed (${e instanceof Error ? e.message : 'error'})`),
    );
    return listed;
  };

  const buckets = new Map<string, TokenBucket>();
  const overLimit = (p: McpPolicy, tool: string): string | undefined => {
    const now = Date.now();
    const bucket = (key: string, per: number, burst: number) => {
      let b = buckets.get(key);
      if (!b) buckets.set(key, (b = new TokenBucket(per, burst, now)));
      return b;
    };
    const g = p.rate_limits.global;
    if (g && !bucket('*', g.per_minute, g.burst).take(now))
      return `rate limit: at most ${g.per_minute} tool calls a minute (burst ${g.burst})`;
    for (const r of p.rate_limits.per_tool) {
      if (picomatch(r.server)(o.name) && picomatch(r.tool)(tool)) {
        if (!bucket(`${r.server}\u0000${r.tool}`, r.per_minute, r.burst).take(now))
          return `rate limit: at most ${r.per_minute} calls a minute of ${tool} (burst ${r.burst})`;
      }
    }
    return undefined;
  };

  /** A tools/call from the client: forwarded, or refused with the reason. */
  const toolCall = async (m: Json) => {
    const id = m['id'] as Id;
    const params = (m['params'] ?? {}) as Json;
    const tool = String(params['name'] ?? '');
    const argsText = JSON.stringify(params['arguments'] ?? {});
    const argsHash = sha256(argsText);
    const refuse = (why: string) => {
      audit({
        target: o.name,
        decision: 'deny',
        reason: why,
        details: { server: o.name, tool, argsSha256: argsHash },
      });
      errorReply(id, ERR_REFUSED, `keyward: ${why}`);
    };
    if (serverGone)
      return errorReply(
        id,
        ERR_SERVER_GONE,
        `keyward: the MCP server ${o.name} is gone (${serverGone})`,
      );
    await (listed ?? relist());
    const p = await policy();
    if ('error' in p)
      return refuse(`the gateway policy could not be read (${p.error}): fail closed`);
    if (!visible.has(tool)) return refuse(refused.get(tool) ?? `no tool ${tool} on ${o.name}`);
    const limited = overLimit(p, tool);
    if (limited) return refuse(limited);
    if (p.leak_blocking) {
      try {
        const found = (await agent('scan', {}, argsText)).meta['found'] as string[];
        if (found.length > 0)
          return refuse(`the arguments hold the value of ${found.join(', ')}; not sent`);
      } catch (e) {
        return refuse(
          `the arguments could not be checked for secrets (${e instanceof Error ? e.message : 'error'}): fail closed`,
        );
      }
    }
    pending.set(id, { method: 'tools/call', tool, argsHash });
    toServer(m);
  };

  /** A result from the server for one of the client's requests. */
  const answer = async (m: Json) => {
    const id = m['id'] as Id;
    const req = pending.get(id);
    pending.delete(id);
    if (req?.method === 'initialize') await pinInstructions(m);
    else if (req?.method === 'tools/list' && m['result']) {
      const result = m['result'] as Json;
      const tools = Array.isArray(result['tools']) ? (result['tools'] as Json[]) : [];
      listed = Promise.resolve();
      m = { ...m, result: { ...result, tools: await review(tools) } };
    } else if (req?.method === 'tools/call') {
      let redacted: string[] = [];
      const p = await policy();
      if (!('error' in p) && p.leak_blocking && m['result'] !== undefined) {
        const text = JSON.stringify(m['result']);
        try {
          const f = await agent('scan', { redact: true }, text);
          redacted = f.meta['found'] as string[];
          if (f.raw && redacted.length > 0)
            m = { ...m, result: JSON.parse(f.raw.toString('utf8')) as unknown };
          secureFree(f.raw);
        } catch {
          m = {
            jsonrpc: '2.0',
            id,
            error: {
              code: ERR_REFUSED,
              message: 'keyward: the result could not be checked for secrets: withheld',
            },
          };
        }
      }
      audit({
        target: o.name,
        decision: m['error'] ? 'error' : 'allow',
        details: {
          server: o.name,
          tool: req.tool ?? null,
          argsSha256: req.argsHash ?? null,
          redacted: redacted.join(',') || null,
        },
      });
    }
    toClient(m);
  };

  const pinInstructions = async (m: Json) => {
    const result = m['result'] as Json | undefined;
    const text =
      typeof result?.['instructions'] === 'string' ? (result['instructions'] as string) : undefined;
    const p = await policy();
    if (text === undefined || 'error' in p || !p.version_pinning.enabled) return;
    const pins = loadPins(o.home);
    const sp = serverPins(pins, o.name);
    const pin: Pin = {
      hash: await mac('instructions', text),
      bodyHash: '',
      definition: text,
      at: new Date().toISOString(),
    };
    if (!sp.instructions && p.version_pinning.auto_trust_first) {
      sp.instructions = pin;
      savePins(o.home, pins);
    } else if (sp.instructions?.hash !== pin.hash) {
      sp.pending['(instructions)'] = pin;
      savePins(o.home, pins);
      audit({
        target: o.name,
        decision: 'deny',
        reason: 'the server instructions changed',
        details: { server: o.name, event: 'changed', hash: pin.hash },
      });
      if (p.version_pinning.on_change === 'block' || !sp.instructions)
        delete result?.['instructions'];
    }
  };

  // Messages are handled one at a time per direction, in order.
  const queue = <T>(handle: (item: T) => Promise<void>) => {
    let chain = Promise.resolve();
    return (item: T) => {
      chain = chain
        .then(() => handle(item))
        .catch((e: unknown) =>
          o.log(`keyward mcp wrap: ${e instanceof Error ? e.message : 'error'}`),
        );
    };
  };

  const fromClient = queue<string>(async (line) => {
    if (line.trim() === '') return;
    let m: Json;
    try {
      m = JSON.parse(line) as Json;
    } catch {
      return toClient({
        jsonrpc: '2.0',
        id: null,
        error: { code: -32700, message: 'keyward: parse error' },
      });
    }
    const method = typeof m['method'] === 'string' ? m['method'] : undefined;
    const id = m['id'] as Id | undefined;
    if (method === 'tools/call' && id !== undefined) return toolCall(m);
    if (method !== undefined && id !== undefined) {
      if (serverGone)
        return errorReply(
          id,
          ERR_SERVER_GONE,
          `keyward: the MCP server ${o.name} is gone (${serverGone})`,
        );
      pending.set(id, { method });
    }
    toServer(m);
  });

  const serverQueue = queue<() => Promise<void>>(async (job) => job());
  /** Lines from the server: the gateway's own answers at once (a queued handler may be waiting
   * for one), everything else in order. */
  const fromServer = (line: string) => {
    if (line.trim() === '') return;
    let m: Json;
    try {
      m = JSON.parse(line) as Json;
    } catch {
      o.log(`keyward mcp wrap: ${o.name} sent a line that is not JSON-RPC (ignored)`);
      return;
    }
    const id = m['id'] as Id | undefined;
    if (typeof id === 'string' && own.has(id)) {
      own.get(id)?.(m);
      own.delete(id);
      return;
    }
    serverQueue(async () => {
      if (m['method'] === 'notifications/tools/list_changed') {
        // Check the new definitions before the client asks for them.
        await relist();
        return toClient(m);
      }
      if (id !== undefined && (m['result'] !== undefined || m['error'] !== undefined))
        return answer(m);
      toClient(m);
    });
  };

  readline.createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', fromServer);
  const exited = new Promise<number>((resolve) => {
    const gone = (why: string) => {
      if (serverGone) return;
      serverGone = why;
      o.log(`keyward mcp wrap: the MCP server ${o.name} ${why}`);
      for (const [id] of pending)
        errorReply(id, ERR_SERVER_GONE, `keyward: the MCP server ${o.name} ${why}`);
      pending.clear();
      for (const [, resolve2] of own) resolve2({ error: { message: why } });
      own.clear();
    };
    // After the lines it wrote before it went are handled (close: its stdout has ended too).
    child.on('error', (e) => serverQueue(async () => gone(`could not start (${e.message})`)));
    child.on('close', (code, signal) =>
      serverQueue(async () => gone(`exited (${signal ?? `code ${code}`})`)),
    );
    const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
    input.on('line', fromClient);
    input.on('close', () => {
      child.stdin.end();
      setTimeout(() => child.kill('SIGTERM'), 2000).unref();
      resolve(0);
    });
  });
  child.stdin.on('error', () => undefined);
  return exited;
}
