/**
 * Remote MCP servers (docs/MCP.md, "Remote servers"): `keyward mcp wrap --url URL --header
 * 'Authorization=Bearer {{secret:github/token}}'` serves stdio to the client and speaks
 * Streamable HTTP (the SDK's transport) to the server. The header's secrets are read through
 * the agent (policy, approval, audit: the gateway is the asker) once, at start; they never reach
 * the client, the model or a config file.
 *
 * What the OS and Node leave: fetch takes header values as JS strings, so the value lives in the
 * gateway's heap for the session (the gateway is non-dumpable; docs/THREAT-MODEL.md).
 */
import { call } from '../agent/index.js';
import { KeywardError, UsageError } from '../errors.js';
import { secureFree } from '../lib/secure.js';
import type { Json, Upstream, UpstreamEvents } from './upstream.js';

export interface HeaderTemplate {
  name: string;
  parts: Array<{ text: string } | { secret: string }>;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Headers the transport owns, or that would change how the request travels. */
const RESERVED = new Set([
  'host',
  'content-length',
  'content-type',
  'transfer-encoding',
  'connection',
  'accept',
  'mcp-session-id',
  'mcp-protocol-version',
  'last-event-id',
  'upgrade',
  'te',
  'trailer',
  'keep-alive',
  'proxy-connection',
  'cookie',
]);
const SECRET_NAME = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$/;

/** NAME=VALUE, where VALUE may hold {{secret:NAME}} (any number; `{{` means nothing else). */
export function parseHeaderOption(option: string): HeaderTemplate {
  const eq = option.indexOf('=');
  if (eq <= 0)
    throw new UsageError('USAGE', `--header ${JSON.stringify(option)}: NAME=VALUE`, {
      hint: "e.g. --header 'Authorization=Bearer {{secret:github/token}}'",
    });
  const name = option.slice(0, eq);
  const value = option.slice(eq + 1);
  if (!TOKEN.test(name))
    throw new UsageError('USAGE', `--header: ${JSON.stringify(name)} is not a header name`);
  if (RESERVED.has(name.toLowerCase()))
    throw new UsageError('USAGE', `--header: ${name} is set by the transport, not by keyward`);
  const parts: HeaderTemplate['parts'] = [];
  let rest = value;
  while (rest !== '') {
    const open = rest.indexOf('{{');
    if (open < 0) {
      parts.push({ text: rest });
      break;
    }
    if (open > 0) parts.push({ text: rest.slice(0, open) });
    const close = rest.indexOf('}}', open);
    const inner = close < 0 ? undefined : rest.slice(open + 2, close);
    const m = inner === undefined ? undefined : /^secret:(.*)$/.exec(inner);
    if (!m || !SECRET_NAME.test(m[1] ?? ''))
      throw new UsageError(
        'USAGE',
        `--header ${name}: {{ starts a placeholder, and the only one is {{secret:NAME}}`,
      );
    parts.push({ secret: m[1] ?? '' });
    rest = rest.slice((close ?? 0) + 2);
  }
  for (const p of parts)
    if ('text' in p && /[\0\r\n]/.test(p.text))
      throw new UsageError('USAGE', `--header ${name}: no NUL, CR or LF in a header value`);
  return { name, parts };
}

/**
 * The URL of a remote server: https, or http to this machine only (a header with a secret must
 * not cross a network in the clear).
 */
export function checkServerUrl(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError('USAGE', `--url ${JSON.stringify(url)} is not a URL`);
  }
  const loopback =
    u.hostname === 'localhost' || u.hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(u.hostname);
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && loopback))
    throw new UsageError('USAGE', `--url ${u.protocol}//${u.host}: https, or http to this machine`);
  if (u.username || u.password)
    throw new UsageError(
      'USAGE',
      '--url: no user or password in the URL; use --header with a secret',
    );
  return u;
}

/**
 * The headers' values, each secret read through the agent (one release each, audited). A value
 * that would break the header (CR, LF, NUL, other control bytes) is refused, never sent.
 */
export async function resolveHeaders(
  socket: string,
  templates: HeaderTemplate[],
): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const t of templates) {
    let value = '';
    for (const p of t.parts) {
      if ('text' in p) {
        value += p.text;
        continue;
      }
      const f = await call(socket, 'read', { name: p.secret });
      const bytes = f.raw;
      if (!bytes) throw new KeywardError('INTERNAL', `the agent sent no value for ${p.secret}`);
      try {
        if (bytes.some((b) => b < 0x20 && b !== 0x09) || bytes.includes(0x7f))
          throw new UsageError(
            'USAGE',
            `the secret ${p.secret} holds a control character: it can't go in the ${t.name} header`,
          );
        // The one place a value becomes a string: fetch wants one (docs/THREAT-MODEL.md).
        value += bytes.toString('latin1');
      } finally {
        secureFree(bytes);
      }
    }
    out[t.name] = value;
  }
  return out;
}

export async function httpUpstream(
  name: string,
  url: URL,
  headers: Record<string, string>,
  ev: UpstreamEvents,
): Promise<Upstream> {
  const { StreamableHTTPClientTransport } =
    await import('@modelcontextprotocol/sdk/client/streamableHttp.js');
  const t = new StreamableHTTPClientTransport(url, { requestInit: { headers } });
  let gone = false;
  t.onmessage = (m) => {
    const r = (m as Json)['result'] as Json | undefined;
    // The transport sends the negotiated version on every later request, as the SDK client
    // would have told it.
    if (typeof r?.['protocolVersion'] === 'string' && r['serverInfo'] !== undefined)
      t.setProtocolVersion(r['protocolVersion']);
    ev.message(m as Json);
  };
  t.onerror = (e) => ev.log(`keyward mcp wrap: ${name} (${url.host}): ${e.message}`);
  t.onclose = () => {
    if (!gone) ev.gone('closed the connection');
    gone = true;
  };
  await t.start();
  return {
    send(m) {
      if (gone) return;
      t.send(m as never).catch((e: unknown) => {
        const status = (e as { code?: unknown }).code;
        const text = e instanceof Error ? e.message : 'the request failed';
        const why = typeof status === 'number' && status > 0 ? `HTTP ${status}: ${text}` : text;
        // A request gets its answer (an error); anything else is only logged.
        if (m['method'] !== undefined && m['id'] !== undefined)
          ev.message({
            jsonrpc: '2.0',
            id: m['id'],
            error: { code: -32002, message: `keyward: ${name} (${url.host}): ${why}` },
          });
        else ev.log(`keyward mcp wrap: ${name} (${url.host}): ${why}`);
      });
    },
    async stop() {
      if (gone) return;
      await t.terminateSession().catch(() => undefined);
      gone = true;
      await t.close();
    },
  };
}
