/**
 * The credential proxy's wire: its own answers (a status and a line saying why), CONNECT targets,
 * and the TLS connection to an upstream server, its certificate checked against the trust given.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { FrameEvent, RequestFramer } from './framer.js';

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

/** Calls go once w has room for more (now, if it has). */
export function afterDrain(w: net.Socket, go: () => void): void {
  if (w.writableNeedDrain) w.once('drain', go);
  else go();
}

/**
 * Relays a plain HTTP request (no value in it: its checks are done) to host:port, head first,
 * then its body (from rest, then what s sends, read by framer), and the answer back: one request
 * a connection. s is read no faster than the upstream takes it.
 */
export async function relayPlain(
  s: net.Socket,
  host: string,
  port: number,
  head: Buffer,
  rest: FrameEvent[],
  framer: RequestFramer,
): Promise<void> {
  const up = net.connect({ host, port });
  s.on('close', () => up.destroy());
  up.setTimeout(CONNECT_TIMEOUT_MS, () => up.destroy(new Error('timed out')));
  await new Promise<void>((resolve, reject) => {
    up.once('connect', resolve);
    up.once('error', reject);
  });
  up.setTimeout(0);
  up.on('error', () => s.destroy());
  up.write(head);
  let done = false;
  const pass = (events: FrameEvent[]) => {
    for (const e of events) {
      if (done) return;
      if (e.type === 'end') done = true;
      else if (e.type === 'body' || e.type === 'raw') up.write(e.bytes);
      else done = true; // a pipelined request: this connection carries one
    }
  };
  pass(rest);
  s.on('data', (chunk: Buffer) => {
    // After its one request, what the child sends goes nowhere and is kept nowhere.
    if (done) return;
    try {
      pass(framer.push(chunk));
    } catch {
      done = true;
    }
    if (up.writableNeedDrain) {
      s.pause();
      afterDrain(up, () => s.resume());
    }
  });
  up.pipe(s);
  s.resume();
}
