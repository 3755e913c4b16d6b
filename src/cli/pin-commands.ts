/**
 * `keyward mcp pins list | diff | trust | reset` (docs/MCP.md, "Pinning"). The pins are in the
 * vault: list and diff read them through the unlocked agent (or the vault, with the
 * passphrase); trust and reset change them, and need the passphrase itself, like `policy apply`:
 * trusting a tool definition is an approval, and no process can make one on the user's behalf.
 */
import type { Command } from 'commander';
import {
  agentMcpPins,
  INSTRUCTIONS,
  pinnedEntry as pinned,
  readPinRecord,
  trustWaiting,
  waitingEntry as waiting,
  waitingNames,
  writePinRecord,
  type ServerRecord,
} from '../agent/index.js';
import { KeywardError } from '../errors.js';
import { keywardHome } from '../lib/paths.js';
import { jsonText, printable } from '../lib/text.js';
import { useVault } from '../vault/index.js';
import { agentSocket, auth, paths } from './context.js';
import type { Io } from './report.js';

/** Names and definitions come from MCP servers: shown escaped. */
const safe = (s: string, max = 300) => printable(s, max);

/** The pins, through the unlocked agent when there is one, else from the vault. */
async function readPins(cmd: Command, io: Io): Promise<Record<string, ServerRecord>> {
  try {
    return await agentMcpPins(agentSocket());
  } catch (e) {
    if (
      !(e instanceof KeywardError) ||
      (e.code !== 'AGENT_UNAVAILABLE' && e.code !== 'AGENT_LOCKED')
    )
      throw e;
  }
  return useVault(paths(), auth(cmd, io), 'read', (v) => readPinRecord(v).servers);
}

