/**
 * The keyward command line: a thin layer over the library. It parses arguments, calls one
 * library operation, prints names and metadata, and maps errors through reportError.
 */
import { Command, CommanderError } from 'commander';
import { EXIT, UsageError, type ExitCode } from '../errors.js';
import { onAgentHello, onApprovalPending, type PendingNotice } from '../agent/index.js';
import { quote } from '../lib/text.js';
import { hardenProcess } from '../lib/libc.js';
import { processIo, reportError, type Io } from './report.js';
import { registerVaultCommands } from './vault-commands.js';
import { registerDoctorCommand } from './doctor-command.js';
import { registerDemoCommand } from './demo.js';
import { registerAuditCommands } from './audit-commands.js';
import { registerPolicyCommands } from './policy-commands.js';
import { registerAgentCommands } from './agent-commands.js';
import { registerKeyCommands } from './key-commands.js';
import { ChildExit, registerRunCommand } from './run-command.js';
import { registerMcpCommands } from './mcp-commands.js';
import { registerConsoleCommands } from './console-commands.js';

export const VERSION = '0.1.0';

export function buildProgram(io: Io): Command {
  const program = new Command('keyward')
    .description(
      'A local secret vault and credential broker: one unlock never means silent blanket access.',
    )
    .version(VERSION, '-V, --version')
    .option(
      '--passphrase-file <file>',
      'read the passphrase from the first line of FILE (mode 0600)',
    )
    .option(
      '--allow-debugger',
      'run even where a debugger could attach or code be loaded (NODE_OPTIONS=--inspect...); announced everywhere',
    )
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout(s),
      writeErr: (s) => io.stderr(s),
      // Usage errors are printed by reportError, in keyward's own shape.
      outputError: () => undefined,
    });
  registerVaultCommands(program, io);
  registerAgentCommands(program, io);
  registerKeyCommands(program, io);
  registerRunCommand(program, io);
  registerMcpCommands(program, io, VERSION);
  registerConsoleCommands(program, io);
  registerAuditCommands(program, io);
  registerPolicyCommands(program, io);
  registerDoctorCommand(program, io);
  registerDemoCommand(program, io);
  for (const c of program.commands) inheritBehaviour(c, io);
  // Every command runs non-dumpable (no core file, no same-user ptrace or /proc/PID/mem). Those
  // that talk to the agent first turn so once the agent has greeted them, so that it could
  // identify them (their executable, cwd and environment hide with it); anything that reads a
  // secret before that hardens first anyway (vault/input.ts, Vault.open).
  program.hook('preAction', (_program, action) => {
    if (!AGENT_FIRST.has(commandPath(action))) hardenProcess();
  });
  return program;
}

/** Commands whose first contact is the agent (docs/PROTOCOL.md, "Peer identity"). */
const AGENT_FIRST = new Set([
  'status',
  'whoami',
  'unlock',
  'lock',
  'approvals',
  'approve',
  'deny',
  'read',
  'secret list',
  'run',
  'mcp serve',
  'mcp wrap',
  'agent stop',
  'doctor',
  'console',
  'console credentials',
  'console rename',
  'console revoke',
]);

function commandPath(c: Command): string {
  const names: string[] = [];
  for (let x: Command | null = c; x && x.parent; x = x.parent) names.unshift(x.name());
  return names.join(' ');
}

function inheritBehaviour(cmd: Command, io: Io): void {
  cmd.exitOverride().configureOutput({
    writeOut: (s) => io.stdout(s),
    writeErr: (s) => io.stderr(s),
    outputError: () => undefined,
  });
  for (const c of cmd.commands) inheritBehaviour(c, io);
}

function usageFrom(e: CommanderError): UsageError {
  const message = e.message.replace(/^error: /, '');
  return new UsageError('USAGE', message, { hint: 'see: keyward --help' });
}

/** keyward's exit code, or for `keyward run` the child's (0 to 255). */
/**
 * Said on stderr the moment a request waits for a person: which request, how long it waits, and
 * where to approve it (docs/CLI.md, "Waiting for approval").
 */
export function pendingLines(n: PendingNotice): string {
  const left = Math.round(n.timeoutMs / 1000);
  const how =
    n.mode === 'totp'
      ? `keyward approve ${n.id} --code CODE`
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

export async function main(argv: string[], io: Io = processIo): Promise<ExitCode | number> {
  onAgentHello(hardenProcess);
  onApprovalPending((n) => io.stderr(pendingLines(n)));
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT.OK;
  } catch (e) {
    if (e instanceof ChildExit) return e.code;
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return EXIT.OK;
      // Help shown because no command was given: a usage error, after the help text.
      if (e.code === 'commander.help') return EXIT.USAGE;
      return reportError(usageFrom(e), io);
    }
    return reportError(e, io);
  }
}
