import fs from 'node:fs';
import { isForeground } from './libc.js';

/**
 * Asks a question on the controlling terminal and returns the visible answer (not for secrets:
 * src/vault/input.ts reads those). Undefined when there is no terminal, or this process is a
 * background job (reading would stop it with SIGTTIN).
 */
export function askOnTerminal(question: string): string | undefined {
  let fd: number;
  try {
    fd = fs.openSync('/dev/tty', fs.constants.O_RDWR | fs.constants.O_NOCTTY);
  } catch {
    return undefined;
  }
  if (!isForeground(fd)) {
    fs.closeSync(fd);
    return undefined;
  }
  try {
    fs.writeSync(fd, question);
    const buf = Buffer.alloc(256);
    const n = fs.readSync(fd, buf, 0, buf.length, null);
    return buf.subarray(0, n).toString('utf8').trim();
  } finally {
    fs.closeSync(fd);
  }
}
