/**
 * The keyward command line: a thin layer over the library. It parses arguments, calls one
 * library operation, prints names and metadata, and maps errors through reportError.
 */
import { Command, CommanderError } from './commander.js';
import { EXIT, UsageError, type ExitCode } from '../errors.js';
import { hardenProcess } from '../lib/libc.js';
import { commandEpilogue, helpEpilogue } from './manual.js';
import { setUpProcess } from './process-setup.js';
import { ChildExit, processIo, reportError, type Io } from './report.js';

export const VERSION = '0.1.0';

type Register = (program: Command, io: Io) => void;

/**
 * The top-level commands, by the module that registers them, in the order help lists them. A
 * command line loads only its own command's module (and what that imports): a process pays for
 * no code it doesn't run (docs/BENCHMARKS.md). Help, an unknown command or none loads them all.
 * test/cli.test.ts checks this table against the commands the modules register.
 */
export const COMMAND_GROUPS: ReadonlyArray<{
  commands: readonly string[];
  load: () => Promise<Register>;
}> = [
  {
    commands: ['init', 'whoami', 'secret', 'passwd', 'rekey'],
    load: async () => (await import('./vault-commands.js')).registerVaultCommands,
  },
  { commands: ['read'], load: async () => (await import('./read-command.js')).registerReadCommand },
  {
    commands: ['agent', 'unlock', 'lock', 'status', 'approvals', 'approve', 'totp', 'deny'],
    load: async () => (await import('./agent-commands.js')).registerAgentCommands,
  },
  {
    commands: ['key', 'ssh-env'],
    load: async () => (await import('./key-commands.js')).registerKeyCommands,
  },
  { commands: ['run'], load: async () => (await import('./run-command.js')).registerRunCommand },
  {
    commands: ['mcp'],
    load: async () => {
      const { registerMcpCommands } = await import('./mcp-commands.js');
      return (p, io) => registerMcpCommands(p, io, VERSION);
    },
  },
  {
    commands: ['seal', 'unseal', 'project'],
    load: async () => (await import('./project-commands.js')).registerProjectCommands,
  },
  {
    commands: ['operator'],
    load: async () => (await import('./operator-commands.js')).registerOperatorCommands,
  },
  {
    commands: ['console'],
    load: async () => (await import('./console-commands.js')).registerConsoleCommands,
  },
  {
    commands: ['audit'],
    load: async () => (await import('./audit-commands.js')).registerAuditCommands,
  },
  {
    commands: ['backup', 'restore'],
    load: async () => {
      const { registerBackupCommands } = await import('./backup-commands.js');
      return (p, io) => registerBackupCommands(p, io, VERSION);
    },
  },
  {
    commands: ['policy'],
    load: async () => (await import('./policy-commands.js')).registerPolicyCommands,
  },
  {
    commands: ['doctor'],
    load: async () => (await import('./doctor-command.js')).registerDoctorCommand,
  },
  { commands: ['demo'], load: async () => (await import('./demo.js')).registerDemoCommand },
  {
    commands: ['completion'],
    load: async () => (await import('./completion-command.js')).registerCompletionCommand,
  },
];

/** The command a command line names: its first argument that is not a global option. */
function commandOf(argv: readonly string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--') return undefined;
    if (a === '--passphrase-file') {
      i++;
      continue;
    }
    if (a.startsWith('-')) continue;
    return a;
  }
  return undefined;
}

export async function buildProgram(io: Io, argv: readonly string[] = []): Promise<Command> {
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
    .addHelpText('after', helpEpilogue())
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout(s),
      writeErr: (s) => io.stderr(s),
      // Usage errors are printed by reportError, in keyward's own shape.
      outputError: () => undefined,
    });
  const name = commandOf(argv);
  const own = COMMAND_GROUPS.find((g) => name !== undefined && g.commands.includes(name));
  // `keyward --version` needs no command at all; help and unknown commands need every one.
  const versionOnly = name === undefined && (argv.includes('-V') || argv.includes('--version'));
  const groups = own ? [own] : versionOnly ? [] : COMMAND_GROUPS;
  for (const g of groups) (await g.load())(program, io);
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
  const epilogue = commandEpilogue(commandPath(cmd));
  if (epilogue) cmd.addHelpText('after', epilogue);
  for (const c of cmd.commands) inheritBehaviour(c, io);
}

function usageFrom(e: CommanderError): UsageError {
  const message = e.message.replace(/^error: /, '');
  return new UsageError('USAGE', message, { hint: 'see: keyward --help' });
}

/** keyward's exit code, or for `keyward run` the child's (0 to 255). */
export async function main(argv: string[], io: Io = processIo): Promise<ExitCode | number> {
  setUpProcess(io);
  const program = await buildProgram(io, argv);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT.OK;
  } catch (e) {
    if (e instanceof ChildExit) return e.code;
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return EXIT.OK;
      // Help asked for (`keyward help COMMAND`) is a success; help shown because no command was
      // given is a usage error, after the help text (commander tells them by the exit code).
      if (e.code === 'commander.help') return e.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
      return reportError(usageFrom(e), io);
    }
    return reportError(e, io);
  }
}
