import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ERROR_CODES, EXIT, IntegrityError, KeywardError, UsageError } from '../src/errors.js';
import { reportError } from '../src/cli/report.js';

test('the error code list is pinned: adding, removing or remapping a code is a visible change', () => {
  assert.deepEqual(ERROR_CODES, {
    INTERNAL: 1,
    USAGE: 2,
    INVALID_NAME: 2,
    INVALID_VALUE: 2,
    PASSPHRASE_REJECTED: 2,
    PASSPHRASE_UNAVAILABLE: 2,
    CONFIRMATION_REQUIRED: 2,
    POLICY_INVALID: 2,
    VAULT_NOT_FOUND: 3,
    SECRET_NOT_FOUND: 3,
    VAULT_BAD_PASSPHRASE: 4,
    KEYRING_KEY_MISMATCH: 4,
    KEYRING_UNAVAILABLE: 5,
    VAULT_BUSY: 5,
    AUDIT_UNAVAILABLE: 5,
    VAULT_UNWRITABLE: 5,
    CANCELLED: 6,
    VAULT_CORRUPT: 8,
    VAULT_UNSUPPORTED_VERSION: 8,
    INSECURE_PERMISSIONS: 8,
    DOCTOR_FAILED: 8,
    AUDIT_CHAIN_BROKEN: 8,
    POLICY_TAMPERED: 8,
    REQUEST_NOT_FOUND: 3,
    AGENT_UNAVAILABLE: 5,
    OUTPUT_FAILED: 5,
    AGENT_LOCKED: 5,
    AGENT_RUNNING: 5,
    MEMORY_NOT_LOCKED: 5,
    POLICY_DENIED: 6,
    APPROVAL_REJECTED: 6,
    SELF_APPROVAL: 6,
    APPROVAL_TIMEOUT: 7,
    DEBUGGER_ATTACHED: 8,
    DEBUGGER_EXPOSED: 8,
    AGENT_UNTRUSTED: 8,
    PROTOCOL_ERROR: 8,
    PIN_CHANGED: 6,
    BACKUP_CORRUPT: 8,
    BACKUP_IDENTITY_MISMATCH: 4,
    OPERATOR_REFUSED: 4,
    PROJECT_TAMPERED: 8,
    PROJECT_NOT_RECIPIENT: 4,
  });
});

test('the exit codes are those of INTERFACE.md', () => {
  assert.deepEqual(EXIT, {
    OK: 0,
    INTERNAL: 1,
    USAGE: 2,
    NOT_FOUND: 3,
    AUTH: 4,
    UNAVAILABLE: 5,
    DENIED: 6,
    TIMEOUT: 7,
    INTEGRITY: 8,
  });
});

function captured(e: unknown): { code: number; err: string } {
  let err = '';
  const code = reportError(e, { stdout: () => undefined, stderr: (s) => (err += s) });
  return { code, err };
}

test('a KeywardError is reported as error then hint, with its exit code and no stack', () => {
  const r = captured(new UsageError('INVALID_NAME', 'bad name', { hint: 'try another' }));
  assert.equal(r.code, 2);
  assert.equal(r.err, 'keyward: error: bad name\nkeyward: hint: try another\n');
});

test('an unexpected error is exit 1, named a bug, and shows no stack unless KEYWARD_DEBUG=1', () => {
  const r = captured(new TypeError('x is undefined'));
  assert.equal(r.code, 1);
  assert.match(
    r.err,
    /^keyward: error: internal error: x is undefined\nkeyward: hint: this is a bug/,
  );
  assert.doesNotMatch(r.err, /\n\s+at /);
});

test('every error kind is a KeywardError carrying its code', () => {
  const e = new IntegrityError('VAULT_CORRUPT', 'damaged');
  assert.ok(e instanceof KeywardError);
  assert.equal(e.code, 'VAULT_CORRUPT');
  assert.equal(e.exitCode, 8);
});
