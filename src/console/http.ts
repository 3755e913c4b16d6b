/**
 * The console's HTTP hygiene: who may talk to it (Host and Origin), what every response says to
 * the browser (no framing, no sniffing, no caching, a strict Content-Security-Policy, no CORS),
 * and bodies read with a cap, a passphrase straight into secure memory.
 */
import type http from 'node:http';
import type net from 'node:net';
import { KeywardError } from '../errors.js';
import {
  securePooled,
  secureRelease,
  secureSlice,
  zero,
  type SecureBuffer,
} from '../lib/secure.js';

const MAX_JSON = 64 * 1024;
const MAX_SECRET = 1024;

export const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join('; ');

/** Headers on every response, errors included. Never an Access-Control-* header. */
export function secureHeaders(res: http.ServerResponse): void {
  res.setHeader('Content-Security-Policy', CSP);
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Referrer-Policy', 'no-referrer');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
  res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/**
 * Where a request comes from, checked before anything else. The Host header must name this
 * console exactly (a DNS-rebound name reaching 127.0.0.1 is refused), and a request with an
 * Origin, or any request that changes something, must come from this console's own origin.
 * Returns 'redirect' for a page asked for at 127.0.0.1 (WebAuthn needs the name localhost).
 */
export function checkSource(
  req: http.IncomingMessage,
  port: number,
  bearer = false,
  operatorPage = false,
): 'ok' | 'redirect' {
  const host = req.headers.host;
  const origin = req.headers.origin;
  // The operator page and API answer on 127.0.0.1 too: a provider's sign-in comes back there.
  const hosts = operatorPage ? [`localhost:${port}`, `127.0.0.1:${port}`] : [`localhost:${port}`];
  if (!operatorPage && host === `127.0.0.1:${port}` && req.method === 'GET' && origin === undefined)
    return 'redirect';
  if (host === undefined || !hosts.includes(host))
    throw new HttpError(403, 'wrong Host header: the console answers only as localhost');
  // A request's Origin is the page it came from: this console's own (by the name it was asked by).
  if (origin !== undefined && origin !== `http://${host}`)
    throw new HttpError(403, 'wrong Origin: the console answers only its own pages');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    // The operator API (bearer) is authenticated by what each request carries, never by a
    // cookie a browser adds by itself: a script need not send an Origin (a page always does).
    if (origin === undefined && !bearer)
      throw new HttpError(403, 'a request that changes something must carry its Origin');
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin')
      throw new HttpError(403, 'only the console itself may change something');
  }
  return 'ok';
}

/**
 * The TLS listener's check (docs/OPERATORS.md): Host names the configured origin exactly (no
 * rebound name), an Origin, when sent, is that origin, and a browser's change comes from it.
 */
export function checkRemoteSource(req: http.IncomingMessage, origin: string): void {
  if (req.headers.host !== new URL(origin).host)
    throw new HttpError(403, `wrong Host header: this listener answers only as ${origin}`);
  if (req.headers.origin !== undefined && req.headers.origin !== origin)
    throw new HttpError(403, 'wrong Origin: this listener answers only its own pages');
  const site = req.headers['sec-fetch-site'];
  if (req.method !== 'GET' && req.method !== 'HEAD' && site !== undefined && site !== 'same-origin')
    throw new HttpError(403, 'only the operator page itself may change something');
}

export function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const b = Buffer.from(JSON.stringify(body), 'utf8');
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': b.length,
  });
  res.end(b);
}

/** A client's error: status, message and hint, never a stack. */
export function sendError(res: http.ServerResponse, e: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (e instanceof HttpError) {
    sendJson(res, e.status, { error: e.message, ...(e.hint ? { hint: e.hint } : {}) });
    return;
  }
  if (e instanceof KeywardError) {
    const status =
      e.code === 'REQUEST_NOT_FOUND' || e.code === 'SECRET_NOT_FOUND'
        ? 404
        : e.code === 'AGENT_LOCKED'
          ? 409
          : e.code === 'VAULT_BAD_PASSPHRASE' ||
              e.code === 'APPROVAL_REJECTED' ||
              e.code === 'SELF_APPROVAL' ||
              e.code === 'OPERATOR_REFUSED'
            ? 403
            : 400;
    sendJson(res, status, {
      error: e.message,
      code: e.code,
      ...(e.hint ? { hint: e.hint } : {}),
    });
    return;
  }
  sendJson(res, 500, { error: 'internal error in the console' });
}

function checkType(req: http.IncomingMessage, want: string): void {
  const t = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (t !== want) throw new HttpError(415, `the body must be ${want}`);
}

/** A JSON object body of at most 64 KiB. */
export async function readJson(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  checkType(req, 'application/json');
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_JSON) throw new HttpError(413, 'the body is too large');
    chunks.push(c);
  }
  let v: unknown;
  try {
    v = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new HttpError(400, 'the body is not JSON');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new HttpError(400, 'the body is not a JSON object');
  return v as Record<string, unknown>;
}

/**
 * Every byte a connection of server reads is zeroed once node:http has parsed it. Left to
 * itself, node:http reads a socket in native code into one buffer of its own, used again for
 * every request and written over only as far as the next one reaches: a passphrase or an API
 * key in a body stayed there, after the agent locked too. A `data` listener makes node:http read
 * through JavaScript instead; it runs after the parser's own, which copied out what it keeps
 * (the body's bytes are a copy: readSecret takes and zeroes those). `event` is the server's
 * `connection` (http) or `secureConnection` (https), whose listener node:http added first.
 */
export function zeroReadBytes(
  server: http.Server,
  event: 'connection' | 'secureConnection' = 'connection',
): void {
  server.on(event, (socket: net.Socket) => {
    socket.on('data', (chunk: Buffer) => zero(chunk));
  });
}

/**
 * What is left of a request's body, zeroed: what is buffered now, and what comes until node:http
 * drops the rest itself (once the answer is sent it stops handing body bytes to JavaScript; the
 * socket's chunks are zeroed by zeroReadBytes). A body the console answered without reading (a
 * session that ended, a wrong type, no Origin) was dropped unzeroed, a passphrase in it too.
 */
export function discardBody(req: http.IncomingMessage): void {
  // A request that declares no body is left alone: reading it to its end would close it, and an
  // event stream (api.ts) ends with its request's close.
  const declared =
    req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length']) > 0;
  if (!declared || req.readableEnded || req.destroyed) return;
  for (let c = req.read() as Buffer | null; c !== null; c = req.read() as Buffer | null) zero(c);
  req.on('data', (c: Buffer) => zero(c));
}

/**
 * A secret body (a passphrase), as raw bytes straight into secure memory: each chunk is copied
 * out and zeroed, and the bytes never become a string. The caller frees the result.
 */
export async function readSecret(
  req: http.IncomingMessage,
  what = 'the passphrase',
): Promise<SecureBuffer> {
  // Pooled (secure.ts): a flood of logins must not hold a mapping per request until GC.
  const buf = securePooled(MAX_SECRET);
  let n = 0;
  try {
    checkType(req, 'application/octet-stream');
    for await (const c of req as AsyncIterable<Buffer>) {
      if (n + c.length > MAX_SECRET) {
        zero(c);
        // What is buffered behind it, before the loop's end drops it.
        discardBody(req);
        throw new HttpError(413, `${what} is too long`);
      }
      c.copy(buf, n);
      n += c.length;
      zero(c);
    }
    if (n === 0) throw new HttpError(400, `${what} is empty`);
    return secureSlice(buf, 0, n);
  } finally {
    secureRelease(buf);
  }
}

/** The value of one cookie, if the request carries it. */
export function cookie(req: http.IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}
