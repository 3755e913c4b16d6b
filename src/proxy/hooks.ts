/**
 * What the credential proxy asks of whoever runs it (the agent, src/agent/run-proxy.ts): who the
 * run is, whether a value may go out now, its records, limits, trust and the forms to watch for.
 */
import type { SecureBuffer } from '../lib/secure.js';
import type { Pinned } from './tree.js';

export type ProxyEventType = 'proxy.substitute' | 'proxy.block' | 'proxy.limit';

export interface ProxyHooks {
  /** The run's first process (its tree's root), pinned, while it runs; undefined once it exits. */
  root(): Pinned | undefined;
  /**
   * Whether the secret may go out now: undefined, or why not (the agent locked, the policy now
   * denies it, a person refused). May wait for a person (a high_value rule asks each time).
   */
  mayUse(
    name: string,
    req: { host: string; method: string; path: string },
  ): Promise<string | undefined>;
  /** An audit record; a substitution is forwarded only once its record is durable. */
  record(
    type: ProxyEventType,
    decision: 'allow' | 'deny',
    target: string,
    reason: string | undefined,
    details: Record<string, string | number | boolean | null>,
  ): Promise<unknown>;
  /** undefined: the domain's limit has room (one is taken); else ms until it has. */
  limit(host: string): number | undefined;
  /** Hosts no binding names: tunnelled, or refused. */
  defaultAction: 'tunnel' | 'deny';
  /** Certificates (PEM) an upstream server's chain must end in. */
  trust: string[];
  /** The values and their encoded forms, watched for in what bound hosts send back. */
  forms: readonly SecureBuffer[];
}
