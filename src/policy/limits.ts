/**
 * Per-rule limits the agent keeps while unlocked (docs/POLICY.md): a token bucket for rate and a
 * counter for uses per unlock. Time is passed in, so both are deterministic under test.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly perMinute: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.last = now;
  }

  /** Takes n tokens (one by default) if there are that many. */
  take(now: number, n = 1): boolean {
    const elapsed = Math.max(0, now - this.last);
    this.last = now;
    this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.perMinute) / 60_000);
    if (this.tokens < n) return false;
    this.tokens -= n;
    return true;
  }

  /**
   * The bucket under other limits: the tokens left now, never more than the new burst. A policy
   * that changes a limit never fills its bucket again (a loosened one refills at its new rate).
   */
  under(perMinute: number, burst: number, now: number): TokenBucket {
    this.take(now, 0);
    const b = new TokenBucket(perMinute, burst, now);
    b.tokens = Math.min(burst, this.tokens);
    return b;
  }

  /** Gives back n tokens taken for something that did not happen (never past the burst). */
  refund(n = 1): void {
    this.tokens = Math.min(this.burst, this.tokens + n);
  }

  /** Whether its limits are these. */
  limits(perMinute: number, burst: number): boolean {
    return this.perMinute === perMinute && this.burst === burst;
  }

  /** How long until one token is there (0: now), as of the last take. */
  waitMs(): number {
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) * 60_000) / this.perMinute);
  }
}

/** Counts uses per key (a rule name, or the whole window) until reset at lock. */
export class UseCounter {
  private counts = new Map<string, number>();

  /** Counts one use if that stays within max; false (and nothing counted) when it would not. */
  use(key: string, max: number | undefined): boolean {
    const n = this.counts.get(key) ?? 0;
    if (max !== undefined && n >= max) return false;
    this.counts.set(key, n + 1);
    return true;
  }

  reset(): void {
    this.counts.clear();
  }
}
