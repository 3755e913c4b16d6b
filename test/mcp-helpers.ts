/**
 * What the MCP tests share: an agent with a policy's mcp section, the gateway driven by the SDK
 * client or line by line, fixture servers, and process checks.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { agentHome, auditEntries, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import { alive, BIN, kw, ROOT, sleep } from './helpers.js';

export const EVERYTHING = path.join(
  ROOT,
  'node_modules/@modelcontextprotocol/server-everything/dist/index.js',
);
export const CHANGING = path.join(ROOT, 'test/fixtures/mcp-changing-server.mjs');

export const homes: AgentHome[] = [];
export const clients: Client[] = [];
after(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  for (const h of homes) await stopAgent(h);
});

export function policyWith(mcp: string): string {
  return `version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\nmcp:\n${mcp}`;
}

export async function agentWith(mcp: string): Promise<AgentHome> {
  const h = agentHome(policyWith(mcp));
  homes.push(h);
  await startAgent(h);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  return h;
}

export async function through(
  h: AgentHome,
  name: string,
  server: string[],
  env: Record<string, string> = {},
  capabilities: Record<string, Record<string, unknown>> = {},
): Promise<Client> {
  const client = new Client({ name: 'gateway-test', version: '0.0.1' }, { capabilities });
  clients.push(client);
  // server: a command, or ['--url', URL, '--header', ...] for a remote one.
  const args = server[0] === '--url' ? server : ['--', ...server];
  await client.connect(
    new StdioClientTransport({
      command: process.execPath,
      args: [BIN, 'mcp', 'wrap', '--name', name, ...args],
      env: { ...(h.env as Record<string, string>), ...env },
      stderr: 'pipe',
    }),
  );
  return client;
}

/** The SDK client on `keyward mcp serve`, as an MCP client would start it. */
export async function serveClient(
  env: NodeJS.ProcessEnv,
  name = 'gateway-test',
  version = '0.0.1',
): Promise<Client> {
  const client = new Client({ name, version });
  clients.push(client);
  await client.connect(
    new StdioClientTransport({
      command: process.execPath,
      args: [BIN, 'mcp', 'serve'],
      env: env as Record<string, string>,
      stderr: 'pipe',
    }),
  );
  return client;
}

export const tool = (name: string, description: string, extra: Record<string, unknown> = {}) => ({
  name,
  description,
  inputSchema: { type: 'object', properties: { text: { type: 'string' } } },
  ...extra,
});

export function toolsFile(h: AgentHome, tools: unknown[]): string {
  const f = path.join(h.dir, 'tools.json');
  fs.writeFileSync(f, JSON.stringify(tools));
  return f;
}

export const names = async (c: Client) => (await c.listTools()).tools.map((t) => t.name).sort();
export const textOf = (r: unknown) =>
  ((r as { content: Array<{ text?: string }> }).content[0]?.text ?? '') as string;

export const mcpEvents = (h: AgentHome) => auditEntries(h).filter((l) => l.type === 'mcp.call');

/** The gateway driven line by line, as a client that speaks JSON-RPC itself. */
export function rawGateway(
  h: AgentHome,
  name: string,
  server: string[],
  env: Record<string, string>,
) {
  const g = spawn(process.execPath, [BIN, 'mcp', 'wrap', '--name', name, '--', ...server], {
    env: { ...h.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  let buf = '';
  let stderr = '';
  let ended = false;
  const waiting = new Set<() => void>();
  const wake = () => {
    for (const w of waiting) w();
  };
  g.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  g.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop() ?? '';
    lines.push(...parts.filter((l) => l !== ''));
    wake();
  });
  g.stdout.on('close', () => {
    ended = true;
    wake();
  });
  const send = (m: unknown) => g.stdin.write(`${JSON.stringify(m)}\n`);
  /** The first line that matches, as it arrives; fails when the gateway's output ends first. */
  const waitFor = (pred: (l: string) => boolean) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const hit = lines.find(pred);
        if (hit !== undefined || ended) waiting.delete(check);
        if (hit !== undefined) resolve(hit);
        else if (ended)
          reject(new Error(`no such line in: ${lines.join('\n')}\nstderr: ${stderr}`));
      };
      waiting.add(check);
      check();
    });
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    g.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return { g, lines, send, waitFor, exited, stderr: () => stderr };
}

export const INIT = {
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: {
    protocolVersion: '2025-06-18',
    capabilities: {},
    clientInfo: { name: 'raw', version: '1' },
  },
};

/** Waits (on the processes, not a clock) until none of pids is left; false if they stay. */
export async function gone(pids: number[]): Promise<boolean> {
  for (let i = 0; i < 600; i++) {
    if (!pids.some(alive)) return true;
    await sleep(50);
  }
  return false;
}
