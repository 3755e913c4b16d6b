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
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { MessageChannel, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { parsePolicyHere, type ParseResult } from './schema.js';

const WORKER = new URL('./parse-worker.js', import.meta.url);
/** The worker's file as it was when the agent started (undefined: parse in this thread). */
let workerStamp: string | undefined;
/**
 * Long enough for a worker to start and load zod on a loaded machine; then parsed here. A worker
 * that can't load says so at once (the wrapper below), so only a hung one costs this.
 */
const WORKER_WAIT_MS = 20_000;
const CACHED = 16;
const cache = new Map<string, ParseResult>();

/**
 * Runs the worker's module and wakes the waiting thread whatever happens: a worker whose file
 * is missing or fails to load answers with an error at once, not after WORKER_WAIT_MS.
 */
const WRAPPER = `
const { workerData } = require('node:worker_threads');
import(workerData.url).catch((e) => {
  workerData.port.postMessage({ error: String(e && e.message) });
  const f = new Int32Array(workerData.flag);
  Atomics.store(f, 0, 1);
  Atomics.notify(f, 0);
});
`;

function stampOf(file: string): string | undefined {
  const st = fs.statSync(file, { bigint: true, throwIfNoEntry: false });
  return st === undefined ? undefined : `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
}

/**
 * Makes this process parse policies in a worker thread (the agent, at its start). The worker's
 * file is remembered as it is now: after an upgrade (a new build in place), a worker would load
 * the new build's schema, which could accept a field the running agent's evaluate() doesn't know
 * and would ignore. Then this process parses in its own thread, with the schema it started with.
 */
export function parsePoliciesInWorker(on: boolean): void {
  workerStamp = on ? stampOf(fileURLToPath(WORKER)) : undefined;
}

/** Parses and validates policy text. Never throws on bad input. */
export function parsePolicy(text: string): ParseResult {
  return parsePolicies([text])[0] as ParseResult;
}

/** Parses several policy texts (the history's versions) with one worker. */
export function parsePolicies(texts: readonly string[]): ParseResult[] {
  if (workerStamp === undefined) return texts.map(parsePolicyHere);
  const keys = texts.map((t) => createHash('sha256').update(t).digest('hex'));
  const found = new Map<string, ParseResult>();
  const todo: string[] = [];
  const todoKeys: string[] = [];
  keys.forEach((k, i) => {
    const hit = cache.get(k);
    if (hit) found.set(k, hit);
    else if (!todoKeys.includes(k)) {
      todoKeys.push(k);
      todo.push(texts[i] as string);
    }
  });
  if (todo.length > 0) {
    const sameBuild = stampOf(fileURLToPath(WORKER)) === workerStamp;
    const results = (sameBuild ? parseInWorker(todo) : undefined) ?? todo.map(parsePolicyHere);
    todoKeys.forEach((k, i) => {
      const r = results[i] as ParseResult;
      found.set(k, r);
      cache.set(k, r);
      if (cache.size > CACHED) cache.delete(cache.keys().next().value as string);
    });
  }
  // A copy each time: a caller may change what it gets, and the cache keeps the original.
  return keys.map((k) => structuredClone(found.get(k) as ParseResult));
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
    worker = new Worker(WRAPPER, {
      eval: true,
      workerData: { url: WORKER.href, texts, port: port2, flag },
      transferList: [port2],
      // Not this process's Node options (a module type, a profiler): the worker needs none.
      execArgv: [],
      stdout: true,
      stderr: true,
    });
    // A worker that fails to start reports it as an event: answered by the fallback.
    worker.on('error', () => undefined);
  } catch {
    port1.close();
    return undefined;
  }
  try {
    Atomics.wait(new Int32Array(flag), 0, 0, WORKER_WAIT_MS);
    const answer = receiveMessageOnPort(port1)?.message as
      { results: ParseResult[] } | { error: string } | undefined;
    return answer !== undefined && 'results' in answer && answer.results.length === texts.length
      ? answer.results
      : undefined;
  } finally {
    port1.close();
    void worker.terminate();
  }
}
