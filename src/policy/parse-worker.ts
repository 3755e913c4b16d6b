/**
 * The worker parse-thread.ts starts to parse policy texts off the agent's heap. It answers on the
 * port it was given, then wakes the waiting thread, whatever happened (an error is an answer).
 */
import { workerData, type MessagePort } from 'node:worker_threads';

const { texts, port, flag } = workerData as {
  texts: string[];
  port: MessagePort;
  flag: SharedArrayBuffer;
};
try {
  const { parsePolicyHere } = await import('./schema.js');
  port.postMessage({ results: texts.map(parsePolicyHere) });
} catch (e) {
  port.postMessage({ error: e instanceof Error ? e.message : 'the policy parser failed' });
} finally {
  const f = new Int32Array(flag);
  Atomics.store(f, 0, 1);
  Atomics.notify(f, 0);
}
