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
