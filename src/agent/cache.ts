/**
 * Released credentials the policy lets the agent keep decrypted (a rule's `cache:`), in secure
 * memory, each evicted after its idle time whether or not a consumer still runs, and all at lock
 * (docs/RUN.md, "Caching and eviction"). Without `cache:` nothing is kept: a value is dropped as
 * soon as it is delivered.
 */
import { secureFree, secureSlice, type SecureBuffer } from '../lib/secure.js';

interface Entry {
  value: SecureBuffer;
  idleMs: number;
  timer: NodeJS.Timeout;
}

export class CredentialCache {
  private readonly entries = new Map<string, Entry>();

  /** Called after an entry is wiped: name and why (idle, lock, vault changed). */
  constructor(private readonly onEvict: (name: string, reason: string) => void) {}

  /** A copy of the cached value (the caller frees it), sliding its idle time; or undefined. */
  take(name: string): SecureBuffer | undefined {
    const e = this.entries.get(name);
    if (!e) return undefined;
    this.arm(name, e);
    return secureSlice(e.value, 0, e.value.length);
  }

  /** Keeps a copy of value (the caller keeps its own) for idleMs after the last use. */
  put(name: string, value: SecureBuffer, idleMs: number): void {
    this.evict(name, 'replaced');
    const e: Entry = {
      value: secureSlice(value, 0, value.length),
      idleMs,
      timer: undefined as never,
    };
    this.entries.set(name, e);
    this.arm(name, e);
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  private arm(name: string, e: Entry): void {
    clearTimeout(e.timer);
    e.timer = setTimeout(() => this.evict(name, `idle for ${e.idleMs} ms`), e.idleMs);
    e.timer.unref();
  }

  evict(name: string, reason: string): void {
    const e = this.entries.get(name);
    if (!e) return;
    clearTimeout(e.timer);
    secureFree(e.value);
    this.entries.delete(name);
    if (reason !== 'replaced') this.onEvict(name, reason);
  }

  clear(reason: string): void {
    for (const name of [...this.entries.keys()]) this.evict(name, reason);
  }
}
