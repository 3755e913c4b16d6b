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
import { createHash, randomBytes } from 'node:crypto';
import readline from 'node:readline';
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
const ASK_TIMEOUT_MS = 10_000;
const MAX_LINE = 16 * 1024 * 1024;

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/**
 * Tool and server names are not paths: `*` matches any characters (slashes and dots included),
 * `?` one. Everything else is literal.
 */
function glob(pattern: string): (s: string) => boolean {
  const re = new RegExp(
    `^${pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
    's',
  );
  return (s) => re.test(s);
}

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

  // Every request the server sees carries an id made here, random per gateway: the client's
  // ids are mapped back on the answer, the gateway's own requests look the same as the
  // client's, and an answer with any other id (a number spelled as a string, say) is dropped.
  const idPrefix = `${randomBytes(9).toString('base64url')}-`;
  let idSeq = 0;
  const newId = () => `${idPrefix}${++idSeq}`;
  const pending = new Map<
    string,
    { clientId: Id; method: string; tool?: string; argsHash?: string; paged?: boolean }
  >();
  const own = new Map<string, (m: Json) => void>();
  const ask = (method: string, params: Json = {}) =>
    new Promise<Json>((resolve) => {
      const id = newId();
      // A server that never answers must not hold the gateway: no answer is an empty answer.
      const timer = setTimeout(() => {
        own.delete(id);
        resolve({ error: { message: 'no answer in time' } });
      }, ASK_TIMEOUT_MS);
      own.set(id, (m) => {
        clearTimeout(timer);
        resolve(m);
      });
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
        glob(r.server)(o.name) &&
        glob(r.tool)(tool) &&
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
  let refused = new Map<string, string>();
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
  /** merge: a later page of a listing (the maps grow instead of starting over). */
  const review = async (tools: Json[], merge = false): Promise<Json[]> => {
    const p = await policy();
    // Built aside and swapped in at the end: a call during a review sees the last whole one.
    const nextVisible = new Map<string, string>(merge ? visible : []);
    const nextRefused = new Map<string, string>(merge ? refused : []);
    if ('error' in p) {
      for (const t of tools)
        nextRefused.set(
          String(t['name']),
          `the gateway policy could not be read (${p.error}): fail closed`,
        );
      visible = nextVisible;
      refused = nextRefused;
      return [];
    }
    const pins = loadPins(o.home);
    const sp = serverPins(pins, o.name);
    // Trust on first sight means the server's first listing: a tool that appears later (a new
    // name for a changed tool, say) is a change like any other.
    const firstSight = Object.keys(sp.tools).length === 0;
    const pinning = p.version_pinning;
    const now = new Date().toISOString();
    const current = new Set(tools.map((t) => String(t['name'])));
    const shown: Json[] = [];
    const newPins: Record<string, Pin> = {};
    const newPending: Record<string, Pin> = {};
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
        const pinned = Object.hasOwn(sp.tools, name) ? sp.tools[name] : undefined;
        if (pinned && pinned.hash === pin.hash) {
          // As trusted.
        } else {
          const renamedFrom = pinned
            ? undefined
            : Object.entries(sp.tools).find(
                ([n, x]) => x.bodyHash === pin.bodyHash && !current.has(n),
              )?.[0];
          if (!pinned && !renamedFrom && pinning.auto_trust_first && firstSight) {
            newPins[name] = pin;
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
                : pinning.auto_trust_first
                  ? 'it appeared after the server was first trusted'
                  : 'it is new and not yet trusted';
            // Never trusted and auto_trust_first off: it waits for pins trust, whatever on_change.
            const untrusted = !pinned && !renamedFrom && !pinning.auto_trust_first;
            const blocked = untrusted || pinning.on_change === 'block';
            const before = Object.hasOwn(sp.pending, name) ? sp.pending[name] : undefined;
            if (!before || before.hash !== pin.hash) {
              newPending[name] = pin;
              audit({
                target: o.name,
                decision: blocked ? 'deny' : 'info',
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
            if (untrusted)
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
      if (why) nextRefused.set(name, why);
      else {
        nextVisible.set(name, pin.hash);
        shown.push(t);
      }
    }
    if (Object.keys(newPins).length + Object.keys(newPending).length > 0) {
      // Re-read before writing: a pins trust or reset (or another gateway) since the start of
      // this review is kept; only what this review learned is added.
      const fresh = loadPins(o.home);
      const fsp = serverPins(fresh, o.name);
      Object.assign(fsp.tools, newPins);
      Object.assign(fsp.pending, newPending);
      savePins(o.home, fresh);
    }
    visible = nextVisible;
    refused = nextRefused;
    return shown;
  };

  const relist = () => {
    listed = (async () => {
      // Every page: a tool on page two is as checked as one on page one.
      const all: Json[] = [];
      let cursor: unknown;
      for (let page = 0; page < 100; page++) {
        const r = await ask('tools/list', cursor === undefined ? {} : { cursor });
        const result = r['result'] as Json | undefined;
        if (Array.isArray(result?.['tools'])) all.push(...(result['tools'] as Json[]));
        cursor = result?.['nextCursor'];
        if (typeof cursor !== 'string' || cursor === '') break;
      }
      await review(all);
    })().catch((e: unknown) =>
      o.log(`keyward mcp wrap: listing tools failed (${e instanceof Error ? e.message : 'error'})`),
    );
    return listed;
  };

  const buckets = new Map<string, TokenBucket>();
  const overLimit = (p: McpPolicy, tool: string): string | undefined => {
    const now = Date.now();
    // Keyed with the limits too: a policy that changes them starts a fresh bucket.
    const bucket = (key: string, per: number, burst: number) => {
      const k = `${key}\u0000${per}\u0000${burst}`;
      let b = buckets.get(k);
      if (!b) buckets.set(k, (b = new TokenBucket(per, burst, now)));
      return b;
    };
    const g = p.rate_limits.global;
    if (g && !bucket('*', g.per_minute, g.burst).take(now))
      return `rate limit: at most ${g.per_minute} tool calls a minute (burst ${g.burst})`;
    for (const r of p.rate_limits.per_tool) {
      if (glob(r.server)(o.name) && glob(r.tool)(tool)) {
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
    // The policy may have changed since the tool was listed.
    if (!allowedByPolicy(p, tool, visible.get(tool) ?? ''))
      return refuse(`tool ${tool} is not allowed by the policy (mcp.${p.tool_policy})`);
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
    const ourId = newId();
    pending.set(ourId, { clientId: id, method: 'tools/call', tool, argsHash });
    toServer({ ...m, id: ourId });
  };

  /** A result from the server for one of the client's requests (req), under the client's id. */
  const answer = async (
    m: Json,
    req: { clientId: Id; method: string; tool?: string; argsHash?: string; paged?: boolean },
  ) => {
    const id = req.clientId;
    m = { ...m, id };
    try {
      m = await guardAnswer(m, req);
    } catch (e) {
      m = {
        jsonrpc: '2.0',
        id,
        error: {
          code: ERR_REFUSED,
          message: `keyward: the answer could not be checked (${e instanceof Error ? e.message : 'error'}): withheld`,
        },
      };
    }
    toClient(m);
  };

  const guardAnswer = async (
    m: Json,
    req: { clientId: Id; method: string; tool?: string; argsHash?: string; paged?: boolean },
  ): Promise<Json> => {
    const id = req.clientId;
    if (req.method === 'initialize') await pinInstructions(m);
    else if (req.method === 'tools/list' && m['result']) {
      const result = m['result'] as Json;
      const tools = Array.isArray(result['tools']) ? (result['tools'] as Json[]) : [];
      listed = Promise.resolve();
      m = { ...m, result: { ...result, tools: await review(tools, req.paged === true) } };
    } else if (req.method === 'tools/call') {
      let redacted: string[] = [];
      const p = await policy();
      if ('error' in p) {
        m = {
          jsonrpc: '2.0',
          id,
          error: {
            code: ERR_REFUSED,
            message: `keyward: the gateway policy could not be read (${p.error}): withheld`,
          },
        };
      } else if (p.leak_blocking) {
        // The whole answer: a result, or an error whose message quotes a secret.
        const text = JSON.stringify(m);
        try {
          const f = await agent('scan', { redact: true }, text);
          redacted = f.meta['found'] as string[];
          if (f.raw && redacted.length > 0) m = JSON.parse(f.raw.toString('utf8')) as Json;
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
    return m;
  };

  const pinInstructions = async (m: Json) => {
    const result = m['result'] as Json | undefined;
    const text =
      typeof result?.['instructions'] === 'string' ? (result['instructions'] as string) : undefined;
    const p = await policy();
    if (text === undefined) return;
    if ('error' in p) {
      // Unchecked instructions don't reach the model.
      delete result?.['instructions'];
      return;
    }
    if (!p.version_pinning.enabled) return;
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
    // One JSON-RPC object per line: batches and anything else are refused, not forwarded.
    if (m === null || typeof m !== 'object' || Array.isArray(m))
      return toClient({
        jsonrpc: '2.0',
        id: null,
        error: { code: -32600, message: 'keyward: one JSON-RPC request object per message' },
      });
    const method = typeof m['method'] === 'string' ? m['method'] : undefined;
    const id = m['id'] as Id | undefined;
    const validId = typeof id === 'string' || typeof id === 'number';
    if (method !== undefined && id === undefined) {
      // A request without an id (tools/call as a notification, say) would skip every check.
      if (!method.startsWith('notifications/'))
        return o.log(`keyward mcp wrap: dropped a ${method} sent without an id`);
      return toServer(m);
    }
    if (method !== undefined) {
      if (!validId)
        return toClient({
          jsonrpc: '2.0',
          id: null,
          error: { code: -32600, message: 'keyward: a request id is a string or a number' },
        });
      if (method === 'tools/call') return toolCall(m);
      if (serverGone)
        return errorReply(
          id,
          ERR_SERVER_GONE,
          `keyward: the MCP server ${o.name} is gone (${serverGone})`,
        );
      const ourId = newId();
      const params = m['params'] as Json | undefined;
      pending.set(ourId, {
        clientId: id,
        method,
        paged: method === 'tools/list' && params?.['cursor'] !== undefined,
      });
      return toServer({ ...m, id: ourId });
    }
    // An answer to a request the server made (sampling, roots, ping): passed back as is.
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
    if (m === null || typeof m !== 'object' || Array.isArray(m)) {
      o.log(`keyward mcp wrap: ${o.name} sent a message that is not one JSON-RPC object (ignored)`);
      return;
    }
    const id = m['id'] as Id | undefined;
    const isAnswer = m['method'] === undefined && id !== undefined;
    if (isAnswer && typeof id === 'string' && own.has(id)) {
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
      if (isAnswer) {
        const req = typeof id === 'string' ? pending.get(id) : undefined;
        if (!req) return o.log(`keyward mcp wrap: ${o.name} answered an id nobody asked (dropped)`);
        pending.delete(id as string);
        return answer(m, req);
      }
      toClient(m);
    });
  };

  readline
    .createInterface({ input: child.stdout, crlfDelay: Infinity })
    .on('line', (line: string) =>
      line.length > MAX_LINE
        ? o.log(`keyward mcp wrap: ${o.name} sent an oversized line (ignored)`)
        : fromServer(line),
    );
  const exited = new Promise<number>((resolve) => {
    const gone = (why: string) => {
      if (serverGone) return;
      serverGone = why;
      o.log(`keyward mcp wrap: the MCP server ${o.name} ${why}`);
      for (const [, req] of pending)
        errorReply(req.clientId, ERR_SERVER_GONE, `keyward: the MCP server ${o.name} ${why}`);
      pending.clear();
      for (const [, resolve2] of own) resolve2({ error: { message: why } });
      own.clear();
    };
    // The gateway's own waits end at once (a queued job may be one of them); the client's
    // requests are answered after the lines the server wrote before it went.
    const ended = (why: string) => {
      for (const [, resolve2] of own) resolve2({ error: { message: why } });
      own.clear();
      serverQueue(async () => gone(why));
    };
    child.on('error', (e) => ended(`could not start (${e.message})`));
    child.on('close', (code, signal) => ended(`exited (${signal ?? `code ${code}`})`));
    const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
    input.on('line', (line: string) => {
      if (line.length <= MAX_LINE) fromClient(line);
      else
        toClient({
          jsonrpc: '2.0',
          id: null,
          error: { code: -32600, message: 'keyward: message too large' },
        });
    });
    input.on('close', () => {
      child.stdin.end();
      setTimeout(() => child.kill('SIGTERM'), 2000).unref();
      resolve(0);
    });
  });
  child.stdin.on('error', () => undefined);
  process.stdout.on('error', () => undefined);
  return exited;
}
