/**
 * MCP (issue 8): the latency `keyward mcp wrap` adds to a tools/call. The SDK client calls
 * server-everything's echo tool directly and through the gateway (agent running and unlocked,
 * pinning and leak blocking on, one released secret to look for), in the same run: p50 and p99
 * of each, and the difference.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round((s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? 0) * 1000) / 1000;
};

export async function mcpBench(root: string): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-bench-mcp-'));
  const bin = path.join(root, 'bin/keyward.js');
  const everything = path.join(
    root,
    'node_modules/@modelcontextprotocol/server-everything/dist/index.js',
  );
  const pass = path.join(dir, 'pass');
  fs.writeFileSync(pass, 'bench passphrase, long enough\n', { mode: 0o600 });
  const env = {
    ...process.env,
    KEYWARD_HOME: path.join(dir, 'home'),
    KEYWARD_SOCKET_DIR: path.join(dir, 'run'),
    KEYWARD_PASSPHRASE_FILE: pass,
  } as Record<string, string>;
  const kw = (args: string[], input?: string) => {
    const r = spawnSync(process.execPath, [bin, ...args], { env, input, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`keyward ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  kw(['init', '--kdf-ops', '1', '--kdf-mem-mib', '8']);
  const pol = path.join(dir, 'policy.yaml');
  fs.writeFileSync(
    pol,
    'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\nmcp:\n  leak_blocking: true\n',
  );
  kw(['policy', 'apply', pol]);
  kw(['secret', 'set', 'bench/token'], 'a-released-benchmark-token');
  const agent = spawn(process.execPath, [bin, 'agent', 'run'], { env, stdio: 'ignore' });
  const sock = path.join(dir, 'run', 'agent.sock');
  for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  kw(['unlock']);
  kw(['read', 'bench/token']);

  const n = Number(process.env['BENCH_MCP_CALLS'] ?? 300);
  const measure = async (command: string, args: string[]) => {
    const client = new Client({ name: 'bench', version: '1' });
    await client.connect(new StdioClientTransport({ command, args, env, stderr: 'ignore' }));
    await client.listTools();
    for (let i = 0; i < 20; i++)
      await client.callTool({ name: 'echo', arguments: { message: 'warm' } });
    const lat: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      await client.callTool({ name: 'echo', arguments: { message: `call ${i}` } });
      lat.push(performance.now() - t);
    }
    await client.close();
    return { p50: pct(lat, 0.5), p99: pct(lat, 0.99) };
  };
  const direct = await measure(process.execPath, [everything, 'stdio']);
  const gateway = await measure(process.execPath, [
    bin,
    'mcp',
    'wrap',
    '--name',
    'everything',
    '--',
    process.execPath,
    everything,
    'stdio',
  ]);
  agent.kill('SIGTERM');
  await new Promise((r) => agent.once('exit', r));
  fs.rmSync(dir, { recursive: true, force: true });
  const added = {
    p50: Math.round((gateway.p50 - direct.p50) * 1000) / 1000,
    p99: Math.round((gateway.p99 - direct.p99) * 1000) / 1000,
  };
  const out = path.join(root, 'bench/results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(
    path.join(out, 'mcp.json'),
    `${JSON.stringify({ calls: n, directMs: direct, gatewayMs: gateway, addedMs: added }, null, 2)}\n`,
  );
  process.stdout.write(
    `mcp  tools/call direct: p50 ${direct.p50} ms, p99 ${direct.p99} ms | through keyward mcp wrap: p50 ${gateway.p50} ms, p99 ${gateway.p99} ms | added: p50 ${added.p50} ms, p99 ${added.p99} ms (${(gateway.p50 / direct.p50).toFixed(2)}x)\nwritten to bench/results/mcp.json\n`,
  );
}
