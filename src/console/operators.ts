/**
 * The console's operator API (docs/OPERATORS.md, "The operator API"): a teammate logs in with an
 * OIDC token or an API key, gets a bearer token for this agent's memory only, and approves or
 * denies the requests whose rules name one of their groups. Routes under /api/operator/; the
 * Host check of server.ts applies, the console's own session and CSRF token do not (a bearer
 * token is never sent by a browser on its own).
 */
import type http from 'node:http';
import { KeywardError } from '../errors.js';
import { secureFree } from '../lib/secure.js';
import {
  authorityOf,
  keyIdOf,
  type OperatorIdentity,
  type OperatorSession,
  NOT_STARTED_HERE,
  PROVIDER_REFUSED,
} from '../operators/index.js';
import { HttpError, readJson, readSecret, sendJson } from './http.js';
import type { ConsoleServer } from './server.js';

const MAX_TOKEN = 16 * 1024;

export async function routeOperator(
  c: ConsoleServer,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  url: URL,
  now: number,
  /** Where the operator's browser reached the page: http://127.0.0.1:PORT, or the TLS origin. */
  base: string,
): Promise<void> {
  const redirectUri = `${base}/api/operator/oidc/callback`;
  const p = url.pathname;
  const post = req.method === 'POST';
  if (post && p === '/api/operator/hello')
    return sendJson(res, 200, c.tabProof.answer(await readJson(req)));
  if (post && p === '/api/operator/login/key') return loginKey(c, req, res, now);
  if (post && p === '/api/operator/login/oidc') return loginOidc(c, req, res, now);
  if (req.method === 'GET' && p === '/api/operator/oidc/start')
    return signInStart(c, res, now, redirectUri);
  if (req.method === 'GET' && p === '/api/operator/oidc/callback')
    return signInFinish(c, res, url, now, redirectUri);
  if (post && p === '/api/operator/oidc/claim') {
    const s = c.operatorSessions.claim((await readJson(req))['handle'], now);
    if (!s) throw new HttpError(403, 'no such sign-in (each is claimed once, within a minute)');
    if ('refusal' in s) throw new HttpError(403, `the sign-in was refused: ${s.refusal}`);
    return sendJson(res, 200, {
      token: s.token,
      operator: s.operator,
      ...c.tabProof.issue(),
    });
  }
  let s = c.operatorSessions.find(req.headers.authorization, now);
  // A session lasts only as long as the trust it was opened with: a revoked key, an issuer the
  // policy no longer names, or a group it no longer allows end it (or narrow it) at once.
  if (s) {
    const live = c.host.operatorLive(s.operator);
    if (live) s.operator = live;
    else {
      c.operatorSessions.end(s);
      s = undefined;
    }
  }
  if (!s)
    throw new HttpError(
      401,
      'an operator logs in first (a missing, wrong or expired bearer token)',
      'POST /api/operator/login/oidc or /api/operator/login/key',
    );
  let m: RegExpExecArray | null;
  if (req.method === 'GET' && p === '/api/operator/approvals') return list(c, s, res);
  if (post && (m = /^\/api\/operator\/approvals\/([0-9a-f]{8})\/(approve|deny)$/.exec(p))) {
    const id = m[1] ?? '';
    if (m[2] === 'deny') {
      await c.host.operatorDeny(id, s.operator);
      return sendJson(res, 200, { denied: id });
    }
    return sendJson(res, 200, await c.host.approve(id, { kind: 'operator', operator: s.operator }));
  }
  if (post && p === '/api/operator/logout') {
    c.operatorSessions.end(s);
    await c.audit({
      type: 'operator.login',
      decision: 'info',
      reason: 'logged out',
      details: { operator: s.operator.id, method: s.operator.method },
    });
    return sendJson(res, 200, { loggedOut: true });
  }
  throw new HttpError(404, 'not found');
}

/** The body is the API key itself (octet-stream), read into secure memory and freed. */
async function loginKey(
  c: ConsoleServer,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  now: number,
): Promise<void> {
  const key = await readSecret(req, 'the API key');
  let op: OperatorIdentity | undefined;
  let keyId: string | undefined;
  try {
    keyId = keyIdOf(key);
    op = c.host.operatorByKey(key);
  } finally {
    secureFree(key);
  }
  if (!op)
    return refused(c, 'key', 'an unknown, revoked or malformed API key', { key: keyId ?? null });
  return loggedIn(c, res, op, now, { key: keyId ?? null });
}

/** The body is {"token": "<a JWT>"}: an ID token or an access token from the issuer in policy. */
async function loginOidc(
  c: ConsoleServer,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  now: number,
): Promise<void> {
  const body = await readJson(req);
  const token = body['token'];
  if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN)
    throw new HttpError(400, 'the body is {"token": "<an ID token or access token>"}');
  let op: OperatorIdentity;
  try {
    op = await c.host.operatorByToken(token);
  } catch (e) {
    if (e instanceof KeywardError && e.code === 'OPERATOR_REFUSED')
      return refused(c, 'oidc', e.message, {});
    throw e;
  }
  return loggedIn(c, res, op, now, {});
}

