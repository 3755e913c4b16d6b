/**
 * The web console (docs/CONSOLE.md): served by the agent on 127.0.0.1, at a port chosen at
 * start. This file keeps to listening, the source checks, the static page, logins and sessions;
 * the API behind a login is in api.ts.
 *
 * node:http, not a framework: a dozen routes, every one of which must check the same few things
 * in the same order (source, session, CSRF), which is easiest to see, and to test, in one place.
 */
import fs from 'node:fs';
import http from 'node:http';
import type { AuditRecord } from '../audit/index.js';
import { secureFree } from '../lib/secure.js';
import { OperatorSessions } from '../operators/index.js';
import { routeApi } from './api.js';
import { routeOperator } from './operators.js';
import { RemoteOperators } from './remote.js';
import { hasCredentials, readCredentials, writeCredentials } from './credentials.js';
import {
  checkRemoteSource,
  checkSource,
  cookie,
  discardBody,
  HttpError,
  readJson,
  readSecret,
  secureHeaders,
  sendError,
  sendJson,
  zeroReadBytes,
} from './http.js';
import { Sessions, type Session } from './sessions.js';
import { TabProof } from './tab-proof.js';
import type { ConsoleHost } from './host.js';
import { operatorPage, STATIC } from './static.js';
import { assertionOptions, verifyAssertion } from './webauthn.js';

function listenOn(server: http.Server, host: string, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, exclusive: true }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

export interface Ctx {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  url: URL;
  now: number;
  session: Session;
}

export class ConsoleServer {
  private servers: http.Server[] = [];
  private port = 0;
  readonly sessions = new Sessions();
  readonly operatorSessions = new OperatorSessions();
  /** A key for each tab that logs in, and the proofs a tab asks for (tab-proof.ts). */
  readonly tabProof = new TabProof();
  /** The operator page and API beyond this machine, over TLS, when the policy names it. */
  readonly remote = new RemoteOperators(
    (req, res, origin) => void this.handleRemote(req, res, origin),
  );
  /** Open event streams, ended when their session ends. */
  readonly streams = new Set<{ session: Session; res: http.ServerResponse }>();
  private readonly files = new Map<string, Buffer>();

  constructor(readonly host: ConsoleHost) {}

  get url(): string | undefined {
    return this.port === 0 ? undefined : `http://localhost:${this.port}/`;
  }

  get origin(): string {
    return `http://localhost:${this.port}`;
  }

  private get cookieName(): string {
    return `keyward_${this.port}`;
  }

  /**
   * Listens on 127.0.0.1 at a port the kernel picks, and on [::1] at the same port: a browser or
   * a tunnel may take "localhost" to ::1 first, and that address left free would let another
   * process of the user stand there as the console (and collect a passphrase or an operator's
   * key). A port whose [::1] side is taken already is given up for another. A machine without
   * IPv6 has no ::1 to take.
   */
  async start(): Promise<void> {
    for (const [route, f] of Object.entries(STATIC)) this.files.set(route, fs.readFileSync(f.file));
    for (let attempt = 0; ; attempt++) {
      const v4 = this.newServer();
      await listenOn(v4, '127.0.0.1', 0);
      const addr = v4.address();
      if (addr === null || typeof addr === 'string') throw new Error('no console address');
      const v6 = this.newServer();
      const taken = await listenOn(v6, '::1', addr.port).then(
        () => undefined,
        (e: NodeJS.ErrnoException) => e,
      );
      if (taken === undefined || taken.code === 'EADDRNOTAVAIL' || taken.code === 'EAFNOSUPPORT') {
        this.port = addr.port;
        this.servers = taken === undefined ? [v4, v6] : [v4];
        return;
      }
      await new Promise<void>((r) => v4.close(() => r()));
      if (attempt >= 20)
        throw new Error(
          `the console found no port free on both 127.0.0.1 and ::1 (${taken.code ?? taken.message})`,
        );
    }
  }

  private newServer(): http.Server {
    const server = http.createServer((req, res) => void this.handle(req, res));
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    server.keepAliveTimeout = 5_000;
    // One person's browser needs a handful; a local process opening thousands gets no more.
    server.maxConnections = 64;
    zeroReadBytes(server);
    return server;
  }

