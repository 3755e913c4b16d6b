/**
 * Tool definitions as MCP servers sent them (docs/MCP.md, "Pinning"), kept for `keyward mcp pins
 * diff`: $KEYWARD_HOME/mcp/definitions.json (0600, atomic), per server, each canonical definition
 * under its SHA-256. Which definitions are trusted is not here: the agent keeps that in the vault
 * (src/agent/mcp-pins.ts). This file is trusted for nothing: a definition is shown only when it
 * still hashes to the hash it is filed under, and editing the file changes no decision.
 *
 * A pin file of an older keyward (mcp/pins.json, version 1) is read once for its definitions and
 * its pinned hashes, which can only restrict (docs/MCP.md, "Upgrading").
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { IntegrityError } from '../errors.js';
import { ensurePrivateDir, writeFileAtomic } from '../lib/files.js';

export interface DefinitionFile {
  version: 2;
  /** server -> SHA-256 -> the canonical definition and when it was last seen. */
  servers: Record<string, Record<string, { definition: string; at: string }>>;
  /** server -> tool -> SHA-256 pinned by an older keyward (from mcp/pins.json). */
  legacy: Record<string, Record<string, string>>;
  /** server -> SHA-256 of the instructions an older keyward pinned. */
  legacyInstructions?: Record<string, string>;
}

/** Definitions kept per server; the oldest seen go first. */
const KEEP_PER_SERVER = 2000;

export const sha256hex = (s: string): string =>
  createHash('sha256').update(s, 'utf8').digest('hex');

/** The hash pins and policy's content_hash use: SHA-256 over the canonical definition. */
export const definitionHash = sha256hex;

export function definitionsPath(home: string): string {
  return path.join(home, 'mcp', 'definitions.json');
}

const damaged = (file: string) =>
  new IntegrityError('VAULT_CORRUPT', `the MCP definitions file ${file} is damaged`, {
    hint: 'move it aside: the gateway writes a new one as servers list their tools',
  });

function readJson(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw damaged(file);
  }
}

interface LegacyPin {
  hash?: unknown;
  definition?: unknown;
}

export function loadDefinitions(home: string): DefinitionFile {
  const file = definitionsPath(home);
  const j = readJson(file) as DefinitionFile | undefined;
  if (j !== undefined) {
    if (
      j === null ||
      j.version !== 2 ||
      typeof j.servers !== 'object' ||
      j.servers === null ||
      typeof j.legacy !== 'object' ||
      j.legacy === null
    )
      throw damaged(file);
    return j;
  }
  const out: DefinitionFile = { version: 2, servers: {}, legacy: {}, legacyInstructions: {} };
  // An older keyward's pins.json: its definitions, and its pins as hashes that can only restrict.
  const old = readJson(path.join(home, 'mcp', 'pins.json')) as
    { version?: unknown; servers?: Record<string, Record<string, unknown>> } | undefined;
  if (old?.version !== 1 || typeof old.servers !== 'object' || old.servers === null) return out;
  const at = new Date(0).toISOString();
  for (const [server, sp] of Object.entries(old.servers)) {
    const defs: Record<string, { definition: string; at: string }> = {};
    const legacy: Record<string, string> = {};
    const add = (p: LegacyPin | undefined): string | undefined => {
      if (typeof p?.definition !== 'string') return undefined;
      const h = definitionHash(p.definition);
      defs[h] = { definition: p.definition, at };
      return h;
    };
    for (const [tool, pin] of Object.entries((sp['tools'] ?? {}) as Record<string, LegacyPin>)) {
      const h = add(pin);
      if (h) legacy[tool] = h;
    }
    for (const pin of Object.values((sp['pending'] ?? {}) as Record<string, LegacyPin>)) add(pin);
    const instructions = add(sp['instructions'] as LegacyPin | undefined);
    if (instructions && out.legacyInstructions) out.legacyInstructions[server] = instructions;
    out.servers[server] = defs;
    out.legacy[server] = legacy;
  }
  return out;
}

/** Files definitions seen from a server (re-read first: other gateways' additions stay). */
export function recordDefinitions(home: string, server: string, definitions: string[]): void {
  const f = loadDefinitions(home);
  const now = new Date().toISOString();
  const mine = (f.servers[server] ??= {});
  let added = false;
  for (const d of definitions) {
    const h = definitionHash(d);
    if (!Object.hasOwn(mine, h)) added = true;
    mine[h] = { definition: d, at: now };
  }
  if (!added && fs.existsSync(definitionsPath(home))) return;
  const hashes = Object.keys(mine);
  if (hashes.length > KEEP_PER_SERVER) {
    hashes
      .sort((a, b) => (mine[a]?.at ?? '').localeCompare(mine[b]?.at ?? ''))
      .slice(0, hashes.length - KEEP_PER_SERVER)
      .forEach((h) => delete mine[h]);
  }
  ensurePrivateDir(path.join(home, 'mcp'));
  writeFileAtomic(definitionsPath(home), [Buffer.from(`${JSON.stringify(f)}\n`, 'utf8')]);
}

/** The definition filed under hash, only if it still hashes to it. */
export function definitionOf(f: DefinitionFile, server: string, hash: string): string | undefined {
  const d = Object.hasOwn(f.servers, server) ? f.servers[server]?.[hash] : undefined;
  return d && definitionHash(d.definition) === hash ? d.definition : undefined;
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

/**
 * A tool definition as pinned: the whole object the server sent (name, title, description,
 * schemas, annotations, icons, _meta and whatever a later spec adds), since the client gets the
 * whole object. Without its name: what recognises a renamed tool.
 */
export function toolDefinition(tool: Record<string, unknown>, withName = true): string {
  return canonical(withName ? tool : { ...tool, name: undefined });
}

export interface DiffPart {
  op: '=' | '-' | '+';
  text: string;
}

/** A word-level diff as parts: kept, removed and added runs of words, in order. */
export function wordDiffParts(before: string, after: string): DiffPart[] {
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
  const out: DiffPart[] = [];
  const push = (op: DiffPart['op'], text: string) => {
    const last = out.at(-1);
    if (last?.op === op) last.text += text;
    else out.push({ op, text });
  };
  let i = 0;
  let j = 0;
  let del = '';
  let add = '';
  const flush = () => {
    if (del) push('-', del);
    if (add) push('+', add);
    del = '';
    add = '';
  };
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      flush();
      push('=', a[i] ?? '');
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

/**
 * A readable word-level diff: removed words in [-...-], added ones in {+...+}. The server wrote
 * the text: a marker in it is broken with a backslash (`[\-`, `\+}`...), so a definition can't
 * make what it adds look removed.
 */
export function wordDiff(before: string, after: string): string {
  const esc = (t: string) =>
    t
      .replace(/\[-/g, '[\\-')
      .replace(/-\]/g, '\\-]')
      .replace(/\{\+/g, '{\\+')
      .replace(/\+\}/g, '\\+}');
  return wordDiffParts(before, after)
    .map((p) =>
      p.op === '-' ? `[-${esc(p.text)}-]` : p.op === '+' ? `{+${esc(p.text)}+}` : esc(p.text),
    )
    .join('');
}
