/**
 * `keyward mcp wrap --name NAME -- CMD ARGS` or `--url URL` (docs/MCP.md, "The gateway"): a proxy
 * between any MCP client (this process's stdin and stdout, one JSON-RPC message per line) and any
 * MCP server (a child on stdio, or a Streamable HTTP server), working on messages. It passes
 * everything through except what it guards:
 *
 * - tools/list results: tools the policy doesn't allow, and tools whose definition the pins in
 *   the vault don't trust (the agent reviews them), disappear;
 * - initialize results: the server's instructions are reviewed the same way;
 * - tools/call requests: refused when the tool is hidden (-32602, as for an unknown tool), over
 *   a rate limit, or when the arguments hold a released value;
 * - every other message, both ways: scanned for released values. From the client, a message
 *   holding one is not sent; from the server, the value is concealed, or the message withheld
 *   when the value is there only in a transformed form;
 * - notifications/tools/list_changed: the gateway re-lists the tools itself before passing it on.
 *
 * Every tools/call is audited (server, tool, decision, hash of the arguments). Without the
 * policy (agent locked or not running) it fails closed: no tool is listed or callable.
 */
import { randomBytes } from 'node:crypto';
import type { AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { quote } from '../lib/text.js';
import { AgentLink } from './agent-link.js';
import { untilEnded } from './gateway-life.js';
import { Guard, message } from './guard.js';
import {
  ERR_REFUSED,
  ERR_SERVER_GONE,
  ERR_UNKNOWN_TOOL,
  readClientLine,
  readServerMessage,
  serialQueue,
  UNSCANNED_FROM_CLIENT,
  bare,
  blindAnswer,
  type Req,
  methodLabel,
  UNSCANNED_FROM_SERVER,
  type Id,
} from './messages.js';
import { definitionHash, sha256hex, toolDefinition } from './pins.js';
import { checkServerUrl, httpUpstream, resolveHeaders, type HeaderTemplate } from './remote.js';
import { allowedByPolicy, RateLimits } from './tools.js';
import { stdioUpstream, type Json, type Upstream } from './upstream.js';

export interface WrapOptions {
  name: string;
  /** A server on stdio: the command and its arguments. */
  command?: string[];
  /** Or a remote server (Streamable HTTP), with headers that may hold {{secret:NAME}}. */
  url?: string;
  headers?: HeaderTemplate[];
  home: string;
  agentSocket: string;
  record: (r: AuditRecord) => void;
  log: (line: string) => void;
  /** Resolves once this process is hardened: no client byte is read, no secret fetched before. */
  ready?: Promise<void>;
}

const ASK_TIMEOUT_MS = 10_000;

export async function wrapMcp(o: WrapOptions): Promise<number> {
  if (!o.command?.length && !o.url)
    throw new KeywardError('USAGE', 'mcp wrap needs the server command after --, or --url');
  const name = o.name;
  const link = new AgentLink(o.agentSocket);
  const guard = new Guard(name, o.home, link, o.record, o.log);
  const policy = () => guard.policy();
  const scan = (m: Json, redact: boolean, unscanned = false) => guard.scan(m, redact, unscanned);
  const audit = (r: Omit<AuditRecord, 'type'>) => guard.audit(r);
  let listed: Promise<void> | undefined;
  const toClient = (m: Json): void => {
    process.stdout.write(`${JSON.stringify(m)}\n`);
  };
  const errorReply = (id: Id, code: number, text: string): void =>
    toClient({ jsonrpc: '2.0', id, error: { code, message: text } });
  let serverGone: string | undefined;
  let upstream: Upstream | undefined;
  const toServer = (m: Json) => {
    if (!serverGone) upstream?.send(m);
  };

  // Every request the server sees carries an id made here, random per gateway: the client's
  // ids are mapped back on the answer, the gateway's own requests look the same as the
  // client's, and an answer with any other id (a number spelled as a string, say) is dropped.
  const idPrefix = `${randomBytes(9).toString('base64url')}-`;
  let idSeq = 0;
  const newId = () => `${idPrefix}${++idSeq}`;
  const pending = new Map<string, Req>();
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
      await guard.reviewTools(all);
    })().catch((e: unknown) => o.log(`keyward mcp wrap: listing tools failed (${message(e)})`));
    return listed;
  };

  const limits = new RateLimits(name);
  const gone = (id: Id) =>
    errorReply(id, ERR_SERVER_GONE, `keyward: the MCP server ${name} is gone (${serverGone})`);

  /** A tools/call from the client: forwarded, or refused with the reason. */
  const toolCall = async (m: Json) => {
    const id = m['id'] as Id;
    const params = (m['params'] ?? {}) as Json;
    const tool = String(params['name'] ?? '');
    const argsHash = sha256hex(JSON.stringify(params['arguments'] ?? {}));
    // A name the server never listed is the client's own text, which may hold a value: the
    // record names it by its hash (found in review: a value as a tool's name went into a body).
    const listedName = guard.visible.has(tool) || guard.refused.has(tool);
    const label = listedName ? tool : `sha256:${sha256hex(tool)}`;
    const refuse = (why: string, code = ERR_REFUSED, recorded = why) => {
      audit({
        target: name,
        decision: 'deny',
        reason: recorded,
        details: { server: name, tool: label, argsSha256: argsHash },
      });
      errorReply(id, code, `keyward: ${why}`);
    };
    if (serverGone) return gone(id);
    await (listed ?? relist());
    const ourId = newId();
    // Decided under the policy the agent has in force: a copy read before an apply is stale,
    // and the call is decided again under one read now (twice stale: refused).
    for (let attempt = 0; attempt < 3; attempt++) {
      const p = attempt === 0 ? await policy() : await guard.policy(true);
      if ('error' in p)
        return refuse(`the gateway policy could not be read (${p.error}): fail closed`);
      if (!guard.visible.has(tool))
        return refuse(
          guard.refused.get(tool) ?? `no tool ${quote(tool)} on ${name}`,
          ERR_UNKNOWN_TOOL,
          guard.refused.get(tool) ?? `no tool ${quote(label)} on ${name}`,
        );
      // The policy may have changed since the tool was listed.
      if (!allowedByPolicy(p, name, tool, guard.visible.get(tool) ?? ''))
        return refuse(
          `tool ${quote(tool)} is not allowed by the policy (mcp.${p.tool_policy})`,
          ERR_UNKNOWN_TOOL,
        );
      const limited = limits.take(p, tool);
      if ('why' in limited) return refuse(limited.why);
      // The call is durable in the audit log before the server has it: a gateway ended
      // mid-call, or a server that never answers, still leaves its record. The agent scans the
      // arguments and records the call in one round trip; unchecked or unrecorded, it is not sent.
      let found: string[] | 'stale';
      try {
        found = await guard.call(m, tool, argsHash, ourId, p);
      } catch (e) {
        return refuse(
          `the call could not be checked for secrets and recorded (${message(e)}): fail closed`,
        );
      }
      if (found === 'stale') {
        limited.giveBack(); // decided again: one call takes one token
        continue;
      }
      if (found.length > 0)
        return refuse(`the arguments hold the value of ${found.join(', ')}; not sent`);
      pending.set(ourId, { clientId: id, method: 'tools/call', tool, argsHash, callId: ourId });
      toServer({ ...m, id: ourId });
      return;
    }
    refuse('the policy changed again each time the call was decided: fail closed');
  };

  /**
   * The end of a call, when it is more than its answer: an error (the server's, or keyward's
   * when it withheld the answer or could not check it), concealed values, a server gone.
   */
  const callEnded = (
    req: Req,
    decision: 'allow' | 'deny' | 'error',
    reason: string,
    redacted: string[] = [],
  ) =>
    audit({
      target: name,
      decision,
      reason,
      details: {
        server: name,
        tool: req.tool ?? null,
        argsSha256: req.argsHash ?? null,
        call: req.callId ?? null,
        event: 'result',
        redacted: redacted.join(',') || null,
      },
    });

  let initialized = false;
  /** Any other request from the client: scanned, then forwarded under a new id. */
  const request = async (m: Json, id: Id, method: string) => {
    if (serverGone) return gone(id);
    if (method === 'initialize') {
      const caps = ((m['params'] as Json | undefined)?.['capabilities'] ?? {}) as Json;
      guard.clientCaps = typeof caps === 'object' && caps !== null ? Object.keys(caps).sort() : [];
    }
    let blind: boolean;
    try {
      const s = await scan(m, false, UNSCANNED_FROM_CLIENT.has(method));
      const found = s.found;
      blind = s.blind === true;
      if (found.length > 0) {
        guard.leakAudit(method, found, 'deny', 'a request held a released value; not sent');
        return errorReply(
          id,
          ERR_REFUSED,
          `keyward: the request holds the value of ${found.join(', ')}; not sent`,
        );
      }
    } catch (e) {
      return errorReply(
        id,
        ERR_REFUSED,
        `keyward: the request could not be checked for secrets (${message(e)}): fail closed`,
      );
    }
    // Unscanned, some are answered here (each message that passes is bits the client chose).
    const local = blind ? blindAnswer(method, id, initialized) : undefined;
    if (local) return toClient(local);
    if (method === 'initialize') initialized = true;
    const ourId = newId();
    const params = (blind ? bare(m, method) : m)['params'] as Json | undefined;
    pending.set(ourId, {
      clientId: id,
      method,
      paged: method === 'tools/list' && params?.['cursor'] !== undefined,
    });
    toServer({ jsonrpc: '2.0', id: ourId, method, ...(params === undefined ? {} : { params }) });
  };

  /**
   * An answer from the client goes up only to a request the server made (and the client was
   * shown), once, rebuilt from its id and its result or error: nothing else of what the client
   * wrote rides along (a "method" inside it, say, that a server could take for a request).
   */
  const asked = new Set<Id>();
  const answerUp = (m: Json) => {
    const id = m['id'];
    if ((typeof id !== 'string' && typeof id !== 'number') || !asked.has(id))
      return o.log(`keyward mcp wrap: dropped an answer to a request ${name} did not make`);
    asked.delete(id);
    const outcome = Object.hasOwn(m, 'result') ? { result: m['result'] } : { error: m['error'] };
    return passUp({ jsonrpc: '2.0', id, ...outcome });
  };

  /** A notification, or an answer to the server's own request, from the client. */
  const passUp = async (m: Json) => {
    const method = typeof m['method'] === 'string' ? m['method'] : undefined;
    if (method === 'notifications/cancelled') {
      // The server knows the request by the id the gateway gave it.
      const params = (m['params'] ?? {}) as Json;
      const ours = [...pending].find(([, r]) => r.clientId === params['requestId'])?.[0];
      if (!ours) return;
      m = { ...m, params: { ...params, requestId: ours } };
    }
    const refuseAnswer = (why: string) => {
      // The server's request still gets an answer.
      if (method === undefined && m['id'] !== undefined)
        toServer({
          jsonrpc: '2.0',
          id: m['id'],
          error: { code: ERR_REFUSED, message: `keyward: the answer ${why}; withheld` },
        });
    };
    try {
      const { found, blind } = await scan(m, false, UNSCANNED_FROM_CLIENT.has(method ?? ''));
      if (found.length === 0) return toServer(blind && method ? bare(m, method) : m);
      guard.leakAudit(
        method ?? 'answer',
        found,
        'deny',
        'a message held a released value; not sent',
      );
      o.log(`keyward mcp wrap: a message to ${name} held a released value; not sent`);
      refuseAnswer('held a secret');
    } catch (e) {
      o.log(
        `keyward mcp wrap: a message to ${name} could not be checked (${message(e)}); not sent`,
      );
      refuseAnswer('could not be checked for secrets');
    }
  };

  /** A result from the server for one of the client's requests, under the client's id. */
  const answer = async (m: Json, req: Req) => {
    const id = req.clientId;
    m = { ...m, id };
    const call = req.method === 'tools/call';
    try {
      m = await guardAnswer(m, req);
      const s = await scan(m, true, UNSCANNED_FROM_SERVER.has(req.method));
      if (s.withheld) {
        if (call) callEnded(req, 'deny', 'the answer held a released value; withheld', s.found);
        else
          guard.leakAudit(req.method, s.found, 'deny', 'an answer held a released value; withheld');
        m = {
          jsonrpc: '2.0',
          id,
          error: {
            code: ERR_REFUSED,
            message: `keyward: the answer held the value of ${s.found.join(', ')} in a form that can't be concealed: withheld`,
          },
        };
      } else {
        if (s.found.length > 0) m = s.out;
        // Durable before the client has the answer. A plain answer adds nothing to the call's
        // own record.
        if (call && m['error'])
          callEnded(req, 'error', 'the server answered with an error', s.found);
        else if (call && s.found.length > 0)
          callEnded(req, 'allow', 'released values concealed in the answer', s.found);
        else if (s.found.length > 0)
          guard.leakAudit(req.method, s.found, 'info', 'released values concealed in an answer');
      }
    } catch (e) {
      const why = `the answer could not be checked (${message(e)})`;
      if (call) callEnded(req, 'deny', `${why}; withheld`);
      m = {
        jsonrpc: '2.0',
        id,
        error: { code: ERR_REFUSED, message: `keyward: ${why}: withheld` },
      };
    }
    toClient(m);
  };

  const guardAnswer = async (m: Json, req: Req): Promise<Json> => {
    if (req.method === 'initialize') await guard.reviewInstructions(m);
    else if (req.method === 'tools/list' && m['result']) {
      const result = m['result'] as Json;
      const tools = Array.isArray(result['tools']) ? (result['tools'] as Json[]) : [];
      const cursor = result['nextCursor'];
      let shown: Json[];
      if (!req.paged && (typeof cursor !== 'string' || cursor === '')) {
        // The whole listing in one answer: reviewed as it is.
        listed = Promise.resolve();
        shown = await guard.reviewTools(tools);
      } else {
        // One page of several: the gateway reviews the whole listing itself (a page alone
        // would make the tools on later pages look new), then shows what it trusts of this one.
        await (req.paged ? (listed ?? relist()) : relist());
        shown = tools.filter(
          (t) => guard.visible.get(String(t['name'])) === definitionHash(toolDefinition(t)),
        );
      }
      m = { ...m, result: { ...result, tools: shown } };
    } else if (req.method === 'tools/call') {
      const p = await policy();
      if ('error' in p) throw new Error(`the gateway policy could not be read (${p.error})`);
    }
    return m;
  };

  /** A request or notification the server sends the client: scanned, concealed or withheld. */
  const passDown = async (m: Json) => {
    const method = String(m['method']);
    if (method === 'notifications/tools/list_changed') await relist();
    let s;
    try {
      s = await scan(m, true, method === 'notifications/tools/list_changed');
    } catch (e) {
      s = { out: m, found: [] as string[], withheld: true, why: message(e) };
    }
    if (!s.withheld) {
      if (s.found.length > 0)
        guard.leakAudit(method, s.found, 'info', 'released values concealed in a server message');
      const id = m['id'];
      if (typeof id === 'string' || typeof id === 'number') asked.add(id);
      return toClient(s.out);
    }
    guard.leakAudit(method, s.found, 'deny', 'a server message held a released value; withheld');
    o.log(
      `keyward mcp wrap: a ${methodLabel(method)} from ${name} was withheld (it held a released value)`,
    );
    if (m['id'] !== undefined)
      toServer({
        jsonrpc: '2.0',
        id: m['id'],
        error: { code: ERR_REFUSED, message: 'keyward: the request held a secret; withheld' },
      });
  };

  // Messages are handled one at a time per direction, in order.
  const queue = <T>(handle: (item: T) => Promise<void>) =>
    serialQueue(handle, (e) => o.log(`keyward mcp wrap: ${message(e)}`));

  const fromClient = queue<string>(async (line) => {
    const c = readClientLine(line);
    switch (c.kind) {
      case 'empty':
        return;
      case 'error':
        return toClient(c.reply);
      case 'dropped':
        return o.log(`keyward mcp wrap: ${c.why}`);
      case 'request':
        return c.method === 'tools/call' ? toolCall(c.m) : request(c.m, c.id, c.method);
      case 'answer':
        return answerUp(c.m);
      default:
        return passUp(c.m);
    }
  });

  const serverQueue = queue<() => Promise<void>>(async (job) => job());
  /** Messages from the server: the gateway's own answers at once (a queued handler may be
   * waiting for one), everything else in order. */
  const fromServer = (raw: Json) => {
    const r = readServerMessage(raw);
    if (r.kind === 'dropped') return o.log(`keyward mcp wrap: ${name} sent ${r.why} (dropped)`);
    const { m } = r;
    if (r.kind === 'answer' && typeof r.id === 'string' && own.has(r.id)) {
      own.get(r.id)?.(m);
      own.delete(r.id);
      return;
    }
    serverQueue(async () => {
      if (r.kind === 'request') return passDown(m);
      const req = typeof r.id === 'string' ? pending.get(r.id) : undefined;
      if (!req) return o.log(`keyward mcp wrap: ${name} answered an id nobody asked (dropped)`);
      pending.delete(r.id as string);
      return answer(m, req);
    });
  };

  const serverEnded = (why: string) => {
    // The gateway's own waits end at once (a queued job may be one of them); the client's
    // requests are answered after the messages the server sent before it went.
    for (const [, resolve] of own) resolve({ error: { message: why } });
    own.clear();
    serverQueue(async () => {
      if (serverGone) return;
      serverGone = why;
      o.log(`keyward mcp wrap: the MCP server ${name} ${why}`);
      for (const [, req] of pending) {
        if (req.method === 'tools/call') callEnded(req, 'error', `the MCP server ${name} ${why}`);
        errorReply(req.clientId, ERR_SERVER_GONE, `keyward: the MCP server ${name} ${why}`);
      }
      pending.clear();
    });
  };
  const events = { message: fromServer, gone: serverEnded, log: o.log };

  // A local server starts at once, while this process meets the agent; a remote one waits for
  // the hardening, since its headers are read from the agent.
  if (o.command?.length) upstream = stdioUpstream(name, o.command, events);
  await o.ready;
  if (!upstream) {
    const url = checkServerUrl(o.url ?? '');
    const headers = await resolveHeaders(o.agentSocket, o.headers ?? []);
    upstream = await httpUpstream(name, url, headers, events);
  }

  return untilEnded({
    server: upstream,
    fromClient,
    serverDrained: () => serverQueue.drained(),
    toClient,
    close: () => link.close(),
  });
}
