/**
 * The console's sign-in with the identity provider: the authorization code flow with PKCE
 * (RFC 7636), state and nonce, through openid-client. The redirect comes back to the console on
 * 127.0.0.1 (RFC 8252, 7.3: a provider accepts a loopback redirect on any port, so the console's
 * port, chosen at start, needs no registration of its own). The ID token it yields is then
 * verified like any operator's token (oidc.ts): the same issuer, keys, audience and groups.
 */
import type * as Client from 'openid-client';
import { KeywardError } from '../errors.js';
import { processWide } from '../lib/once.js';
import {
  randomBytes,
  secretKeyedDigest,
  secureEqual,
  secureRandom,
  type SecureBuffer,
} from '../lib/secure.js';
import type { OidcSettings } from './types.js';
import { NOT_STARTED_HERE, PROVIDER_REFUSED } from './types.js';

/** The error codes of an authorization response (RFC 6749 4.1.2.1; OpenID Connect Core 3.1.2.6). */
const PROVIDER_ERRORS = new Set([
  'invalid_request',
  'unauthorized_client',
  'access_denied',
  'unsupported_response_type',
  'invalid_scope',
  'server_error',
  'temporarily_unavailable',
  'interaction_required',
  'login_required',
  'account_selection_required',
  'consent_required',
  'invalid_request_uri',
  'invalid_request_object',
  'request_not_supported',
  'request_uri_not_supported',
  'registration_not_supported',
]);

/** How long a sign-in may take at the provider (a person typing a password, a second factor). */
export const LOGIN_MS = 5 * 60_000;

const FETCH_TIMEOUT_S = 5;

/**
 * The key this agent's states are made under. A state is its own proof (random bytes, when it
 * expires, and their MAC: keyed BLAKE2b), and the PKCE verifier and the nonce are derived from it: nothing is
 * kept per sign-in, so no number of sign-ins started by others (anyone can start one) can push
 * a person's out, as a table of 16 did.
 */
const stateKey = (): SecureBuffer => processWide('oidc-state-key', () => secureRandom(32));
const STATE_BODY = 16 + 8;
const TAG = 32;

const refuse = (message: string, cause?: unknown) =>
  new KeywardError('OPERATOR_REFUSED', message, cause === undefined ? {} : { cause });

/** Why openid-client refused, in a sentence (its messages name the check; never a token). */
function why(e: unknown): string {
  if (!(e instanceof Error)) return 'refused';
  const cause = e.cause instanceof Error ? ` (${e.cause.message})` : '';
  // The provider's own error code and description, when it answered with one (RFC 6749, 5.2).
  const r = e as { error?: unknown; error_description?: unknown };
  const said =
    typeof r.error === 'string'
      ? `: ${r.error}${typeof r.error_description === 'string' ? ` (${r.error_description})` : ''}`
      : '';
  return `${e.message}${said}${cause}`.slice(0, 300);
}

export class OidcLogin {
  private config: Promise<Client.Configuration> | undefined;
  /** States whose code was exchanged, until they expire: each completes one sign-in. */
  private readonly done = new Map<string, number>();
  /** States whose code is with the provider now (finish, between its check and its answer). */
  private readonly exchanging = new Set<string>();

  constructor(
    private readonly settings: OidcSettings,
    readonly redirectUri: string,
  ) {}

  private async client(): Promise<{ c: typeof Client; config: Client.Configuration }> {
    const c = await import('openid-client');
    this.config ??= (async () => {
      const issuer = new URL(this.settings.issuer);
      // Plain http only on a loopback address (policy refuses any other http issuer).
      const insecure = issuer.protocol === 'http:';
      return c.discovery(issuer, this.settings.clientId, undefined, c.None(), {
        timeout: FETCH_TIMEOUT_S,
        ...(insecure ? { execute: [c.allowInsecureRequests] } : {}),
      });
    })();
    try {
      return { c, config: await this.config };
    } catch (e) {
      this.config = undefined;
      throw refuse(`the identity provider could not be reached: ${why(e)}`, e);
    }
  }

