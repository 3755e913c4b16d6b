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

export type Part = 'headers' | 'url';

/** How one host gets one secret. */
export interface HostRule {
  in: ReadonlySet<Part>;
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
  /** The request's path without its query, placeholders named, not shown. */
  path: string;
}

const CRLF = '\r\n';

/**
 * The plan for a head sent to host (plain: over HTTP, where no value may ever go), or the
 * refusal. A placeholder found anywhere is checked: sending it to a host its secret is not bound
 * to is exfiltration, and is refused even though the placeholder is worth nothing there.
 */
export function plan(
  head: Buffer,
  host: string,
  bindings: readonly Binding[],
  plain: boolean,
): Plan | Refusal {
  const text = head.toString('latin1');
  const firstEnd = text.indexOf(CRLF);
  const requestLine = text.slice(0, firstEnd);
  const [method = '', target = ''] = requestLine.split(' ');
  const used: Binding[] = [];
  const where = new Map<string, string>();
  const refuse = (reason: string, secret: string): Refusal => ({ status: 403, reason, secret });
  for (const b of bindings) {
    const ph = b.placeholder.toString('latin1');
    const inUrl = requestLine.includes(ph);
    const inHeaders = text.indexOf(ph, firstEnd) >= 0;
    if (!inUrl && !inHeaders) continue;
    const rule = b.hosts.get(host);
    if (!rule)
      return refuse(
        `the placeholder of ${b.name} was sent to ${host}, which the policy does not bind it to`,
        b.name,
      );
    if (plain) return refuse(`${b.name} would go to ${host} over plain HTTP`, b.name);
    if (inUrl && !rule.in.has('url'))
      return refuse(
        `the placeholder of ${b.name} is in the URL; the policy puts it in headers only`,
        b.name,
      );
    if (inHeaders && !rule.in.has('headers'))
      return refuse(
        `the placeholder of ${b.name} is in a header; the policy puts it in the URL only`,
        b.name,
      );
    used.push(b);
    where.set(b.name, [inUrl ? 'url' : '', inHeaders ? 'headers' : ''].filter(Boolean).join('+'));
  }
  let lines = text.slice(0, text.length - 4).split(CRLF);
  for (const b of bindings) {
    const rule = b.hosts.get(host);
    if (!rule?.header) continue;
    if (plain) return refuse(`${b.name} would go to ${host} over plain HTTP`, b.name);
    const name = rule.header.toLowerCase();
    const ph = b.placeholder.toString('latin1');
    lines = [
      ...lines.filter((l, i) => i === 0 || l.slice(0, l.indexOf(':')).toLowerCase() !== name),
      `${rule.header}: ${(rule.format ?? '{}').replace('{}', ph)}`,
    ];
    if (!used.includes(b)) used.push(b);
    where.set(b.name, `header ${rule.header}`);
  }
  let path = target.startsWith('/') ? target : safePath(target);
  path = path.split('?')[0] ?? '';
  for (const b of bindings) path = path.split(b.placeholder.toString('latin1')).join(`{${b.name}}`);
  return {
    used,
    head: Buffer.from(lines.join(CRLF) + CRLF + CRLF, 'latin1'),
    where,
    method,
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
