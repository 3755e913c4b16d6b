/**
 * What the credential proxy does with one request head (docs/PROXY.md): which placeholders it
 * carries and where, whether they may go to this host, the header a binding sets, and the head
 * with the real values in place, built in secure memory.
 *
 * The head as the child sent it holds placeholders, never values: it may be read as text. The
 * head that goes upstream holds values: it exists only as a secure buffer.
 */
import type { SecureBuffer } from '../lib/secure.js';
import { substitute } from './placeholder.js';
import { canonicalHost } from './host.js';

export type Part = 'headers' | 'url';

/** How one host gets one secret. */
export interface HostRule {
  /** The port the host is bound on. */
  port: number;
  in: ReadonlySet<Part>;
  /** The headers (lowercase) a placeholder is replaced in. */
  headers: ReadonlySet<string>;
  /** A header the proxy sets on every request to the host, with the value in format's {}. */
  header?: string | undefined;
  format?: string | undefined;
}

/** One secret of the run: its placeholder, its value (secure memory) and the hosts it goes to. */
export interface Binding {
  name: string;
  placeholder: Buffer;
  value: SecureBuffer;
  hosts: ReadonlyMap<string, HostRule>;
}

/** A request the proxy refuses: the status it answers, why (recorded), and for which secret. */
export interface Refusal {
  status: 403 | 400;
  reason: string;
  secret: string | undefined;
}

export interface Plan {
  /** The bindings whose value goes into this request (placeholder found, or a header set). */
  used: Binding[];
  /** The head to send, still with placeholders (headers the bindings set are in it). */
  head: Buffer;
  /** Where each used binding's value goes, for the record: url, headers, header NAME. */
  where: Map<string, string>;
  method: string;
  /** Whether it asks to switch to a WebSocket (the one upgrade that keeps its connection). */
  webSocket: boolean;
  /** The request's path without its query, placeholders named, not shown. */
  path: string;
}

const CRLF = '\r\n';
/**
 * Headers dropped from a request that carries a value: they ask for an answer not whole (a
 * compressed one, one in ranges, or WebSocket messages compressed by permessage-deflate).
 */
const WHOLE_ANSWER = new Set([
  'accept-encoding',
  'te',
  'range',
  'if-range',
  'sec-websocket-extensions',
]);

/** Headers that say whether the connection is kept for another request. */
const HOP = new Set(['connection', 'keep-alive']);

/** Methods that send the request back to the client: a value in it would come back too. */
const ECHOING = new Set(['TRACE', 'TRACK', 'CONNECT']);

/**
 * The plan for a head sent to host:port (plain: over HTTP, where no value may ever go), or the
 * refusal. A placeholder found anywhere is checked: sending it to a host its secret is not bound
 * to is exfiltration, and is refused even though the placeholder is worth nothing there. Through
 * a bound host, the request must be for that host (origin form, its Host), must not echo itself
 * back (TRACE), and a placeholder may be only in the headers the binding names (a server echoes
 * Origin, Host and request ids) or, when it says so, the request line.
 */
