/**
 * The JSON-RPC side of the gateway (gateway.ts): the error codes it answers with, which methods
 * carry nothing a model wrote, how a client's line is read into one message (or refused), and
 * the serial queue each direction is handled in.
 */
import { sha256hex } from './pins.js';
import type { Json } from './upstream.js';

export type Id = string | number;

export const ERR_REFUSED = -32001;
export const ERR_SERVER_GONE = -32002;
/** The JSON-RPC code the MCP spec gives a call to an unknown tool. */
export const ERR_UNKNOWN_TOOL = -32602;

/** A client's request the server has, by the id the gateway gave it. */
export interface Req {
  clientId: Id;
  method: string;
  /** The id the server has a tools/call under: its records name it (docs/MCP.md, "Audit"). */
  callId?: string;
  tool?: string;
  argsHash?: string;
  paged?: boolean;
}

/** What may pass while the agent can't scan (locked, or not running): nothing a model writes. */
export const UNSCANNED_FROM_CLIENT = new Set([
  'initialize',
  'ping',
  'tools/list',
  'notifications/initialized',
  'notifications/cancelled',
]);
export const UNSCANNED_FROM_SERVER = new Set(['initialize', 'ping', 'tools/list']);

/**
 * The protocol versions of the MCP SDK keyward is built with, newest first (a test holds them to
 * the SDK's): an initialize that passes unscanned may name only one of these.
 */
export const PROTOCOL_VERSIONS = [
  '2025-11-25',
  '2025-06-18',
  '2025-03-26',
  '2024-11-05',
  '2024-10-07',
];

/**
 * The capabilities a client may declare that pass unscanned, and their parts: flags only, no text
 * of its own (`roots.listChanged` true; the others as empty objects).
 */
const CLIENT_CAPABILITIES: Record<string, string[]> = {
  roots: ['listChanged'],
  sampling: ['tools', 'context'],
  elicitation: ['form', 'url'],
};

/** A capability's part as it passes: listChanged only when true, the others as empty objects. */
function flag(v: unknown, part: string): Json | boolean | undefined {
  if (part === 'listChanged') return v === true ? true : undefined;
  return typeof v === 'object' && v !== null ? {} : undefined;
}

/**
 * A message of UNSCANNED_FROM_CLIENT as it may pass while the agent can't scan it: rebuilt with
 * nothing the client wrote but its method, its id and the flags the protocol needs (found in
 * review: a ping's params, a field beside them, an initialize's clientInfo carried a value to
 * the server after any process of the user locked the agent). An initialize keeps its protocol
 * version when it is one the MCP SDK knows (else the latest: a date of the client's choosing was
 * 26 bits a message, found in review) and its capability flags; its clientInfo is the gateway's.
 */
export function bare(m: Json, method: string): Json {
  const out: Json = { jsonrpc: '2.0', method };
  if (m['id'] !== undefined) out['id'] = m['id'];
  const params = (m['params'] ?? {}) as Json;
  if (method === 'notifications/cancelled')
    out['params'] = { requestId: params['requestId'] ?? null };
  if (method !== 'initialize') return out;
  const version = params['protocolVersion'];
  const caps = (params['capabilities'] ?? {}) as Json;
  const flags: Json = {};
  for (const [c, parts] of Object.entries(CLIENT_CAPABILITIES)) {
    const given = caps[c];
    if (typeof given !== 'object' || given === null) continue;
    const kept: Json = {};
    for (const part of parts) {
      const f = flag((given as Json)[part], part);
      if (f !== undefined) kept[part] = f;
    }
    flags[c] = kept;
  }
  out['params'] = {
    protocolVersion:
      typeof version === 'string' && PROTOCOL_VERSIONS.includes(version)
        ? version
        : PROTOCOL_VERSIONS[0],
    capabilities: flags,
    clientInfo: { name: 'keyward-mcp-gateway', version: '1' },
  };
  return out;
}

/**
 * The gateway's own answer to a client request that passes unscanned, or undefined: nothing is
 * listed (nor paged through) and a ping is answered here, and only a session's first initialize
 * goes on (found in review: a protocol version an initialize spelled a value out, 26 bits each).
 */
export function blindAnswer(method: string, id: Id, initialized: boolean): Json | undefined {
  if (method === 'tools/list') return { jsonrpc: '2.0', id, result: { tools: [] } };
  if (method === 'ping') return { jsonrpc: '2.0', id, result: {} };
  if (method === 'initialize' && initialized)
    return {
      jsonrpc: '2.0',
      id,
      error: {
        code: ERR_REFUSED,
        message: 'keyward: a second initialize while the agent is locked',
      },
    };
  return undefined;
}

/** The methods of the MCP specification: a peer's method is named as it is only if it is one. */
const KNOWN_METHODS = new Set([
  'initialize',
  'ping',
  'tools/list',
  'tools/call',
  'resources/list',
  'resources/read',
  'resources/templates/list',
  'resources/subscribe',
  'resources/unsubscribe',
  'prompts/list',
  'prompts/get',
  'completion/complete',
  'logging/setLevel',
  'sampling/createMessage',
  'elicitation/create',
  'roots/list',
  'notifications/initialized',
  'notifications/cancelled',
  'notifications/progress',
  'notifications/message',
  'notifications/resources/updated',
  'notifications/resources/list_changed',
  'notifications/tools/list_changed',
  'notifications/prompts/list_changed',
  'notifications/roots/list_changed',
  // The gateway's own word for a message with no method (an answer).
  'answer',
]);

