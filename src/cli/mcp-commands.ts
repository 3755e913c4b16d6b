/**
 * `keyward mcp ...` (docs/MCP.md). The MCP SDK is loaded only here, when an MCP command runs.
 */
import type { Command } from 'commander';
import { agentStatus } from '../agent/index.js';
import { auditSink } from '../audit/index.js';
import { hardenProcess } from '../lib/libc.js';
import { printable } from '../lib/text.js';
import { UsageError } from '../errors.js';
import { keywardHome } from '../lib/paths.js';
import { agentSocket } from './context.js';
import { registerPinCommands } from './pin-commands.js';
import type { Io } from './report.js';

/**
 * serve and wrap relay an MCP client's traffic (tool results may hold values) for as long as
 * they run: the agent sees them first (its greeting hardens this process), and whatever the
 * agent's answer, they are non-dumpable before they relay a byte.
 */
async function meetAgentThenHarden(): Promise<void> {
  await agentStatus(agentSocket()).catch(() => undefined);
  hardenProcess();
}

export function registerMcpCommands(program: Command, io: Io, version: string): void {
  const mcp = program.command('mcp').description('MCP: gated credential tools for AI agents');
  mcp
    .command('serve')
    .description(
      'an MCP server on stdio: list_credentials, get_credential, run_with_credentials (through the agent)',
    )
    .action(async () => {
      await meetAgentThenHarden();
      const { serveMcp } = await import('../mcp/index.js');
      await serveMcp({ agentSocket: agentSocket(), audit: auditSink(keywardHome()), version });
    });

  mcp
    .command('wrap')
    .description(
      'a gateway between an MCP client (stdio) and the MCP server CMD (or --url): tool policy, pinning, rate limits, leak blocking',
    )
    .requiredOption('--name <name>', 'the server name policy and pins use, e.g. github')
    .option('--url <url>', 'a remote MCP server (Streamable HTTP): https, or http on this machine')
    .option(
      '--header <name=value>',
      'a header for --url; the value may hold {{secret:NAME}}, read through the agent (repeatable)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .argument('[command...]', 'the MCP server command and its arguments, after --')
    .action(async function (this: Command, command: string[]) {
      const opts = this.opts<{ name: string; url?: string; header?: string[] }>();
      const name = opts.name;
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name))
        throw new UsageError(
          'USAGE',
          `--name ${JSON.stringify(name)}: letters, digits, . _ - (at most 64)`,
        );
      if (command.length > 0 === (opts.url !== undefined))
        throw new UsageError(
          'USAGE',
          'mcp wrap takes a server command after --, or --url, not both',
          {
            hint: 'keyward mcp wrap --name NAME -- CMD ARGS, or keyward mcp wrap --name NAME --url URL',
          },
        );
      if (opts.header && !opts.url) throw new UsageError('USAGE', '--header goes with --url');
      const { wrapMcp, parseHeaderOption, checkServerUrl } = await import('../mcp/index.js');
      const headers = (opts.header ?? []).map(parseHeaderOption);
      if (opts.url) checkServerUrl(opts.url);
      const home = keywardHome();
      // A long-running writer: it keeps the log's state between calls (AuditOptions.keep).
      const sink = auditSink(home, { keep: true });
      await wrapMcp({
        name,
        ...(opts.url ? { url: opts.url, headers } : { command }),
        home,
        agentSocket: agentSocket(),
        record: (r) => sink.record(r),
        // Tool names and reasons come from the server: escaped, so they can't rewrite a terminal.
        log: (line) => io.stderr(`${printable(line, 4000)}\n`),
        // A local server starts while this process meets the agent and hardens.
        ready: meetAgentThenHarden(),
      });
    });

  registerPinCommands(mcp, io);
}
