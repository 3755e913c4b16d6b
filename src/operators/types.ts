/**
 * Operators (docs/OPERATORS.md): people other than the requester who approve a rule's requests,
 * authenticated by OpenID Connect or by an API key.
 */

/** Who an operator is, once authenticated, and by what. */
export interface OperatorIdentity {
  /** The OIDC claim named by claim_mappings.operator_id (`sub` by default), or `key:NAME`. */
  id: string;
  method: 'oidc' | 'key';
  /** For oidc, the groups claim as given, kept only where allowed_groups allows them. */
  groups: string[];
  /** For a key, its id (public): a session ends when the key is revoked. */
  keyId?: string;
  /** For oidc, the issuer that vouched: a session ends when the policy trusts it no more. */
  issuer?: string;
}

/** policy.yaml's operators.oidc, with durations in ms and defaults filled in. */
export interface OidcSettings {
  /** The issuer exactly as its discovery document and tokens say it (https, or http on loopback). */
  issuer: string;
  /** The console's client id at the issuer (the login flow; also accepted as an audience). */
  clientId: string;
  /** Audiences a token may carry (aud); a token must name at least one. */
  audience: string[];
  /**
   * The clients an access token matched through `audience` may have been issued to (its
   * client_id, RFC 9068; Okta's cid; azp): by default the console's client id alone.
   */
  allowedClients: string[];
  /** How long the issuer's keys (JWKS) are cached before they are fetched again. */
  jwksCacheTtlMs: number;
  claimMappings: { operatorId: string; groups: string };
  /** An operator must be in at least one of these groups to be recognised at all. */
  allowedGroups: string[];
  /** Leeway for exp, nbf and iat, in seconds. */
  clockSkewSec: number;
  /** What the console's sign-in asks for (openid at least). */
  scopes: string[];
}

/**
 * A sign-in callback with a state this console never issued (or used, or let expire): anyone
 * can send one, a web page too, so it is recorded but not counted toward the circuit breaker.
 */
export const NOT_STARTED_HERE =
  'this sign-in was not started here, was used already, or took too long';

/**
 * A callback that carries the provider's error: anyone can make one too (a state is given out
 * to whoever starts a sign-in), so it is not counted toward the circuit breaker, and the page
 * says this and a code from the standards' list, never text the link carries.
 */
export const PROVIDER_REFUSED = 'the identity provider refused the sign-in';
