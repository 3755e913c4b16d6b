/** A secret value's size: what the vault takes (docs/FORMAT.md). */
import { UsageError } from '../errors.js';

export const VALUE_MAX_BYTES = 16 * 1024 * 1024;

export function assertValueSize(n: number): void {
  if (n === 0) {
    throw new UsageError('INVALID_VALUE', 'the secret value is empty', {
      hint: 'pipe the value on standard input, e.g.: printf %s "$TOKEN" | keyward secret set NAME',
    });
  }
  if (n > VALUE_MAX_BYTES) {
    throw new UsageError(
      'INVALID_VALUE',
      `the secret value is larger than ${VALUE_MAX_BYTES} bytes`,
      {
        hint: 'keyward keeps credentials, not files; store a key to the file instead',
      },
    );
  }
}
