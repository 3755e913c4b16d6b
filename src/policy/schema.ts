/**
 * policy.yaml, validated (docs/POLICY.md). The file is untrusted input: any error becomes a
 * PolicyProblem with a line, a column and the field path, never an exception.
 */
import { createRequire } from 'node:module';
import type { Document } from 'yaml';
import type * as ZodModule from 'zod';
import type { z as Zod } from 'zod';
import { mcpSection, operatorsSection, proxySections } from './sections.js';
import { firstDuplicateKey, lintPolicy } from './lint.js';
import { pathText, positionOf, yaml } from './yaml-doc.js';

// zod and yaml cost about 60 ms to load; most commands never read a policy, so they load on
// first use (both ship CommonJS builds).
const require = createRequire(import.meta.url);

const DURATION_RE = /^([1-9][0-9]{0,8})(ms|s|m|h|d)$/;
const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** Whether a policy's pattern is a glob (picomatch's characters), not one name or path. */
export function isGlob(s: string): boolean {
  return /[*?[\]{}!]/.test(s);
}

export function durationMs(s: string): number {
  const m = DURATION_RE.exec(s);
  if (!m) throw new Error(`not a duration: ${s}`);
  return Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
}

export const APPROVAL_MODES = ['confirm', 'passphrase', 'totp', 'webauthn', 'operator'] as const;
export type ApprovalMode = (typeof APPROVAL_MODES)[number];
/** An operator (docs/OPERATORS.md) is someone else, authenticated elsewhere: more than a factor. */
const SECOND_FACTORS: readonly ApprovalMode[] = ['passphrase', 'totp', 'webauthn', 'operator'];
/** Most operators one request may need (count): two-person control, and a little more. */
export const MAX_OPERATOR_COUNT = 5;

