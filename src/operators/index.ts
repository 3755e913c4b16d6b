/**
 * The operators domain (docs/OPERATORS.md): people other than the requester who approve a rule's
 * requests, by OpenID Connect or by API key; who may approve what; their sessions.
 */
export { authorityOf, type Authority, type OperatorNeed, type OperatorRules } from './authority.js';
export {
  checkGroups,
  checkKey,
  checkKeyName,
  checkOperatorId,
  createKey,
  KEY_LENGTH,
  keyIdOf,
  keyOperator,
  readKeys,
  revokeKey,
  showKeyOnce,
  type StoredKey,
} from './keys.js';
export { oidcLogin, oidcSettings, oidcVerifier, type PolicyOidc } from './config.js';
export type { OidcLogin } from './login.js';
export type { OidcVerifier } from './oidc.js';
export { OperatorSessions, type OperatorSession } from './sessions.js';
export type { OidcSettings, OperatorIdentity } from './types.js';
export { NOT_STARTED_HERE, PROVIDER_REFUSED } from './types.js';
