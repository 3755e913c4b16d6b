/**
 * keyward console [--json] | console credentials [--json] | console rename ID NAME |
 * console revoke ID  (docs/CONSOLE.md)
 */
import type { Command } from 'commander';
import { agentConsole, agentStatus } from '../agent/index.js';
import { KeywardError } from '../errors.js';
import { jsonText, printable } from '../lib/text.js';
import { agentSocket, passphraseFile } from './context.js';
import { note, type Io } from './report.js';

export function registerConsoleCommands(program: Command, io: Io): void {
  const web = program
    .command('console')
    .description(
      'the web console: where to approve requests (127.0.0.1 only), and its WebAuthn credentials',
    )
    .action(async function () {
      const s = await agentStatus(agentSocket());
      if (!s)
        throw new KeywardError('AGENT_UNAVAILABLE', 'no agent is running', {
          hint: 'keyward agent start serves the console',
        });
      const url = typeof s['console'] === 'string' ? s['console'] : null;
      if (url === null)
        throw new KeywardError('AGENT_UNAVAILABLE', 'the agent runs without the console', {
          hint: 'keyward agent stop, then keyward agent start (without --no-console)',
        });
      io.stdout(`${printable(url, 200)}\n`);
      note(
        io,
        s['locked'] === true
          ? 'the agent is locked: keyward unlock first, then log in with the passphrase'
          : 'open it in a browser on this machine; log in with the passphrase or a registered security key',
      );
    });

  web
    .command('credentials')
    .description('the WebAuthn credentials registered in the vault')
    .option('--json', 'machine-readable output')
    .action(async function (this: Command) {
      const m = await agentConsole(agentSocket(), { op: 'credentials' });
      const list = Array.isArray(m['credentials'])
        ? (m['credentials'] as Array<Record<string, unknown>>)
        : [];
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${jsonText(list, 2)}\n`);
        return;
      }
      if (list.length === 0)
        io.stdout('no WebAuthn credential registered (add one in the console)\n');
      const f = (v: unknown) => printable(String(v ?? '-'), 200);
      for (const c of list)
        io.stdout(
          `${f(c['id'])}  ${f(c['name'])}  added ${f(c['created'])}, last used ${f(c['lastUsed'])}\n`,
        );
    });

  web
    .command('rename')
    .argument('<id>', 'credential id (see keyward console credentials)')
    .argument('<name>', 'its new name')
    .description('rename a WebAuthn credential (asks the passphrase)')
    .action(async function (this: Command, id: string, name: string) {
      await agentConsole(agentSocket(), { op: 'rename', id, name }, { file: passphraseFile(this) });
      io.stdout(`renamed ${printable(id, 200)}\n`);
    });

  web
    .command('revoke')
    .argument('<id>', 'credential id (see keyward console credentials)')
    .description(
      'remove a WebAuthn credential: it approves and logs in no more (asks the passphrase)',
    )
    .action(async function (this: Command, id: string) {
      await agentConsole(agentSocket(), { op: 'revoke', id }, { file: passphraseFile(this) });
      io.stdout(`revoked ${printable(id, 200)}\n`);
    });
}
