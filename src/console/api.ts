/**
 * The console's API behind a login (server.ts has checked the source, the session and its CSRF
 * token before any of this runs): pending approvals, live; credentials; the audit log; policy.
 */
import { readOwnFile } from '../lib/files.js';
import { readEntries } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { secureFree } from '../lib/secure.js';
import { diffPolicies, parsePolicy, readHistory } from '../policy/index.js';
import {
  changeCredential,
  checkCredentialName,
  describeCredentials,
  findCredential,
  MAX_CREDENTIALS,
  readCredentials,
  writeCredentials,
} from './credentials.js';
import { HttpError, readJson, readSecret, sendJson } from './http.js';
import type { ConsoleServer, Ctx } from './server.js';
import {
  approvalChallenge,
  assertionOptions,
  registrationOptions,
  verifyAssertion,
  verifyRegistration,
} from './webauthn.js';

const PING_MS = 15_000;
const MAX_AUDIT = 2000;

export async function routeApi(c: ConsoleServer, x: Ctx): Promise<void> {
  const { req, url } = x;
  const p = url.pathname;
  const get = req.method === 'GET';
  const post = req.method === 'POST';
  let m: RegExpExecArray | null;
  if (get && p === '/api/approvals') return sendJson(x.res, 200, approvals(c, x.now));
  if (get && p === '/api/events') return events(c, x);
  if (post && (m = /^\/api\/approvals\/([0-9a-f]{8})\/(options|approve|deny)$/.exec(p)))
    return approval(c, x, m[1] ?? '', m[2] ?? '');
  if (get && p === '/api/credentials')
    return sendJson(x.res, 200, {
      credentials: describeCredentials(readCredentials(c.host.vault())),
    });
  if (post && p === '/api/credentials/options') return registerOptions(c, x);
  if (post && p === '/api/credentials') return register(c, x);
  if (post && (m = /^\/api\/credentials\/([A-Za-z0-9_-]{1,1400})\/(rename|revoke)$/.exec(p)))
    return manageCredential(c, x, m[1] ?? '', m[2] ?? '');
  if (get && p === '/api/audit') return sendJson(x.res, 200, audit(c, url));
  if (get && p === '/api/policy') return sendJson(x.res, 200, policy(c));
  if (get && p === '/api/pins') return sendJson(x.res, 200, { servers: await c.host.pins() });
  if (post && p === '/api/pins/trust') return trustPin(c, x);
  if (post && p === '/api/totp') return enrollTotp(c, x);
  if (get && (m = /^\/api\/policy\/(\d{1,9})$/.exec(p)))
    return sendJson(x.res, 200, policyVersion(c, Number(m[1])));
  throw new HttpError(404, 'not found');
}

function approvals(c: ConsoleServer, now: number): Record<string, unknown> {
  return { now, pending: c.host.pending() };
}

/**
 * Server-sent events over a fetch (the page sends its CSRF token in a header, which EventSource
 * can't): the pending list at once and at every change, a comment now and then.
 */
function events(c: ConsoleServer, x: Ctx): void {
  const { res } = x;
  res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8' });
  // The stream lives as long as its session: after a logout or an expiry it says nothing more.
  const live = () => {
    if (c.sessions.alive(x.session, Date.now())) return true;
    res.end();
    return false;
  };
  const send = () => {
    if (live())
      res.write(`event: approvals\ndata: ${JSON.stringify(approvals(c, Date.now()))}\n\n`);
  };
  send();
  const entry = { session: x.session, res };
  c.streams.add(entry);
  const off = c.host.onPendingChange(send);
  const ping = setInterval(() => live() && res.write(': ping\n\n'), PING_MS);
  ping.unref();
  const end = () => {
    off();
    clearInterval(ping);
    c.streams.delete(entry);
  };
  res.on('close', end);
  x.req.on('close', end);
}