  async stop(): Promise<void> {
    this.endSessions();
    await this.remote.close();
    const servers = this.servers;
    this.servers = [];
    for (const s of servers) {
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
  }

  /** One session ends (logout), and with it its event streams. */
  endSession(s: Session): void {
    this.sessions.end(s);
    for (const st of [...this.streams])
      if (st.session === s) {
        st.res.end();
        this.streams.delete(st);
      }
  }

  /** The agent locked: every session ends, every stream closes. */
  endSessions(): void {
    this.sessions.clear();
    this.operatorSessions.clear();
    for (const st of this.streams) st.res.end();
    this.streams.clear();
  }

  /**
   * A request on the TLS listener: Host (and Origin, when sent) must name the configured origin,
   * and only the operator page and API answer; everything else of the console is not found.
   */
  private async handleRemote(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    origin: string,
  ): Promise<void> {
    secureHeaders(res);
    res.setHeader('Strict-Transport-Security', 'max-age=31536000');
    try {
      checkRemoteSource(req, origin);
      const url = new URL(req.url ?? '/', origin);
      if (!operatorPage(url.pathname)) throw new HttpError(404, 'not found');
      const page = STATIC[url.pathname];
      if (req.method === 'GET' && page) {
        const body = this.files.get(url.pathname) ?? Buffer.alloc(0);
        res.writeHead(200, { 'Content-Type': page.type, 'Content-Length': body.length });
        res.end(body);
        return;
      }
      await routeOperator(this, req, res, url, Date.now(), origin);
    } catch (e) {
      sendError(res, e);
    } finally {
      discardBody(req);
    }
  }

  /** Whether an operator could approve here (the operator channel exists). */
  hasOperators(): boolean {
    try {
      return this.host.hasOperators();
    } catch {
      return false;
    }
  }

  /** Whether the open vault has a WebAuthn credential (the webauthn channel exists). */
  hasWebauthn(): boolean {
    try {
      return hasCredentials(this.host.vault());
    } catch {
      return false;
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    secureHeaders(res);
    try {
      const operatorApi = (req.url ?? '').startsWith('/api/operator/');
      if (checkSource(req, this.port, operatorApi, operatorPage(req.url)) === 'redirect') {
        res.writeHead(302, { Location: `${this.origin}/` });
        res.end();
        return;
      }
      const url = new URL(req.url ?? '/', this.origin);
      const now = Date.now();
      if (req.method === 'GET' && STATIC[url.pathname]) {
        const body = this.files.get(url.pathname) ?? Buffer.alloc(0);
        res.writeHead(200, {
          'Content-Type': STATIC[url.pathname]?.type ?? 'application/octet-stream',
          'Content-Length': body.length,
        });
        res.end(body);
        return;
      }
      if (!url.pathname.startsWith('/api/')) throw new HttpError(404, 'not found');
      // A provider sends an operator's browser back to 127.0.0.1 (RFC 8252, 7.3).
      if (operatorApi)
        return await routeOperator(this, req, res, url, now, `http://127.0.0.1:${this.port}`);
      if (await this.login(req, res, url.pathname, now)) return;
      const session = this.sessions.find(
        cookie(req, this.cookieName),
        typeof req.headers['x-keyward-csrf'] === 'string'
          ? req.headers['x-keyward-csrf']
          : undefined,
        now,
      );
      if (!session)
        throw new HttpError(
          403,
          'log in first (a missing or wrong session or CSRF token)',
          'the session may have ended: log in again',
        );
      if (req.method === 'POST' && url.pathname === '/api/logout') {
        this.endSession(session);
        await this.audit({ type: 'console.logout', decision: 'info' });
        res.setHeader(
          'Set-Cookie',
          `${this.cookieName}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`,
        );
        sendJson(res, 200, { loggedOut: true });
        return;
      }
      await routeApi(this, { req, res, url, now, session });
    } catch (e) {
      sendError(res, e);
    } finally {
      // A body answered without being read (refused first) is zeroed, never left to node:http.
      discardBody(req);
    }
  }

  /** Audits a console event; a failure to record fails the request (fail closed). */
  audit(r: AuditRecord): Promise<unknown> {
    return this.host.record({ ...r, details: { via: 'console', ...(r.details ?? {}) } });
  }

  /**
   * The passphrase in the request body, checked against the open vault and freed; a wrong one is
   * recorded (as `refusal` says) and counts toward the circuit breaker.
   */
  async passphrase(
    req: http.IncomingMessage,
    refusal: Pick<AuditRecord, 'type' | 'details'>,
  ): Promise<void> {
    const secret = await readSecret(req);
    let ok: boolean;
    try {
      ok = await this.host.vault().checkPassphraseAsync(secret);
    } finally {
      secureFree(secret);
    }
    if (ok) return;
    this.host.noteDenial();
    await this.audit({ ...refusal, decision: 'deny', reason: 'wrong passphrase' });
    throw new HttpError(403, 'wrong passphrase');
  }

  /** Handles the routes that need no session: state and the logins. True when it did. */
  private async login(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    route: string,
    now: number,
  ): Promise<boolean> {
    if (req.method === 'GET' && route === '/api/state') {
      let locked = false;
      let webauthn = false;
      try {
        webauthn = hasCredentials(this.host.vault());
      } catch {
        locked = true;
      }
      sendJson(res, 200, { locked, webauthn });
      return true;
    }
    if (req.method !== 'POST') return false;
    if (route === '/api/hello') {
      sendJson(res, 200, this.tabProof.answer(await readJson(req)));
      return true;
    }
    if (route === '/api/login/passphrase') {
      await this.passphrase(req, { type: 'console.login', details: { method: 'passphrase' } });
      const s = this.startSession(res, 'passphrase', null, now);
      await this.audit({
        type: 'console.login',
        decision: 'allow',
        details: { method: 'passphrase' },
      });
      sendJson(res, 200, { csrf: s.csrf, login: s.login, ...this.tabProof.issue() });
      return true;
    }
    if (route === '/api/login/options') {
      const record = readCredentials(this.host.vault());
      if (record.credentials.length === 0)
        throw new HttpError(
          409,
          'no WebAuthn credential is registered yet: log in with the passphrase',
        );
      const { handle, challenge } = this.sessions.issueLogin(now);
      const options = await assertionOptions(
        record,
        Buffer.from(challenge, 'base64url'),
        'preferred',
      );
      sendJson(res, 200, { handle, options });
      return true;
    }
    if (route === '/api/login/webauthn') {
      const body = await readJson(req);
      const handle = body['handle'];
      const challenge = this.sessions.loginChallenge(handle, now);
      if (typeof handle !== 'string' || !challenge)
        throw new HttpError(403, 'no such login challenge (each is used once)');
      const record = readCredentials(this.host.vault());
      let a;
      try {
        a = await verifyAssertion(record, body['response'], challenge, this.origin, false);
      } catch (e) {
        this.host.noteDenial();
        await this.audit({
          type: 'console.login',
          decision: 'deny',
          reason: e instanceof Error ? e.message.slice(0, 300) : 'refused',
          details: { method: 'webauthn' },
        });
        throw e;
      }
      // Marked before anything is awaited: one assertion, sent twice at once, logs in once.
      if (!this.sessions.useLogin(handle, now))
        throw new HttpError(403, 'no such login challenge (each is used once)');
      await this.used(a.credential.id, a.newCounter, now);
      const s = this.startSession(res, 'webauthn', a.credential.id, now);
      await this.audit({
        type: 'console.login',
        decision: 'allow',
        details: { method: 'webauthn', credential: a.credential.id, userVerified: a.userVerified },
      });
      sendJson(res, 200, { csrf: s.csrf, login: s.login, ...this.tabProof.issue() });
      return true;
    }
    return false;
  }

  private startSession(
    res: http.ServerResponse,
    login: Session['login'],
    credential: string | null,
    now: number,
  ): Session {
    const s = this.sessions.create(login, credential, now);
    res.setHeader(
      'Set-Cookie',
      // No Max-Age: a session cookie, which a browser keeps in memory rather than on disk.
      `${this.cookieName}=${s.id}; HttpOnly; SameSite=Strict; Path=/`,
    );
    return s;
  }

  /**
   * Records a credential's new signature counter and last use in the vault. Under the vault's
   * lock, so against the credentials as they are now: one revoked since its assertion was
   * verified, or whose counter another use has moved as far since, is refused (403). The rule is
   * the assertion check's (a counter of 0 is a key that keeps none, and stands only while the
   * stored one is 0 too): two uses verified together can't set a counter back.
   */
  async used(id: string, counter: number, now: number): Promise<void> {
    await this.host.write((v) => {
      const r = readCredentials(v);
      const c = r.credentials.find((x) => x.id === id);
      if (!c) throw new HttpError(403, 'the security key was revoked while it was being used');
      if ((counter > 0 || c.counter > 0) && c.counter >= counter)
        throw new HttpError(
          403,
          "the security key's signature counter did not move past its last use",
        );
      c.counter = counter;
      c.lastUsed = new Date(now).toISOString();
      writeCredentials(v, r);
      return { result: undefined, save: true };
    });
  }
}
