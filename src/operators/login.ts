/**
 * The console's sign-in with the identity provider: the authorization code flow with PKCE
 * (RFC 7636), state and nonce, through openid-client. The redirect comes back to the console on
 * 127.0.0.1 (RFC 8252, 7.3: a provider accepts a loopback redirect on any port, so the console's
 * port, chosen at start, needs no registration of its own). The ID token it yields is then
 * verified like any operator's token (oidc.ts): the same issuer, keys, audience and groups.
 */
import type * as Client from 'openid-client';
import { KeywardError } from '../errors.js';
import type { OidcSettings } from './types.js';
import { NOT_STARTED_HERE } from './types.js';

/** How long a sign-in may take at the provider (a person typing a password, a second factor). */
export const LOGIN_MS = 5 * 60_000;

const MAX_PENDING = 16;
const FETCH_TIMEOUT_S = 5;

interface Waiting {
  verifier: string;
  nonce: string;
  expiresAt: number;
}

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
  private readonly waiting = new Map<string, Waiting>();

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

  /** The provider's authorization URL for a new sign-in; its state is kept for LOGIN_MS. */
  async start(now: number): Promise<URL> {
    const { c, config } = await this.client();
    for (const [state, w] of this.waiting) if (w.expiresAt <= now) this.waiting.delete(state);
    while (this.waiting.size >= MAX_PENDING) {
      const oldest = this.waiting.keys().next().value;
      if (oldest === undefined) break;
      this.waiting.delete(oldest);
    }
    const state = c.randomState();
    const verifier = c.randomPKCECodeVerifier();
    const nonce = c.randomNonce();
    this.waiting.set(state, { verifier, nonce, expiresAt: now + LOGIN_MS });
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
    const w = this.waiting.get(state);
    if (!w || w.expiresAt <= now) throw refuse(NOT_STARTED_HERE);
    this.waiting.delete(state);
    const error = callback.searchParams.get('error');
    if (error !== null)
      throw refuse(
        `the identity provider refused: ${error.slice(0, 100)}${callback.searchParams.get('error_description') ? ` (${(callback.searchParams.get('error_description') ?? '').slice(0, 200)})` : ''}`,
      );
    const { c, config } = await this.client();
    let tokens: Awaited<ReturnType<typeof c.authorizationCodeGrant>>;
    try {
      tokens = await c.authorizationCodeGrant(config, callback, {
        pkceCodeVerifier: w.verifier,
        expectedState: state,
        expectedNonce: w.nonce,
        idTokenExpected: true,
      });
    } catch (e) {
      throw refuse(`the sign-in could not be completed: ${why(e)}`, e);
    }
    if (typeof tokens.id_token !== 'string') throw refuse('the provider gave no ID token');
    return tokens.id_token;
  }
}
