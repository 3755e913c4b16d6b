/**
 * `keyward agent start`: the agent started in the background, and its word that it listens.
 * Apart from the daemon (daemon.ts), so that starting one loads none of the agent's own code
 * (`agent start` runs from a file of its own, scripts/bundle.ts).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { KeywardError } from '../errors.js';
import { AGENT_NODE_OPTIONS, mallocCacheOff } from '../lib/process.js';
import { cleanEnvironment } from '../lib/runtime-guard.js';
import { printable } from '../lib/text.js';
import { agentStatus } from './client.js';
import { prepareSocketDir, socketPaths } from './socketdir.js';

/** How long `agent start` waits for an agent that neither says it listens nor exits. */
const START_TIMEOUT_MS = 30_000;

/**
 * The approval program from this environment (KEYWARD_ASKPASS, else SSH_ASKPASS), checked: one
 * that can't be run is an error at start, not a silent denial of every request later.
 */
export async function askpassFrom(env: NodeJS.ProcessEnv): Promise<string | undefined> {
  const name = env['KEYWARD_ASKPASS'] ? 'KEYWARD_ASKPASS' : 'SSH_ASKPASS';
  const program = env[name] || undefined;
  if (program === undefined) return undefined;
  // The approval domain loads with the agent (and for this check), not with `agent stop`.
  const { askpassPin, askpassProblem } = await import('../approval/index.js');
  const problem = askpassProblem(program, env['PATH']);
  if (problem)
    throw new KeywardError('USAGE', `${name}=${printable(program, 200)}: ${problem}`, {
      hint: `install it, point ${name} at an approval program, or unset it and approve in the console (keyward console)`,
    });
  askpassPin(program, env['PATH']);
  return program;
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
