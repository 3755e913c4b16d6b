/**
 * The larger sections of policy.yaml, each built with the zod module on first use (schema.ts
 * assembles them): the MCP gateway's, the operators', and the credential proxy's with its
 * per-domain rate limits (docs/POLICY.md).
 */
import { isIP } from 'node:net';
import type { z as Zod } from 'zod';

const LOOPBACK = new Set(['127.0.0.1', '[::1]', 'localhost']);

/** The MCP gateway (docs/MCP.md, "The gateway"). */
export function mcpSection(z: typeof Zod) {
  // The MCP gateway (docs/MCP.md, "The gateway").
  const ToolRef = z
    .object({
      server: z.string().min(1).max(64),
      tool: z.string().min(1).max(256),
      content_hash: z
        .string()
        .regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits')
        .optional(),
    })
    .strict();
  const Bucket = z
    .object({ per_minute: z.number().int().positive(), burst: z.number().int().positive() })
    .strict();
  return z
    .object({
      tool_policy: z.enum(['allowlist', 'denylist', 'none']).default('none'),
      allowed_tools: z.array(ToolRef).default([]),
      denied_tools: z.array(ToolRef).default([]),
      version_pinning: z
        .object({
          enabled: z.boolean().default(true),
          on_change: z.enum(['block', 'alert', 'allow']).default('block'),
          auto_trust_first: z.boolean().default(true),
          // A tool that appears on a server whose tools were already trusted (for the same
          // client capabilities): an addition, not a change to an existing pin.
          on_new: z.enum(['trust', 'block', 'alert']).default('block'),
        })
        .strict()
        .default({ enabled: true, on_change: 'block', auto_trust_first: true, on_new: 'block' }),
      rate_limits: z
        .object({
          global: Bucket.optional(),
          per_tool: z
            .array(
              z
                .object({
                  server: z.string().min(1),
                  tool: z.string().min(1),
                  per_minute: z.number().int().positive(),
                  burst: z.number().int().positive(),
                })
                .strict(),
            )
            .default([]),
        })
        .strict()
        .default({ per_tool: [] }),
      leak_blocking: z.boolean().default(true),
    })
    .strict();
}

/** Operators (docs/OPERATORS.md). */
export function operatorsSection(
  z: typeof Zod,
  h: {
    maxDuration: (limitMs: number, label: string) => Zod.ZodType<string>;
    GroupName: Zod.ZodType<string>;
  },
) {
  const { maxDuration, GroupName } = h;
  // Operators (docs/OPERATORS.md): here, so that trusting an identity provider or changing who
  // may approve what needs the passphrase.
  const Https = z
    .string()
    .max(512)
    .refine((u) => {
      try {
        const url = new URL(u);
        return (
          url.protocol === 'https:' || (url.protocol === 'http:' && LOOPBACK.has(url.hostname))
        );
      } catch {
        return false;
      }
    }, 'an https URL (http only on 127.0.0.1, [::1] or localhost)');
  return z
    .object({
      oidc: z
        .object({
          issuer: Https,
          client_id: z.string().min(1).max(256),
          audience: z
            .union([z.string().min(1).max(256), z.array(z.string().min(1).max(256)).min(1)])
            .optional(),
          // The clients whose access tokens (matched through `audience`) may log in; default
          // client_id. An audience is often shared by every application of the issuer.
          allowed_clients: z.array(z.string().min(1).max(256)).min(1).max(64).optional(),
          jwks_cache_ttl: maxDuration(24 * 3_600_000, '24h').default('10m'),
          clock_skew: maxDuration(300_000, '5m').default('30s'),
          claim_mappings: z
            .object({
              operator_id: z.string().min(1).max(128).default('sub'),
              groups: z.string().min(1).max(128).default('groups'),
            })
            .strict()
            .default({ operator_id: 'sub', groups: 'groups' }),
          allowed_groups: z.array(GroupName).min(1).max(256),
          // What the console's sign-in asks the provider for (Okta and others put groups in
          // the ID token only when asked for `groups`).
          scopes: z
            .array(z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]{1,64}$/, 'a scope name'))
            .max(16)
            .refine((s) => s.includes('openid'), 'must include openid')
            .default(['openid']),
        })
        .strict()
        .optional(),
      // The operator page and API beyond this machine: TLS only, with the user's certificate.
      listen: z
        .object({
          address: z.string().refine((a) => isIP(a) !== 0, 'an IP address (0.0.0.0 for all)'),
          port: z.number().int().min(1).max(65535),
          cert: z.string().startsWith('/', 'an absolute path').max(4096),
          key: z.string().startsWith('/', 'an absolute path').max(4096),
          origin: z
            .string()
            .max(512)
            .refine((u) => {
              try {
                const url = new URL(u);
                return url.protocol === 'https:' && url.origin === u && url.hostname !== '';
              } catch {
                return false;
              }
            }, 'the https origin operators use, e.g. https://devbox.example.com:8443 (no path)'),
        })
        .strict()
        .optional(),
      // A group approves only the rules listed for it here (names or patterns), when this is set.
      group_policy_map: z.record(GroupName, z.array(z.string().min(1).max(256)).min(1)).optional(),
      // The operator ids that are this machine's own user (oidc: the mapped claim; keys: key:NAME):
      // they never approve their own user's requests unless a rule says allow_self.
      self: z.array(z.string().min(1).max(256)).max(64).default([]),
    })
    .strict();
}

