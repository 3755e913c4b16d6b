/**
 * Test helpers: throwaway homes and the real CLI in a child process, as a user runs it.
 */
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = path.join(ROOT, 'bin/keyward.js');
export const VECTORS = path.join(ROOT, 'test/vectors');

/**
 * Every temporary directory a test file makes (its homes, vaults, sockets; its children's too,
 * through TMPDIR) goes under one directory, removed when the file's process exits: a run leaves
 * no test vault or key behind in /tmp. 0711: a process of another uid (setpriv) can reach a
 * directory a test opened to it, and list none.
 */
const TEST_TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-tests-'));
fs.chmodSync(TEST_TMP, 0o711);
process.env['TMPDIR'] = TEST_TMP;
process.on('exit', () => {
  try {
    fs.rmSync(TEST_TMP, { recursive: true, force: true, maxRetries: 3 });
  } catch {
    // An agent a test left behind still writing there: the directory stays, nothing else.
  }
});

/** The minimum argon2id cost, so tests that init many vaults stay fast. */
/**
 * Tests that need root (setpriv, /proc/PID/mem, chown) run as root, and always under CI=true: CI
 * runs as root, and there a missing privilege must fail the test, never skip the evidence.
 */
export const rootTests = process.geteuid?.() === 0 || process.env['CI'] === 'true';

export const FAST_KDF = ['--kdf-ops', '1', '--kdf-mem-mib', '8'];
export const PASSPHRASE = 'test passphrase, long enough';

export interface Home {
  dir: string;
  home: string;
  passFile: string;
  env: NodeJS.ProcessEnv;
  vaultFile: string;
}

/** A private temp dir with KEYWARD_HOME inside it and a passphrase file (mode 0600). */
export function makeHome(passphrase = PASSPHRASE): Home {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-test-'));
  const home = path.join(dir, 'home');
  const passFile = path.join(dir, 'pass');
  fs.writeFileSync(passFile, `${passphrase}\n`, { mode: 0o600 });
  const env: NodeJS.ProcessEnv = {
    PATH: process.env['PATH'],
    HOME: dir,
    KEYWARD_HOME: home,
    KEYWARD_PASSPHRASE_FILE: passFile,
  };
  return { dir, home, passFile, env, vaultFile: path.join(home, 'vault.kw') };
}

export interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

export function kw(
  args: string[],
  opts: { env: NodeJS.ProcessEnv; input?: string | Buffer; cwd?: string },
): Run {
  const r: SpawnSyncReturns<Buffer> = spawnSync(process.execPath, [BIN, ...args], {
    env: opts.env,
    ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
    input: opts.input ?? '',
    maxBuffer: 64 * 1024 * 1024,
  });
  return {
    code: r.status,
    signal: r.signal,
    stdout: r.stdout.toString('utf8'),
    stderr: r.stderr.toString('utf8'),
    stdoutBytes: r.stdout,
  };
}

/** A home with a fast-KDF vault already in it. */
export function initHome(passphrase = PASSPHRASE): Home {
  const h = makeHome(passphrase);
  const r = kw(['init', ...FAST_KDF], { env: h.env });
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  return h;
}

/** Starts the CLI without waiting, for crash tests. */
export function kwSpawn(args: string[], env: NodeJS.ProcessEnv) {
  return spawn(process.execPath, [BIN, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Whether pid is a running process: a zombie its parent has not reaped (PID 1 here is not always init) is not. */
export const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').match(/\) Z /);
  } catch {
    return false;
  }
};

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Resolves once the clock's second is past the one `at` (ms) fell in. An agent refuses an OIDC
 * token issued (iat, whole seconds) in its first second, as one that may be from before it
 * started: a test that logs in right after starting one waits for this (the clock's tick is the
 * event; load only makes it come later).
 */
export async function pastSecondOf(at: number): Promise<void> {
  while (Math.floor(Date.now() / 1000) <= Math.floor(at / 1000)) await sleep(20);
}

/**
 * Waits until probe() is true, checked again every 25 ms: for a state nothing signals to the
 * test. The bound is two minutes, far past any load, so only a broken feature reaches it; a test
 * that waits a fixed time instead passes or fails with the machine's load.
 */
export async function eventually(
  probe: () => boolean | Promise<boolean>,
  what: string,
): Promise<void> {
  const until = Date.now() + 120_000;
  while (!(await probe())) {
    if (Date.now() > until) throw new Error(`gave up waiting for ${what}`);
    await sleep(25);
  }
}

/** Every file under dir, at any depth (the audit log, the policy, state), names and bytes. */
export function everyByteUnder(dir: string): Buffer {
  const parts: Buffer[] = [];
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    const st = fs.lstatSync(p);
    if (st.isDirectory()) parts.push(Buffer.from(name), everyByteUnder(p));
    else if (st.isFile()) parts.push(Buffer.from(name), fs.readFileSync(p));
  }
  return Buffer.concat(parts);
}

export const STRACE = '/usr/bin/strace';

/**
 * The CLI run under `strace -f -o FILE` with these options: its exit, stderr and the trace's
 * text (the trace file is removed).
 */
