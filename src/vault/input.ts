/**
 * Secret input: passphrases from the terminal or a passphrase file, secret values from standard
 * input. Bytes go from the file descriptor straight into secure memory (fs.readSync into a
 * sodium buffer): no stream chunk, no readline string, no intermediate Buffer holds them.
 */
import fs from 'node:fs';
import tty from 'node:tty';
import { IntegrityError, KeywardError, UsageError } from '../errors.js';
import { hardenProcess, isForeground, rawNoEcho } from '../lib/libc.js';
import {
  readFdToSecure,
  readSyncRetrying,
  secureAlloc,
  secureEqual,
  secureFree,
  secureSlice,
  type SecureBuffer,
} from '../lib/secure.js';
import { VALUE_MAX_BYTES, assertValueSize } from './values.js';

export const PASSPHRASE_MIN_BYTES = 8;
export const PASSPHRASE_MAX_BYTES = 1024;
const PASSPHRASE_FILE_MAX = 64 * 1024;

/** Where a passphrase comes from: a file (--passphrase-file, KEYWARD_PASSPHRASE_FILE) or the terminal. */
export interface PassphraseSource {
  file?: string | undefined;
}

function noTerminal(): KeywardError {
  return new KeywardError('PASSPHRASE_UNAVAILABLE', 'no terminal to ask the passphrase on', {
    hint: 'give a passphrase file: --passphrase-file FILE or KEYWARD_PASSPHRASE_FILE=FILE (mode 0600)',
  });
}

/** The controlling terminal, when this process is its foreground job; else undefined. */
function openTty(): number | undefined {
  let fd: number;
  try {
    fd = fs.openSync('/dev/tty', fs.constants.O_RDWR | fs.constants.O_NOCTTY);
  } catch {
    return undefined;
  }
  // A background job has a terminal it can't use: the same as none (with the same hint).
  if (!isForeground(fd)) {
    fs.closeSync(fd);
    return undefined;
  }
  return fd;
}

export function hasTerminal(): boolean {
  const fd = openTty();
  if (fd === undefined) return false;
  fs.closeSync(fd);
  return true;
}

const CTRL_C = 0x03;
const CTRL_D = 0x04;
const BACKSPACE = 0x08;
const DEL = 0x7f;
const CTRL_U = 0x15;

/** A hidden line is read into a buffer of this size first, doubled as it fills. */
const HIDDEN_LINE_START = 4096;

/**
 * Reads one hidden line from the controlling terminal into secure memory, a byte at a time in
 * raw mode, so editing keys work and Ctrl-C cancels with the terminal restored.
 */
export function readHiddenLine(prompt: string, maxBytes: number): SecureBuffer {
  // Whatever this process is, it is about to hold a secret: no core file, no same-user reads.
  hardenProcess();
  const fd = openTty();
  if (fd === undefined) throw noTerminal();
  // Grown as the line grows, from a buffer small enough to be locked: one of maxBytes (16 MiB
  // for a value) could not be locked under the usual limit, and secureAlloc lets a buffer that
  // large stay unlocked (found in review: a short value typed here sat in swappable memory).
  let buf = secureAlloc(Math.min(maxBytes, HIDDEN_LINE_START));
  let len = 0;
  let restore: (() => void) | undefined;
  try {
    fs.writeSync(fd, prompt);
    restore = rawNoEcho(fd);
    for (;;) {
      const n = readSyncRetrying(fd, buf, len, 1);
      const b = n === 0 ? CTRL_D : (buf[len] ?? 0);
      if (b === 0x0d || b === 0x0a) break;
      buf[len] = 0;
      if (b === CTRL_C || (b === CTRL_D && len === 0)) {
        throw new KeywardError('CANCELLED', 'cancelled at the prompt');
      }
      if (b === DEL || b === BACKSPACE) {
        if (len > 0) buf[--len] = 0;
      } else if (b === CTRL_U) {
        buf.fill(0, 0, len);
        len = 0;
      } else if (b >= 0x20) {
        if (len + 1 >= maxBytes)
          throw new UsageError('USAGE', `input is longer than ${maxBytes - 1} bytes`);
        if (len + 1 >= buf.length) {
          const bigger = secureAlloc(Math.min(maxBytes, buf.length * 2));
          buf.copy(bigger, 0, 0, len);
          secureFree(buf);
          buf = bigger;
        }
        buf[len++] = b;
      }
    }
    return secureSlice(buf, 0, len);
  } finally {
    restore?.();
    try {
      fs.writeSync(fd, '\n');
    } catch {
      // the terminal went away; nothing to tidy
    }
    fs.closeSync(fd);
    secureFree(buf);
  }
}

/**
 * The first line of a passphrase file. The file must be private (as ssh insists for keys): a
 * passphrase others can read protects nothing.
 */
