import { secureFree, writeValueSync, type SecureBuffer } from '../lib/secure.js';

/**
 * Writes a revealed value to a file descriptor straight from secure memory, then frees (zeroes)
 * it. The one sanctioned way a secret leaves the vault for a user's terminal or pipe.
 */
export function writeSecretTo(fd: number, value: SecureBuffer): void {
  try {
    writeValueSync(fd, value);
  } finally {
    secureFree(value);
  }
}
