/**
 * Verifying an operator's OpenID Connect token (an ID token, or a JWT access token per RFC 9068)
 * against the one issuer policy.yaml names, with jose doing the JWS and claim checks.
 *
 * The token is attacker-controlled until its signature verifies: it is decoded only to refuse it
 * early (another issuer, a symmetric or `none` algorithm) without fetching anything on its say,
 * and no part of it other than claim values (iss, aud, sub, groups) ever reaches a message.
 */
import {
  createRemoteJWKSet,
  customFetch,
  decodeJwt,
  decodeProtectedHeader,
  errors,
  jwtVerify,
} from 'jose';
import type { JWTPayload, JWTVerifyGetKey, JWTVerifyOptions } from 'jose';
import { createHash } from 'node:crypto';
import { KeywardError } from '../errors.js';
import type { OidcSettings, OperatorIdentity } from './types.js';

export interface OidcVerifierOptions {
  /** Milliseconds since the epoch; default Date.now. */
  now?: () => number;
  /** Least time between two JWKS fetches caused by an unknown kid (default 30_000 ms; tests pass 0). */
  jwksCooldownMs?: number;
  /**
   * The logins remembered against replay (verifyOnce), kept by the caller: a verifier made anew
   * (a policy change) must not forget them. Default: the verifier's own.
   */
  used?: Map<string, number>;
  /**
   * Milliseconds since the epoch when the remembered logins began (the agent's start): a token
   * issued before then may have opened a session no one remembers, so verifyOnce refuses it.
   */
  rememberedSince?: number;
}

/** Asymmetric only: with HS*, the issuer's public key would become a shared secret (RFC 8725 3.1). */
const ALGORITHMS = [
  ...['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'],
  ...['ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'],
];
/** JWS `typ` of the tokens accepted: none given, a JWT, or an access token (RFC 9068). */
const TOKEN_TYPES = ['jwt', 'at+jwt', 'application/at+jwt'];
const LOOPBACK_HOSTS = new Set(['127.0.0.1', '[::1]', 'localhost']);
/** Real discovery documents and key sets are a few kB; the bound keeps a hostile one out of memory. */
const MAX_DOCUMENT_BYTES = 256 * 1024;
const MAX_TOKEN_CHARS = 16 * 1024;
const FETCH_TIMEOUT_MS = 5_000;
const MAX_ID_CHARS = 256;
/** Logins remembered against replay at once: far beyond a team's, and bounded. */
const MAX_REMEMBERED = 10_000;
const MALFORMED = 'the token is not a well-formed JWT (a signed compact JWS)';

function refuse(message: string, cause?: unknown): KeywardError {
  return new KeywardError('OPERATOR_REFUSED', message, cause === undefined ? {} : { cause });
}

/** A claim value for a message: control and format characters replaced, cut, quoted. */
function shown(value: unknown, max = 100): string {
  const text = typeof value === 'string' ? value : (JSON.stringify(value) ?? String(value));
  const clean = text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, '?');
  return JSON.stringify(clean.length > max ? `${clean.slice(0, max)}...` : clean);
}

/** A NumericDate claim for a message, as a time when it is one. */
function time(value: unknown): string {
  const date = new Date(typeof value === 'number' ? value * 1000 : NaN);
  return Number.isNaN(date.getTime()) ? shown(value) : date.toISOString();
}

/** Keys are fetched only over https, or over http on this machine (a test or a local IdP). */
function fetchableUrl(value: string, what: string): URL {
  const url = URL.canParse(value) ? new URL(value) : undefined;
  if (
    url?.protocol === 'https:' ||
    (url?.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname))
  ) {
    return url;
  }
  throw refuse(
    `${what} ${shown(value)} is not https: an issuer's keys are only fetched over https ` +
      '(plain http only on a loopback address: 127.0.0.1, ::1, localhost)',
  );
}

/** A discovery document or key set could not be had: network, timeout, status or size. */
class FetchFailed extends Error {}

