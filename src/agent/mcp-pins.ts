/**
 * MCP tool-definition pins (docs/MCP.md, "Pinning"): which definition of each tool, and of each
 * server's instructions, is trusted. The trusted hashes live in the vault (the internal record
 * @mcp/pins), so only the agent, which holds the open vault, or a person with the passphrase can
 * add to them; a file anyone of the user can write holds only the definitions themselves, for
 * diffs, and is trusted for nothing. A hash is SHA-256 over the canonical definition: public,
 * the same on every machine, and what policy's content_hash names.
 *
 * The review below is pure: the agent runs it for `keyward mcp wrap` (op review), and writes the
 * record when it changed. Its rules:
 * - a tool whose definition matches its pin is trusted;
 * - a pinned tool whose definition changed, or a tool that reappears under a new name with the
 *   body of a pinned one that vanished, is a change: version_pinning.on_change decides;
 * - a server's first listing for a set of client capabilities pins what it lists when
 *   auto_trust_first is on (servers list tools by what the client can do: a client that can
 *   sample sees more tools, and those are a first sight, not changes);
 * - a tool that appears later under capabilities already seen is an addition: on_new decides.
 */
import { IntegrityError, KeywardError } from '../errors.js';
import type { McpPolicy } from '../policy/index.js';
import { secureFree, secureTake } from '../lib/secure.js';
import type { Vault } from '../vault/index.js';

export const PINS_RECORD = '@mcp/pins';

export interface PinEntry {
  sha256: string;
  /** SHA-256 of the definition without its name: recognises a renamed tool. */
  body?: string;
  at: string;
}

export interface ServerRecord {
  /** Client capability sets (sorted top-level names) this server has been listed for. */
  caps: string[][];
  tools: Record<string, PinEntry>;
  instructions?: PinEntry;
  /** Definitions seen that are not trusted (changes, additions), waiting for `pins trust`. */
  seen: Record<string, PinEntry>;
  seenInstructions?: PinEntry;
}

export interface PinRecord {
  version: 2;
  servers: Record<string, ServerRecord>;
}

export type PinState = 'trusted' | 'pinned' | 'changed' | 'renamed' | 'new' | 'untrusted';

export interface Verdict {
  state: PinState;
  /** Hidden from the client, and calls refused. */
  blocked: boolean;
  /** Passed, with a warning and an audit event. */
  alert: boolean;
  /** What happened, for messages: "its definition changed since it was trusted". */
  what?: string;
}

export interface ReviewRequest {
  server: string;
  caps: string[];
  tools?: Array<{ name: string; sha256: string; body: string }>;
  instructions?: string;
  /** Hashes from a pin file written before pins were kept in the vault: a change from one is
   * a change, never a first sight (they can only restrict). */
  legacy?: Record<string, string>;
  legacyInstructions?: string;
}

export interface PinEvent {
  decision: 'info' | 'deny';
  reason: string;
  details: Record<string, string | number | boolean | null>;
}

export interface ReviewResult {
  tools: Record<string, Verdict>;
  instructions?: Verdict;
  /** The record changed and must be written. */
  changed: boolean;
  events: PinEvent[];
}

const HEX64 = /^[0-9a-f]{64}$/;
/**
 * The client capabilities that decide which tools a server lists (MCP 2025-06-18). Anything else
 * a client declares is left out of the set: a made-up name must not make a first sight.
 */
const KNOWN_CAPS = new Set(['elicitation', 'roots', 'sampling']);
/** Bounds on what any caller can make the agent keep. */
export const MAX_SERVERS = 1000;
export const MAX_WAITING = 1000;

export function emptyPins(): PinRecord {
  return { version: 2, servers: {} };
}

