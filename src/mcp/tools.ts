/**
 * The policy's mcp section as the gateway applies it to tools (docs/MCP.md): which tools a
 * server may show, and the rate limits on calls.
 */
import { TokenBucket, type McpPolicy } from '../policy/index.js';

/**
 * Tool and server names are not paths: `*` matches any characters (slashes and dots included),
 * `?` one. Everything else is literal.
 */
export function glob(pattern: string): (s: string) => boolean {
  const re = new RegExp(
    `^${pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
    's',
  );
  return (s) => re.test(s);
}

const matches = (refs: McpPolicy['allowed_tools'], server: string, tool: string, hash: string) =>
  refs.some(
    (r) =>
      glob(r.server)(server) &&
      glob(r.tool)(tool) &&
      (r.content_hash === undefined || r.content_hash === hash),
  );

/** hash: the tool definition's SHA-256 (what content_hash names). */
export function allowedByPolicy(p: McpPolicy, server: string, tool: string, hash: string): boolean {
  return p.tool_policy === 'allowlist'
    ? matches(p.allowed_tools, server, tool, hash)
    : p.tool_policy === 'denylist'
      ? !matches(p.denied_tools, server, tool, hash)
      : true;
}

/** Token buckets per policy entry, for one gateway. */
export class RateLimits {
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(private readonly server: string) {}

  /**
   * Takes a token for a call of tool from every bucket that counts it: the reason when one is
   * spent (then none is taken), else a way to give them back (a call decided under a stale
   * policy, decided again: one call, one token).
   */
  take(p: McpPolicy, tool: string): { why: string } | { giveBack: () => void } {
    const now = Date.now();
    const taken: TokenBucket[] = [];
    const giveBack = () => {
      for (const b of taken.splice(0)) b.refund();
    };
    // A policy that changes the limits carries what is left over (never a full bucket).
    const bucket = (key: string, per: number, burst: number) => {
      let b = this.buckets.get(key);
      if (!b?.limits(per, burst))
        this.buckets.set(
          key,
          (b = b ? b.under(per, burst, now) : new TokenBucket(per, burst, now)),
        );
      return b;
    };
    const spend = (b: TokenBucket) => b.take(now) && taken.push(b) > 0;
    const g = p.rate_limits.global;
    if (g && !spend(bucket('*', g.per_minute, g.burst)))
      return { why: `rate limit: at most ${g.per_minute} tool calls a minute (burst ${g.burst})` };
    for (const r of p.rate_limits.per_tool) {
      if (glob(r.server)(this.server) && glob(r.tool)(tool)) {
        if (!spend(bucket(`${r.server}\u0000${r.tool}`, r.per_minute, r.burst))) {
          giveBack();
          return {
            why: `rate limit: at most ${r.per_minute} calls a minute of ${tool} (burst ${r.burst})`,
          };
        }
      }
    }
    return { giveBack };
  }
}
