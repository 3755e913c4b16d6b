/**
 * `keyward mcp ...` (docs/MCP.md). The MCP SDK is loaded only here, when an MCP command runs.
 */
import type { Command } from 'commander';
import { agentStatus } from '../agent/index.js';
import { auditSink } from '../audit/index.js';
import { hardenProcess } from '../lib/libc.js';
import { printable } from '../lib/text.js';
import { KeywardError, UsageError } from '../errors.js';
import { keywardHome } from '../lib/paths.js';
import { agentSocket } from './context.js';
import type { Io } from './report.js';

/** Names and definitions come from MCP servers: shown escaped. */
const safe = (s: string, max = 300) => printable(s, max);

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
      'a gateway between an MCP client (stdio) and the MCP server CMD: tool policy, pinning, rate limits, leak blocking',
    )
    .requiredOption('--name <name>', 'the server name policy and pins use, e.g. github')
    .argument('<command...>', 'the MCP server command and its arguments, after --')
    .action(async function (this: Command, command: string[]) {
      const name = this.opts<{ name: string }>().name;
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name))
        throw new UsageError(
          'USAGE',
          `--name ${JSON.stringify(name)}: letters, digits, . _ - (at most 64)`,
        );
      await meetAgentThenHarden();
      const { wrapMcp } = await import('../mcp/index.js');
      const home = keywardHome();
      const sink = auditSink(home);
      await wrapMcp({
        name,
        command,
        home,
        agentSocket: agentSocket(),
        record: (r) => sink.record(r),
        log: (line) => io.stderr(`${line}\n`),
      });
    });

  const pins = mcp.command('pins').description('tool-definition pins of wrapped MCP servers');
  pins
    .command('list')
    .description('pinned tools (and changes waiting to be trusted), per server')
    .option('--json', 'machine-readable output')
    .action(async function (this: Command) {
      const { loadPins } = await import('../mcp/index.js');
      const p = loadPins(keywardHome());
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${JSON.stringify(p.servers, null, 2)}\n`);
        return;
      }
      const names = Object.keys(p.servers).sort();
      if (names.length === 0) io.stdout('no pins yet\n');
      for (const server of names) {
        const sp = p.servers[server];
        if (!sp) continue;
        io.stdout(`${safe(server)}\n`);
        if (sp.instructions)
          io.stdout(
            `  (instructions)  ${sp.instructions.hash.slice(0, 16)}  pinned ${sp.instructions.at}\n`,
          );
        for (const [tool, pin] of Object.entries(sp.tools).sort())
          io.stdout(`  ${safe(tool)}  ${pin.hash}  pinned ${pin.at}\n`);
        for (const [tool, pin] of Object.entries(sp.pending).sort())
          io.stdout(
            `  ${safe(tool)}  ${pin.hash}  CHANGED, waiting: keyward mcp pins diff ${safe(server)} ${safe(tool)}\n`,
          );
      }
    });
  pins
    .command('diff')
    .argument('<server>')
    .argument('<tool>', 'a tool name, or (instructions)')
    .description('what changed in a tool definition, word by word: [-removed-] {+added+}')
    .action(async (server: string, tool: string) => {
      const { loadPins, wordDiff } = await import('../mcp/index.js');
      const sp = loadPins(keywardHome()).servers[server];
      const seen = sp?.pending[tool];
      if (!sp || !seen)
        throw new KeywardError('REQUEST_NOT_FOUND', `no change waiting for ${server} ${tool}`);
      const before = tool === '(instructions)' ? sp.instructions : sp.tools[tool];
      // Definitions come from the server: escaped, so they can't rewrite the terminal.
      io.stdout(`${safe(wordDiff(before?.definition ?? '', seen.definition), 1_000_000)}\n`);
    });
  pins
    .command('trust')
    .argument('<server>')
    .argument('[tool]', 'one tool (or (instructions)); default every change waiting')
    .description('accept the definitions seen as the new pins')
    .action(async (server: string, tool: string | undefined) => {
      const { loadPins, savePins } = await import('../mcp/index.js');
      const home = keywardHome();
      const p = loadPins(home);
      const sp = p.servers[server];
      const names = tool ? [tool] : Object.keys(sp?.pending ?? {});
      if (!sp || names.length === 0 || names.some((n) => !sp.pending[n]))
        throw new KeywardError(
          'REQUEST_NOT_FOUND',
          `no change waiting for ${server}${tool ? ` ${tool}` : ''}`,
        );
      for (const n of names) {
        const pin = sp.pending[n];
        if (!pin) continue;
        if (n === '(instructions)') sp.instructions = pin;
        else sp.tools[n] = pin;
        delete sp.pending[n];
        auditSink(home).record({
          type: 'mcp.call',
          target: server,
          decision: 'info',
          reason: `trusted ${n}`,
          details: { server, tool: n, event: 'trusted', hash: pin.hash },
        });
        io.stdout(`trusted ${server} ${n}\n`);
      }
      savePins(home, p);
    });
  pins
    .command('reset')
    .argument('<server>')
    .argument('[tool]', 'one tool; default the whole server')
    .description('forget pins (the next sight pins again when auto_trust_first is on)')
    .action(async (server: string, tool: string | undefined) => {
      const { loadPins, savePins } = await import('../mcp/index.js');
      const home = keywardHome();
      const p = loadPins(home);
      if (tool) {
        const sp = p.servers[server];
        if (sp) {
          delete sp.tools[tool];
          delete sp.pending[tool];
        }
      } else delete p.servers[server];
      savePins(home, p);
      io.stdout(`reset ${server}${tool ? ` ${tool}` : ''}\n`);
    });
}
