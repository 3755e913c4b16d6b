/**
 * `keyward mcp serve` (docs/MCP.md): an MCP server on stdio that gives AI agents gated access to
 * credentials. Every tool goes through the agent (identity: this process, whose parents are the
 * MCP client; policy; approval; audit), and every call is itself audited (`mcp.call`) with the
 * client's name and version.
 *
 * - list_credentials: names, never values.
 * - get_credential: the value inline, only where the deciding rule says `mcp_inline: true`.
 * - run_with_credentials: the agent runs a command with the secrets injected and returns its
 *   masked output and exit code; the model never sees a value.
 */
import { createHash } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { z } from 'zod';
import { agentList, agentRun, call } from '../agent/index.js';
import type { AuditSink } from '../vault/index.js';
import { KeywardError } from '../errors.js';
import { secureFree } from '../lib/secure.js';
import { AgentLink } from './agent-link.js';
import { scanWith, type Scanned } from './guard.js';

/** Output returned to the model is cut here (masked already; this is about context size). */
const MAX_OUTPUT = 100 * 1024;
const DEFAULT_TIMEOUT_S = 300;

export interface ServeOptions {
  agentSocket: string;
  audit: AuditSink;
  version: string;
}

type ToolResult = { content: Array<{ type: 'text'; text: string }>; isError?: boolean };

const text = (t: string, isError = false): ToolResult =>
  isError
    ? { content: [{ type: 'text', text: t }], isError }
    : { content: [{ type: 'text', text: t }] };

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/**
 * A run's answer, concealed, searched again for a value split between its two streams: the
 * answer's strings joined in order find stdout's half before stderr's only when nothing stands
 * between them, and `echo` ends each half with a line (found in review). So both orders are
 * searched, with and without the whitespace where the streams meet; a value found there can't be
 * concealed in place, and the answer is withheld. Only a value whose halves end one stream and
 * begin the other: other text between them, or three pieces, hide it (docs/MCP.md).
 */
async function splitBetweenStreams(link: AgentLink, s: Scanned): Promise<Scanned> {
  const { stdout, stderr } = s.out as { stdout: string; stderr: string };
  const joins = await scanWith(
    link,
    // As they are (whitespace may be the value's own: review; stdout first is the answer's own
    // scan), and without the whitespace where they meet (echo's line end).
    {
      errFirst: stderr + stdout,
      outFirstTrimmed: stdout.trimEnd() + stderr.trimStart(),
      errFirstTrimmed: stderr.trimEnd() + stdout.trimStart(),
      // Only echo's line end dropped: a value's own space before it stays (review).
      outFirstLine: stdout.replace(/[\r\n]+$/, '') + stderr,
      errFirstLine: stderr.replace(/[\r\n]+$/, '') + stdout,
    },
    false,
  );
  return joins.found.length === 0
    ? s
    : { out: s.out, found: [...new Set([...s.found, ...joins.found])], withheld: true };
}

