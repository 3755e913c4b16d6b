/**
 * agent run | start | stop.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { KeywardError } from '../errors.js';
import {
  cleanEnvironment,
  closeInspector,
  currentRuntime,
  debugExposure,
} from '../lib/runtime-guard.js';
import { agentStatus } from './client.js';
import { printable } from '../lib/text.js';
import { parsePoliciesInWorker } from '../policy/index.js';
import type { Agent as AgentType } from './server.js';
import { prepareSocketDir, socketPaths } from './socketdir.js';
import { AGENT_NODE_OPTIONS, mallocCacheOff, withoutMallocCache } from '../lib/process.js';

/** How long `agent start` waits for an agent that neither says it listens nor exits. */
const START_TIMEOUT_MS = 30_000;

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

/**
 * The approval program from this environment (KEYWARD_ASKPASS, else SSH_ASKPASS), checked: one
 * that can't be run is an error at start, not a silent denial of every request later.
 */
async function askpassFrom(env: NodeJS.ProcessEnv): Promise<string | undefined> {
  const name = env['KEYWARD_ASKPASS'] ? 'KEYWARD_ASKPASS' : 'SSH_ASKPASS';
  const program = env[name] || undefined;
  if (program === undefined) return undefined;
  // The approval domain loads with the agent (and for this check), not with `agent stop`.
  const { askpassProblem } = await import('../approval/index.js');
  const problem = askpassProblem(program, env['PATH']);
  if (problem)
    throw new KeywardError('USAGE', `${name}=${printable(program, 200)}: ${problem}`, {
      hint: `install it, point ${name} at an approval program, or unset it and approve in the console (keyward console)`,
    });
  return program;
}

/** Runs the agent in this process until SIGTERM, SIGINT or a stop request. */
export async function runAgent(o: RunOptions): Promise<void> {
  // First of all: glibc's malloc cache off (an exec of this same process), so that M_PERTURB
  // overwrites every block OpenSSL frees (lib/libc.ts).
  withoutMallocCache(o.readyFd === undefined ? [] : [o.readyFd]);
  // OpenSSL's secure heap before any key: private numbers OpenSSL parses go there (lib/openssl.ts).
  const { secureHeapReady } = await import('../lib/openssl.js');
  const secureHeap = secureHeapReady();
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
  await agent.start();
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
  if (!fs.existsSync('/proc/sys/kernel/yama/ptrace_scope')) {
    o.log(
      'warning: no Yama ptrace restriction on this kernel; the agent is non-dumpable, which closes ptrace to same-user processes',
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

/** Starts `keyward agent run` in the background and waits until it says it listens. */
export async function startAgent(
  bin: string,
  socketDir: string,
  allowDebugger: boolean,
  env: NodeJS.ProcessEnv,
  console = true,
): Promise<{ pid: number; console: string | undefined }> {
  await askpassFrom(env);
  const sp = socketPaths(socketDir);
  if (await agentStatus(sp.agent))
    throw new KeywardError('AGENT_RUNNING', `an agent already answers on ${sp.agent}`, {
      hint: 'keyward status',
    });
  prepareSocketDir(socketDir);
  const logFile = path.join(socketDir, 'agent.log');
  const log = fs.openSync(
    logFile,
    fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_APPEND | fs.constants.O_NOFOLLOW,
    0o600,
  );
  // A fixed command line (its one node option a memory limit, AGENT_NODE_OPTIONS) and, unless
  // the user allowed debugging, an environment without NODE_OPTIONS or the loader variables: the
  // agent starts clean even from a shell that sets them. Descriptor 3 is a pipe on which it says
  // when it listens.
  const child = spawn(
    process.execPath,
    [
      ...AGENT_NODE_OPTIONS,
      bin,
      ...(allowDebugger ? ['--allow-debugger'] : []),
      'agent',
      'run',
      '--ready-fd',
      '3',
      ...(console ? [] : ['--no-console']),
    ],
    {
      detached: true,
      stdio: ['ignore', log, log, 'pipe'],
      // Started with glibc's malloc cache off, so it needn't execute itself again for it.
      env: mallocCacheOff(allowDebugger ? env : cleanEnvironment(env)),
    },
  );
  fs.closeSync(log);
  const ready = child.stdio[3] as Readable | null;
  const line = await new Promise<string | undefined>((resolve) => {
    let got = '';
    const timer = setTimeout(() => resolve(undefined), START_TIMEOUT_MS);
    const done = (v: string | undefined) => {
      clearTimeout(timer);
      resolve(v);
    };
    ready?.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.includes('\n')) done(got.split('\n')[0]);
    });
    ready?.on('close', () => done(got.includes('\n') ? got.split('\n')[0] : undefined));
    child.on('exit', () => done(undefined));
  });
  ready?.destroy();
  child.unref();
  const m = line ? /^ready (\d+) (\S+)$/.exec(line) : null;
  if (m) return { pid: Number(m[1]), console: m[2] === '-' ? undefined : m[2] };
  const tail = fs.readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' / ');
  throw new KeywardError('AGENT_UNAVAILABLE', `the agent did not start${tail ? `: ${tail}` : ''}`, {
    hint: `see ${logFile}`,
  });
}
