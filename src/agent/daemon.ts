/**
 * `keyward agent run`: the agent in this process (start.ts starts one in the background).
 */
import fs from 'node:fs';
import { KeywardError } from '../errors.js';
import { closeInspector, currentRuntime, debugExposure } from '../lib/runtime-guard.js';
import { parsePoliciesInWorker } from '../policy/index.js';
import type { Agent as AgentType } from './server.js';
import { askpassFrom } from './start.js';
import { withoutMallocCache, yamaPtraceScope } from '../lib/process.js';

export function tracerPid(): number {
  const m = /^TracerPid:\s*(\d+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return Number(m?.[1] ?? 0);
}

export interface RunOptions {
  home: string;
  socketDir: string;
  allowDebugger: boolean;
  env: NodeJS.ProcessEnv;
  log: (line: string) => void;
  /** Serve the web console (default on). */
  console?: boolean;
  /**
   * A descriptor `agent start` passed: "ready PID URL" is written to it once the agent listens,
   * then it is closed. `agent start` waits on it, not on a clock.
   */
  readyFd?: number | undefined;
}

/** Runs the agent in this process until SIGTERM, SIGINT or a stop request. */
export async function runAgent(o: RunOptions): Promise<void> {
  // First of all: glibc's malloc cache off (an exec of this same process), so that M_PERTURB
  // overwrites every block OpenSSL frees (lib/libc.ts).
  withoutMallocCache(o.readyFd === undefined ? [] : [o.readyFd]);
  // OpenSSL's secure heap before any key: private numbers OpenSSL parses go there (lib/openssl.ts).
  // And RSA keys that cache nothing of their primes, so that the agent may hold them (rsaHoldable).
  const { secureHeapReady, rsaHoldable } = await import('../lib/openssl.js');
  const secureHeap = secureHeapReady();
  if (secureHeap) rsaHoldable();
  const tracer = tracerPid();
  if (tracer !== 0 && !o.allowDebugger) {
    throw new KeywardError(
      'DEBUGGER_ATTACHED',
      `a debugger (pid ${tracer}) is attached; the agent would hold keys it can read`,
      {
        hint: 'detach it, or pass --allow-debugger if this is your own debugging session',
      },
    );
  }
  // The agent holds every unlocked key: on top of what every keyward process refuses
  // (bin/keyward.js), it refuses the dynamic linker's and Node's code-loading variables.
  const exposure = [
    ...debugExposure(currentRuntime(), { agent: true }),
    ...(tracer !== 0 ? [`a debugger (pid ${tracer}) is attached`] : []),
  ];
  if (exposure.length > 0 && !o.allowDebugger) {
    closeInspector();
    throw new KeywardError(
      'DEBUGGER_EXPOSED',
      `the agent refuses to run where another process could debug it or load code into it: ${exposure.join('; ')}`,
      {
        hint: 'start it with keyward agent start (a clean environment), or unset these; --allow-debugger runs anyway and says so everywhere',
      },
    );
  }
  if (exposure.length > 0)
    o.log(`WARNING: this agent can be debugged (--allow-debugger): ${exposure.join('; ')}`);
  // Policies are parsed in a worker thread, so zod and yaml never stay in the agent's heap.
  parsePoliciesInWorker(true);
  if (!secureHeap)
    o.log(
      'WARNING: OpenSSL could not make its secure heap: ECDSA keys are parsed at each signature',
    );
  const askpassProgram = await askpassFrom(o.env);
  const { TerminalChannel } = await import('../approval/index.js');
  // In the foreground on a terminal, that terminal is an approval channel (with a challenge).
  const terminal =
    process.stdin.isTTY && process.stderr.isTTY
      ? new TerminalChannel({ input: process.stdin, write: (s) => process.stderr.write(s) })
      : undefined;
  // The daemon's own code (the gate, the console, the services) loads here, not with every client.
  const { Agent } = await import('./server.js');
  const agent: AgentType = new Agent({
    home: o.home,
    socketDir: o.socketDir,
    askpass: askpassProgram,
    terminal,
    env: o.env,
    log: o.log,
    debuggable: exposure,
    console: o.console !== false,
  });
  try {
    await agent.start();
  } catch (e) {
    // A start that failed part of the way (secure memory that can't be locked, found in
    // review) had its sockets listening: stopped, so nothing keeps a half-started agent running.
    // (One refused for another agent's lock touches nothing of that agent's.)
    await agent.abandonStart().catch(() => undefined);
    throw e;
  }
  o.log(`keyward agent ${process.pid} listening on ${agent.socketPath} (locked)`);
  if (agent.consoleUrl) o.log(`console: ${agent.consoleUrl} (approve requests there)`);
  if (o.readyFd !== undefined) {
    try {
      fs.writeSync(o.readyFd, `ready ${process.pid} ${agent.consoleUrl ?? '-'}\n`);
      fs.closeSync(o.readyFd);
    } catch {
      // agent start went away; this agent runs on all the same.
    }
  }
  const scope = yamaPtraceScope();
  if (scope === undefined || scope === '0') {
    // The agent itself is not dumpable from its start; the commands that ask it are dumpable
    // until it has identified them, and a hold taken on one then lasts (THREAT-MODEL.md).
    o.log(
      `warning: ${scope === undefined ? 'no Yama ptrace restriction on this kernel' : 'kernel.yama.ptrace_scope is 0'}: any process of yours may open the memory of a keyward process, this agent's included, in the milliseconds before it hardens, and keep that hold (sysctl kernel.yama.ptrace_scope=1 closes it)`,
    );
  }
  if (terminal)
    o.log('approval requests will be asked here (and through the askpass program, if any)');
  await new Promise<void>((resolve) => {
    const stop = () => void agent.stop().then(resolve);
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    const poll = setInterval(() => {
      if (!fs.existsSync(agent.socketPath)) {
        // Stopped (the stop request removes the socket) or someone deleted the socket: either
        // way no client can reach this agent, so it locks (wiping keys) and exits.
        clearInterval(poll);
        stop();
      }
    }, 200);
  });
  if (terminal) process.stdin.pause();
}
