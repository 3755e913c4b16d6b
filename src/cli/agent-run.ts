/**
 * `keyward agent run` in the shapes `agent start` spawns it with (src/agent/start.ts), without the
 * command-line parser: commander and main.ts's tables are ~1 MiB of an idle agent's resident
 * memory (docs/PERFORMANCE.md, "Agent memory"). Every other shape (`agent run --help`, an option
 * spelled another way) goes through main.ts, whose command calls the same function below.
 */
import { runAgent } from '../agent/index.js';
import { EXIT } from '../errors.js';
import { hardenProcess } from '../lib/libc.js';
import { keywardHome, socketDir } from '../lib/paths.js';
import { runtimeState } from '../lib/runtime-guard.js';
import { setUpProcess } from './process-setup.js';
import { processIo, reportError, type Io } from './report.js';

/** `agent run`'s options, as both the parser and the shapes below give them. */
export interface AgentRunOptions {
  readyFd: number | undefined;
  console: boolean;
}

/** The agent in the foreground until it stops (main.ts's `agent run` calls this too). */
export async function agentRunCommand(io: Io, o: AgentRunOptions): Promise<void> {
  await runAgent({
    readyFd: o.readyFd,
    home: keywardHome(),
    socketDir: socketDir(),
    allowDebugger: runtimeState.allowed,
    env: process.env,
    log: (l) => io.stderr(`keyward agent: ${l}\n`),
    console: o.console,
  });
}

/**
 * `--ready-fd`'s value as a descriptor, or undefined: 3 or more (0, 1 and 2 are the agent's
 * standard streams, which it would close after saying it is ready there).
 */
export function readyFdOf(v: string): number | undefined {
  return /^\d{1,4}$/.test(v) && Number(v) >= 3 ? Number(v) : undefined;
}

/**
 * The options of argv when it is exactly `[--allow-debugger] agent run [--ready-fd N]
 * [--no-console]`, in that order; undefined for any other command line.
 */
export function agentRunShape(argv: readonly string[]): AgentRunOptions | undefined {
  let i = argv[0] === '--allow-debugger' ? 1 : 0;
  if (argv[i] !== 'agent' || argv[i + 1] !== 'run') return undefined;
  i += 2;
  let readyFd: number | undefined;
  if (argv[i] === '--ready-fd') {
    readyFd = readyFdOf(argv[i + 1] ?? '');
    if (readyFd === undefined) return undefined;
    i += 2;
  }
  let console = true;
  if (argv[i] === '--no-console') {
    console = false;
    i += 1;
  }
  return i === argv.length ? { readyFd, console } : undefined;
}

/** The exit code, or undefined when main.ts must take the command line. */
export async function agentRun(
  argv: readonly string[],
  io: Io = processIo,
): Promise<number | undefined> {
  const o = agentRunShape(argv);
  if (o === undefined) return undefined;
  // As main.ts sets up every command, and hardens one that does not talk to the agent first.
  setUpProcess(io);
  try {
    hardenProcess();
    await agentRunCommand(io, o);
    return EXIT.OK;
  } catch (e) {
    return reportError(e, io);
  }
}