/** The schema, built on first use with the zod module. */
function build(z: typeof Zod) {
  const Duration = z.string().regex(DURATION_RE, 'a duration such as 30s, 10m, 4h');
  // zod runs refinements even after the regex failed: every one must accept malformed text
  // without throwing (a malformed duration is reported once, by the regex).
  const validDuration = (d: string): boolean => DURATION_RE.test(d);
  const maxDuration = (limitMs: number, label: string) =>
    Duration.refine((d) => !validDuration(d) || durationMs(d) <= limitMs, `at most ${label}`);

  // An IdP's group names are its own (Keycloak gives paths, Okta names with spaces): any
  // printable text, bounded.
  const GroupName = z
    .string()
    .min(1)
    .max(128)
    .refine((g) => ![...g].some((c) => (c.codePointAt(0) ?? 0) < 0x20 || c === '\u007f'), {
      message: 'printable text',
    });

  const Remember = z.union([
    z.literal('once'),
    z
      .object({
        scope: z.enum(['process', 'executable']),
        for: maxDuration(24 * 3_600_000, '24h'),
        uses: z.number().int().positive().optional(),
      })
      .strict(),
  ]);

  const Approve = z
    .object({
      mode: z.enum(APPROVAL_MODES),
      remember: Remember.default('once'),
      timeout: maxDuration(600_000, '10m').default('60s'),
      message: z.string().max(500).optional(),
      // webauthn only: whether the authenticator must verify the person (PIN, biometrics) or
      // only see them (a touch). Presence is always required.
      user_verification: z.enum(['required', 'preferred']).optional(),
      // operator only (docs/OPERATORS.md): who may approve, how many distinct operators must,
      // and whether the machine's own user (operators.self) may be one of them.
      groups: z.array(GroupName).min(1).max(32).optional(),
      count: z.number().int().min(1).max(MAX_OPERATOR_COUNT).optional(),
      allow_self: z.boolean().optional(),
    })
    .strict()
    .superRefine((a, ctx) => {
      if (a.user_verification !== undefined && a.mode !== 'webauthn')
        ctx.addIssue({
          code: 'custom',
          path: ['user_verification'],
          message: `user_verification goes with mode webauthn, not ${a.mode}`,
        });
      if (a.mode === 'operator' && a.groups === undefined)
        ctx.addIssue({
          code: 'custom',
          path: ['groups'],
          message: 'mode operator needs groups: the operator groups that may approve',
        });
      for (const k of ['groups', 'count', 'allow_self'] as const)
        if (a[k] !== undefined && a.mode !== 'operator')
          ctx.addIssue({
            code: 'custom',
            path: [k],
            message: `${k} goes with mode operator, not ${a.mode}`,
          });
    });

  const Callers = z
    .object({
      exe: z.string().min(1).optional(),
      exe_sha256: z
        .string()
        .regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits')
        .optional(),
      ancestor: z.string().min(1).optional(),
      uid: z.number().int().nonnegative().optional(),
      cwd: z.string().startsWith('/', 'an absolute path').optional(),
      // LD_PRELOAD, NODE_OPTIONS and the like in the caller's environment (docs/POLICY.md).
      loader_vars: z.enum(['present', 'absent']).optional(),
    })
    .strict();

  const Rule = z
    .object({
      name: z
        .string()
        .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'letters, digits, . _ - (at most 64)'),
      targets: z.array(z.string().min(1).max(256)).min(1),
      // any: a secret or a key. Lists and the audit log only by their own kinds, so a rule written
      // for names of secrets never matches a list's or the log's target (docs/POLICY.md).
      kind: z.enum(['secret', 'key', 'list', 'audit', 'any']).default('any'),
      callers: Callers.default({}),
      decision: z.enum(['allow', 'approve', 'deny']),
      approve: Approve.optional(),
      rate_limit: z
        .object({ per_minute: z.number().int().positive(), burst: z.number().int().positive() })
        .strict()
        .optional(),
      max_uses_per_unlock: z.number().int().positive().optional(),
      high_value: z.boolean().default(false),
      // May an MCP client (keyward mcp serve's get_credential) receive the value inline, into a
      // model's context? Off by default: run_with_credentials never shows the value (docs/MCP.md).
      mcp_inline: z.boolean().default(false),
      // Only through keyward run --proxy: never read, nor given to a child (docs/PROXY.md).
      proxy_only: z.boolean().default(false),
      // Keep released values decrypted in the agent for reuse, until idle this long (docs/RUN.md).
      cache: z
        .union([z.boolean(), z.object({ idle: maxDuration(24 * 3_600_000, '24h') }).strict()])
        .default(false),
    })
    .strict()
    .superRefine((r, ctx) => {
      if (r.decision === 'approve' && !r.approve) {
        ctx.addIssue({
          code: 'custom',
          path: ['approve'],
          message: 'decision approve needs an approve: section (mode at least)',
        });
      }
      if (r.decision !== 'approve' && r.approve) {
        ctx.addIssue({
          code: 'custom',
          path: ['approve'],
          message: `an approve: section only goes with decision approve, not ${r.decision}`,
        });
      }
      if (r.high_value) {
        if (r.decision !== 'approve') {
          ctx.addIssue({
            code: 'custom',
            path: ['high_value'],
            message: 'high_value needs decision approve (a fresh approval every time)',
          });
        } else if (r.approve && !SECOND_FACTORS.includes(r.approve.mode)) {
          ctx.addIssue({
            code: 'custom',
            path: ['approve', 'mode'],
            message: 'high_value needs a second factor: passphrase, totp or webauthn',
          });
        } else if (r.approve && r.approve.remember !== 'once') {
          ctx.addIssue({
            code: 'custom',
            path: ['approve', 'remember'],
            message: 'high_value approvals are never remembered: use remember: once',
          });
        }
      }
    });

  const Mcp = mcpSection(z);
  const Operators = operatorsSection(z, { maxDuration, GroupName });
  const { Proxy, RateLimits } = proxySections(z);

  const PolicySchema = z
    .object({
      version: z.literal(1),
      unlock: z
        .object({
          idle_timeout: maxDuration(24 * 3_600_000, '24h').default('15m'),
          max_lifetime: maxDuration(24 * 3_600_000, '24h').default('4h'),
          max_uses: z.number().int().positive().optional(),
          // Signatures (any key) per unlock; the agent locks when they are spent.
          max_signatures: z.number().int().positive().optional(),
          // The longest a key added with ssh-add stays; ssh-add -t can ask for less, not more.
          key_lifetime: maxDuration(24 * 3_600_000, '24h').optional(),
        })
        .strict()
        .default({ idle_timeout: '15m', max_lifetime: '4h' }),
      rules: z.array(Rule).default([]),
      operators: Operators.optional(),
      // Read by the MCP gateway (a later issue); validated there.
      mcp: Mcp.optional(),
      // A copy of every audit entry off this machine, through the system log (docs/AUDIT.md).
      // Here, so that turning it off or pointing it elsewhere needs the passphrase.
      audit: z
        .object({
          ship: z.enum(['none', 'syslog', 'journald']).default('none'),
          socket: z.string().startsWith('/', 'an absolute path').max(107).optional(),
        })
        .strict()
        .default({ ship: 'none' }),
      // The credential proxy of keyward run --proxy (docs/PROXY.md).
      proxy: Proxy.optional(),
      rate_limits: RateLimits.optional(),
    })
    .strict()
    .superRefine((p, ctx) => {
      const seen = new Map<string, number>();
      p.rules.forEach((r, i) => {
        const first = seen.get(r.name);
        if (first !== undefined) {
          ctx.addIssue({
            code: 'custom',
            path: ['rules', i, 'name'],
            message: `duplicate rule name (also rule ${first + 1})`,
          });
        }
        seen.set(r.name, i);
      });
      // A name in group_policy_map that is no glob must name a rule: a typo would approve nothing.
      for (const [group, entries] of Object.entries(p.operators?.group_policy_map ?? {}))
        entries.forEach((e, i) => {
          if (!isGlob(e) && !seen.has(e))
            ctx.addIssue({
              code: 'custom',
              path: ['operators', 'group_policy_map', group, i],
              message: `no rule is named ${e}`,
            });
        });
      const { idle_timeout: idle, max_lifetime: life } = p.unlock;
      if (validDuration(idle) && validDuration(life) && durationMs(idle) > durationMs(life)) {
        ctx.addIssue({
          code: 'custom',
          path: ['unlock', 'idle_timeout'],
          message: 'longer than max_lifetime',
        });
      }
    });
  return PolicySchema;
}

