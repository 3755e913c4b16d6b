/**
 * The web console's public surface (docs/CONSOLE.md): the server the agent runs, and the
 * WebAuthn credentials kept in the vault.
 */
export type { ConsoleHost, PinView } from './host.js';
export { ConsoleServer } from './server.js';
export {
  changeCredential,
  checkCredentialName,
  describeCredentials,
  findCredential,
  hasCredentials,
  readCredentials,
  writeCredentials,
  WEBAUTHN_RECORD,
  type CredentialRecord,
  type StoredCredential,
} from './credentials.js';