async function approval(c: ConsoleServer, x: Ctx, id: string, what: string): Promise<void> {
  const { req, res, session, now } = x;
  const pending = c.host.pending().find((q) => q.id === id);
  if (!pending) throw new HttpError(404, `no pending request ${id}`);
  if (what === 'deny') {
    c.host.deny(id);
    return sendJson(res, 200, { denied: id });
  }
  if (what === 'options') {
    const record = readCredentials(c.host.vault());
    if (record.credentials.length === 0)
      throw new HttpError(409, 'no WebAuthn credential is registered: add one under Credentials');
    const challenge = approvalChallenge(id, pending.digest);
    const options = await assertionOptions(
      record,
      challenge,
      pending.userVerification ?? 'preferred',
    );
    c.sessions.issue(session, `approve:${id}`, options.challenge, now);
    return sendJson(res, 200, { options });
  }
  // approve: the factor is what the body carries.
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim();
  try {
    if (type === 'application/octet-stream') {
      const secret = await readSecret(req);
      await c.host.approve(id, { kind: 'passphrase', secret });
    } else {
      const body = await readJson(req);
      if (body['response'] !== undefined) {
        const challenge = c.sessions.take(session, `approve:${id}`, now);
        if (!challenge)
          throw new HttpError(
            403,
            'no WebAuthn challenge is outstanding for this request (each is used once)',
          );
        const a = await verifyAssertion(
          readCredentials(c.host.vault()),
          body['response'],
          challenge,
          c.origin,
          pending.userVerification === 'required',
        );
        await c.used(a.credential.id, a.newCounter, now);
        await c.host.approve(id, {
          kind: 'webauthn',
          userVerified: a.userVerified,
          credential: a.credential.id,
        });
      } else if (typeof body['code'] === 'string') {
        await c.host.approve(id, { kind: 'totp', code: body['code'] });
      } else {
        await c.host.approve(id, { kind: 'session', login: session.login });
      }
    }
  } catch (e) {
    if (e instanceof HttpError && e.status === 403) {
      c.host.noteDenial();
      await c.audit({
        type: 'approval.denied',
        decision: 'deny',
        target: pending.target,
        reason: e.message.slice(0, 300),
        details: { request: id },
      });
    }
    throw e;
  }
  sendJson(res, 200, { approved: id });
}

/** Adding a credential asks the passphrase, whatever the login: a stolen session can't add one. */
async function registerOptions(c: ConsoleServer, x: Ctx): Promise<void> {
  await c.passphrase(x.req, { type: 'console.credential', details: { action: 'add' } });
  const record = readCredentials(c.host.vault());
  if (record.credentials.length >= MAX_CREDENTIALS)
    throw new HttpError(409, `at most ${MAX_CREDENTIALS} credentials: revoke one first`);
  const options = await registrationOptions(record);
  c.sessions.issue(x.session, 'register', options.challenge, x.now);
  sendJson(x.res, 200, { options });
}

async function register(c: ConsoleServer, x: Ctx): Promise<void> {
  const body = await readJson(x.req);
  const name = checkCredentialName(body['name']);
  const challenge = c.sessions.take(x.session, 'register', x.now);
  if (!challenge)
    throw new HttpError(403, 'no registration is outstanding: give the passphrase first');
  const cred = await verifyRegistration(body['response'], challenge, c.origin);
  const created = new Date(x.now).toISOString();
  await c.host.write((v) => {
    const r = readCredentials(v);
    if (r.credentials.some((k) => k.id === cred.id))
      throw new HttpError(409, 'this credential is registered already');
    r.credentials.push({ ...cred, name, created, lastUsed: null });
    writeCredentials(v, r);
    return { result: undefined, save: true };
  });
  await c.audit({
    type: 'console.credential',
    decision: 'allow',
    reason: 'added',
    details: { action: 'add', credential: cred.id, name },
  });
  sendJson(x.res, 200, { added: cred.id });
}

async function manageCredential(
  c: ConsoleServer,
  x: Ctx,
  id: string,
  action: string,
): Promise<void> {
  const op = action === 'rename' ? 'rename' : 'revoke';
  const name = op === 'rename' ? checkCredentialName(x.url.searchParams.get('name')) : '';
  findCredential(readCredentials(c.host.vault()), id);
  // A security key is an approval factor: changing the set takes the passphrase, as on the CLI.
  await c.passphrase(x.req, {
    type: 'console.credential',
    details: { action: op, credential: id },
  });
  await c.audit(await changeCredential((fn) => c.host.write(fn), id, op, name));
  sendJson(x.res, 200, { [op === 'rename' ? 'renamed' : 'revoked']: id });
}

interface Row {
  seq: number;
  time: string;
  type: string;
  decision: string | null;
  target: string | null;
  caller: string | null;
  reason: string | null;
  details: unknown;
}

