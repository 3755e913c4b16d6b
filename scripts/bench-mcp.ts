/**
 * MCP (issue 8): the latency `keyward mcp wrap` adds to a tools/call. The SDK client calls
 * server-everything's echo tool directly and through the gateway (agent running and unlocked,
 * pinning and leak blocking on, one released secret to look for), in the same run: p50 and p99
 * of each, and the difference; and through the design's floor (mcp-floor.ts: the same hops,
 * two socket round trips and one append+fsync per call, nothing else), the line under the
 * gateway's row. The three in turns, BENCH_MCP_ROUNDS sessions (3) of BENCH_MCP_CALLS (300). And (issue 15) a session's start: from spawning the server (or the
 * gateway) to the answer of the first tools/list, median of BENCH_MCP_SESSIONS, each way.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { benchHome } from './bench-home.js';

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round((s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? 0) * 1000) / 1000;
};

export async function mcpBench(root: string): Promise<void> {
  const home = benchHome(
    root,
    'mcp',
    'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\nmcp:\n  leak_blocking: true\n',
  );
  const { bin, env, kw } = home;
  const everything = path.join(
    root,
    'node_modules/@modelcontextprotocol/server-everything/dist/index.js',
  );
  kw(['secret', 'set', 'bench/token'], 'a-released-benchmark-token');
  await home.startAgent();
  kw(['read', 'bench/token']);

  const n = Number(process.env['BENCH_MCP_CALLS'] ?? 300);
  /** One session's call latencies (ms), after 20 calls to warm it. */
  const session = async (command: string, args: string[], calls: number) => {
    const client = new Client({ name: 'bench', version: '1' });
    await client.connect(new StdioClientTransport({ command, args, env, stderr: 'ignore' }));
    await client.listTools();
    for (let i = 0; i < 20; i++)
      await client.callTool({ name: 'echo', arguments: { message: 'warm' } });
    const lat: number[] = [];
    for (let i = 0; i < calls; i++) {
      const t = performance.now();
      await client.callTool({ name: 'echo', arguments: { message: `call ${i}` } });
      lat.push(performance.now() - t);
    }
    await client.close();
    return lat;
  };
  const stats = (lat: number[]) => ({ p50: pct(lat, 0.5), p99: pct(lat, 0.99) });
  const sessions = Number(process.env['BENCH_MCP_SESSIONS'] ?? 15);
  const start = async (command: string, args: string[]) => {
    const times: number[] = [];
    for (let i = 0; i < sessions; i++) {
      const t = performance.now();
      const client = new Client({ name: 'bench', version: '1' });
      await client.connect(new StdioClientTransport({ command, args, env, stderr: 'ignore' }));
      await client.listTools();
      times.push(performance.now() - t);
      await client.close();
    }
    return pct(times, 0.5);
  };
  const directArgs = [everything, 'stdio'];
  // BENCH_PROFILE profiles the gateway too, and lets it trust the profiled (debuggable) agent.
  const prof = process.env['BENCH_PROFILE'];
  const gatewayArgs = [
    ...(prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : []),
    bin,
    ...(prof ? ['--allow-debugger'] : []),
    'mcp',
    'wrap',
    '--name',
    'everything',
    '--',
    process.execPath,
    ...directArgs,
  ];
  // The design's floor (scripts/mcp-floor.ts): the same hops, round trips and durable append
  // per call, and nothing else.
  const floorArgs = [
    path.join(root, 'dist/scripts/mcp-floor.js'),
    path.join(home.dir, 'floor.log'),
    process.execPath,
    ...directArgs,
  ];
  // The three in turns, a session of n calls each per round: a machine that drifts moves all
  // three alike. (Shorter sessions weigh the first calls of a process more: V8 has not yet
  // optimized its code.)
  const rounds = Number(process.env['BENCH_MCP_ROUNDS'] ?? 3);
  const lat = { direct: [] as number[], floor: [] as number[], gateway: [] as number[] };
  for (let round = 0; round < rounds; round++) {
    lat.direct.push(...(await session(process.execPath, directArgs, n)));
    lat.floor.push(...(await session(process.execPath, floorArgs, n)));
    lat.gateway.push(...(await session(process.execPath, gatewayArgs, n)));
  }
  const direct = stats(lat.direct);
  const floor = stats(lat.floor);
  const gateway = stats(lat.gateway);
  // Alternated, so a machine that gets busier during the run weighs on both the same.
  const startDirect: number[] = [];
  const startGateway: number[] = [];
  for (let round = 0; round < 2; round++) {
    startDirect.push(await start(process.execPath, directArgs));
    startGateway.push(await start(process.execPath, gatewayArgs));
  }
  const sessionStart = {
    directMs: pct(startDirect, 0),
    gatewayMs: pct(startGateway, 0),
    addedMs: Math.round((pct(startGateway, 0) - pct(startDirect, 0)) * 10) / 10,
  };
  await home.stop();
  const over = (x: { p50: number; p99: number }) => ({
    p50: Math.round((x.p50 - direct.p50) * 1000) / 1000,
    p99: Math.round((x.p99 - direct.p99) * 1000) / 1000,
  });
  const added = over(gateway);
  const floorAdded = over(floor);
  const out = path.join(root, 'bench/results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(
    path.join(out, 'mcp.json'),
    `${JSON.stringify({ when: new Date().toISOString(), calls: n, directMs: direct, gatewayMs: gateway, addedMs: added, floorMs: floor, floorAddedMs: floorAdded, sessionStart }, null, 2)}\n`,
  );
  process.stdout.write(
    `mcp  tools/call direct: p50 ${direct.p50} ms, p99 ${direct.p99} ms | through keyward mcp wrap: p50 ${gateway.p50} ms, p99 ${gateway.p99} ms | added: p50 ${added.p50} ms, p99 ${added.p99} ms (${(gateway.p50 / direct.p50).toFixed(2)}x) | the design's floor adds p50 ${floorAdded.p50} ms, p99 ${floorAdded.p99} ms\nmcp  session start (spawn to first tools/list answer, median): direct ${sessionStart.directMs} ms, through the gateway ${sessionStart.gatewayMs} ms, added ${sessionStart.addedMs} ms (goal: 100 ms)\nwritten to bench/results/mcp.json\n`,
  );
}