export function straced(
  options: string[],
  args: string[],
  env: NodeJS.ProcessEnv,
  input = '',
): { code: number | null; stderr: string; trace: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-strace-'));
  const out = path.join(dir, 'trace');
  try {
    const r = spawnSync(STRACE, ['-f', ...options, '-o', out, process.execPath, BIN, ...args], {
      env,
      input,
      encoding: 'utf8',
    });
    return { code: r.status, stderr: r.stderr, trace: fs.readFileSync(out, 'utf8') };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** System call numbers (x86-64) of the calls `holdAt` holds. */
const SYSCALL_NR = { read: 0, write: 1, fsync: 74, fdatasync: 75 } as const;
const WAIT4 = 61;

/**
 * Why `holdAt` can't run here, if it can't: it attaches strace to a running keyward process,
 * which is not dumpable (only root may trace it), and reads syscall numbers of x86-64.
 */
export const cannotHold: string | false =
  (!fs.existsSync(STRACE) && 'needs strace') ||
  (process.geteuid?.() !== 0 && 'needs root: the agent is not dumpable') ||
  (process.arch !== 'x64' && 'reads x86-64 system call numbers');

/**
 * strace attached to the running process pid (all its threads), holding for ten minutes the
 * first `call` made on `file`; resolves once strace traces it (strace waits in wait4, the
 * attach done). `held()` says whether a thread of pid is stopped in that call; `release()`
 * kills strace, and the call goes on.
 */
export async function holdAt(
  pid: number,
  call: keyof typeof SYSCALL_NR,
  file: string,
): Promise<{ held: () => boolean; release: () => void }> {
  const args = ['-f', '-qq', '-o', '/dev/null', '-p', String(pid), '-P', file];
  const tracer = spawn(
    STRACE,
    [...args, '-e', `trace=${call}`, '-e', `inject=${call}:delay_enter=600000000:when=1`],
    { stdio: 'ignore' },
  );
  let gone = false;
  tracer.on('exit', () => (gone = true));
  try {
    await eventually(() => {
      if (gone) throw new Error(`strace could not attach to ${pid}`);
      const traced = /^TracerPid:\s+[1-9]/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
      return traced && wordsOf(`/proc/${tracer.pid}/syscall`)[0] === String(WAIT4);
    }, `strace attached to ${pid}`);
  } catch (e) {
    // Never left attached: it would hold the process's next such call for ten minutes.
    tracer.kill('SIGKILL');
    throw e;
  }
  const held = () => inCall(pid, call, file);
  return { held, release: () => void tracer.kill('SIGKILL') };
}

/** A file's words, split at spaces ([] when it can't be read: the process is gone). */
function wordsOf(file: string): string[] {
  try {
    return fs.readFileSync(file, 'utf8').split(' ');
  } catch {
    return [];
  }
}

/** Whether a thread of pid is stopped in `call` on `file` (its first argument, a descriptor). */
function inCall(pid: number, call: keyof typeof SYSCALL_NR, file: string): boolean {
  let tasks: string[];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  return tasks.some((t) => {
    const [nr, fd] = wordsOf(`/proc/${pid}/task/${t}/syscall`);
    if (nr !== String(SYSCALL_NR[call]) || fd === undefined) return false;
    try {
      return fs.readlinkSync(`/proc/${pid}/fd/${Number(fd)}`) === file;
    } catch {
      return false;
    }
  });
}

/**
 * The CLI run under strace, which holds for ten minutes its `nth` `call` on `file` (the first by
 * default). `held()` says whether it is stopped there; `release()` kills strace, and the command
 * goes on; `done` is how it ended. The same limits as holdAt (cannotHold): the CLI hardens itself
 * (not dumpable) before it acts, so only root reads where it is stopped.
 */
export function commandHeldAt(
  args: string[],
  env: NodeJS.ProcessEnv,
  call: keyof typeof SYSCALL_NR,
  file: string,
  input = '',
  nth = 1,
): {
  held: () => boolean;
  release: () => void;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
} {
  const tracer = spawn(
    STRACE,
    [
      ...['-f', '-qq', '-o', '/dev/null', '-P', file, '-e', `trace=${call}`],
      ...['-e', `inject=${call}:delay_enter=600000000:when=${nth}`],
      // Through sh, which says the exit: strace, killed to let the command go on, can't.
      ...['sh', '-c', '"$0" "$@"; echo "exit=$?" >&2', process.execPath, BIN, ...args],
    ],
    { env, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  // A command that ends before reading its input is no failure of the helper's.
  tracer.stdin.on('error', () => undefined);
  tracer.stdin.end(input);
  let stdout = '';
  let stderr = '';
  tracer.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  tracer.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  // 'close': every writer of the pipes (sh and the command, strace gone) has ended.
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((res) =>
    tracer.on('close', () => {
      const code = /exit=(\d+)\n$/.exec(stderr)?.[1];
      res({ code: code === undefined ? null : Number(code), stdout, stderr });
    }),
  );
  // The command is sh's child, sh strace's.
  const under = (pid: number): number[] =>
    wordsOf(`/proc/${pid}/task/${pid}/children`)
      .filter((p) => /^\d+$/.test(p))
      .flatMap((p) => [Number(p), ...under(Number(p))]);
  const held = () => under(tracer.pid ?? 0).some((p) => inCall(p, call, file));
  return { held, release: () => void tracer.kill('SIGKILL'), done };
}