/** Why a fetch failed, without the stack: undici puts the useful part (ECONNREFUSED) in cause. */
function reason(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  if (e instanceof FetchFailed) return e.message;
  const cause = e.cause instanceof Error ? ` (${e.cause.message})` : '';
  return `${e.message}${cause}`;
}

/**
 * fetch with a timeout, no redirects (a redirect could leave https) and at most
 * MAX_DOCUMENT_BYTES read; any failure, including a status other than 200, is a FetchFailed.
 */
async function boundedFetch(url: string, init: RequestInit = {}): Promise<Response> {
  try {
    const signal = init.signal ?? AbortSignal.timeout(FETCH_TIMEOUT_MS);
    const response = await fetch(url, { ...init, signal, redirect: 'manual' });
    if (response.status !== 200) {
      await response.body?.cancel();
      throw new Error(`${url} answered HTTP ${response.status}`);
    }
    const chunks: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of response.body ?? []) {
      size += chunk.byteLength;
      if (size > MAX_DOCUMENT_BYTES) {
        throw new Error(`${url} sent more than ${MAX_DOCUMENT_BYTES} bytes`);
      }
      chunks.push(chunk);
    }
    return new Response(Buffer.concat(chunks), { status: 200, headers: response.headers });
  } catch (e) {
    throw new FetchFailed(reason(e), { cause: e });
  }
}

interface Discovered {
  at: number;
  jwksUri: string;
  keys: JWTVerifyGetKey;
}

/**
 * The claims that name the client a token was issued to: OIDC's azp, RFC 9068's client_id,
 * Okta's cid, Entra ID v1's appid (found in review: a v1 access token named its client there
 * alone).
 */
const ISSUED_TO = ['azp', 'client_id', 'cid', 'appid'] as const;

export class OidcVerifier {
  readonly #settings: OidcSettings;
  readonly #now: () => number;
  readonly #cooldownMs: number;
  readonly #discoveryUrl: string;
  #discovered: Discovered | undefined;
  /** Tokens that opened a session, until they expire (verifyOnce). */
  readonly #used: Map<string, number>;
  readonly #rememberedSince: number | undefined;
  #pending: Promise<Discovered> | undefined;

  constructor(settings: OidcSettings, options: OidcVerifierOptions = {}) {
    fetchableUrl(settings.issuer, 'the issuer');
    this.#settings = settings;
    this.#now = options.now ?? Date.now;
    this.#cooldownMs = options.jwksCooldownMs ?? 30_000;
    this.#used = options.used ?? new Map();
    this.#rememberedSince = options.rememberedSince;
    // OpenID Connect Discovery 1.0, 4: a trailing slash is removed before the path is appended.
    this.#discoveryUrl = `${settings.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
  }

  /** Verifies a compact JWS (an ID token or a JWT access token) and returns who it names. */
  async verify(token: string): Promise<OperatorIdentity> {
    return this.#identity(await this.#check(token));
  }

