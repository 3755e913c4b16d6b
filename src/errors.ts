/**
 * keyward's one error hierarchy.
 *
 * Every failure a user or script can meet is a KeywardError with a stable string code from the
 * closed list below. The code decides the exit code (../shared/INTERFACE.md). The list is pinned
 * by test/errors.test.ts: adding a code is a visible change, renaming one breaks scripts.
 *
 * Rule: an error message or hint never holds secret bytes. Names, paths and sizes only.
 */

/** Exit codes of the outside contract (INTERFACE.md, "Exit codes"). */
export const EXIT = {
  OK: 0,
  INTERNAL: 1,
  USAGE: 2,
  NOT_FOUND: 3,
  AUTH: 4,
  UNAVAILABLE: 5,
  DENIED: 6,
  TIMEOUT: 7,
  INTEGRITY: 8,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** The closed list of error codes, each with the exit code it maps to. */
export const ERROR_CODES = {
  INTERNAL: EXIT.INTERNAL,
  USAGE: EXIT.USAGE,
  INVALID_NAME: EXIT.USAGE,
  INVALID_VALUE: EXIT.USAGE,
  PASSPHRASE_REJECTED: EXIT.USAGE,
  PASSPHRASE_UNAVAILABLE: EXIT.USAGE,
  CONFIRMATION_REQUIRED: EXIT.USAGE,
  POLICY_INVALID: EXIT.USAGE,
  VAULT_NOT_FOUND: EXIT.NOT_FOUND,
  SECRET_NOT_FOUND: EXIT.NOT_FOUND,
  VAULT_BAD_PASSPHRASE: EXIT.AUTH,
  KEYRING_KEY_MISMATCH: EXIT.AUTH,
  KEYRING_UNAVAILABLE: EXIT.UNAVAILABLE,
  VAULT_BUSY: EXIT.UNAVAILABLE,
  AUDIT_UNAVAILABLE: EXIT.UNAVAILABLE,
  /** vault.kw could not be written (no space, an I/O error...): the change was not saved. */
  VAULT_UNWRITABLE: EXIT.UNAVAILABLE,
  CANCELLED: EXIT.DENIED,
  VAULT_CORRUPT: EXIT.INTEGRITY,
  VAULT_UNSUPPORTED_VERSION: EXIT.INTEGRITY,
  INSECURE_PERMISSIONS: EXIT.INTEGRITY,
  DOCTOR_FAILED: EXIT.INTEGRITY,
  AUDIT_CHAIN_BROKEN: EXIT.INTEGRITY,
  POLICY_TAMPERED: EXIT.INTEGRITY,
  REQUEST_NOT_FOUND: EXIT.NOT_FOUND,
  AGENT_UNAVAILABLE: EXIT.UNAVAILABLE,
  /** A value could not be written to its output (no space, an I/O error): nothing partial is retried. */
  OUTPUT_FAILED: EXIT.UNAVAILABLE,
  AGENT_LOCKED: EXIT.UNAVAILABLE,
  AGENT_RUNNING: EXIT.UNAVAILABLE,
  /** Secure memory could not be locked (RLIMIT_MEMLOCK): a secret is never held where it could swap. */
  MEMORY_NOT_LOCKED: EXIT.UNAVAILABLE,
  POLICY_DENIED: EXIT.DENIED,
  APPROVAL_REJECTED: EXIT.DENIED,
  SELF_APPROVAL: EXIT.DENIED,
  APPROVAL_TIMEOUT: EXIT.TIMEOUT,
  DEBUGGER_ATTACHED: EXIT.INTEGRITY,
  DEBUGGER_EXPOSED: EXIT.INTEGRITY,
  AGENT_UNTRUSTED: EXIT.INTEGRITY,
  PROTOCOL_ERROR: EXIT.INTEGRITY,
  PIN_CHANGED: EXIT.DENIED,
  BACKUP_CORRUPT: EXIT.INTEGRITY,
  BACKUP_IDENTITY_MISMATCH: EXIT.AUTH,
  /** An operator's token or API key was refused (expired, another audience, a group not allowed...). */
  OPERATOR_REFUSED: EXIT.AUTH,
  /** A sealed project file was changed, cut, reordered or is not what keyward writes. */
  PROJECT_TAMPERED: EXIT.INTEGRITY,
  /** This vault's project identity is not one of a sealed file's recipients. */
  PROJECT_NOT_RECIPIENT: EXIT.AUTH,
} as const satisfies Record<string, ExitCode>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface KeywardErrorOptions {
  /** What the user can type or do next. Shown as `keyward: hint: ...`. */
  hint?: string;
  /** The underlying error, for debugging; never printed to users and never sent over a socket. */
  cause?: unknown;
}

export class KeywardError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: KeywardErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KeywardError';
    this.code = code;
    this.hint = options.hint;
  }

  get exitCode(): ExitCode {
    return ERROR_CODES[this.code];
  }
}

/** A user asked for something malformed: bad arguments, bad names, bad values. */
export class UsageError extends KeywardError {
  constructor(
    code: 'USAGE' | 'INVALID_NAME' | 'INVALID_VALUE' | 'CONFIRMATION_REQUIRED',
    message: string,
    options?: KeywardErrorOptions,
  ) {
    super(code, message, options);
    this.name = 'UsageError';
  }
}

/** Authentication failed: wrong passphrase, a keyring key that does not open the vault. */
export class AuthError extends KeywardError {
  constructor(
    code:
      | 'VAULT_BAD_PASSPHRASE'
      | 'KEYRING_KEY_MISMATCH'
      | 'BACKUP_IDENTITY_MISMATCH'
      | 'PROJECT_NOT_RECIPIENT',
    message: string,
    options?: KeywardErrorOptions,
  ) {
    super(code, message, options);
    this.name = 'AuthError';
  }
}

/**
 * The data can't be trusted: tampering, corruption, truncation, an unknown format, or files
 * whose permissions let others change them. Distinct from AuthError so that a damaged vault is
 * never reported as a typo in the passphrase.
 */
export class IntegrityError extends KeywardError {
  constructor(
    code:
      | 'VAULT_CORRUPT'
      | 'VAULT_UNSUPPORTED_VERSION'
      | 'INSECURE_PERMISSIONS'
      | 'DOCTOR_FAILED'
      | 'AUDIT_CHAIN_BROKEN'
      | 'POLICY_TAMPERED'
      | 'BACKUP_CORRUPT'
      | 'PROJECT_TAMPERED',
    message: string,
    options?: KeywardErrorOptions,
  ) {
    super(code, message, options);
    this.name = 'IntegrityError';
  }
}

export function isKeywardError(e: unknown): e is KeywardError {
  return e instanceof KeywardError;
}
