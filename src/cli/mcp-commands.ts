/**
 * `keyward mcp ...` (docs/MCP.md). The MCP SDK is loaded only here, when an MCP command runs.
 */
import type { Command } from 'commander';
import { auditSink } from '../audit/index.js';
import { keywardHome } from '../lib/paths.js';
import { agentSocket } from './context.js';
import type { Io } from './report.js';

export function registerMcpCommands(program: Command, _io: Io, version: string): void {
  const mcp = program.command('mcp').description('MCP: gated credential tools for AI agents');
  mcp
    .command('serve')
    .description(
      'an MCP server on stdio: list_credentials, get_credential, run_with_credentials (through the agent)',
    )
    .action(async () => {
      const { serveMcp } = await import('../mcp/index.js');
      await serveMcp({ agentSocket: agentSocket(), audit: auditSink(keywardHome()), version });
    });
}