  /** Every check but the operator's identity and groups; the verified claims. */
  async #check(token: string): Promise<JWTPayload> {
    const s = this.#settings;
    if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN_CHARS) {
      throw refuse(`the token is empty or longer than ${MAX_TOKEN_CHARS} characters`);
    }
    let alg: unknown, kid: unknown, typ: unknown, untrusted: JWTPayload;
    try {
      ({ alg, kid, typ } = decodeProtectedHeader(token));
      untrusted = decodeJwt(token);
    } catch (cause) {
      throw refuse(MALFORMED, cause);
    }
    if (typeof alg !== 'string' || !ALGORITHMS.includes(alg)) {
      throw refuse(
        `the token's signature algorithm ${shown(alg, 20)} is not allowed: only asymmetric ` +
          'signatures are (RS*, PS*, ES*, EdDSA), never none or HS*',
      );
    }
    // An ID token or an access token (RFC 9068), never another kind the issuer signs (a logout
    // token, a security event) that happens to carry the same claims.
    if (typ !== undefined && !TOKEN_TYPES.includes(String(typ).toLowerCase())) {
      throw refuse(`the token's type ${shown(typ, 40)} is not an ID token's or an access token's`);
    }
    // Before any fetch: a token from elsewhere must not make us fetch from its issuer, or ours.
    if (untrusted.iss !== s.issuer) {
      throw refuse(`the token is from another issuer (${shown(untrusted.iss)}), not ${s.issuer}`);
    }
    const { keys } = await this.#discover();
    const options: JWTVerifyOptions = {
      issuer: s.issuer,
      audience: [...s.audience, s.clientId],
      algorithms: ALGORITHMS,
      clockTolerance: s.clockSkewSec,
      currentDate: new Date(this.#now()),
      requiredClaims: ['exp', 'iat'],
    };
    let payload: JWTPayload | undefined;
    try {
      ({ payload } = await jwtVerify(token, keys, options));
    } catch (e) {
      if (!(e instanceof errors.JWKSMultipleMatchingKeys)) throw this.#refusal(e, kid, untrusted);
      // Several keys fit a token without a kid: jose leaves trying each to the caller.
      for await (const key of e) {
        payload = await jwtVerify(token, key, options).then(
          (verified) => verified.payload,
          (inner: unknown) => {
            if (inner instanceof errors.JWSSignatureVerificationFailed) return undefined;
            throw this.#refusal(inner, kid, untrusted);
          },
        );
        if (payload) break;
      }
      if (!payload)
        throw this.#refusal(new errors.JWSSignatureVerificationFailed(), kid, untrusted);
    }
    // An ID token for several audiences names the party it was issued to (OIDC Core 3.1.3.7):
    // one of ours, when keyward's client id is among them. A token for keyward alone that names
    // another party (azp, or an access token's client_id or cid) is that party's all the same:
    // Google's cross-client ID tokens, an access token for an API on keyward's own registration
    // (Entra ID), a mapper that adds keyward's id (Keycloak). Found in review: it logged in.
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
    if (aud.includes(s.clientId)) {
      const other = ISSUED_TO.map((c) => payload[c]).find(
        (v) => v !== undefined && v !== s.clientId,
      );
      if (other !== undefined || (aud.length > 1 && payload['azp'] !== s.clientId))
        throw refuse(
          `the token was issued to ${shown(other ?? payload['azp'] ?? '(no azp)')}, not to ${s.clientId}`,
        );
    }
    // A token for one of `audience` and not for keyward itself: an access token for an API,
    // which the issuer gives any application that asks for that audience (Okta's default server
    // puts api://default on all of them). It must have been issued to a client policy allows.
    // Every claim that names one must name an allowed client (review: client_id keyward's and
    // azp another's passed).
    if (!aud.includes(s.clientId)) {
      const named = ISSUED_TO.map((c) => payload[c]).filter((v) => v !== undefined);
      const issuedTo = named.find((v) => typeof v !== 'string' || !s.allowedClients.includes(v));
      if (named.length === 0 || issuedTo !== undefined) {
        throw refuse(
          issuedTo !== undefined
            ? `the token was issued to the client ${shown(issuedTo)}, not to one operators.oidc allows (${s.allowedClients.join(', ')}): set allowed_clients to accept it`
            : "the token names no client it was issued to (client_id, cid, azp or appid): an access token for a shared audience could be any application's",
        );
      }
    }
    if (typeof payload.iat === 'number' && payload.iat > this.#now() / 1000 + s.clockSkewSec) {
      throw refuse(`the token was issued in the future (iat ${time(payload.iat)})`);
    }
    return payload;
  }

  /**
   * verify(), and the token may open one session only: a token copied from a login (a proxy's
   * log, a shell history) can't open another while it is still valid. Remembered by its issuer
   * and `jti`, else the SHA-256 of what was signed (not of the signature's encoding), until it
   * expires; a token issued before the logins remembered
   * began (rememberedSince) is refused, as one that may have been used.
   */
  async verifyOnce(token: string): Promise<OperatorIdentity> {
    const payload = await this.#check(token);
    const identity = this.#identity(payload);
    const since = this.#rememberedSince;
    if (since !== undefined) {
      // Whole seconds, as iat is: a token of the very second the agent started may be from
      // before it, so it is refused too (a fresh login a second later passes).
      const sinceSec = Math.floor(since / 1000);
      if (typeof payload.iat !== 'number')
        throw refuse(
          "the token says not when it was issued (no iat), so it can't be told from one used before this agent started: log in again",
        );
      if (payload.iat <= sinceSec)
        throw refuse(
          `the token was issued at ${time(payload.iat)}, not after this agent started (${time(since / 1000)}): a login it opened before is not remembered, so it opens none now: log in again`,
        );
    }
    const now = this.#now();
    for (const [k, until] of this.#used) if (until <= now) this.#used.delete(k);
    // Without a jti, by what was signed (the header and the claims as encoded), never the whole
    // string: one signature can be written several ways that all verify (the spare bits of its
    // last base64url character; an ECDSA signature's s and n - s), and each would open a session.
    const key =
      typeof payload.jti === 'string'
        ? `jti:${JSON.stringify([payload.iss ?? '', payload.jti])}`
        : createHash('sha256')
            .update(token.slice(0, token.lastIndexOf('.')))
            .digest('base64url');
    if (this.#used.has(key)) throw refuse('this token was used to log in already: log in again');
    if (this.#used.size >= MAX_REMEMBERED)
      throw refuse('too many logins are remembered: try again when some have expired');
    const exp = typeof payload.exp === 'number' ? payload.exp : 0;
    this.#used.set(key, (exp + this.#settings.clockSkewSec) * 1000);
    return identity;
  }

  #identity(payload: JWTPayload): OperatorIdentity {
    const { operatorId, groups: groupsClaim } = this.#settings.claimMappings;
    const id = Object.hasOwn(payload, operatorId) ? payload[operatorId] : undefined;
    // `key:` names API keys' operators: an identity provider's id may not pose as one.
    if (typeof id === 'string' && id.startsWith('key:'))
      throw refuse(`the token's operator id ${shown(id)} begins with key:, which names API keys`);
    if (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID_CHARS) {
      throw refuse(
        `the token names no operator: its "${operatorId}" claim is missing, empty, not a string ` +
          `or longer than ${MAX_ID_CHARS} characters`,
      );
    }
    const claimed = Object.hasOwn(payload, groupsClaim) ? payload[groupsClaim] : undefined;
    // One string is one group: Google's ID tokens have no groups, but `hd` (the Workspace
    // domain) can stand for one.
    const groups = typeof claimed === 'string' ? [claimed] : claimed;
    if (!Array.isArray(groups) || !groups.every((g): g is string => typeof g === 'string')) {
      throw refuse(
        `the token's groups claim "${groupsClaim}" is missing or not a list of strings (or one string)`,
      );
    }
    const allowed = [...new Set(groups.filter((g) => this.#settings.allowedGroups.includes(g)))];
    if (allowed.length === 0) {
      const listed = groups.slice(0, 10).map((g) => shown(g, 64));
      const more = groups.length > 10 ? ` and ${groups.length - 10} more` : '';
      throw refuse(
        `operator ${shown(id)} is in none of the allowed groups: their groups are ` +
          `[${listed.join(', ')}${more}]`,
      );
    }
    return { id, method: 'oidc', groups: allowed, issuer: this.#settings.issuer };
  }

  /** The issuer's jwks_uri and key set: fetched once, again after jwksCacheTtlMs. */
  async #discover(): Promise<Discovered> {
    const cached = this.#discovered;
    if (cached && this.#now() - cached.at < this.#settings.jwksCacheTtlMs) return cached;
    this.#pending ??= this.#fetchDiscovery(cached).finally(() => (this.#pending = undefined));
    return this.#pending;
  }

  async #fetchDiscovery(previous: Discovered | undefined): Promise<Discovered> {
    const issuer = this.#settings.issuer;
    let doc: unknown;
    try {
      const response = await boundedFetch(this.#discoveryUrl, {
        headers: { accept: 'application/json' },
      });
      doc = await response.json();
    } catch (cause) {
      // Fail closed, even with a previous key set in hand: the issuer may have revoked a key.
      throw refuse(`the issuer's keys could not be fetched: ${reason(cause)}`, cause);
    }
    const fields = (typeof doc === 'object' && doc !== null ? doc : {}) as Record<string, unknown>;
    // OpenID Connect Discovery 1.0, 4.3: the document's issuer must be the one we asked.
    if (fields['issuer'] !== issuer) {
      throw refuse(
        `the issuer's discovery document names another issuer (${shown(fields['issuer'])}), not ${issuer}`,
      );
    }
    const jwksUri = typeof fields['jwks_uri'] === 'string' ? fields['jwks_uri'] : '(none)';
    const url = fetchableUrl(jwksUri, "the issuer's jwks_uri");
    const keys =
      previous?.jwksUri === url.href
        ? previous.keys
        : createRemoteJWKSet(url, {
            cacheMaxAge: this.#settings.jwksCacheTtlMs,
            cooldownDuration: this.#cooldownMs,
            timeoutDuration: FETCH_TIMEOUT_MS,
            [customFetch]: boundedFetch,
          });
    this.#discovered = { at: this.#now(), jwksUri: url.href, keys };
    return this.#discovered;
  }

  /** jose's error as a refusal that says which check failed. */
  #refusal(e: unknown, kid: unknown, untrusted: JWTPayload): KeywardError {
    return e instanceof KeywardError ? e : refuse(this.#why(e, kid, untrusted), e);
  }

  #why(e: unknown, kid: unknown, untrusted: JWTPayload): string {
    const s = this.#settings;
    const unknownKey = 'the token is signed by a key the issuer does not publish';
    if (e instanceof errors.JWTExpired) {
      return `the token has expired (${time(untrusted.exp)}; clock skew ${s.clockSkewSec} s)`;
    }
    if (e instanceof errors.JWTClaimValidationFailed) {
      if (e.reason === 'missing') return `the token has no "${e.claim}" claim`;
      if (e.claim === 'nbf') return `the token is not valid yet (${time(untrusted.nbf)})`;
      if (e.claim !== 'aud') return `the token's "${e.claim}" claim is not acceptable`;
      const expected = [...s.audience, s.clientId].join(', ');
      return `the token is for another audience (${shown(untrusted.aud)}), not ${expected}`;
    }
    if (e instanceof errors.JWKSNoMatchingKey)
      return `${unknownKey} (its key set has no key with the token's kid)`;
    if (e instanceof errors.JWSSignatureVerificationFailed) {
      // With a kid, the key was found and the signature is wrong; without, no key fits it.
      return typeof kid === 'string'
        ? "the token's signature is not valid: it does not verify with the issuer's key"
        : `${unknownKey} (none of its keys verifies it)`;
    }
    if (e instanceof errors.JWSInvalid || e instanceof errors.JWTInvalid) return MALFORMED;
    // The key set: the fetch failed, or what came is not JSON (jose's generic error) or not a
    // set of public keys.
    const generic = e instanceof errors.JOSEError && e.code === 'ERR_JOSE_GENERIC';
    if (
      generic ||
      [FetchFailed, errors.JWKSTimeout, errors.JWKSInvalid].some((c) => e instanceof c)
    ) {
      return `the issuer's keys could not be fetched: ${reason(e)}`;
    }
    return 'the token could not be verified';
  }
}