/** The pins in the vault; a record that does not parse is refused, never taken as empty. */
export function readPinRecord(v: Vault): PinRecord {
  const raw = v.revealInternal(PINS_RECORD);
  if (!raw) return emptyPins();
  try {
    // Hashes and dates only: nothing secret becomes a string here.
    const r = JSON.parse(raw.toString('utf8')) as PinRecord;
    const obj = (x: unknown) => typeof x === 'object' && x !== null && !Array.isArray(x);
    if (r.version !== 2 || !obj(r.servers)) throw new Error('shape');
    for (const sp of Object.values(r.servers))
      if (!obj(sp) || !Array.isArray(sp.caps) || !obj(sp.tools) || !obj(sp.seen))
        throw new Error('shape');
    return r;
  } catch {
    throw new IntegrityError('VAULT_CORRUPT', 'the MCP pins kept in the vault are damaged', {
      hint: 'keyward mcp pins reset --all forgets them all (asks the passphrase)',
    });
  } finally {
    secureFree(raw);
  }
}

export function writePinRecord(v: Vault, r: PinRecord): void {
  v.setInternal(PINS_RECORD, secureTake(Buffer.from(JSON.stringify(r), 'utf8')));
}

export function serverRecord(r: PinRecord, server: string): ServerRecord {
  let s = Object.hasOwn(r.servers, server) ? r.servers[server] : undefined;
  if (!s) r.servers[server] = s = { caps: [], tools: {}, seen: {} };
  return s;
}

const own = <T>(o: Record<string, T>, k: string): T | undefined =>
  Object.hasOwn(o, k) ? o[k] : undefined;

