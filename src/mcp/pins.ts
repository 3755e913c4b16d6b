/**
 * Tool-definition pins for the MCP gateway (docs/MCP.md, "Pinning"): per server, a keyed hash of
 * each whole tool definition (name, title, description, input and output schemas, annotations)
 * and of the server's instructions, as first trusted; and what was seen instead, when it changed,
 * for `keyward mcp pins diff` and `trust`. Kept in $KEYWARD_HOME/mcp/pins.json (0600, atomic).
 */
import fs from 'node:fs';
import path from 'node:path';
import { IntegrityError } from '../errors.js';
import { ensurePrivateDir, writeFileAtomic } from '../lib/files.js';

export interface Pin {
  /** Keyed hash of the canonical definition. */
  hash: string;
  /** Keyed hash of the definition without its name: recognises a renamed tool. */
  bodyHash: string;
  /** The canonical definition, for diffs. Public: what the server sent. */
  definition: string;
  at: string;
}

export interface ServerPins {
  instructions?: Pin;
  tools: Record<string, Pin>;
  /** Definitions seen that differ from the pins (or new ones not yet trusted). */
  pending: Record<string, Pin>;
}

export interface PinFile {
  version: 1;
  servers: Record<string, ServerPins>;
}

export function pinsPath(home: string): string {
  return path.join(home, 'mcp', 'pins.json');
}

export function loadPins(home: string): PinFile {
  const file = pinsPath(home);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, servers: {} };
    throw e;
  }
  try {
    const p = JSON.parse(text) as PinFile;
    if (p.version !== 1 || typeof p.servers !== 'object' || p.servers === null)
      throw new Error('shape');
    return p;
  } catch {
    throw new IntegrityError('VAULT_CORRUPT', `the MCP pin file ${file} is damaged`, {
      hint: 'keyward mcp pins reset SERVER, then trust again',
    });
  }
}

export function savePins(home: string, pins: PinFile): void {
  ensurePrivateDir(path.join(home, 'mcp'));
  writeFileAtomic(pinsPath(home), [Buffer.from(`${JSON.stringify(pins, null, 2)}\n`, 'utf8')]);
}

export function serverPins(pins: PinFile, server: string): ServerPins {
  let s = pins.servers[server];
  if (!s) pins.servers[server] = s = { tools: {}, pending: {} };
  s.pending ??= {};
  s.tools ??= {};
  return s;
}

/** JSON with object keys sorted at every level: the same definition always encodes the same. */
export function canonical(value: unknown): string {
  if (value === undefined) return 'null';
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  const o = value as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
    .join(',')}}`;
}

/** The parts of a tool definition that are pinned, whole. */
export function toolDefinition(tool: Record<string, unknown>, withName = true): string {
  return canonical({
    ...(withName ? { name: tool['name'] } : {}),
    title: tool['title'],
    description: tool['description'],
    inputSchema: tool['inputSchema'],
    outputSchema: tool['outputSchema'],
    annotations: tool['annotations'],
  });
}

/** A readable word-level diff: removed words in [-...-], added ones in {+...+}. */
export function wordDiff(before: string, after: string): string {
  const split = (s: string) => s.split(/(\s+|[{}[\],:])/).filter((w) => w !== '');
  const a = split(before);
  const b = split(after);
  // Longest common subsequence over words (definitions are small).
  const n = a.length;
  const m = b.length;
  const dp: Uint32Array[] = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--) {
      const row = dp[i] as Uint32Array;
      row[j] =
        a[i] === b[j]
          ? (dp[i + 1]?.[j + 1] ?? 0) + 1
          : Math.max(dp[i + 1]?.[j] ?? 0, row[j + 1] ?? 0);
    }
  let out = '';
  let i = 0;
  let j = 0;
  let del = '';
  let add = '';
  const flush = () => {
    if (del) out += `[-${del}-]`;
    if (add) out += `{+${add}+}`;
    del = '';
    add = '';
  };
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      flush();
      out += a[i];
      i++;
      j++;
    } else if (j < m && (i >= n || (dp[i]?.[j + 1] ?? 0) >= (dp[i + 1]?.[j] ?? 0))) {
      add += b[j];
      j++;
    } else {
      del += a[i];
      i++;
    }
  }
  flush();
  return out;
}
