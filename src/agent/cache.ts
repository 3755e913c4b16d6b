/**
 * Released credentials the policy lets the agent keep decrypted (a rule's `cache:`), in secure
 * memory, each evicted after its idle time whether or not a consumer still runs, and all at lock,
 * at a policy change and when the vault changes (docs/RUN.md, "Caching and eviction"). Without
 * `cache:` nothing is kept: a value is dropped as soon as it is delivered.
 */
import { secureFree, secureSlice, type SecureBuffer } from '../lib/secure.js';

interface Entry {
  name: string;
  value: SecureBuffer;
  idleMs: number;
  timer: NodeJS.Timeout | undefined;
}

export class CredentialCache {
  private readonly entries = new Map<string, Entry>();

  /** Called after an entry is wiped: name and why (idle, lock, vault or policy changed). */
  constructor(private readonly onEvict: (name: string, reason: string) => void) {}

  /**
   * Entries are per rule and name: a value one rule caches serves only that rule's releases, on
   * that rule's idle time.
   */
  private static key(rule: string, name: string): string {
    return `${rule}\u0000${name}`;
  }

  /** A copy of the cached value (the caller frees it), sliding its idle time; or undefined. */
  take(rule: string, name: string): SecureBuffer | undefined {
    const key = CredentialCache.key(rule, name);
    const e = this.entries.get(key);
    if (!e) return undefined;
    this.arm(key, e);
    return secureSlice(e.value, 0, e.value.length);
  }

  /** Keeps a copy of value (the caller keeps its own) for idleMs after the last use. */
  put(rule: string, name: string, value: SecureBuffer, idleMs: number): void {
    const key = CredentialCache.key(rule, name);
    this.evict(key, 'replaced');
    const e: Entry = { name, value: secureSlice(value, 0, value.length), idleMs, timer: undefined };
    this.entries.set(key, e);
    this.arm(key, e);
  }

  private arm(key: string, e: Entry): void {
    clearTimeout(e.timer);
    e.timer = setTimeout(() => this.evict(key, `idle for ${e.idleMs} ms`), e.idleMs);
    e.timer.unref();
  }

  private evict(key: string, reason: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    clearTimeout(e.timer);
    secureFree(e.value);
    this.entries.delete(key);
    if (reason !== 'replaced') this.onEvict(e.name, reason);
  }

  clear(reason: string): void {
    for (const key of [...this.entries.keys()]) this.evict(key, reason);
  }
}
