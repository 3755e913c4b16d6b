/**
 * policy.yaml's operators.oidc as the verifier takes it: durations in ms, the audience a list,
 * the client id accepted as an audience too (an ID token's aud is the client's id).
 */
import { durationMs, type Policy } from '../policy/index.js';
import type { OidcSettings } from './types.js';
import type { OidcLogin } from './login.js';
import type { OidcVerifier, OidcVerifierOptions } from './oidc.js';

export type PolicyOidc = NonNullable<NonNullable<Policy['operators']>['oidc']>;

export function oidcSettings(o: PolicyOidc): OidcSettings {
  const audience =
    o.audience === undefined ? [] : Array.isArray(o.audience) ? o.audience : [o.audience];
  return {
    issuer: o.issuer,
    clientId: o.client_id,
    audience: [...new Set([...audience, o.client_id])],
    allowedClients: [...new Set(o.allowed_clients ?? [o.client_id])],
    jwksCacheTtlMs: durationMs(o.jwks_cache_ttl),
    claimMappings: { operatorId: o.claim_mappings.operator_id, groups: o.claim_mappings.groups },
    allowedGroups: [...o.allowed_groups],
    clockSkewSec: durationMs(o.clock_skew) / 1000,
    scopes: [...o.scopes],
  };
}

/** A verifier for the issuer (jose loads with it, on first use, not with every agent). */
export async function oidcVerifier(
  o: PolicyOidc,
  options?: OidcVerifierOptions,
): Promise<OidcVerifier> {
  const { OidcVerifier } = await import('./oidc.js');
  return new OidcVerifier(oidcSettings(o), options);
}

/** The console's sign-in with the issuer (openid-client loads with it, on first use). */
export async function oidcLogin(o: PolicyOidc, redirectUri: string): Promise<OidcLogin> {
  const { OidcLogin } = await import('./login.js');
  return new OidcLogin(oidcSettings(o), redirectUri);
}
