/**
 * `keyward agent start` in its exact shape (no option), without the command-line parser: a
 * session's first command, run from a file of its own (scripts/bundle.ts) that loads none of the
 * agent's code and no command module. `agent start --no-console` and every other shape go through
 * main.ts, whose command calls the same function below, so both print the same.
 */
import { fileURLToPath } from 'node:url';
import { startAgent } from '../agent/index.js';
import { EXIT } from '../errors.js';
import { runtimeState } from '../lib/runtime-guard.js';
import { printable } from '../lib/text.js';
import { socketDir } from '../lib/paths.js';
import { agentSocket } from './places.js';
import { runQuick } from './process-setup.js';
import { processIo, type Io } from './report.js';

const BIN = fileURLToPath(new URL('../../../bin/keyward.js', import.meta.url));

/** Whether argv is the shape quickStart() takes (bin/keyward.js loads this module only then). */
export function isQuickStart(argv: readonly string[]): boolean {
  return argv.length === 2 && argv[0] === 'agent' && argv[1] === 'start';
}

/** `keyward agent start`: the agent in the background, and where it listens. */
export async function agentStartCommand(io: Io, web: boolean): Promise<void> {
  const started = await startAgent(BIN, socketDir(), runtimeState.allowed, process.env, web);
  io.stdout(
    `keyward agent started (pid ${started.pid}), socket ${agentSocket()}; it is locked: keyward unlock\n`,
  );
  if (started.console)
    io.stdout(`console: ${printable(started.console, 200)} (approve requests there)\n`);
}

/** The exit code, or undefined when main.ts must take the command line. */
export async function quickStart(
  argv: readonly string[],
  io: Io = processIo,
): Promise<number | undefined> {
  if (!isQuickStart(argv)) return undefined;
  return runQuick(io, async () => {
    await agentStartCommand(io, true);
    return EXIT.OK;
  });
}
