/**
 * What the web console needs of the agent that serves it (console-link.ts provides it): the
 * vault, the policy, pending requests and their decisions, pins, operators.
 */
import type { Factor, Pending } from '../approval/index.js';
import type { AuditRecord } from '../audit/index.js';
import type { SecureBuffer } from '../lib/secure.js';
import type { OidcLogin, OperatorIdentity } from '../operators/index.js';
import type { Loaded } from '../policy/index.js';
import type { Vault } from '../vault/index.js';

export interface ConsoleHost {
  home: string;
  /** The open vault; throws AGENT_LOCKED when the agent is locked. */
  vault(): Vault;
  /** Changes the open vault and saves it under the vault lock (UnlockWindow.write). */
  write<T>(fn: (v: Vault) => { result: T; save: boolean }): Promise<T>;
  policy(): Loaded | undefined;
  pending(): Pending[];
  onPendingChange(fn: () => void): () => void;
  approve(id: string, factor: Factor): Promise<unknown>;
  deny(id: string): void;
  record(r: AuditRecord): Promise<unknown>;
  /** A failed login or approval counts toward the agent's circuit breaker. */
  noteDenial(): void;
  /** MCP pins per server: what is trusted, and what waits with its word diff. */
  pins(): Promise<PinView[]>;
  /** Trusts one waiting definition, bound to the hash shown; needs the passphrase. */
  trustPin(server: string, tool: string, sha256: string, passphrase: SecureBuffer): Promise<void>;
  /**
   * Enrols a new TOTP secret (replacing any other); needs the passphrase. Returns, in secure
   * memory, the QR module matrix (u16 side, then a byte per module) and the otpauth URI.
   */
  enrollTotp(passphrase: SecureBuffer): Promise<SecureBuffer>;
  /** The operator an OIDC token names (the issuer in policy); throws OPERATOR_REFUSED. */
  operatorByToken(token: string): Promise<OperatorIdentity>;
  /** The operator an API key names, or undefined (the key is read, not freed). */
  operatorByKey(key: SecureBuffer): OperatorIdentity | undefined;
  /**
   * The operator as trusted now: a key still in the vault, an issuer the policy still names with
   * the groups it still allows; undefined when that trust was withdrawn since the login.
   */
  operatorLive(op: OperatorIdentity): OperatorIdentity | undefined;
  /** Whether an operator could log in at all: an issuer in policy, or an API key in the vault. */
  hasOperators(): boolean;
  /** The sign-in with the issuer in policy, coming back to redirectUri; OPERATOR_REFUSED without one. */
  oidcLogin(redirectUri: string): Promise<OidcLogin>;
  /** An operator denies a request its groups may decide. */
  operatorDeny(id: string, operator: OperatorIdentity): Promise<void>;
}

export interface PinView {
  server: string;
  pinned: Array<{ tool: string; sha256: string; at: string }>;
  /** The word diff as parts (never marker text a definition could forge). */
  waiting: Array<{
    tool: string;
    sha256: string;
    at: string;
    diff: Array<{ op: '=' | '-' | '+'; text: string }> | null;
  }>;
}
