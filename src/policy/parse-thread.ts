/**
 * Where policy texts are parsed. A command parses in its own thread and ends soon after. The
 * agent lives for hours: zod and yaml, loaded to check a policy at unlock or after a change, would
 * stay resident (~15 MiB, most of the agent's growth after its unlock; docs/PERFORMANCE.md). So
 * the agent parses in a worker thread that ends once it has answered; its thread waits for the
 * answer, as it would have for the parse itself. A worker is part of the agent's process (not
 * another one a same-user debugger could attach to and make it answer a policy of its choosing).
 * Results are kept by the text's SHA-256: the same text is parsed once.
 */
import { createHash } from 'node:crypto';
import { MessageChannel, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { parsePolicyHere, type ParseResult } from './schema.js';

let inWorker = false;
const WORKER = new URL('./parse-worker.js', import.meta.url);
/** Long enough for a worker to start and load zod on a loaded machine; then parsed here. */
const WORKER_WAIT_MS = 20_000;
const CACHED = 64;
const cache = new Map<string, ParseResult>();

/** Makes this process parse policies in a worker thread (the agent, at its start). */
export function parsePoliciesInWorker(on: boolean): void {
  inWorker = on;
}

/** Parses and validates policy text. Never throws on bad input. */
export function parsePolicy(text: string): ParseResult {
  return parsePolicies([text])[0] as ParseResult;
}

/** Parses several policy texts (the history's versions) with one worker. */
export function parsePolicies(texts: readonly string[]): ParseResult[] {
  if (!inWorker) return texts.map(parsePolicyHere);
  const keys = texts.map((t) => createHash('sha256').update(t).digest('hex'));
  const missing = [...new Set(keys.filter((k) => !cache.has(k)))];
  if (missing.length > 0) {
    const todo = missing.map((k) => texts[keys.indexOf(k)] as string);
    const results = parseInWorker(todo) ?? todo.map(parsePolicyHere);
    missing.forEach((k, i) => {
      cache.set(k, results[i] as ParseResult);
      if (cache.size > CACHED) cache.delete(cache.keys().next().value as string);
    });
  }
  // A copy each time: a caller may change what it gets.
  return keys.map((k) => structuredClone(cache.get(k) as ParseResult));
}

/**
 * The results from a worker, or undefined when it could not give them (it failed to start or to
 * load, or took too long): the caller then parses here, with the same code.
 */
function parseInWorker(texts: string[]): ParseResult[] | undefined {
  const flag = new SharedArrayBuffer(4);
  const { port1, port2 } = new MessageChannel();
  let worker: Worker;
  try {
    worker = new Worker(WORKER, {
      workerData: { texts, port: port2, flag },
      transferList: [port2],
      // Not this process's Node options (a module type, a profiler): the worker needs none.
      execArgv: [],
      stdout: true,
      stderr: true,
    });
    // A worker that fails to start or load reports it as an event: answered by the fallback.
    worker.on('error', () => undefined);
  } catch {
    port1.close();
    return undefined;
  }
  try {
    Atomics.wait(new Int32Array(flag), 0, 0, WORKER_WAIT_MS);
    const answer = receiveMessageOnPort(port1)?.message as
      { results: ParseResult[] } | { error: string } | undefined;
    return answer !== undefined && 'results' in answer ? answer.results : undefined;
  } finally {
    port1.close();
    void worker.terminate();
  }
}