/** A host the proxy may bind: lowercase DNS labels or an IPv4 address (as the run's CA takes). */
export const PROXY_HOST_RE =
  /^(?=.{1,253}$)(([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)$/;
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/;
const DOTTED_QUAD = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/**
 * A host as the proxy writes it: a name whose last label is a number (127.1, 2130706433,
 * 0x7f000001) is an IPv4 address to a client, so it must be the dotted quad it means; a key in
 * another spelling would never match (a binding) or never apply (a rate limit).
 */
export function proxyHost(h: string): boolean {
  if (!PROXY_HOST_RE.test(h)) return false;
  const last = h.slice(h.lastIndexOf('.') + 1);
  return !/^(0x[0-9a-f]*|\d+)$/.test(last) || DOTTED_QUAD.test(h);
}
/** Headers the proxy never sets for a binding: framing, routing and the proxy's own. */
const FRAMING_HEADERS = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'upgrade',
  'te',
  'trailer',
  'proxy-authorization',
  'proxy-connection',
  'keep-alive',
]);

/**
 * The credential proxy (docs/PROXY.md): which host gets which secret, where in a request, and
 * what happens to hosts not listed; and the per-domain rate limits the proxy enforces.
 */
export function proxySections(z: typeof Zod) {
  const Binding = z
    .object({
      // A vault secret's name, or project:PROJECT/NAME (a sealed project file's value).
      secret: z.string().min(1).max(256),
      // The port the host is bound on (another port of it is another host).
      port: z.number().int().min(1).max(65535).default(443),
      // Where a placeholder of this secret is replaced by the value in a request to this host:
      // the headers named below, and the request line only when `url` is listed.
      in: z
        .array(z.enum(['headers', 'url']))
        .min(1)
        .default(['headers']),
      // The headers a placeholder is replaced in (a placeholder in any other, such as Host or
      // Origin, which servers echo back, is refused).
      headers: z
        .array(
          z
            .string()
            .regex(HEADER_NAME, 'a header name')
            .refine((h) => !FRAMING_HEADERS.has(h.toLowerCase()), 'a header the proxy owns'),
        )
        .min(1)
        .max(16)
        .default(['Authorization']),
      // Set this header on every request to the host, with the value in format's {}.
      header: z
        .string()
        .regex(HEADER_NAME, 'a header name')
        .refine((h) => !FRAMING_HEADERS.has(h.toLowerCase()), 'a header the proxy owns')
        .optional(),
      format: z
        .string()
        .max(256)
        .refine((f) => f.split('{}').length === 2, 'holds {} exactly once')
        .refine(
          (f) =>
            ![...f].some((c) => (c.codePointAt(0) ?? 0) < 0x20 || (c.codePointAt(0) ?? 0) > 0x7e),
          'printable ASCII',
        )
        .optional(),
    })
    .strict()
    .superRefine((b, ctx) => {
      if (b.format !== undefined && b.header === undefined)
        ctx.addIssue({ code: 'custom', path: ['format'], message: 'format goes with header' });
    });
  const Host = z
    .string()
    .refine(
      (h) => proxyHost(h),
      'a lowercase host name or IPv4 address as a dotted quad, without port or scheme',
    );
  const Proxy = z
    .object({
      // A host no binding names: tunnelled as it is (CONNECT), or refused.
      default: z.enum(['tunnel', 'deny']).default('tunnel'),
      // Certificates trusted for upstream servers besides the system's store (a PEM file).
      upstream_ca: z.string().startsWith('/', 'an absolute path').max(4096).optional(),
      // Its SHA-256: a file another process of the user could rewrite is pinned by the policy.
      upstream_ca_sha256: z
        .string()
        .regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits')
        .optional(),
      hosts: z.record(Host, Binding).default({}),
    })
    .strict()
    .superRefine((p, ctx) => {
      if ((p.upstream_ca === undefined) !== (p.upstream_ca_sha256 === undefined))
        ctx.addIssue({
          code: 'custom',
          path: [p.upstream_ca === undefined ? 'upstream_ca' : 'upstream_ca_sha256'],
          message: 'upstream_ca and upstream_ca_sha256 go together (sha256sum FILE)',
        });
    });
  const Domain = z
    .string()
    .refine(
      (d) => d === '*' || proxyHost(d.startsWith('*.') ? d.slice(2) : d),
      'a host name, *.domain, or *',
    );
  const RateLimits = z
    .object({
      domains: z
        .record(
          Domain,
          z
            .object({
              requests_per_minute: z.number().int().positive().max(1_000_000),
              burst: z.number().int().positive().max(1_000_000),
            })
            .strict(),
        )
        .default({}),
    })
    .strict();
  return { Proxy, RateLimits };
}