/** The audit log, its bodies opened with the vault, filtered; the newest MAX_AUDIT rows. */
function audit(c: ConsoleServer, url: URL): Record<string, unknown> {
  const q = (k: string) => url.searchParams.get(k) ?? '';
  const since = q('since') ? Date.parse(q('since')) : NaN;
  const until = q('until') ? Date.parse(q('until')) : NaN;
  const rows: Row[] = readEntries(c.host.home, c.host.vault()).map((e) => {
    const b = (typeof e.body === 'object' && e.body !== null ? e.body : {}) as Record<
      string,
      unknown
    >;
    const actor = (b['actor'] ?? {}) as Record<string, unknown>;
    const caller =
      typeof actor['exe'] === 'string'
        ? `${actor['exe']} (pid ${String(actor['pid'])})`
        : typeof actor['pid'] === 'number'
          ? `pid ${actor['pid']}`
          : null;
    return {
      seq: e.seq,
      time: e.time,
      type: e.type,
      decision: typeof b['decision'] === 'string' ? b['decision'] : null,
      target: typeof b['target'] === 'string' ? b['target'] : null,
      caller,
      reason: typeof b['reason'] === 'string' ? b['reason'] : null,
      details: b['details'] ?? null,
    };
  });
  const has = (v: string | null, needle: string) =>
    needle === '' || (v ?? '').toLowerCase().includes(needle.toLowerCase());
  const filtered = rows.filter(
    (r) =>
      has(r.type, q('type')) &&
      has(r.target, q('target')) &&
      has(r.caller, q('caller')) &&
      (q('decision') === '' || r.decision === q('decision')) &&
      (Number.isNaN(since) || Date.parse(r.time) >= since) &&
      (Number.isNaN(until) || Date.parse(r.time) <= until),
  );
  return { total: filtered.length, entries: filtered.slice(-MAX_AUDIT) };
}

function policy(c: ConsoleServer): Record<string, unknown> {
  const loaded = c.host.policy();
  if (!loaded) throw new KeywardError('AGENT_LOCKED', 'the agent is locked');
  return {
    inForce: {
      version: loaded.version ?? null,
      sha256: loaded.sha256,
      text: loaded.text,
      drift: loaded.drift,
      driftReasons: loaded.driftReasons,
    },
    history: readHistory(c.host.home).map((h) => ({
      version: h.version,
      appliedAt: h.appliedAt,
      sha256: h.sha256,
      rules: h.rules,
    })),
  };
}

/** One applied version, and what changed from the one before it. */
function policyVersion(c: ConsoleServer, n: number): Record<string, unknown> {
  const history = readHistory(c.host.home);
  const i = history.findIndex((h) => h.version === n);
  const h = history[i];
  if (!h) throw new HttpError(404, `no applied policy version ${n}`);
  const text = readOwnFile(h.file).toString('utf8');
  const prev = history[i - 1];
  let diff: unknown = null;
  if (prev) {
    const a = parsePolicy(readOwnFile(prev.file).toString('utf8'));
    const b = parsePolicy(text);
    if (a.ok && b.ok) diff = { against: prev.version, ...diffPolicies(a.policy, b.policy) };
  }
  return { version: n, appliedAt: h.appliedAt, text, diff };
}

/**
 * Trusts one waiting MCP tool definition, bound to the hash the page showed (query: server, tool,
 * hash); the body is the passphrase, as `keyward mcp pins trust` asks it.
 */
async function trustPin(c: ConsoleServer, x: Ctx): Promise<void> {
  const q = x.url.searchParams;
  const server = q.get('server') ?? '';
  const tool = q.get('tool') ?? '';
  const hash = q.get('hash') ?? '';
  if (server === '' || tool === '' || !/^[0-9a-f]{64}$/.test(hash))
    throw new HttpError(400, 'trusting a pin takes server, tool and the hash shown');
  await c.host.trustPin(server, tool, hash, await readSecret(x.req));
  sendJson(x.res, 200, { trusted: { server, tool, hash } });
}

/**
 * A new TOTP secret (replacing any other), for the passphrase. The answer is raw bytes from
 * secure memory (the otpauth URI), freed once sent: the secret never becomes a string in the
 * agent, nor goes through a QR library there. The page draws the code and shows the URI.
 */
async function enrollTotp(c: ConsoleServer, x: Ctx): Promise<void> {
  const body = await c.host.enrollTotp(await readSecret(x.req));
  let freed = false;
  const free = () => {
    if (!freed) {
      freed = true;
      secureFree(body);
    }
  };
  x.res.on('close', free);
  x.res.writeHead(200, {
    'Content-Type': 'application/octet-stream',
    'Content-Length': body.length,
  });
  x.res.end(body, free);
}