export async function serveMcp(o: ServeOptions): Promise<void> {
  const server = new McpServer(
    { name: 'keyward', version: o.version },
    {
      instructions:
        'Credentials from the keyward vault. Prefer run_with_credentials: it runs a command with ' +
        'secrets in its environment and returns the output with every secret masked. ' +
        'get_credential returns a value only where the user allowed it.',
    },
  );
  // The agent's leak scan, for what runs print (one connection, kept).
  const link = new AgentLink(o.agentSocket);
  const client = () => {
    const v = server.server.getClientVersion();
    return v ? `${v.name} ${v.version}` : 'unknown client';
  };
  /** Runs a tool: audits the call and its outcome; errors become tool errors, never crashes. */
  const audited = async (
    tool: string,
    args: unknown,
    target: string | undefined,
    fn: () => Promise<ToolResult>,
  ): Promise<ToolResult> => {
    let result: ToolResult;
    let decision: 'allow' | 'deny' | 'error' = 'allow';
    let reason: string | undefined;
    try {
      result = await fn();
    } catch (e) {
      decision =
        e instanceof KeywardError &&
        ['POLICY_DENIED', 'APPROVAL_REJECTED', 'SELF_APPROVAL'].includes(e.code)
          ? 'deny'
          : 'error';
      reason = e instanceof Error ? e.message : 'error';
      const hint = e instanceof KeywardError && e.hint ? ` (${e.hint})` : '';
      result = text(`keyward: ${reason}${hint}`, true);
    }
    try {
      o.audit.record({
        type: 'mcp.call',
        decision,
        ...(target === undefined ? {} : { target }),
        ...(reason === undefined ? {} : { reason }),
        details: {
          server: 'keyward',
          tool,
          client: client(),
          argsSha256: sha256(JSON.stringify(args ?? {})),
        },
      });
    } catch {
      // The release itself was audited by the agent; a failed call record is not fatal here.
    }
    return result;
  };

  server.registerTool(
    'list_credentials',
    {
      title: 'List credentials',
      description: 'The names of the credentials in the keyward vault (never their values).',
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    () =>
      audited('list_credentials', {}, undefined, async () => {
        const entries = await agentList(o.agentSocket, { mcp: client() });
        return text(
          JSON.stringify({ credentials: entries.map(({ name }) => ({ name })) }, null, 2),
        );
      }),
  );

  server.registerTool(
    'get_credential',
    {
      title: 'Get a credential',
      description:
        "A credential's value, only where the user's policy allows releasing it to an MCP client. " +
        'Prefer run_with_credentials, which uses the value without showing it.',
      inputSchema: {
        name: z.string().min(1).max(128).describe('the credential name, e.g. github/token'),
      },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ name }) =>
      audited('get_credential', { name }, name, async () => {
        const f = await call(o.agentSocket, 'read', { name, mcp: client() });
        try {
          // The model asked for the value and policy allows it: it becomes text here.
          return text(f.raw ? f.raw.toString('utf8') : '');
        } finally {
          secureFree(f.raw);
        }
      }),
  );

  server.registerTool(
    'run_with_credentials',
    {
      title: 'Run a command with credentials',
      description:
        'Runs a command with credentials in its environment (the keyward agent starts it). ' +
        'Returns the exit code and the output, in which every credential value is masked.',
      inputSchema: {
        command: z
          .array(z.string().refine((a) => !a.includes('\0'), 'no NUL characters'))
          .min(1)
          .describe('the program and its arguments, no shell'),
        env: z
          .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string().min(1))
          // At least one: every run goes through the agent's policy and audit for a credential.
          .refine((e) => Object.keys(e).length > 0, 'name at least one credential')
          .describe(
            'environment variable -> credential name, e.g. {"GITHUB_TOKEN": "github/token"}',
          ),
        cwd: z
          .string()
          // A pattern, not startsWith (which the SDK's JSON Schema writes as a made-up format).
          .regex(/^\//, 'an absolute path')
          .refine((c) => !c.includes('\0'), 'no NUL characters')
          .optional()
          .describe('working directory (absolute)'),
        timeout_seconds: z.number().int().positive().max(3600).optional(),
      },
      annotations: { destructiveHint: true, openWorldHint: true },
    },
    ({ command, env, cwd, timeout_seconds }) =>
      audited('run_with_credentials', { command, env, cwd }, Object.values(env)[0], async () => {
        let stdout = '';
        let stderr = '';
        const add = (cur: string, b: Buffer) =>
          cur.length >= MAX_OUTPUT ? cur : (cur + b.toString('utf8')).slice(0, MAX_OUTPUT);
        const environ = Buffer.from(
          Object.entries(process.env)
            .filter(([, v]) => v !== undefined)
            .map(([k, v]) => `${k}=${v ?? ''}\0`)
            .join(''),
          'utf8',
        );
        const code = await agentRun(
          o.agentSocket,
          {
            argv: command,
            cwd: cwd ?? process.cwd(),
            env: Object.entries(env).map(([v, name]) => ({ var: v, name })),
            fds: [],
            masking: true,
            mcp: client(),
          },
          environ,
          {
            stdout: (b) => (stdout = add(stdout, b)),
            stderr: (b) => (stderr = add(stderr, b)),
            timeoutMs: (timeout_seconds ?? DEFAULT_TIMEOUT_S) * 1000,
          },
        );
        // Its own secrets are masked by the agent as the output comes. A value released before
        // (to an earlier run, which could have stashed it in a file) is not among them: the
        // whole answer is scanned for every value released in this unlock, and concealed.
        const answer = { exitCode: code, stdout, stderr };
        let s;
        try {
          s = await scanWith(link, answer, true);
          if (!s.withheld) s = await splitBetweenStreams(link, s);
        } catch (e) {
          // The command ran: its exit code is said, its output is not (it could not be checked).
          return text(
            `the command exited ${code}; its output was withheld: it could not be checked for released values (${e instanceof Error ? e.message : 'error'})`,
            true,
          );
        }
        if (s.withheld)
          return text(
            `the command's output held a value released earlier (${s.found.join(', ')}): withheld`,
            true,
          );
        return text(JSON.stringify(s.out, null, 2), code !== 0);
      }),
  );

  const transport = new StdioServerTransport();
  const closed = new Promise<void>((resolve) => {
    transport.onclose = () => resolve();
    process.stdin.on('end', () => resolve());
  });
  await server.connect(transport);
  await closed;
  link.close();
}