/** Checks what a server lists against the pins; updates r in place (see `changed`). */
export function reviewPins(
  r: PinRecord,
  req: ReviewRequest,
  pinning: McpPolicy['version_pinning'],
  now = new Date().toISOString(),
): ReviewResult {
  const out: ReviewResult = { tools: {}, changed: false, events: [] };
  const trusted: Verdict = { state: 'trusted', blocked: false, alert: false };
  if (!pinning.enabled) {
    for (const t of req.tools ?? []) out.tools[t.name] = trusted;
    if (req.instructions !== undefined) out.instructions = trusted;
    return out;
  }
  const known = Object.hasOwn(r.servers, req.server);
  if (!known && Object.keys(r.servers).length >= MAX_SERVERS)
    throw new KeywardError(
      'POLICY_DENIED',
      `pins are kept for ${MAX_SERVERS} MCP servers already; no more are added`,
      { hint: 'keyward mcp pins reset SERVER for servers no longer used' },
    );
  const sp = serverRecord(r, req.server);
  if (!known) out.changed = true;
  const caps = [...new Set(req.caps.filter((c) => KNOWN_CAPS.has(c)))].sort();
  const capsKnown = sp.caps.some((c) => c.join('\0') === caps.join('\0'));
  const anyToolPinned = Object.keys(sp.tools).length > 0;
  const server = req.server;
  const event = (decision: PinEvent['decision'], reason: string, d: PinEvent['details']) =>
    out.events.push({ decision, reason, details: { server, ...d } });

  /** A definition that is not trusted: remembered for pins trust, and decided. */
  const waiting = (
    name: string,
    isInstructions: boolean,
    entry: PinEntry,
    state: PinState,
    what: string,
    mode: 'block' | 'alert' | 'allow',
  ): Verdict => {
    const before = isInstructions ? sp.seenInstructions : own(sp.seen, name);
    const full = !before && !isInstructions && Object.keys(sp.seen).length >= MAX_WAITING;
    if (before?.sha256 !== entry.sha256 && !full) {
      if (isInstructions) sp.seenInstructions = entry;
      else sp.seen[name] = entry;
      out.changed = true;
      event(
        mode === 'block' ? 'deny' : 'info',
        `${isInstructions ? 'the server instructions' : `tool ${name}`}: ${what}`,
        {
          tool: isInstructions ? '(instructions)' : name,
          event: 'changed',
          hash: entry.sha256,
          state,
          on_change: mode,
        },
      );
    }
    return { state, blocked: mode === 'block', alert: mode === 'alert', what };
  };
  const pin = (name: string, isInstructions: boolean, entry: PinEntry, why: string): Verdict => {
    if (isInstructions) {
      sp.instructions = entry;
      delete sp.seenInstructions;
    } else {
      sp.tools[name] = entry;
      delete sp.seen[name];
    }
    out.changed = true;
    event('info', `pinned ${isInstructions ? 'the server instructions' : name} ${why}`, {
      tool: isInstructions ? '(instructions)' : name,
      event: 'pinned',
      hash: entry.sha256,
    });
    return { state: 'pinned', blocked: false, alert: false };
  };
  const matched = (name: string, isInstructions: boolean): Verdict => {
    // Back to the trusted definition: a change seen meanwhile is no longer waiting.
    if (isInstructions ? sp.seenInstructions : own(sp.seen, name)) {
      if (isInstructions) delete sp.seenInstructions;
      else delete sp.seen[name];
      out.changed = true;
    }
    return trusted;
  };

  if (req.instructions !== undefined) {
    if (!HEX64.test(req.instructions)) throw new Error('instructions: a SHA-256 in hex');
    const entry: PinEntry = { sha256: req.instructions, at: now };
    const pinned = sp.instructions;
    if (pinned?.sha256 === entry.sha256) out.instructions = matched('', true);
    else if (pinned)
      out.instructions = waiting(
        '',
        true,
        entry,
        'changed',
        'they changed since they were trusted',
        pinning.on_change,
      );
    else if (req.legacyInstructions !== undefined && req.legacyInstructions !== entry.sha256)
      out.instructions = waiting(
        '',
        true,
        entry,
        'changed',
        'they differ from the ones an older keyward pinned',
        pinning.on_change,
      );
    else if (!anyToolPinned && pinning.auto_trust_first)
      out.instructions = pin('', true, entry, 'on first sight');
    else if (!pinning.auto_trust_first)
      out.instructions = waiting('', true, entry, 'untrusted', 'they are not trusted yet', 'block');
    else
      out.instructions =
        pinning.on_new === 'trust'
          ? pin('', true, entry, 'as new (on_new: trust)')
          : waiting(
              '',
              true,
              entry,
              'new',
              'they appeared after the server was first trusted',
              pinning.on_new,
            );
  }

  if (req.tools) {
    const current = new Set(req.tools.map((t) => t.name));
    const firstSight = !anyToolPinned || !capsKnown;
    const counts = new Map<string, number>();
    for (const t of req.tools) counts.set(t.name, (counts.get(t.name) ?? 0) + 1);
    // Waiting definitions of tools no longer listed go: what waits is what a server shows now.
    for (const n of Object.keys(sp.seen))
      if (!current.has(n)) {
        delete sp.seen[n];
        out.changed = true;
      }
    for (const t of req.tools) {
      if ((counts.get(t.name) ?? 0) > 1) {
        // Two definitions under one name: which one would the client use? Neither.
        out.tools[t.name] = {
          state: 'changed',
          blocked: true,
          alert: false,
          what: 'the server lists it more than once',
        };
        continue;
      }
      if (!HEX64.test(t.sha256) || !HEX64.test(t.body)) throw new Error('tools: SHA-256 in hex');
      const entry: PinEntry = { sha256: t.sha256, body: t.body, at: now };
      const pinned = own(sp.tools, t.name);
      let v: Verdict;
      if (pinned?.sha256 === t.sha256) v = matched(t.name, false);
      else if (pinned)
        v = waiting(
          t.name,
          false,
          entry,
          'changed',
          'its definition changed since it was trusted',
          pinning.on_change,
        );
      else {
        const renamedFrom = Object.entries(sp.tools).find(
          ([n, x]) => x.body === t.body && !current.has(n),
        )?.[0];
        // A pin of an older keyward restricts until the tool has a pin of its own (a person
        // trusts the change, or a definition matching it is pinned).
        const legacy = own(req.legacy ?? {}, t.name);
        if (renamedFrom)
          v = waiting(
            t.name,
            false,
            entry,
            'renamed',
            `renamed from ${renamedFrom} (same definition otherwise)`,
            pinning.on_change,
          );
        else if (legacy !== undefined && legacy !== t.sha256)
          v = waiting(
            t.name,
            false,
            entry,
            'changed',
            'its definition differs from the one an older keyward pinned',
            pinning.on_change,
          );
        else if (!pinning.auto_trust_first)
          v = waiting(t.name, false, entry, 'untrusted', 'it is not trusted yet', 'block');
        else if (firstSight)
          v = pin(
            t.name,
            false,
            entry,
            anyToolPinned
              ? `on first sight for a client with ${caps.join(', ') || 'no capabilities'}`
              : 'on first sight',
          );
        else if (pinning.on_new === 'trust')
          v = pin(t.name, false, entry, 'as new (on_new: trust)');
        else
          v = waiting(
            t.name,
            false,
            entry,
            'new',
            'it appeared after the server was first trusted',
            pinning.on_new,
          );
      }
      out.tools[t.name] = v;
    }
    if (!capsKnown) {
      sp.caps.push(caps);
      out.changed = true;
    }
  }
  return out;
}

