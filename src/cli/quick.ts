/**
 * The commands scripts and hooks run most, in the exact shapes that take no option, without
 * loading the command-line parser (commander and the help texts, ~12 ms of a ~90 ms command):
 * `read NAME` through a running agent, `lock` (a screen-lock hook) and `agent stop` (a session's
 * end). Anything else, and `read` when no agent answers (the direct read asks for the
 * passphrase), goes through main.ts; its commands call the same functions below, so both paths
 * do and print the same.
 */
import { agentReadBlocking, call, stopAgent } from '../agent/index.js';
import { EXIT } from '../errors.js';
import { isTerminal } from '../lib/libc.js';
import { assertValidName } from '../lib/names.js';
import { socketDir } from '../lib/paths.js';
import { agentSocket } from './places.js';
import { runQuick } from './process-setup.js';
import { processIo, type Io } from './report.js';

/** Whether argv is one of the shapes quick() takes (bin/keyward.js loads this module only then). */
export function isQuick(argv: readonly string[]): boolean {
  const [a, b, ...rest] = argv;
  if (rest.length > 0) return false;
  if (a === 'read') return b !== undefined && !b.startsWith('-');
  if (a === 'lock') return b === undefined;
  return a === 'agent' && b === 'stop';
}

/** `keyward agent stop`: asks the agent to stop and waits until it has. */
export async function agentStopCommand(io: Io): Promise<void> {
  io.stdout(
    (await stopAgent(socketDir())) ? 'keyward agent stopped\n' : 'no keyward agent was running\n',
  );
}

/** `keyward lock`. */
export async function lockCommand(io: Io): Promise<void> {
  await call(agentSocket(), 'lock');
  io.stdout('locked\n');
}

/** The exit code, or undefined when main.ts must take the command line. */
export async function quick(
  argv: readonly string[],
  io: Io = processIo,
): Promise<number | undefined> {
  if (!isQuick(argv)) return undefined;
  const read = argv[0] === 'read';
  return runQuick(
    io,
    async () => {
      if (argv[0] === 'lock') await lockCommand(io);
      else if (argv[0] === 'agent') await agentStopCommand(io);
      else {
        const name = argv[1] as string;
        assertValidName(name);
        // Blocking, without node:net (agent/read-blocking.ts): one request, nothing to overlap.
        if (!agentReadBlocking(agentSocket(), name, 1, isTerminal(1))) return undefined;
      }
      return EXIT.OK;
    },
    // The value goes to descriptor 1 directly; errors still go through process.stderr.
    { stdout: !read },
  );
}
