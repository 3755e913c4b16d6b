import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { BIN, eventually, initHome, kw, type Home } from './helpers.js';

export interface AgentHome extends Home {
  sockDir: string;
  sock: string;
  /** An askpass program whose answer is whatever the file `answer` holds: yes or no. */
  askpass: string;
  answer: (a: 'yes' | 'no') => void;
  prompts: () => string[];
  agent?: ChildProcess;
  agentPid?: number | undefined;
}

export function agentHome(policy?: string): AgentHome {
  const h = initHome();
  const sockDir = path.join(h.dir, 'run');
  const askpass = path.join(h.dir, 'askpass.sh');
  const answerFile = path.join(h.dir, 'answer');
  const promptFile = path.join(h.dir, 'prompts');
  fs.writeFileSync(
    askpass,
    `#!/bin/sh\nprintf '%s\\n' "$1" >> '${promptFile}'\n[ "$(cat '${answerFile}' 2>/dev/null)" = yes ]\n`,
    { mode: 0o700 },
  );
  fs.writeFileSync(answerFile, 'no');
  const env = { ...h.env, KEYWARD_SOCKET_DIR: sockDir };
  const a: AgentHome = {
    ...h,
    env,
    sockDir,
    sock: path.join(sockDir, 'agent.sock'),
    askpass,
    answer: (x) => fs.writeFileSync(answerFile, x),
    prompts: () =>
      fs.existsSync(promptFile) ? fs.readFileSync(promptFile, 'utf8').trim().split('\n') : [],
  };
  if (policy !== undefined) {
    const f = path.join(h.dir, 'policy.yaml');
    fs.writeFileSync(f, policy);
    const r = kw(['policy', 'apply', f], { env });
    if (r.code !== 0) throw new Error(r.stderr);
  }
  return a;
}

/** Runs `keyward agent run` as a child (foreground mode) and waits until it answers. */
export async function startAgent(
  h: AgentHome,
  extraEnv: NodeJS.ProcessEnv = {},
  args: string[] = [],
  /** Node's arguments before keyward's (a fixture that sets the process up, then execs the rest). */
  before: string[] = [],
): Promise<void> {
  const child = spawn(process.execPath, [...before, BIN, 'agent', 'run', ...args], {
    env: { ...h.env, KEYWARD_ASKPASS: h.askpass, ...extraEnv },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  h.agent = child;
  // Its own words, as an event: however loaded the machine, no clock decides it failed.
  await new Promise<void>((resolve, reject) => {
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      if (/listening on/.test(err)) resolve();
    });
    child.once('exit', () => reject(new Error(`agent did not start: ${err}`)));
  });
  h.agentPid = child.pid;
}

/** A home with this policy and a running agent, unlocked; kept in `homes` to be stopped after. */
export async function unlockedAgent(
  policy: string | undefined,
  homes: AgentHome[],
): Promise<AgentHome> {
  const h = agentHome(policy);
  homes.push(h);
  await startAgent(h);
  const u = kw(['unlock'], { env: h.env });
  if (u.code !== 0) throw new Error(`unlock failed: ${u.stderr}`);
  return h;
}

export async function stopAgent(h: AgentHome): Promise<void> {
  const c = h.agent;
  // Gone already: it exited, or a signal ended it (its 'exit' came and will not come again).
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const done = new Promise((r) => c.once('exit', r));
  c.kill('SIGTERM');
  await done;
}

