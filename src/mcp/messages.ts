/**
 * The JSON-RPC side of the gateway (gateway.ts): the error codes it answers with, which methods
 * carry nothing a model wrote, how a client's line is read into one message (or refused), and
 * the serial queue each direction is handled in.
 */
import type { Json } from './upstream.js';

export type Id = string | number;

export const ERR_REFUSED = -32001;
export const ERR_SERVER_GONE = -32002;
/** The JSON-RPC code the MCP spec gives a call to an unknown tool. */
export const ERR_UNKNOWN_TOOL = -32602;

/** What may pass while the agent can't scan (locked, or not running): nothing a model writes. */
export const UNSCANNED_FROM_CLIENT = new Set([
  'initialize',
  'ping',
  'tools/list',
  'notifications/initialized',
  'notifications/cancelled',
]);
export const UNSCANNED_FROM_SERVER = new Set(['initialize', 'ping', 'tools/list']);

/** The capabilities a client may declare that pass unscanned: flags only, no text of its own. */
const CLIENT_CAPABILITIES = ['roots', 'sampling', 'elicitation'];

/**
 * A message of UNSCANNED_FROM_CLIENT as it may pass while the agent can't scan it: rebuilt with
 * nothing the client wrote but its method, its id and the flags the protocol needs (found in
 * review: a ping's params, a field beside them, an initialize's clientInfo carried a value to
 * the server after any process of the user locked the agent). An initialize keeps its protocol
 * version (a date) and capability flags; its clientInfo is the gateway's.
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
  for (const c of CLIENT_CAPABILITIES)
    if (typeof caps[c] === 'object' && caps[c] !== null)
      flags[c] =
        c === 'roots' && (caps[c] as Json)['listChanged'] === true ? { listChanged: true } : {};
  out['params'] = {
    protocolVersion:
      typeof version === 'string' && /^\d{4}-\d{2}-\d{2}$/.test(version) ? version : '2025-06-18',
    capabilities: flags,
    clientInfo: { name: 'keyward-mcp-gateway', version: '1' },
  };
  return out;
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
    if (has('id') && !idOk) return { kind: 'dropped', why: `a ${method} with an invalid id` };
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
