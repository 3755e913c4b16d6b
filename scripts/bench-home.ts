/**
 * A throwaway keyward home for a benchmark: a fast-KDF vault, a policy applied, and an agent
 * started and unlocked on demand. Every part of `npm run bench` that drives the agent uses it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AGENT_NODE_OPTIONS } from '../src/lib/process.js';

export interface BenchHome {
  dir: string;
  bin: string;
  env: Record<string, string>;
  /** Runs the keyward CLI; throws with its stderr when it fails. Returns stdout. */
  kw(args: string[], input?: string): string;
  /** Starts `keyward agent run` and unlocks it. */
  startAgent(): Promise<void>;
  /** The running agent's pid (after startAgent). */
  agentPid(): number | undefined;
  /** Stops the agent (if started) and removes the home. */
  stop(): Promise<void>;
}

const waitFor = async (file: string) => {
  for (let i = 0; i < 200 && !fs.existsSync(file); i++) await new Promise((r) => setTimeout(r, 50));
};

export function benchHome(root: string, label: string, policy: string): BenchHome {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `keyward-bench-${label}-`));
  const bin = path.join(root, 'bin/keyward.js');
  const pass = path.join(dir, 'pass');
  fs.writeFileSync(pass, 'bench passphrase, long enough\n', { mode: 0o600 });
  const env = {
    ...process.env,
    KEYWARD_HOME: path.join(dir, 'home'),
    KEYWARD_SOCKET_DIR: path.join(dir, 'run'),
    KEYWARD_PASSPHRASE_FILE: pass,
  } as Record<string, string>;
  const kw = (args: string[], input?: string) => {
    const r = spawnSync(process.execPath, [bin, ...args], { env, input, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`keyward ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  kw(['init', '--kdf-ops', '1', '--kdf-mem-mib', '8']);
  const pol = path.join(dir, 'policy.yaml');
  fs.writeFileSync(pol, policy);
  kw(['policy', 'apply', pol]);
  let agent: ChildProcess | undefined;
  return {
    dir,
    bin,
    env,
    kw,
    async startAgent() {
      // BENCH_PROFILE=DIR writes the agent's CPU profile there (the agent then needs
      // --allow-debugger: a profiling flag is one that could load code into it).
      const prof = process.env.BENCH_PROFILE;
      const args = prof
        ? ['--cpu-prof', `--cpu-prof-dir=${prof}`, bin, '--allow-debugger', 'agent', 'run']
        : [...AGENT_NODE_OPTIONS, bin, 'agent', 'run'];
      agent = spawn(process.execPath, args, { env, stdio: 'ignore' });
      // A benchmark that fails midway must not leave its agent running.
      const a = agent;
      process.once('exit', () => a.kill('SIGTERM'));
      await waitFor(path.join(dir, 'run', 'agent.sock'));
      await waitFor(path.join(dir, 'run', 'ssh-agent.sock'));
      kw(prof ? ['--allow-debugger', 'unlock'] : ['unlock']);
    },
    agentPid() {
      return agent?.pid;
    },
    async stop() {
      if (agent && agent.exitCode === null) {
        const a = agent;
        a.kill('SIGTERM');
        await new Promise((r) => a.once('exit', r));
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

/** The wall time of one run of a command, in ms; throws when it fails. */
export function timeOne(cmd: string, args: string[], env: NodeJS.ProcessEnv): number {
  const t = performance.now();
  const r = spawnSync(cmd, args, { env, stdio: 'ignore' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}`);
  return performance.now() - t;
}
