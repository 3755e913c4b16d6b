/**
 * The credential proxy's wire: its own answers (a status and a line saying why), CONNECT targets,
 * and the TLS connection to an upstream server, its certificate checked against the trust given.
 */
import net from 'node:net';
import tls from 'node:tls';

/** How long the proxy waits to reach an upstream server. */
export const CONNECT_TIMEOUT_MS = 30_000;

const STATUS: Record<number, string> = {
  400: 'Bad Request',
  403: 'Forbidden',
  407: 'Proxy Authentication Required',
  429: 'Too Many Requests',
  431: 'Request Header Fields Too Large',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
};

/** Answers with a status and a line saying why, and closes. */
export function answer(
  s: net.Socket | tls.TLSSocket,
  status: number,
  message: string,
  extra: string[] = [],
): void {
  if (s.destroyed) return;
  const body = `keyward proxy: ${message}\n`;
  // Closed for good once the answer is out: a peer that keeps its half open holds no slot.
  s.end(
    [
      `HTTP/1.1 ${status} ${STATUS[status] ?? 'Error'}`,
      'Content-Type: text/plain; charset=utf-8',
      `Content-Length: ${Buffer.byteLength(body)}`,
      'Connection: close',
      ...extra,
      '',
      body,
    ].join('\r\n'),
    () => s.destroy(),
  );
}

/** host and port of a CONNECT target (host:port), lowercased; undefined if malformed. */
export function authority(target: string): { host: string; port: number } | undefined {
  const m = /^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(\d{1,5})$/.exec(target);
  const port = Number(m?.[2]);
  if (!m || port < 1 || port > 65535) return undefined;
  return { host: (m[1] ?? '').toLowerCase().replace(/^\[|\]$/g, ''), port };
}

/** The upstream connection, its certificate checked, before the child is told anything. */
export function upstreamTls(
  host: string,
  port: number,
  trust: tls.SecureContext,
): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const up = tls.connect({
      host,
      port,
      ...(net.isIP(host) ? {} : { servername: host }),
      secureContext: trust,
      ALPNProtocols: ['http/1.1'],
      rejectUnauthorized: true,
    });
    up.setTimeout(CONNECT_TIMEOUT_MS, () => up.destroy(new Error('timed out')));
    up.once('error', reject);
    up.once('secureConnect', () => {
      up.setTimeout(0);
      up.off('error', reject);
      resolve(up);
    });
  });
}

/**
 * A host as the proxy compares and connects to it, or undefined when it is none: lowercase, no
 * trailing dot, an IPv4 address in dotted-quad form however it was written (127.1, 2130706433,
 * 0x7f000001, an IPv4-mapped IPv6 address), an IPv6 address compressed. Binding, rate limits and
 * records all see one spelling, so another spelling of a host is the same host.
 */
export function canonicalHost(raw: string): string | undefined {
  let h = raw.toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h.endsWith('.')) h = h.slice(0, -1);
  if (h.includes(':')) {
    if (net.isIPv6(h) === false) return undefined;
    let v6: string;
    try {
      v6 = new URL(`http://[${h}]/`).hostname.slice(1, -1);
    } catch {
      return undefined;
    }
    // IPv4-mapped (::ffff:a.b.c.d, which URL writes as ::ffff:XXXX:XXXX): the IPv4 address.
    const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(v6);
    if (!m) return v6;
    const hi = parseInt(m[1] ?? '0', 16);
    const lo = parseInt(m[2] ?? '0', 16);
    return [hi >> 8, hi & 255, lo >> 8, lo & 255].join('.');
  }
  if (!/^[a-z0-9.-]{1,253}$/.test(h)) return undefined;
  try {
    // The WHATWG URL parser writes every IPv4 form as a dotted quad.
    return new URL(`http://${h}/`).hostname;
  } catch {
    return undefined;
  }
}
