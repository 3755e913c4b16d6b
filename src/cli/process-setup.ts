/**
 * What every keyward command sets up before it talks to anyone: EPIPE is a quiet end, the
 * process hardens once the agent greeted it, and a request that waits for a person says so.
 * Shared by main.ts and quick.ts (which runs without the command-line parser).
 */
import { onAgentHello, onApprovalPending, type PendingNotice } from '../agent/index.js';
import { EXIT } from '../errors.js';
import { hardenProcess } from '../lib/libc.js';
import { quote } from '../lib/text.js';
import { flushed, processIo, reportError, type Io } from './report.js';

/**
 * Said on stderr the moment a request waits for a person: which request, how long it waits, and
 * where to approve it (docs/CLI.md, "Waiting for approval").
 */
export function pendingLines(n: PendingNotice): string {
  const left = Math.round(n.timeoutMs / 1000);
  const how =
    n.mode === 'totp'
      ? `keyward approve ${n.id} --code`
      : n.mode === 'webauthn'
        ? undefined
        : `keyward approve ${n.id}`;
  const where = [
    n.console ? `in the console, ${n.console}#/approvals` : undefined,
    how ? `with: ${how}` : undefined,
  ].filter((x) => x !== undefined);
  return (
    `keyward: waiting for approval of request ${n.id} (${n.action} ${quote(n.target)}, ${n.mode}, ${left} s left)\n` +
    (where.length > 0
      ? `keyward: approve it ${where.join(', or ')}\n`
      : 'keyward: no console runs and this request needs it: keyward agent start serves one\n')
  );
}

let stdoutGuarded = false;

export function setUpProcess(io: Io, o: { stdout?: boolean } = {}): void {
  // `read` writes its value to descriptor 1 itself: process.stdout, which would load node:net
  // for a pipe (~1.5 ms), is not made for it.
  if (io === processIo && !stdoutGuarded && o.stdout !== false) {
    stdoutGuarded = true;
    // The reader went away (`keyward audit export | head`): what it wanted it has; stop quietly
    // instead of dying on an unhandled EPIPE with a stack trace.
    process.stdout.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(EXIT.OK);
      throw e;
    });
  }
  onAgentHello(hardenProcess);
  onApprovalPending((n) => io.stderr(pendingLines(n)));
}

/**
 * A command run without the command-line parser (quick.ts, quick-start.ts): set up as every
 * command is, run, and its exit code; an error reported as main.ts reports one. Undefined hands
 * the command to main.ts.
 */
export async function runQuick(
  io: Io,
  run: () => Promise<number | undefined>,
  o: { stdout?: boolean } = {},
): Promise<number | undefined> {
  setUpProcess(io, o);
  let code: number | undefined;
  try {
    code = await run();
  } catch (e) {
    code = reportError(e, io);
  }
  // bin/keyward.js exits at once after a quick command: what it wrote goes out first.
  await flushed();
  return code;
}
