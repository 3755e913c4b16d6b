/**
 * Is this Node process one another process could read or steer? (docs/THREAT-MODEL.md,
 * "A debuggable keyward process".) An inspector on loopback hands the process's memory to any
 * local user, another uid included; --require, --import and --loader run code inside it before
 * keyward's first line. Every keyward process refuses to run with any of them unless the user
 * passed --allow-debugger, and then says so everywhere (status, doctor, the audit log, prompts).
 *
 * Node options are judged by an allowlist: an option not known to be harmless is refused, so a
 * new code-loading or heap-dumping option in a later Node release is refused too.
 *
 * This module is loaded by bin/keyward.js before anything else of keyward's: keep it free of
 * imports beyond Node's own modules.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import type Inspector from 'node:inspector';

/**
 * Options that change limits, warnings or TLS defaults and never load code, open a port, or
 * write memory to disk. Anything else (--inspect*, --require, --import, --loader,
 * --heapsnapshot-signal, --cpu-prof, --openssl-config, --experimental-*...) is refused.
 */
const HARMLESS_OPTIONS = new Set([
  '--max-old-space-size',
  '--max-semi-space-size',
  '--no-warnings',
  '--disable-warning',
  '--trace-warnings',
  '--no-deprecation',
  '--throw-deprecation',
  '--trace-deprecation',
  '--pending-deprecation',
  '--enable-source-maps',
  '--use-openssl-ca',
  '--use-bundled-ca',
  '--dns-result-order',
  '--unhandled-rejections',
  '--trace-uncaught',
  '--zero-fill-buffers',
  '--tls-min-v1.2',
  '--tls-min-v1.3',
  '--tls-max-v1.2',
  '--tls-max-v1.3',
  '--max-http-header-size',
  '--v8-pool-size',
  '--title',
]);

/** NODE_OPTIONS as Node splits it: on spaces, with double quotes and backslash escapes. */
export function splitNodeOptions(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inToken = false;
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i] as string;
    if (quoted) {
      if (ch === '\\' && i + 1 < s.length) cur += s[++i];
      else if (ch === '"') quoted = false;
      else cur += ch;
    } else if (ch === '"') {
      quoted = true;
      inToken = true;
    } else if (ch === ' ' || ch === '\t' || ch === '\n') {
      if (inToken) out.push(cur);
      cur = '';
      inToken = false;
    } else {
      cur += ch;
      inToken = true;
    }
  }
  if (inToken || quoted) out.push(cur);
  return out;
}

/** The options among these that are not known to be harmless, as given. */
function unsafeOptions(args: readonly string[]): string[] {
  const bad: string[] = [];
  for (const a of args) {
    if (!a.startsWith('-')) continue; // the value of the option before it
    const name = a.split('=')[0] as string;
    if (!HARMLESS_OPTIONS.has(name.replace(/_/g, '-'))) bad.push(a);
  }
  return bad;
}

/**
 * Variables that make a library keyward links load code it did not ask for: OpenSSL reads its
 * configuration (which can load providers and engines) in every Node process.
 */
const CODE_LOADING_VARIABLES = ['OPENSSL_CONF', 'OPENSSL_MODULES', 'OPENSSL_ENGINES'];

/**
 * What the agent, which holds every unlocked key, refuses on top: every variable of the dynamic
 * linker (LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH...), Node's module path, glibc's gconv path.
 */
const AGENT_LOADER_VARIABLES = ['NODE_PATH', 'GCONV_PATH'];
const isAgentLoaderVariable = (name: string) =>
  name.startsWith('LD_') || AGENT_LOADER_VARIABLES.includes(name);

export interface RuntimeFacts {
  execArgv: readonly string[];
  env: NodeJS.ProcessEnv;
  inspectorUrl: string | undefined;
}

/** node:inspector, loaded when needed: it loads worker_threads and more, ~2.3 ms. */
let inspectorModule: typeof Inspector | undefined;
const inspector = (): typeof Inspector =>
  (inspectorModule ??= createRequire(import.meta.url)('node:inspector') as typeof Inspector);

/**
 * Whether this process holds a socket. An inspector listens on a TCP socket of this process, so
 * a process that holds none has no inspector open, and node:inspector need not be loaded to ask
 * (a command's stdio is a terminal, a pipe or a file; Node's child processes get socket pairs,
 * and those take the full question). Any doubt (no /proc) counts as a socket.
 */
export function holdsSocket(): boolean {
  let fds: string[];
  try {
    fds = fs.readdirSync('/proc/self/fd');
  } catch {
    return true;
  }
  for (const fd of fds) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      // The directory's own descriptor, closed once it was read.
      continue;
    }
    if (target.startsWith('socket:')) return true;
  }
  return false;
}

export function currentRuntime(): RuntimeFacts {
  return {
    execArgv: process.execArgv,
    env: process.env,
    inspectorUrl: holdsSocket() ? inspector().url() : undefined,
  };
}

/**
 * Why this process could be debugged or have code loaded into it: one sentence per reason, none
 * when it is clean. `agent` adds the loader variables, which the long-lived agent refuses (its
 * memory holds every unlocked key) and `keyward agent start` never passes on.
 */
export function debugExposure(f: RuntimeFacts, o: { agent?: boolean } = {}): string[] {
  const reasons: string[] = [];
  if (f.inspectorUrl !== undefined) reasons.push(`a Node inspector is open (${f.inspectorUrl})`);
  for (const a of unsafeOptions(f.execArgv))
    reasons.push(`node runs with ${a}, which could open a debugger or load code`);
  const nodeOptions = f.env['NODE_OPTIONS'];
  if (nodeOptions !== undefined && nodeOptions.trim() !== '') {
    for (const a of unsafeOptions(splitNodeOptions(nodeOptions)))
      reasons.push(`NODE_OPTIONS holds ${a}, which could open a debugger or load code`);
  }
  const set = (v: string) => f.env[v] !== undefined && f.env[v] !== '';
  for (const v of CODE_LOADING_VARIABLES.filter(set))
    reasons.push(`${v} is set, which can load code into keyward through OpenSSL`);
  if (o.agent) {
    for (const v of Object.keys(f.env)
      .filter((n) => isAgentLoaderVariable(n) && set(n))
      .sort())
      reasons.push(`${v} is set, which loads code into the agent`);
  }
  return reasons;
}

/** The environment keyward gives a process it starts itself: without what debugExposure flags. */
export function cleanEnvironment(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) {
    if (k === 'NODE_OPTIONS' || CODE_LOADING_VARIABLES.includes(k) || isAgentLoaderVariable(k))
      continue;
    out[k] = v;
  }
  return out;
}

/**
 * What bin/keyward.js found at start, for the rest of the process: the reasons this process is
 * exposed (empty when clean) and whether the user allowed it with --allow-debugger. One object
 * for the process, whichever copy of this module asks: the quick commands run a CommonJS copy of
 * it beside the ES module the rest of the command line imports (scripts/bundle.ts).
 */
export const runtimeState: { exposure: string[]; allowed: boolean } = ((
  globalThis as unknown as Record<symbol, { exposure: string[]; allowed: boolean } | undefined>
)[Symbol.for('keyward.runtimeState')] ??= { exposure: [], allowed: false });

/** Whether argv (before a `--`) holds --allow-debugger. */
export function allowsDebugger(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--allow-debugger') return true;
  }
  return false;
}

/** Closes an inspector Node opened before keyward ran a line (NODE_OPTIONS=--inspect). */
export function closeInspector(): void {
  if (inspector().url() !== undefined) inspector().close();
}