/** The name `pins` commands and the console use for a server's instructions. */
export const INSTRUCTIONS = '(instructions)';

export const pinnedEntry = (sp: ServerRecord, tool: string): PinEntry | undefined =>
  tool === INSTRUCTIONS
    ? sp.instructions
    : Object.hasOwn(sp.tools, tool)
      ? sp.tools[tool]
      : undefined;

export const waitingEntry = (sp: ServerRecord, tool: string): PinEntry | undefined =>
  tool === INSTRUCTIONS
    ? sp.seenInstructions
    : Object.hasOwn(sp.seen, tool)
      ? sp.seen[tool]
      : undefined;

export const waitingNames = (sp: ServerRecord): string[] => [
  ...(sp.seenInstructions ? [INSTRUCTIONS] : []),
  ...Object.keys(sp.seen).sort(),
];

/**
 * Makes what waits for server (one tool, or every one) the trusted pins, in the record. When
 * `expected` is given (what the person was shown: name to hash), a definition that differs from
 * it is refused (PIN_CHANGED) and nothing is trusted.
 */
export function trustWaiting(
  record: PinRecord,
  server: string,
  tool: string | undefined,
  expected: ReadonlyMap<string, string> | undefined,
): Array<[string, PinEntry]> {
  const sp = Object.hasOwn(record.servers, server) ? record.servers[server] : undefined;
  const names = tool !== undefined ? [tool] : sp ? waitingNames(sp) : [];
  if (!sp || names.length === 0 || names.some((n) => !waitingEntry(sp, n)))
    throw new KeywardError(
      'REQUEST_NOT_FOUND',
      `no definition of ${server}${tool !== undefined ? ` ${tool}` : ''} is waiting`,
    );
  const done: Array<[string, PinEntry]> = [];
  for (const n of names) {
    const seen = waitingEntry(sp, n);
    if (!seen) continue;
    const want = expected?.get(n);
    if (expected && seen.sha256 !== want)
      throw new KeywardError(
        'PIN_CHANGED',
        `the definition of ${server} ${n} waiting now (${seen.sha256}) is not the one you saw (${want ?? 'none'}); nothing trusted`,
        { hint: `look again: keyward mcp pins diff ${server} ${n}` },
      );
    if (n === INSTRUCTIONS) {
      sp.instructions = seen;
      delete sp.seenInstructions;
    } else {
      sp.tools[n] = seen;
      delete sp.seen[n];
    }
    done.push([n, seen]);
  }
  return done;
}
