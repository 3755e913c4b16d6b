/**
 * `keyward read NAME`, the command scripts run most, through a running agent without loading the
 * command-line parser (commander and the help texts: ~11 ms of a ~120 ms command). Only the exact
 * shape `read NAME` takes this path, and only when an agent answers; anything else (an option,
 * help, no agent: the direct read asks for the passphrase) goes through main.ts, which does the
 * same thing the same way (read-command.ts).
 */
import tty from 'node:tty';
import { agentRead, socketPaths } from '../agent/index.js';
import { EXIT } from '../errors.js';
import { assertValidName } from '../lib/names.js';
import { socketDir } from '../lib/paths.js';
import { setUpProcess } from './process-setup.js';
import { processIo, reportError, type Io } from './report.js';

/** The exit code, or undefined when main.ts must take the command line. */
export async function quickRead(
  argv: readonly string[],
  io: Io = processIo,
): Promise<number | undefined> {
  const [command, name, ...rest] = argv;
  if (command !== 'read' || name === undefined || name.startsWith('-') || rest.length > 0)
    return undefined;
  setUpProcess(io);
  try {
    assertValidName(name);
    const read = await agentRead(socketPaths(socketDir()).agent, name, 1, tty.isatty(1));
    return read ? EXIT.OK : undefined;
  } catch (e) {
    return reportError(e, io);
  }
}