export function registerPinCommands(mcp: Command, io: Io): void {
  const pins = mcp.command('pins').description('tool-definition pins of wrapped MCP servers');
  pins
    .command('list')
    .argument('[server]')
    .description('pinned tools (and definitions waiting to be trusted), per server')
    .option('--json', 'machine-readable output')
    .action(async function (this: Command, server: string | undefined) {
      const all = await readPins(this, io);
      const servers =
        server === undefined ? all : Object.hasOwn(all, server) ? { [server]: all[server] } : {};
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${jsonText(servers, 2)}\n`);
        return;
      }
      const names = Object.keys(servers).sort();
      if (names.length === 0) io.stdout('no pins yet\n');
      for (const s of names) {
        const sp = servers[s];
        if (!sp) continue;
        io.stdout(`${safe(s)}\n`);
        if (sp.instructions)
          io.stdout(`  ${INSTRUCTIONS}  ${sp.instructions.sha256}  pinned ${sp.instructions.at}\n`);
        for (const [tool, pin] of Object.entries(sp.tools).sort())
          io.stdout(`  ${safe(tool)}  ${pin.sha256}  pinned ${pin.at}\n`);
        for (const tool of waitingNames(sp))
          io.stdout(
            `  ${safe(tool)}  ${waiting(sp, tool)?.sha256 ?? ''}  WAITING: keyward mcp pins diff ${safe(s)} ${safe(tool)}\n`,
          );
      }
    });

  pins
    .command('diff')
    .argument('<server>')
    .argument('<tool>', `a tool name, or ${INSTRUCTIONS}`)
    .description('what changed in a tool definition, word by word: [-removed-] {+added+}')
    .action(async function (this: Command, server: string, tool: string) {
      const { loadDefinitions, definitionOf, wordDiff } = await import('../mcp/index.js');
      const all = await readPins(this, io);
      const sp = Object.hasOwn(all, server) ? all[server] : undefined;
      const seen = sp ? waiting(sp, tool) : undefined;
      if (!sp || !seen)
        throw new KeywardError(
          'REQUEST_NOT_FOUND',
          `no definition of ${server} ${tool} is waiting`,
        );
      const file = loadDefinitions(keywardHome());
      const after = definitionOf(file, server, seen.sha256);
      if (after === undefined)
        throw new KeywardError(
          'REQUEST_NOT_FOUND',
          `the definition of ${server} ${tool} the gateway saw is not on file (or the file was changed)`,
          { hint: 'run the server through keyward mcp wrap again; it files what it sees' },
        );
      const was = pinned(sp, tool);
      const before = was ? definitionOf(file, server, was.sha256) : undefined;
      if (was && before === undefined)
        io.stderr(
          `note: the trusted definition of ${safe(tool)} is not on file; showing the new one whole\n`,
        );
      // Definitions come from the server: escaped, so they can't rewrite the terminal.
      io.stdout(`${safe(wordDiff(before ?? '', after), 1_000_000)}\n`);
      io.stdout(
        `\nto trust exactly this definition: keyward mcp pins trust ${safe(server)} ${safe(tool)} --hash ${seen.sha256}\n`,
      );
    });

  pins
    .command('trust')
    .argument('<server>')
    .argument('[tool]', `one tool (or ${INSTRUCTIONS}); default every definition waiting`)
    .option('--hash <sha256>', 'trust only if the definition waiting is this one (from pins diff)')
    .description('accept the definitions waiting as the new pins (asks the passphrase; audited)')
    .action(async function (this: Command, server: string, tool: string | undefined) {
      const hash = this.opts<{ hash?: string }>().hash;
      if (hash !== undefined && (!/^[0-9a-f]{64}$/.test(hash) || tool === undefined))
        throw new KeywardError(
          'USAGE',
          '--hash takes the 64 hex digits pins diff printed, with one TOOL',
        );
      // What waits, shown before the passphrase is asked: the trust is bound to what was shown.
      const shown = await waitingNow(server, tool);
      // Nothing trusted unseen: without the agent's answer, only a definition named by its hash.
      if (!shown && hash === undefined)
        throw new KeywardError(
          'USAGE',
          `what waits for ${safe(server)} could not be shown (the agent is not running, or locked), so nothing is trusted`,
          {
            hint: 'keyward unlock, then run this again; or trust one definition by the hash keyward mcp pins diff SERVER TOOL prints',
          },
        );
      if (shown)
        for (const [n, h] of shown) io.stderr(`to trust: ${safe(server)} ${safe(n)} ${h}\n`);
      // A person, not a key any process of the user could fetch from the keyring.
      const a = { ...auth(this, io), passphraseOnly: true };
      const trusted = useVault(paths(), a, 'write', (v) => {
        const record = readPinRecord(v);
        // Bound to what was shown (or to --hash), when anything was.
        const expected = hash !== undefined && tool !== undefined ? new Map([[tool, hash]]) : shown;
        const done = trustWaiting(record, server, tool, expected);
        writePinRecord(v, record);
        for (const [n, pin] of done)
          a.audit.record({
            type: 'mcp.call',
            target: server,
            decision: 'info',
            reason: `trusted ${n}`,
            details: { server, tool: n, event: 'trusted', hash: pin.sha256 },
          });
        v.save();
        return done;
      });
      for (const [n, pin] of trusted)
        io.stdout(`trusted ${safe(server)} ${safe(n)} ${pin.sha256}\n`);
    });

  pins
    .command('reset')
    .argument('[server]')
    .argument('[tool]', 'one tool; default the whole server')
    .option('--all', 'forget every pin of every server (also what to do when they are damaged)')
    .description(
      'forget pins (asks the passphrase; the next sight pins again when auto_trust_first is on)',
    )
    .action(function (this: Command, server: string | undefined, tool: string | undefined) {
      const all = this.opts<{ all?: boolean }>().all === true;
      if (all === (server !== undefined))
        throw new KeywardError('USAGE', 'pins reset takes SERVER [TOOL], or --all');
      const a = { ...auth(this, io), passphraseOnly: true };
      useVault(paths(), a, 'write', (v) => {
        // --all doesn't read the record: it replaces it, damaged or not.
        const record = all ? { version: 2 as const, servers: {} } : readPinRecord(v);
        const sp =
          server !== undefined && Object.hasOwn(record.servers, server)
            ? record.servers[server]
            : undefined;
        if (tool && sp) {
          if (tool === INSTRUCTIONS) {
            delete sp.instructions;
            delete sp.seenInstructions;
          } else {
            delete sp.tools[tool];
            delete sp.seen[tool];
          }
        } else if (server !== undefined) delete record.servers[server];
        writePinRecord(v, record);
        a.audit.record({
          type: 'mcp.call',
          target: server ?? '*',
          decision: 'info',
          reason: `reset ${all ? 'every pin of every server' : (tool ?? 'every pin')}`,
          details: { server: server ?? null, tool: tool ?? null, event: 'reset' },
        });
        v.save();
      });
      io.stdout(
        `reset ${all ? 'every server' : `${safe(server ?? '')}${tool ? ` ${safe(tool)}` : ''}`}\n`,
      );
    });
}

/** What waits for server (one tool, or all), as the unlocked agent has it; undefined without one. */
async function waitingNow(
  server: string,
  tool: string | undefined,
): Promise<Map<string, string> | undefined> {
  let all: Record<string, ServerRecord>;
  try {
    all = await agentMcpPins(agentSocket(), server);
  } catch {
    return undefined;
  }
  const sp = Object.hasOwn(all, server) ? all[server] : undefined;
  const out = new Map<string, string>();
  if (!sp) return out;
  for (const n of tool ? [tool] : waitingNames(sp)) {
    const w = waiting(sp, n);
    if (w) out.set(n, w.sha256);
  }
  return out;
}
