import { UsageError } from '../errors.js';
import { printable } from './text.js';

/** docs/FORMAT.md, "Names". Kept to ASCII so an approval prompt can't be made to lie. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)*$/;
export const NAME_MAX_BYTES = 128;

const NAME_HINT =
  'names are 1-128 ASCII characters: letters, digits, . _ - and / between parts, e.g. github/token';

/** Whether name is a valid secret or key name (what the vault holds and lists). */
export function isValidName(name: unknown): name is string {
  return (
    typeof name === 'string' &&
    name.length > 0 &&
    Buffer.byteLength(name, 'utf8') <= NAME_MAX_BYTES &&
    NAME_RE.test(name)
  );
}

/** Throws INVALID_NAME with the reason; the offending name is shown escaped, never raw. */
export function assertValidName(name: string): void {
  if (name.length === 0)
    throw new UsageError('INVALID_NAME', 'a secret name is empty', { hint: NAME_HINT });
  if (Buffer.byteLength(name, 'utf8') > NAME_MAX_BYTES) {
    throw new UsageError('INVALID_NAME', `a secret name is longer than ${NAME_MAX_BYTES} bytes`, {
      hint: NAME_HINT,
    });
  }
  if (!NAME_RE.test(name)) {
    throw new UsageError('INVALID_NAME', `invalid secret name "${printable(name, 60)}"`, {
      hint: NAME_HINT,
    });
  }
}
