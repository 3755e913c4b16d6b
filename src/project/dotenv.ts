/**
 * A plain .env file, read into secure memory and parsed there: names become strings, values never
 * do (docs/PROJECT-FILES.md, "Sealing"). The grammar is dotenv's common part:
 *
 *   - blank lines, and lines whose first non-blank character is `#`, are skipped;
 *   - `[export ]NAME=VALUE`, NAME `[A-Za-z_][A-Za-z0-9_]*`, blanks around `=` allowed;
 *   - VALUE `'...'`: the bytes between the quotes, as they are;
 *   - VALUE `"..."`: with `\n`, `\r`, `\t`, `\"` and `\\` escapes;
 *   - VALUE otherwise: up to the end of the line or a ` #` comment, trailing blanks dropped.
 *
 * A quoted value ends on its line. Anything else is refused with its line number, never its text.
 */
import fs from 'node:fs';
import { UsageError } from '../errors.js';
import {
  readFdToSecure,
  secureAlloc,
  secureFree,
  secureSlice,
  type SecureBuffer,
} from '../lib/secure.js';
import { checkName, MAX_ENTRIES } from './file.js';

const MAX_FILE = 16 * 1024 * 1024;
const SP = 0x20;
const TAB = 0x09;
const blank = (c: number | undefined) => c === SP || c === TAB;

/** Known token prefixes (GitHub, GitLab, Slack, Stripe, Google). */
const TOKEN_PREFIX =
  /^(gh[pousr]_|github_pat_|glpat|xox[abprs]|sk_(live|test)|rk_(live|test)|AIza|ya29)/;

/**
 * Whether a name is more likely a token's body than a variable's name: a known prefix; 16
 * characters or more with lower case, upper case and digits (names are written in capitals); or
 * 16 or more capitals and digits with no _ between words (base32, as a TOTP seed is written).
 */
function looksLikeToken(name: string): boolean {
  return (
    TOKEN_PREFIX.test(name) ||
    (name.length >= 16 && /[a-z]/.test(name) && /[A-Z]/.test(name) && /\d/.test(name)) ||
    (/^[A-Z0-9]{16,}$/.test(name) && /\d/.test(name) && /[A-Z]/.test(name))
  );
}

export interface EnvEntry {
  name: string;
  value: SecureBuffer;
}

/** Frees every value of entries. */
export function freeEntries(entries: readonly EnvEntry[]): void {
  for (const e of entries) secureFree(e.value);
}

/** The entries of a .env file (not a link; up to 16 MiB), values in secure memory. */
export function readEnvFile(file: string): EnvEntry[] {
  let fd: number;
  try {
    fd = fs.openSync(
      file,
      fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK,
    );
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new UsageError(
      'USAGE',
      `cannot read ${file} (${code === 'ELOOP' ? 'a symbolic link' : code})`,
    );
  }
  let bytes: SecureBuffer | undefined;
  try {
    if (!fs.fstatSync(fd).isFile()) throw new UsageError('USAGE', `${file} is not a regular file`);
    try {
      bytes = readFdToSecure(fd, MAX_FILE);
    } catch (e) {
      if (e instanceof RangeError) throw new UsageError('USAGE', `${file} is larger than 16 MiB`);
      throw e;
    }
    return parseEnv(bytes, file);
  } finally {
    secureFree(bytes);
    fs.closeSync(fd);
  }
}