export function readPassphraseFile(file: string): SecureBuffer {
  hardenProcess();
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new UsageError(
      'USAGE',
      `cannot read the passphrase file ${file} (${(e as NodeJS.ErrnoException).code})`,
      {
        hint: 'check the path given by --passphrase-file or KEYWARD_PASSPHRASE_FILE',
      },
    );
  }
  try {
    const st = fs.fstatSync(fd);
    const uid = process.geteuid?.() ?? -1;
    if (!st.isFile())
      throw new UsageError('USAGE', `the passphrase file ${file} is not a regular file`);
    if (st.uid !== uid || (st.mode & 0o077) !== 0) {
      throw new IntegrityError(
        'INSECURE_PERMISSIONS',
        `refusing the passphrase file ${file}: ${st.uid !== uid ? 'owned by another user' : 'others can read it'}`,
        { hint: `chmod 600 '${file}'` },
      );
    }
    let all: SecureBuffer;
    try {
      all = readFdToSecure(fd, PASSPHRASE_FILE_MAX);
    } catch (e) {
      if (e instanceof RangeError)
        throw new UsageError('USAGE', `the passphrase file ${file} is too large`);
      throw e;
    }
    try {
      let end = all.indexOf(0x0a);
      if (end === -1) end = all.length;
      if (end > 0 && all[end - 1] === 0x0d) end -= 1;
      return secureSlice(all, 0, end);
    } finally {
      secureFree(all);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function checkNewPassphrase(p: SecureBuffer): void {
  if (p.length < PASSPHRASE_MIN_BYTES) {
    secureFree(p);
    throw new KeywardError(
      'PASSPHRASE_REJECTED',
      `the new passphrase is shorter than ${PASSPHRASE_MIN_BYTES} bytes`,
      { hint: 'choose a longer one; several random words work well' },
    );
  }
  if (p.length > PASSPHRASE_MAX_BYTES) {
    secureFree(p);
    throw new KeywardError(
      'PASSPHRASE_REJECTED',
      `the new passphrase is longer than ${PASSPHRASE_MAX_BYTES} bytes`,
    );
  }
}

/** The passphrase that opens the vault. */
export function readPassphrase(
  src: PassphraseSource,
  prompt = 'keyward passphrase: ',
): SecureBuffer {
  if (src.file !== undefined) return readPassphraseFile(src.file);
  return readHiddenLine(prompt, PASSPHRASE_MAX_BYTES + 1);
}

/** A new passphrase: from the file, or typed twice on the terminal. */
export function readNewPassphrase(src: PassphraseSource, what = 'new passphrase'): SecureBuffer {
  if (src.file !== undefined) {
    const p = readPassphraseFile(src.file);
    try {
      checkNewPassphrase(p);
    } catch (e) {
      secureFree(p);
      throw e;
    }
    return p;
  }
  const first = readHiddenLine(`${what}: `, PASSPHRASE_MAX_BYTES + 2);
  let second: SecureBuffer;
  try {
    checkNewPassphrase(first);
    second = readHiddenLine(`${what} again: `, PASSPHRASE_MAX_BYTES + 2);
  } catch (e) {
    // Too short, too long, or Ctrl-C at the second prompt: the first is wiped either way.
    secureFree(first);
    throw e;
  }
  const same = secureEqual(first, second);
  secureFree(second);
  if (!same) {
    secureFree(first);
    throw new KeywardError('PASSPHRASE_REJECTED', 'the two passphrases differ', {
      hint: 'nothing was changed; try again',
    });
  }
  return first;
}

/**
 * A secret value: typed hidden when standard input is a terminal, otherwise read to the end of
 * standard input. One trailing newline is stripped unless raw (docs/FORMAT.md, "Values").
 */
export function readSecretValue(opts: { raw: boolean; prompt: string }): SecureBuffer {
  hardenProcess();
  if (tty.isatty(0)) {
    const v = readHiddenLine(opts.prompt, VALUE_MAX_BYTES + 1);
    assertValueSize(v.length);
    return v;
  }
  let all: SecureBuffer;
  try {
    all = readFdToSecure(0, VALUE_MAX_BYTES + 2);
  } catch (e) {
    if (e instanceof RangeError) assertValueSize(VALUE_MAX_BYTES + 1);
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EBADF' || code === 'EISDIR') assertValueSize(0);
    throw e;
  }
  let end = all.length;
  if (!opts.raw && end > 0 && all[end - 1] === 0x0a) {
    end -= 1;
    if (end > 0 && all[end - 1] === 0x0d) end -= 1;
  }
  try {
    assertValueSize(end);
    return secureSlice(all, 0, end);
  } finally {
    secureFree(all);
  }
}