/** The browser goes to the provider's sign-in; it comes back to signInFinish. */
async function signInStart(
  c: ConsoleServer,
  res: http.ServerResponse,
  now: number,
  redirectUri: string,
): Promise<void> {
  const login = await c.host.oidcLogin(redirectUri);
  const to = await login.start(now);
  res.writeHead(302, { Location: to.href });
  res.end();
}

/**
 * Back from the provider: the code is exchanged (state, PKCE, nonce), the ID token verified as
 * any operator's, and the browser sent to the operator page with a one-use handle for its
 * session; a refusal is recorded and shown there.
 */
async function signInFinish(
  c: ConsoleServer,
  res: http.ServerResponse,
  url: URL,
  now: number,
  redirectUri: string,
): Promise<void> {
  const back = (fragment: Record<string, string>) => {
    res.writeHead(302, { Location: `/operator#${new URLSearchParams(fragment).toString()}` });
    res.end();
  };
  let op: OperatorIdentity;
  // Until the provider has given an ID token, a refusal is of a callback anyone can make (a
  // state is anyone's who starts a sign-in, and a callback anyone's to send, a web page's
  // too): recorded, not counted toward the circuit breaker, which could otherwise be tripped
  // from afar. A token the provider gave that keyward refuses (no allowed group...) counts.
  let tokenGiven = false;
  try {
    const login = await c.host.oidcLogin(redirectUri);
    // The URL the provider sent the browser to, as the agent named it: the code exchange
    // repeats it as redirect_uri.
    const callback = new URL(redirectUri);
    callback.search = url.search;
    const token = await login.finish(callback, now);
    tokenGiven = true;
    op = await c.host.operatorByToken(token);
  } catch (e) {
    if (!(e instanceof KeywardError && e.code === 'OPERATOR_REFUSED')) throw e;
    await refused(c, 'oidc', e.message, { via: 'sign-in' }, tokenGiven).catch(() => undefined);
    // Before a token: fixed words the page knows, and no handle kept (anyone can make these, and
    // a flood of handles would push a person's sign-in out of the table that holds them).
    if (!tokenGiven) {
      if (e.message === NOT_STARTED_HERE) return back({ refused: 'not-started' });
      if (e.message.startsWith(PROVIDER_REFUSED)) return back({ refused: 'provider' });
      return back({ refused: 'not-completed' });
    }
    return back({ handle: c.operatorSessions.handOffRefusal(e.message.slice(0, 300), now) });
  }
  await c.audit({
    type: 'operator.login',
    decision: 'allow',
    details: { operator: op.id, method: op.method, groups: op.groups.join(','), via: 'sign-in' },
  });
  const s = c.operatorSessions.create(op, now);
  back({ handle: c.operatorSessions.handOff(s, now) });
}

async function loggedIn(
  c: ConsoleServer,
  res: http.ServerResponse,
  op: OperatorIdentity,
  now: number,
  details: Record<string, string | null>,
): Promise<void> {
  // Recorded before the token is handed out (fail closed: no record, no session).
  await c.audit({
    type: 'operator.login',
    decision: 'allow',
    details: { operator: op.id, method: op.method, groups: op.groups.join(','), ...details },
  });
  const s = c.operatorSessions.create(op, now);
  sendJson(res, 200, { token: s.token, operator: op, ...c.tabProof.issue() });
}

async function refused(
  c: ConsoleServer,
  method: 'oidc' | 'key',
  reason: string,
  details: Record<string, string | null>,
  counted = true,
): Promise<never> {
  if (counted) c.host.noteDenial();
  await c.audit({
    type: 'operator.login',
    decision: 'deny',
    reason: reason.slice(0, 300),
    details: { method, ...details },
  });
  throw new KeywardError('OPERATOR_REFUSED', reason);
}

/** The requests waiting for operators, each with whether this operator may decide it and why. */
function list(c: ConsoleServer, s: OperatorSession, res: http.ServerResponse): void {
  const rules = c.host.policy()?.policy.operators;
  // Only what this operator may decide: a request's caller, command line and directory are the
  // requester's, shown to the operators its rule names and nobody else.
  const pending = c.host
    .pending()
    .filter(
      (p) =>
        p.mode === 'operator' &&
        p.operators !== undefined &&
        'groups' in authorityOf(s.operator, p.rule, p.operators, rules),
    )
    .map((p) => ({ ...p, mayApprove: true }));
  sendJson(res, 200, { now: Date.now(), operator: s.operator, pending });
}
