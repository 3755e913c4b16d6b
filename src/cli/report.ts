/**
 * The one place a CLI failure becomes text and an exit code (STYLE.md, habit 3).
 * Messages never hold secret bytes: errors are built from names, paths and sizes only.
 */
import { EXIT, isKeywardError, KeywardError, type ExitCode } from '../errors.js';
import { textShown } from '../lib/text.js';

export interface Io {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
}

/** Writes through processIo not yet handed to the kernel, and who waits for none to be left. */
let unflushed = 0;
const waiting: Array<() => void> = [];
const tracked = (stream: () => NodeJS.WriteStream) => (s: string) => {
  unflushed += 1;
  // A pipe's write may be queued (Node writes pipes asynchronously on POSIX): counted until
  // it is out, or failed.
  return stream().write(s, () => {
    unflushed -= 1;
    if (unflushed === 0) for (const w of waiting.splice(0)) w();
  });
};

export const processIo: Io = {
  stdout: tracked(() => process.stdout),
  stderr: tracked(() => process.stderr),
};

/** Resolves once everything written through processIo is out (before a process.exit). */
export function flushed(): Promise<void> {
  return unflushed === 0 ? Promise.resolve() : new Promise((r) => waiting.push(r));
}

export function reportError(e: unknown, io: Io): ExitCode {
  // What a message quotes of a file or a caller is escaped where it is put in, with quote(); here,
  // as a last guard, no control or direction character reaches the terminal as it is (found in
  // review: a crafted backup's manifest key, in a parser's message, moved the cursor).
  if (isKeywardError(e)) {
    io.stderr(`keyward: error: ${textShown(e.message)}\n`);
    if (e.hint !== undefined) io.stderr(`keyward: hint: ${textShown(e.hint)}\n`);
    return e.exitCode;
  }
  const message = textShown(e instanceof Error ? e.message : 'unknown failure');
  io.stderr(`keyward: error: internal error: ${message}\n`);
  io.stderr(
    'keyward: hint: this is a bug in keyward; run again with KEYWARD_DEBUG=1 and report the output\n',
  );
  if (process.env['KEYWARD_DEBUG'] === '1' && e instanceof Error && e.stack !== undefined) {
    io.stderr(`${e.stack}\n`);
  }
  return EXIT.INTERNAL;
}

export function note(io: Io, message: string): void {
  io.stderr(`keyward: ${textShown(message)}\n`);
}

/**
 * bin/keyward.js found this process debuggable (runtime-guard.ts) and --allow-debugger was not
 * given: nothing else of keyward's has run.
 */
export function refuseExposure(reasons: readonly string[], io: Io = processIo): ExitCode {
  return reportError(
    new KeywardError(
      'DEBUGGER_EXPOSED',
      `keyward refuses to run where another process could debug it or load code into it: ${reasons.join('; ')}`,
      {
        hint: 'start keyward without these Node options (unset NODE_OPTIONS); --allow-debugger runs anyway and says so in status, doctor, the audit log and every prompt',
      },
    ),
    io,
  );
}

/** The exit status of a child (`keyward run`), for main() to return as the process's own. */
export class ChildExit {
  constructor(readonly code: number) {}
}
