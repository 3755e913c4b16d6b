/**
 * A confirm request asked where the agent can ask by itself (gate-approval.ts decides when): the
 * askpass program, else the agent's own terminal.
 */
import { askpass, ENDED, type Broker } from '../approval/index.js';
import type { AuditRecord } from '../audit/index.js';
import type { GateHost } from './gate-types.js';

/**
 * Asks through the askpass program, else the terminal, and settles the request with the answer.
 * An askpass program that fails (can't be run, killed, silent) is recorded with its reason; the
 * request then waits for the console, or is denied when there is none.
 */
export function askLocally(
  host: GateHost,
  broker: Broker,
  id: string,
  prompt: string,
  timeoutMs: number,
  base: { target: string; actor: NonNullable<AuditRecord['actor']> },
  settled: Promise<unknown>,
): void {
  // The question goes when its request ends, however it ends.
  const ended = new AbortController();
  void settled.finally(() => ended.abort());
  if (host.askpass) {
    void askpass(host.askpass, prompt, timeoutMs, host.env, ended.signal).then(async (a) => {
      if (a.failure === ENDED) return;
      if (a.failure === undefined) {
        broker.settle(id, a.ok ? 'granted' : 'denied', { via: 'askpass' });
        return;
      }
      await host
        .record({
          ...base,
          type: 'approval.askpass_failed',
          decision: 'error',
          reason: `the askpass program ${a.failure}`,
          details: { program: host.askpass ?? null, request: id },
        })
        .catch(() => undefined);
      if (!host.console) broker.settle(id, 'denied', { askpass: a.failure });
    });
  } else if (host.terminal) {
    void host.terminal
      .ask(prompt, timeoutMs, ended.signal)
      .then((ok) => broker.settle(id, ok ? 'granted' : 'denied', { via: 'terminal' }));
  }
}