/** The CLI, asynchronously (so the test can act while it waits for an approval). */
export function kwAsync(
  args: string[],
  env: NodeJS.ProcessEnv,
  input = '',
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [BIN, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.stdin.end(input);
    // 'close', not 'exit': the output may still be in the pipe when the process has exited.
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Every readable mapping of a process, read through /proc/PID/mem (root only). */
/** Each readable mapping of pid, in chunks that overlap by `overlap` bytes (a needle across a
 * chunk boundary is still seen whole). */
function forEachChunk(
  pid: number,
  overlap: number,
  fn: (view: Buffer) => void,
  only?: (vmFlags: string[]) => boolean,
): void {
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n');
  const flags = only ? vmFlags(pid) : undefined;
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r');
  const CHUNK = 16 * 1024 * 1024;
  try {
    for (const line of maps) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (r)/.exec(line);
      if (!m) continue;
      if (only && !only(flags?.get(m[1] ?? '') ?? [])) continue;
      const start = parseInt(m[1] ?? '0', 16);
      const end = parseInt(m[2] ?? '0', 16);
      for (let off = start; off < end; off += CHUNK) {
        const len = Math.min(CHUNK + overlap, end - off);
        const buf = Buffer.alloc(len);
        let n = 0;
        try {
          n = fs.readSync(fd, buf, 0, len, off);
        } catch {
          continue;
        }
        fn(buf.subarray(0, n));
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Each mapping's VmFlags (/proc/PID/smaps), by its start address as maps writes it. */
function vmFlags(pid: number): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let start = '';
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line);
    if (m) start = m[1] ?? '';
    else if (line.startsWith('VmFlags:')) out.set(start, line.slice(8).trim().split(/\s+/));
  }
  return out;
}

/** Mappings that are not locked in memory (no `lo` VmFlag): ordinary heap, stacks, files. */
export const unlockedMappings = (f: string[]): boolean => !f.includes('lo');

/** Which needles occur in pid's readable memory (only: in the mappings whose VmFlags pass). */
export function scanMemory(
  pid: number,
  needles: Buffer[],
  only?: (vmFlags: string[]) => boolean,
): Buffer[] {
  const found: Buffer[] = [];
  const overlap = Math.max(0, ...needles.map((n) => n.length - 1));
  // Many needles (a key's hash schedule: hundreds of words): one pass over memory, each offset
  // filtered by a bitmap of the needles' first three bytes, instead of one indexOf pass each.
  const onePass = needles.length > 16 && needles.every((n) => n.length >= 4);
  const byStart = new Map<number, Buffer[]>();
  const bits = new Uint8Array(1 << 21);
  if (onePass)
    for (const n of needles) {
      const key = n.readUInt32LE(0);
      byStart.set(key, [...(byStart.get(key) ?? []), n]);
      const b = key & 0xffffff;
      bits[b >>> 3] = (bits[b >>> 3] ?? 0) | (1 << (b & 7));
    }
  forEachChunk(
    pid,
    overlap,
    (view) => {
      if (!onePass) {
        for (const needle of needles)
          if (!found.includes(needle) && view.indexOf(needle) !== -1) found.push(needle);
        return;
      }
      const last = view.length - 4;
      for (let i = 0; i <= last; i++) {
        const b = (view[i] ?? 0) | ((view[i + 1] ?? 0) << 8) | ((view[i + 2] ?? 0) << 16);
        if (((bits[b >>> 3] ?? 0) & (1 << (b & 7))) === 0) continue;
        for (const n of byStart.get(view.readUInt32LE(i)) ?? [])
          if (
            !found.includes(n) &&
            i + n.length <= view.length &&
            view.compare(n, 0, n.length, i, i + n.length) === 0
          )
            found.push(n);
      }
    },
    only,
  );
  return found;
}

/**
 * Which of `values` have any `width`-byte window (every offset, not a sample) anywhere in pid's
 * readable memory: the indexes. Too many windows for indexOf each, so one pass: a bitmap of the
 * windows' first four bytes filters, and a candidate is compared whole.
 */
export function scanWindows(
  pid: number,
  values: Buffer[],
  width = 12,
  only?: (vmFlags: string[]) => boolean,
): number[] {
  const windows = new Map<number, Array<{ value: number; at: number }>>();
  const bits = new Uint8Array(1 << 21); // 2^24 bits, indexed by the low 24 bits of the key
  values.forEach((v, value) => {
    for (let at = 0; at + width <= v.length; at++) {
      const key = v.readUInt32LE(at);
      const list = windows.get(key) ?? [];
      list.push({ value, at });
      windows.set(key, list);
      const b = key & 0xffffff;
      bits[b >>> 3] = (bits[b >>> 3] ?? 0) | (1 << (b & 7));
    }
  });
  const found = new Set<number>();
  forEachChunk(
    pid,
    width - 1,
    (view) => {
      const n = view.length - width;
      for (let i = 0; i <= n; i++) {
        const b = (view[i] ?? 0) | ((view[i + 1] ?? 0) << 8) | ((view[i + 2] ?? 0) << 16);
        if (((bits[b >>> 3] ?? 0) & (1 << (b & 7))) === 0) continue;
        for (const w of windows.get(view.readUInt32LE(i)) ?? []) {
          if (found.has(w.value)) continue;
          const v = values[w.value] as Buffer;
          if (view.compare(v, w.at, w.at + width, i, i + width) === 0) found.add(w.value);
        }
      }
    },
    only,
  );
  return [...found].sort((a, b) => a - b);
}

/** One audit entry as `audit export --decrypt` shows it: its type and its opened body. */
export interface AuditEntry {
  type: string;
  /** When it was written, in ms, by the writer's clock (the agent's, for what the agent records). */
  time: number;
  target: string | null;
  decision: string;
  reason: string | null;
  details: Record<string, unknown>;
  /** Who did it: the process the writer saw (the agent's caller, or the CLI itself). */
  actor?: { pid?: number; exe?: string; uid?: number; cmdline?: string[]; unpinned?: boolean };
}

/** The home's environment with no agent to be found: commands open the vault directly. */
export function withoutAgent(h: Home): NodeJS.ProcessEnv {
  return { ...h.env, KEYWARD_SOCKET_DIR: path.join(h.dir, 'no-agent-here') };
}

/**
 * Every audit entry of a home, oldest first, bodies opened with the vault: directly, with the
 * passphrase, whatever agent runs (an agent would be asked, and its policy would decide).
 */
export function auditEntries(h: Home): AuditEntry[] {
  return kw(['audit', 'export', '--decrypt'], { env: withoutAgent(h) })
    .stdout.trim()
    .split('\n')
    .map((l) => {
      const e = JSON.parse(l) as {
        type: string;
        time: string;
        body: Omit<AuditEntry, 'type' | 'time'>;
      };
      return { type: e.type, time: Date.parse(e.time), ...e.body };
    });
}

/** The id of the first request waiting for approval, once one is. */
export async function pendingId(h: AgentHome): Promise<string> {
  let id: string | undefined;
  await eventually(() => {
    const r = kw(['approvals', '--json'], { env: h.env });
    id = (JSON.parse(r.stdout || '[]') as Array<{ id: string }>)[0]?.id;
    return id !== undefined;
  }, 'a pending request');
  return id ?? '';
}

/** Closes every socket this side still holds and waits until each has closed. */
export async function closeAll(sockets: net.Socket[]): Promise<void> {
  await Promise.all(
    sockets.map(
      (s) =>
        new Promise<void>((resolve) => {
          if (s.destroyed) return resolve();
          // Listeners the test set (who closed first) no longer matter.
          s.removeAllListeners('close');
          s.once('close', () => resolve());
          s.destroy();
        }),
    ),
  );
}
