/**
 * What the unlock window (unlock.ts) asks of the agent that holds it, and the refusals a request
 * meets when the window closed while it waited or its uses are spent: the release paths give
 * them too, so a locked agent says the same thing whichever path found it.
 */
import type { AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import type { Loaded } from '../policy/index.js';
import type { Replaced } from '../vault/index.js';

export interface WindowHost {
  home: string;
  record(r: AuditRecord): Promise<unknown>;
  /** Locks the whole agent (timers and limits call it). */
  lock(reason: string): Promise<void>;
  /** A failed unlock counts toward the circuit breaker. */
  noteDenial(): void;
  /** vault.kw or the applied policy changed under an open window: derived caches go. */
  changed(what: 'the vault changed' | 'the policy changed'): void;
  /** The policy was (re)loaded: what depends on it (audit shipping) follows. */
  policyLoaded?(loaded: Loaded): void;
  /** Another policy than the one in force was loaded (its text differs): remembered grants end. */
  policyReplaced?(): void;
  /** Names of the secrets released since the agent started (the leak scans look for them). */
  released?(): Iterable<string>;
  /**
   * Their values as they were, when a re-read of the vault found their records replaced or
   * removed (the host takes them over and frees them).
   */
  replaced?(values: Replaced[]): void;
}

export const locked = (): KeywardError =>
  new KeywardError('AGENT_LOCKED', 'the agent was locked while the request waited', {
    hint: 'keyward unlock',
  });

/** A release refused because the unlock's uses are spent (the window locks). */
export function usesSpent(): KeywardError {
  return new KeywardError('AGENT_LOCKED', "the unlock's maximum uses are spent: the agent locks", {
    hint: 'keyward unlock',
  });
}
