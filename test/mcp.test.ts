/**
 * `keyward mcp serve` (issue 8) driven by the official MCP SDK client over stdio, with a real
 * agent: the tools, policy (mcp_inline), masking of run output, and the audit of every call.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, describe, test } from 'node:test';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { agentHome, auditEntries, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import { BIN, kw } from './helpers.js';
import { serveClient } from './mcp-helpers.js';

const MARK = '<concealed by keyward>';
const POLICY = `version: 1
rules:
  - { name: inline-ok, targets: ["mcp/shareable"], decision: allow, mcp_inline: true }
  - { name: denied, targets: ["mcp/denied"], decision: deny }
  - { name: rest, targets: ["**"], decision: allow }
  - { name: names, kind: list, targets: ["**"], decision: allow }
`;

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

async function setup(): Promise<{ h: AgentHome; client: Client }> {
  const h = agentHome(POLICY);
  homes.push(h);
  await startAgent(h);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  for (const [name, value] of [
    ['mcp/shareable', 'shareable-value-1'],
    ['mcp/secret', 'never-shown-value-2'],
    ['mcp/denied', 'denied-value-3'],
  ] as const)
    assert.equal(kw(['secret', 'set', name], { env: h.env, input: value }).code, 0);
  const client = await serveClient(h.env, 'keyward-test', '1.2.3');
  return { h, client };
}

const textOf = (r: unknown) =>
  ((r as { content: Array<{ text?: string }> }).content[0]?.text ?? '') as string;

const mcpCalls = (h: AgentHome) => auditEntries(h).filter((l) => l.type === 'mcp.call');

describe('keyward mcp serve', () => {
  test('lists its three tools; list_credentials gives names, never values', async () => {
    const { client } = await setup();
    const tools = (await client.listTools()).tools.map((t) => t.name).sort();
    assert.deepEqual(tools, ['get_credential', 'list_credentials', 'run_with_credentials']);
    const r = await client.callTool({ name: 'list_credentials', arguments: {} });
    const names = (
      JSON.parse(textOf(r)) as { credentials: Array<{ name: string }> }
    ).credentials.map((c) => c.name);
    assert.deepEqual(names.sort(), ['mcp/denied', 'mcp/secret', 'mcp/shareable']);
    assert.ok(!textOf(r).includes('value'), 'no value in the listing');
  });

  test('get_credential returns a value only where the rule says mcp_inline; policy denials are tool errors', async () => {
    const { h, client } = await setup();
    let r = await client.callTool({ name: 'get_credential', arguments: { name: 'mcp/shareable' } });
    assert.equal(r.isError, undefined);
    assert.equal(textOf(r), 'shareable-value-1');
    r = await client.callTool({ name: 'get_credential', arguments: { name: 'mcp/secret' } });
    assert.equal(r.isError, true);
    assert.match(textOf(r), /does not release mcp\/secret inline to MCP clients/);
    assert.ok(!textOf(r).includes('never-shown-value-2'));
    r = await client.callTool({ name: 'get_credential', arguments: { name: 'mcp/denied' } });
    assert.equal(r.isError, true);
    assert.match(textOf(r), /denied by policy/);
    const calls = mcpCalls(h).filter((c) => c.details['tool'] === 'get_credential');
    assert.deepEqual(
      calls.map((c) => c.decision),
      ['allow', 'deny', 'deny'],
    );
    assert.ok(calls.every((c) => c.details['client'] === 'keyward-test 1.2.3'));
  });

  test('run_with_credentials runs through the agent: output masked, exit code returned, the value never shown', async () => {
    const { h, client } = await setup();
    const r = await client.callTool({
      name: 'run_with_credentials',
      arguments: {
        command: ['sh', '-c', 'echo "token: $T"; echo "$T" | base64; exit 3'],
        env: { T: 'mcp/secret' },
      },
    });
    const out = JSON.parse(textOf(r)) as { exitCode: number; stdout: string; stderr: string };
    assert.equal(out.exitCode, 3);
    assert.equal(r.isError, true, 'a failing command is a tool error');
    assert.match(out.stdout, new RegExp(`^token: ${MARK}\\n${MARK}`));
    assert.ok(!textOf(r).includes('never-shown-value-2'));
    const deliveries = auditEntries(h).filter(
      (l) => l.type === 'credential.deliver' && l.target === 'mcp/secret',
    );
    assert.equal(deliveries[0]?.details['mcpClient'], 'keyward-test 1.2.3');
    const denied = await client.callTool({
      name: 'run_with_credentials',
      arguments: { command: ['true'], env: { D: 'mcp/denied' } },
    });
    assert.equal(denied.isError, true);
    assert.match(textOf(denied), /denied by policy/);
  });

  test('timeout_seconds ends a command that ignores SIGTERM: SIGKILL follows', async () => {
    const { client } = await setup();
    const r = await client.callTool(
      {
        name: 'run_with_credentials',
        arguments: {
          command: ['sh', '-c', 'trap "" TERM; while :; do sleep 1; done'],
          env: { S: 'mcp/shareable' },
          timeout_seconds: 1,
        },
      },
      undefined,
      { timeout: 600_000 },
    );
    const out = JSON.parse(textOf(r)) as { exitCode: number };
    assert.equal(out.exitCode, 128 + 9, textOf(r));
  });

  test('a keyward read inside a run reads for the MCP client: refused where the rule lacks mcp_inline', async () => {
    const { h, client } = await setup();
    const r = await client.callTool({
      name: 'run_with_credentials',
      arguments: {
        command: [process.execPath, BIN, 'read', 'mcp/secret'],
        env: { S: 'mcp/shareable' },
      },
    });
    assert.ok(!textOf(r).includes('never-shown-value-2'), textOf(r));
    assert.match(textOf(r), /does not release mcp\/secret inline to MCP clients/);
    const read = auditEntries(h).find((e) => e.type === 'secret.read' && e.target === 'mcp/secret');
    assert.equal(read?.decision, 'deny');
    assert.equal(read?.details['mcpClient'], 'keyward-test 1.2.3');
  });

  test("however deep it is nested, and through a nested keyward run, what runs inside an MCP run is the MCP client's", async () => {
    const { h, client } = await setup();
    // 40 shells deep (each waits for the next): past the 32 parents an identity keeps.
    const deep = `${h.dir}/deep.sh`;
    fs.writeFileSync(
      deep,
      '#!/bin/sh\nn=$1; shift\nif [ "$n" -gt 0 ]; then sh "$0" $((n - 1)) "$@"; else "$@"; fi\n',
      { mode: 0o755 },
    );
    const r = await client.callTool({
      name: 'run_with_credentials',
      arguments: {
        command: [deep, '40', process.execPath, BIN, 'read', 'mcp/secret'],
        env: { S: 'mcp/shareable' },
      },
    });
    assert.ok(!textOf(r).includes('never-shown-value-2'), textOf(r));
    assert.match(textOf(r), /does not release mcp\/secret inline to MCP clients/);
    // A nested keyward run: masked whatever it asks, its records name the client.
    const nested = await client.callTool({
      name: 'run_with_credentials',
      arguments: {
        command: [
          process.execPath,
          BIN,
          'run',
          '--no-masking',
          '--env',
          'T=mcp/secret',
          '--',
          'sh',
          '-c',
          'printf %s "$T"',
        ],
        env: { S: 'mcp/shareable' },
      },
    });
    assert.ok(!textOf(nested).includes('never-shown-value-2'), textOf(nested));
    const delivered = auditEntries(h).filter(
      (e) => e.type === 'credential.deliver' && e.target === 'mcp/secret',
    );
    assert.equal(delivered.at(-1)?.details['mcpClient'], 'keyward-test 1.2.3');
  });

  test('a value a run stashed comes back from no later run, nor split between stdout and stderr', async () => {
    const { h, client } = await setup();
    const stash = `${h.dir}/stash`;
    // Run 1 writes its secret to a file; its own output is nothing.
    await client.callTool({
      name: 'run_with_credentials',
      arguments: { command: ['sh', '-c', `printf %s "$T" > '${stash}'`], env: { T: 'mcp/secret' } },
    });
    // Run 2 has another secret only, and prints the file; run 3 splits its own value in two.
    const later = await client.callTool({
      name: 'run_with_credentials',
      arguments: { command: ['cat', stash], env: { S: 'mcp/shareable' } },
    });
    const split = await client.callTool({
      name: 'run_with_credentials',
      arguments: {
        command: ['sh', '-c', 'printf %s "$T" | head -c 9; printf %s "$T" | tail -c +10 >&2'],
        env: { T: 'mcp/secret' },
      },
    });
    for (const r of [later, split]) {
      assert.ok(!textOf(r).includes('never-shown-value-2'), textOf(r));
      assert.match(textOf(r), new RegExp(`${MARK}|held a value released earlier`));
    }
  });

  test('found in review: a value split between stdout and stderr with a line between its halves, or stderr first, is withheld', async () => {
    const { client } = await setup();
    const halves = [
      // echo ends each half with a line: the strings joined in order had "\n" between them.
      'echo "$(printf %s "$T" | head -c 9)"; echo "$(printf %s "$T" | tail -c +10)" >&2',
      // The first half to stderr, the second to stdout: the join in order is the wrong way round.
      'printf %s "$T" | head -c 9 >&2; printf %s "$T" | tail -c +10',
      // The second half's stream begins with a line's end.
      'printf %s "$T" | head -c 9; printf "\\n%s" "$(printf %s "$T" | tail -c +10)" >&2',
    ];
    for (const script of halves) {
      const r = await client.callTool({
        name: 'run_with_credentials',
        arguments: { command: ['sh', '-c', script], env: { T: 'mcp/secret' } },
      });
      assert.match(textOf(r), /held a value released earlier \(mcp\/secret\): withheld/, textOf(r));
      assert.ok(!textOf(r).includes('never-sho'), textOf(r));
      assert.ok(!textOf(r).includes('wn-value-2'), textOf(r));
    }
  });

  test('found in review: a value whose own space is where its halves meet, stderr first, is withheld', async () => {
    const { h, client } = await setup();
    assert.equal(
      kw(['secret', 'set', 'mcp/spaced'], { env: h.env, input: 'never shown value 22' }).code,
      0,
    );
    // "never shown" to stderr, " value 22" to stdout: trimmed where they meet, the space that is
    // the value's own went too.
    const r = await client.callTool({
      name: 'run_with_credentials',
      arguments: {
        command: ['sh', '-c', 'printf %s "$T" | head -c 11 >&2; printf %s "$T" | tail -c +12'],
        env: { T: 'mcp/spaced' },
      },
    });
    assert.match(textOf(r), /held a value released earlier \(mcp\/spaced\): withheld/, textOf(r));
    assert.ok(!textOf(r).includes('value 22'), textOf(r));
    // "never shown " and a line's end (echo) to stdout, "value 22" to stderr.
    const echoed = await client.callTool({
      name: 'run_with_credentials',
      arguments: {
        command: [
          'sh',
          '-c',
          'echo "$(printf %s "$T" | head -c 12)"; printf %s "$T" | tail -c +13 >&2',
        ],
        env: { T: 'mcp/spaced' },
      },
    });
    assert.match(
      textOf(echoed),
      /held a value released earlier \(mcp\/spaced\): withheld/,
      textOf(echoed),
    );
  });
});