export function plan(
  head: Buffer,
  host: string,
  port: number,
  bindings: readonly Binding[],
  plain: boolean,
): Plan | Refusal {
  const text = head.toString('latin1');
  const lines = text.slice(0, text.length - 4).split(CRLF);
  const requestLine = lines[0] ?? '';
  const [method = '', target = ''] = requestLine.split(' ');
  const headers = lines.slice(1).map((l) => {
    const colon = l.indexOf(':');
    return { name: l.slice(0, colon), lower: l.slice(0, colon).toLowerCase(), line: l };
  });
  const used: Binding[] = [];
  const where = new Map<string, string>();
  const refuse = (
    reason: string,
    secret: string | undefined,
    status: 403 | 400 = 403,
  ): Refusal => ({
    status,
    reason,
    secret,
  });
  const ruleOf = (b: Binding) => {
    const r = b.hosts.get(host);
    return r && r.port === port ? r : undefined;
  };
  const anyBound = bindings.some((b) => ruleOf(b) !== undefined);
  if (anyBound && !plain) {
    if (ECHOING.has(method.toUpperCase()))
      return refuse(
        `${method} to a bound host would send the request, values and all, back`,
        undefined,
      );
    if (!target.startsWith('/') && target !== '*')
      return refuse(
        'a request inside a tunnel must name a path (origin form), not another URL',
        undefined,
        400,
      );
    const hostHeaders = headers.filter((h) => h.lower === 'host');
    const m = /^([^:]*)(?::(\d{1,5}))?$/.exec(hostHeaders[0]?.line.slice(5).trim() ?? '');
    const named = m && canonicalHost(m[1] ?? '');
    if (
      hostHeaders.length !== 1 ||
      named !== host ||
      (m?.[2] !== undefined && Number(m[2]) !== port)
    )
      return refuse(`the request's Host must be ${host} (the host of its tunnel)`, undefined, 400);
  }
  for (const b of bindings) {
    const ph = b.placeholder.toString('latin1');
    const inUrl = target.includes(ph);
    // In the method or the version: no place for a value (a server may echo an unknown method).
    if (!inUrl && requestLine.includes(ph))
      return refuse(
        `the placeholder of ${b.name} is in the request line outside its target`,
        b.name,
        400,
      );
    const inHeaders = headers.filter((h) => h.line.includes(ph));
    if (!inUrl && inHeaders.length === 0) continue;
    const rule = ruleOf(b);
    if (!rule)
      return refuse(
        `the placeholder of ${b.name} was sent to ${host}:${port}, which the policy does not bind it to`,
        b.name,
      );
    if (plain) return refuse(`${b.name} would go to ${host} over plain HTTP`, b.name);
    if (inUrl && !rule.in.has('url'))
      return refuse(
        `the placeholder of ${b.name} is in the URL; the policy puts it in headers only`,
        b.name,
      );
    for (const h of inHeaders) {
      if (!rule.in.has('headers') || !rule.headers.has(h.lower) || h.name.includes(ph))
        return refuse(
          `the placeholder of ${b.name} is in the header ${h.name.includes(ph) ? '(its name)' : h.name}; the policy puts it only in ${rule.in.has('headers') ? [...rule.headers].join(', ') : 'the URL'}`,
          b.name,
        );
    }
    used.push(b);
    where.set(
      b.name,
      [inUrl ? 'url' : '', ...inHeaders.map((h) => h.lower)].filter(Boolean).join('+'),
    );
  }
  let out = lines;
  for (const b of bindings) {
    const rule = ruleOf(b);
    if (!rule?.header) continue;
    if (plain) return refuse(`${b.name} would go to ${host} over plain HTTP`, b.name);
    const name = rule.header.toLowerCase();
    const ph = b.placeholder.toString('latin1');
    out = [
      ...out.filter((l, i) => i === 0 || l.slice(0, l.indexOf(':')).toLowerCase() !== name),
      `${rule.header}: ${(rule.format ?? '{}').replace('{}', ph)}`,
    ];
    if (!used.includes(b)) used.push(b);
    where.set(b.name, `header ${rule.header}`);
  }
  // An answer the echo watch can read whole: a compressed one, or one in ranges (each a part of
  // an echoed value), would carry the value past it. So would HTTP/2 after an h2c upgrade (its
  // headers compressed by HPACK): refused, as no API needs it.
  const upgrades = headers
    .filter((h) => h.lower === 'upgrade')
    .map((h) => /^\s*websocket\s*$/i.test(h.line.slice(8)));
  const webSocket = upgrades.includes(true);
  if (used.length > 0 && upgrades.includes(false))
    return refuse(
      'a request that carries a value may upgrade only to a WebSocket (another protocol, h2c say, could echo it compressed)',
      used[0]?.name,
      400,
    );
  if (used.length > 0)
    out = [
      ...out.filter(
        (l, i) => i === 0 || !WHOLE_ANSWER.has(l.slice(0, l.indexOf(':')).toLowerCase()),
      ),
      'Accept-Encoding: identity',
    ];
  // One answer per connection to a bound host: the echo watch reads where an answer ends only
  // for the first (answers.ts); a server that took a body it left unread as the next request
  // would answer more than the proxy sent (found in review). A WebSocket upgrade keeps its
  // Connection; another upgrade does not (one answered without a switch kept the connection).
  if (anyBound && !plain && !webSocket)
    out = [
      ...out.filter((l, i) => i === 0 || !HOP.has(l.slice(0, l.indexOf(':')).toLowerCase())),
      'Connection: close',
    ];
  let path = target.startsWith('/') ? target : safePath(target);
  path = path.split('?')[0] ?? '';
  for (const b of bindings) path = path.split(b.placeholder.toString('latin1')).join(`{${b.name}}`);
  return {
    used,
    head: Buffer.from(out.join(CRLF) + CRLF + CRLF, 'latin1'),
    where,
    method,
    webSocket,
    path: path.slice(0, 256),
  };
}

function safePath(target: string): string {
  try {
    return new URL(target).pathname;
  } catch {
    return '';
  }
}

/** The head with each used binding's value in place of its placeholder (the caller frees it). */
export function withValues(p: Plan): SecureBuffer | Buffer {
  if (p.used.length === 0) return p.head;
  const out = substitute(
    p.head,
    p.used.map((b) => ({ placeholder: b.placeholder, value: b.value, name: b.name })),
  );
  return out ? out.out : p.head;
}

/**
 * The head of a plain HTTP request rewritten for the origin server: the target in origin form,
 * the proxy's own headers gone, and the connection closed after the response (one request per
 * connection keeps the response stream simple to pass back). The head holds no value.
 */
export function originHead(head: Buffer, url: URL): Buffer {
  const lines = head
    .toString('latin1')
    .slice(0, head.length - 4)
    .split(CRLF);
  const [method = 'GET'] = (lines[0] ?? '').split(' ');
  const drop = new Set(['proxy-authorization', 'proxy-connection', 'connection', 'keep-alive']);
  const kept = lines.slice(1).filter((l) => !drop.has(l.slice(0, l.indexOf(':')).toLowerCase()));
  return Buffer.from(
    [`${method} ${url.pathname}${url.search} HTTP/1.1`, ...kept, 'Connection: close'].join(CRLF) +
      CRLF +
      CRLF,
    'latin1',
  );
}
