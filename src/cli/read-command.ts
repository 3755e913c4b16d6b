/**
 * `keyward read NAME`: the command scripts run most. Through an agent it loads only the agent's
 * client; the vault, the audit log and the passphrase prompt load only for direct mode (no
 * agent), where they are needed.
 */
import tty from 'node:tty';
import type { Command } from 'commander';
import { agentProjectRead, agentRead, socketPaths } from '../agent/index.js';
import { UsageError } from '../errors.js';
import { assertValidName } from '../lib/names.js';
import { socketDir } from '../lib/paths.js';
import type { Io } from './report.js';

export function registerReadCommand(program: Command, io: Io): void {
  program
    .command('read')
    .argument('<name>', 'secret name (with --project: a name in the sealed project file)')
    .option('--project', 'NAME is a value of a sealed project file, opened by the agent')
    .option('--file <file>', 'with --project: the sealed file (default: the nearest .keyward.env)')
    .description('print one secret to standard output (a newline is added only on a terminal)')
    .action(async function (this: Command, name: string) {
      const o = this.opts<{ project?: boolean; file?: string }>();
      if (o.file !== undefined && !o.project)
        throw new UsageError('USAGE', '--file goes with --project');
      if (o.project) {
        const [{ checkName }, { readSealed, sealedFile }] = await Promise.all([
          import('../project/index.js'),
          import('./project-commands.js'),
        ]);
        checkName(name);
        const file = readSealed(sealedFile(o.file));
        // Only through the agent: it holds the project identity, the policy and the log.
        await agentProjectRead(socketPaths(socketDir()).agent, file, name, 1, tty.isatty(1));
        return;
      }
      assertValidName(name);
      // Through the agent when one runs (policy, approval, audit); else direct, with the passphrase.
      // context.ts's agentSocket(), without loading context.ts (it brings the vault and audit).
      const sock = socketPaths(socketDir()).agent;
      if (await agentRead(sock, name, 1, tty.isatty(1))) return;
      const [{ printSecret }, { auth, paths }] = await Promise.all([
        import('../vault/index.js'),
        import('./context.js'),
      ]);
      printSecret(paths(), auth(this, io), name, 1, tty.isatty(1));
    });
}