  /**
   * A MAC under the state key of data, bound to this console's redirect URI and provider (a
   * state made for one can't finish a sign-in at another).
   */
  private tag(label: string, data: Uint8Array): Buffer {
    return secretKeyedDigest(this.bound(label, data), stateKey());
  }

  private bound(label: string, data: Uint8Array): Buffer {
    const { issuer, clientId } = this.settings;
    const head = `keyward-oidc-${label}\n${this.redirectUri}\n${issuer}\n${clientId}\n`;
    return Buffer.concat([Buffer.from(head, 'utf8'), data]);
  }

  /** The PKCE verifier (43 characters) and the nonce of a state. */
  private secretsOf(state: string): { verifier: string; nonce: string } {
    const bytes = Buffer.from(state, 'ascii');
    return {
      verifier: this.tag('pkce', bytes).toString('base64url'),
      nonce: this.tag('nonce', bytes).toString('base64url'),
    };
  }

  /** The provider's authorization URL for a new sign-in; its state holds for LOGIN_MS. */
  async start(now: number): Promise<URL> {
    const { c, config } = await this.client();
    const body = Buffer.concat([randomBytes(16), Buffer.alloc(8)]);
    body.writeBigUInt64BE(BigInt(now + LOGIN_MS), 16);
    const state = Buffer.concat([body, this.tag('state', body)]).toString('base64url');
    const { verifier, nonce } = this.secretsOf(state);
    return c.buildAuthorizationUrl(config, {
      redirect_uri: this.redirectUri,
      scope: this.settings.scopes.join(' '),
      response_type: 'code',
      code_challenge: await c.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state,
      nonce,
    });
  }

  /**
   * The ID token a redirect back (the callback's URL) yields, once its state is one this console
   * issued (once) and the code is exchanged with its PKCE verifier; the caller verifies it.
   */
  async finish(callback: URL, now: number): Promise<string> {
    const state = callback.searchParams.get('state') ?? '';
    const raw = Buffer.from(state, 'base64url');
    const body = raw.subarray(0, STATE_BODY);
    for (const [s, until] of this.done) if (until <= now) this.done.delete(s);
    if (
      raw.length !== STATE_BODY + TAG ||
      raw.toString('base64url') !== state ||
      !secureEqual(raw.subarray(STATE_BODY), this.tag('state', body)) ||
      Number(body.readBigUInt64BE(16)) <= now ||
      this.done.has(state) ||
      this.exchanging.has(state)
    )
      throw refuse(NOT_STARTED_HERE);
    const w = { ...this.secretsOf(state), expiresAt: Number(body.readBigUInt64BE(16)) };
    const error = callback.searchParams.get('error');
    // Only a code the standards name is repeated; error_description never is: the callback's
    // address is anyone's to write, and the operator page would show it as the console's word.
    if (error !== null)
      throw refuse(`${PROVIDER_REFUSED}${PROVIDER_ERRORS.has(error) ? ` (${error})` : ''}`);
    // From here to the provider's answer, the state is taken: a second callback with it, sent
    // at the same moment, is refused before it reaches the provider (a provider that took a
    // code twice would otherwise open two sessions).
    this.exchanging.add(state);
    let tokens: Awaited<ReturnType<typeof Client.authorizationCodeGrant>>;
    try {
      const { c, config } = await this.client();
      tokens = await c.authorizationCodeGrant(config, callback, {
        pkceCodeVerifier: w.verifier,
        expectedState: state,
        expectedNonce: w.nonce,
        idTokenExpected: true,
      });
      // Kept once the provider took the code: a state finishes one sign-in.
      this.done.set(state, w.expiresAt);
    } catch (e) {
      throw e instanceof KeywardError
        ? e
        : refuse(`the sign-in could not be completed: ${why(e)}`, e);
    } finally {
      this.exchanging.delete(state);
    }
    if (typeof tokens.id_token !== 'string') throw refuse('the provider gave no ID token');
    return tokens.id_token;
  }
}
