/**
 * `keyward read NAME`: the command scripts run most. Through an agent it loads only the agent's
 * client; the vault, the audit log and the passphrase prompt load only for direct mode (no
 * agent), where they are needed.
 */
import tty from 'node:tty';
import type { Command } from 'commander';
import { agentRead, socketPaths } from '../agent/index.js';
import { assertValidName } from '../lib/names.js';
import { socketDir } from '../lib/paths.js';
import type { Io } from './report.js';

export function registerReadCommand(program: Command, io: Io): void {
  program
    .command('read')
    .argument('<name>', 'secret name')
    .description('print one secret to standard output (a newline is added only on a terminal)')
    .action(async function (this: Command, name: string) {
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