/**
 * A peer's method as an audit body or a log line may name it: as it is when the specification
 * has it, else by its SHA-256 (a method is the peer's own text, and may hold a value: found in
 * review).
 */
export function methodLabel(method: string): string {
  return KNOWN_METHODS.has(method) ? method : `sha256:${sha256hex(method)}`;
}

/** A line from the client, read: a request, a notification or an answer; or why it is refused. */
export type ClientMessage =
  | { kind: 'request'; m: Json; method: string; id: Id }
  | { kind: 'notification' | 'answer'; m: Json }
  | { kind: 'error'; reply: Json }
  | { kind: 'dropped'; why: string }
  | { kind: 'empty' };

const invalid = (code: number, message: string): ClientMessage => ({
  kind: 'error',
  reply: { jsonrpc: '2.0', id: null, error: { code, message } },
});

export function readClientLine(line: string): ClientMessage {
  if (line.trim() === '') return { kind: 'empty' };
  let m: Json;
  try {
    m = JSON.parse(line) as Json;
  } catch {
    return invalid(-32700, 'keyward: parse error');
  }
  // One JSON-RPC object per line: batches and anything else are refused, not forwarded.
  if (m === null || typeof m !== 'object' || Array.isArray(m))
    return invalid(-32600, 'keyward: one JSON-RPC request object per message');
  const method = typeof m['method'] === 'string' ? m['method'] : undefined;
  const id = m['id'] as Id | undefined;
  // An answer to a request the server made (sampling, elicitation, roots, ping).
  if (method === undefined) return { kind: 'answer', m };
  if (id === undefined) {
    // A request without an id (tools/call as a notification, say) would skip every check.
    if (!method.startsWith('notifications/'))
      return { kind: 'dropped', why: `dropped a ${method} sent without an id` };
    return { kind: 'notification', m };
  }
  if (typeof id !== 'string' && typeof id !== 'number')
    return invalid(-32600, 'keyward: a request id is a string or a number');
  return { kind: 'request', m, method, id };
}

/** A message from the server, read: what the client may get of it, rebuilt from known fields. */
export type ServerMessage =
  | { kind: 'request'; m: Json }
  | { kind: 'answer'; m: Json; id: Id }
  | { kind: 'dropped'; why: string };

/**
 * Sorts a server's message by its shape, strictly, and keeps only the fields JSON-RPC defines
 * (in the server's order): a request or notification has a string method and neither result
 * nor error (a notification's `"id": null` is dropped from it); an answer has no method and an
 * id. Anything else is dropped: a message with `"method": null` and a result, passed on as a
 * request, reached clients that take it for the answer to their own request, past the review
 * of tools and instructions. An answer with neither a result nor an error, or both, becomes an
 * error for the request it answers, which would wait for ever otherwise.
 */
export function readServerMessage(m: Json): ServerMessage {
  const has = (k: string) => Object.hasOwn(m, k);
  // The fields kept, in the order the server wrote them (the gateway changes nothing else).
  const only = (...keys: string[]): Json =>
    Object.fromEntries(Object.entries(m).filter(([k]) => keys.includes(k)));
  const id = m['id'];
  const idOk = typeof id === 'string' || typeof id === 'number';
  if (has('method')) {
    const method = m['method'];
    if (typeof method !== 'string' || has('result') || has('error'))
      return { kind: 'dropped', why: 'a message that is neither a request nor an answer' };
    if (id === null && method.startsWith('notifications/'))
      return { kind: 'request', m: only('jsonrpc', 'method', 'params') };
    if (has('id') && !idOk)
      return { kind: 'dropped', why: `a ${methodLabel(method)} with an invalid id` };
    return { kind: 'request', m: only('jsonrpc', 'id', 'method', 'params') };
  }
  if (!idOk) return { kind: 'dropped', why: 'an answer without a valid id' };
  if (has('result') === has('error'))
    return {
      kind: 'answer',
      id,
      m: {
        jsonrpc: '2.0',
        id,
        error: {
          code: ERR_REFUSED,
          message: 'keyward: the server answered with neither a result nor an error, or both',
        },
      },
    };
  return { kind: 'answer', id, m: only('jsonrpc', 'id', 'result', 'error') };
}

/**
 * Items handled one at a time, in order; a handler's failure is logged and the next goes on.
 * drained() resolves once everything queued so far is handled.
 */
export function serialQueue<T>(
  handle: (item: T) => Promise<void>,
  log: (e: unknown) => void,
): ((item: T) => void) & { drained: () => Promise<void> } {
  let chain = Promise.resolve();
  const push = (item: T) => {
    chain = chain.then(() => handle(item)).catch(log);
  };
  return Object.assign(push, { drained: () => chain });
}