/** Parses .env bytes; `where` names the file in errors. */
export function parseEnv(bytes: SecureBuffer, where: string): EnvEntry[] {
  const entries: EnvEntry[] = [];
  const scratch = secureAlloc(Math.max(bytes.length, 1));
  const fail = (line: number, why: string): never => {
    throw new UsageError('USAGE', `${where}:${line}: ${why}`);
  };
  try {
    let lineNo = 0;
    for (let start = 0; start < bytes.length;) {
      lineNo += 1;
      let end = bytes.indexOf(0x0a, start);
      if (end < 0) end = bytes.length;
      const next = end + 1;
      if (end > start && bytes[end - 1] === 0x0d) end -= 1;
      let i = start;
      while (i < end && blank(bytes[i])) i++;
      if (i === end || bytes[i] === 0x23) {
        start = next;
        continue;
      }
      if (end - i > 7 && bytes.toString('latin1', i, i + 7) === 'export ') {
        i += 7;
        while (i < end && blank(bytes[i])) i++;
      }
      const nameStart = i;
      while (i < end && /[A-Za-z0-9_]/.test(String.fromCharCode(bytes[i] ?? 0))) i++;
      const nameEnd = i;
      while (i < end && blank(bytes[i])) i++;
      // A line with no = may be a value on its own (a token, a key's body): nothing of it is
      // said. Only a name followed by = becomes a string (it is public: the sealed file shows it).
      if (nameEnd === nameStart || bytes[i] !== 0x3d) fail(lineNo, 'expected NAME=VALUE');
      const name = bytes.toString('latin1', nameStart, nameEnd);
      try {
        checkName(name);
      } catch {
        fail(
          lineNo,
          'the text before = is not a name (letters, digits and _, not starting with a digit)',
        );
      }
      i += 1;
      while (i < end && blank(bytes[i])) i++;
      let n = 0;
      const quote = bytes[i];
      if (quote === 0x27 || quote === 0x22) {
        i += 1;
        for (;;) {
          if (i >= end) fail(lineNo, `the value of ${name} has no closing quote on its line`);
          const c = bytes[i] ?? 0;
          if (c === quote) break;
          if (quote === 0x22 && c === 0x5c) {
            const e = bytes[i + 1];
            const out =
              e === 0x6e
                ? 0x0a
                : e === 0x72
                  ? 0x0d
                  : e === 0x74
                    ? 0x09
                    : e === 0x22 || e === 0x5c
                      ? e
                      : -1;
            if (out < 0)
              fail(
                lineNo,
                `the value of ${name} has an escape keyward does not take (\\n \\r \\t \\" \\\\)`,
              );
            scratch[n++] = out;
            i += 2;
            continue;
          }
          scratch[n++] = c;
          i += 1;
        }
        i += 1;
        while (i < end && blank(bytes[i])) i++;
        if (i < end && bytes[i] !== 0x23) fail(lineNo, `text after the quoted value of ${name}`);
      } else {
        let stop = end;
        for (let j = i; j < end; j++)
          if (bytes[j] === 0x23 && blank(bytes[j - 1])) {
            stop = j;
            break;
          }
        while (stop > i && blank(bytes[stop - 1])) stop--;
        for (let j = i; j < stop; j++) scratch[n++] = bytes[j] ?? 0;
        // `TOKENBODY==` reads as a name and a value of "=": a base64 token on a line of its
        // own, which would be committed in plain text as a name. Refused, and not said.
        if (n > 0 && scratch.subarray(0, n).every((c) => c === 0x3d))
          fail(lineNo, 'the value is only = signs: is this line a base64 token on its own?');
        // `TOKENBODY=` (one = of padding) reads as a name with an empty value. An empty value
        // after a name that looks like a token must be written quoted.
        if (n === 0 && i === stop && looksLikeToken(name))
          fail(
            lineNo,
            'nothing after =, and the text before it looks like a token: is this line a base64 token on its own? (an empty value: NAME="")',
          );
      }
      if (entries.some((e) => e.name === name)) fail(lineNo, `${name} is given twice`);
      if (entries.length >= MAX_ENTRIES) fail(lineNo, `more than ${MAX_ENTRIES} values`);
      entries.push({ name, value: secureSlice(scratch, 0, n) });
      scratch.fill(0, 0, n);
      start = next;
    }
    return entries;
  } catch (e) {
    freeEntries(entries);
    throw e;
  } finally {
    secureFree(scratch);
  }
}