let built: ReturnType<typeof build> | undefined;
function policySchema(): ReturnType<typeof build> {
  built ??= build((require('zod') as typeof ZodModule).z);
  return built;
}

export type Policy = Zod.infer<ReturnType<typeof build>>;
export type PolicyRule = Policy['rules'][number];
export type McpPolicy = NonNullable<Policy['mcp']>;
export type ProxyPolicy = NonNullable<Policy['proxy']>;
export type RateLimitPolicy = NonNullable<Policy['rate_limits']>;

/** The default idle time of a cached credential (`cache: true`). */
export const CACHE_IDLE_DEFAULT_MS = 60_000;

/** How long a rule keeps a released value cached while unused, or undefined: not cached. */
export function cacheIdleMs(rule: PolicyRule | undefined): number | undefined {
  if (!rule || rule.cache === false) return undefined;
  return rule.cache === true ? CACHE_IDLE_DEFAULT_MS : durationMs(rule.cache.idle);
}

export interface PolicyProblem {
  line: number;
  column: number;
  /** The field, e.g. rules[2].approve.mode; empty for syntax errors. */
  path: string;
  message: string;
}

/**
 * `lint`: what a valid policy holds that does not do what it reads as (a target no name can match,
 * a `**` that crosses no `/`, a character a terminal acts on, a YAML directive). Refused by
 * `policy check` and `policy apply`; a policy already applied is enforced as it was.
 */
export type ParseResult =
  { ok: true; policy: Policy; lint: PolicyProblem[] } | { ok: false; problems: PolicyProblem[] };

export const POLICY_MAX_BYTES = 1024 * 1024;

function atStart(message: string): ParseResult {
  return { ok: false, problems: [{ line: 1, column: 1, path: '', message }] };
}

/**
 * Parses and validates policy text in this thread (loading zod and yaml). Never throws on bad
 * input. Callers use parsePolicy (parse-thread.ts), which in the agent runs this in a worker.
 */
export function parsePolicyHere(text: string): ParseResult {
  if (Buffer.byteLength(text, 'utf8') > POLICY_MAX_BYTES) {
    return atStart(`the policy is larger than ${POLICY_MAX_BYTES} bytes`);
  }
  const { LineCounter, parseDocument } = yaml();
  const lc = new LineCounter();
  let doc: Document;
  try {
    // Duplicate keys are looked for below, in one pass: the library's own check compares every
    // key of a map with every other (30,000 keys: 4 s; a planted history file held
    // `policy history` and the console's policy page for tens of seconds).
    doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: false });
  } catch (e) {
    return atStart(e instanceof Error ? e.message : 'unreadable YAML');
  }
  if (doc.errors.length === 0) {
    const dup = firstDuplicateKey(doc);
    if (dup !== undefined) {
      const p = lc.linePos(dup);
      return {
        ok: false,
        problems: [{ line: p.line, column: p.col, path: '', message: 'Map keys must be unique' }],
      };
    }
  }
  if (doc.errors.length > 0) {
    return {
      ok: false,
      problems: doc.errors.map((e) => {
        const p = lc.linePos(e.pos[0]);
        return {
          line: p.line,
          column: p.col,
          path: '',
          message: e.message.split('\n')[0] ?? 'YAML syntax error',
        };
      }),
    };
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 50 });
  } catch (e) {
    return atStart(e instanceof Error ? e.message : 'unreadable YAML');
  }
  const r = policySchema().safeParse(data);
  if (r.success) return { ok: true, policy: r.data, lint: lintPolicy(text, doc, lc, r.data) };
  return {
    ok: false,
    problems: r.error.issues.map((i) => {
      // An unknown key is reported at the key itself, not at the object holding it.
      const path =
        i.code === 'unrecognized_keys' && i.keys.length === 1
          ? [...i.path, i.keys[0] ?? '']
          : i.path;
      return { ...positionOf(doc, lc, path), path: pathText(path), message: i.message };
    }),
  };
}
