/**
 * Starting programs: sealed memfds, what survives exec, sessions, exec itself, pseudo terminals,
 * and glibc's malloc cache for a process that holds keys (through libc-core.ts).
 */
import fs from 'node:fs';
import { libc } from './libc-core.js';

const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const F_SETFD = 2;
const F_ADD_SEALS = 1033;
const F_SEAL_SEAL = 1;
const F_SEAL_SHRINK = 2;
const F_SEAL_GROW = 4;
const F_SEAL_WRITE = 8;

/** An empty anonymous file that can be sealed later (fillAndSeal); close-on-exec here. */
export function memfd(name: string): number {
  const l = libc();
  const fd = l.memfdCreate(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) throw new Error(`memfd_create failed (errno ${l.errno()})`);
  return fd;
}

/**
 * Writes these bytes into a memfd and seals it: nobody (a receiver that shares it included) can
 * change, grow or shrink it afterwards. Written with write(2) from the caller's buffers, so
 * secret bytes go from secure memory to the kernel without a copy in this process.
 */
export function fillAndSeal(fd: number, pieces: readonly Uint8Array[]): void {
  const l = libc();
  for (const p of pieces) {
    let off = 0;
    while (off < p.length) off += fs.writeSync(fd, p, off, p.length - off);
  }
  const seals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
  if (l.fcntl(fd, F_ADD_SEALS, seals) !== 0)
    throw new Error(`sealing the memfd failed (errno ${l.errno()})`);
  // The receiver shares this file offset: it reads from the start.
  if (l.lseek(fd, 0, 0) !== 0) throw new Error(`lseek failed (errno ${l.errno()})`);
}

/**
 * An anonymous file holding exactly these bytes, sealed (fillAndSeal). Close-on-exec in this
 * process; a child gets it only where it is handed over explicitly (spawn's stdio).
 */
export function sealedMemfd(name: string, pieces: readonly Uint8Array[]): number {
  const fd = memfd(name);
  try {
    fillAndSeal(fd, pieces);
    return fd;
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Puts descriptor `from` at number `to` (dup3, no close-on-exec) and closes `from`. */
export function moveFd(from: number, to: number): void {
  const l = libc();
  if (l.dup3(from, to, 0) !== to)
    throw new Error(`dup3(${from}, ${to}) failed (errno ${l.errno()})`);
  l.close(from);
}

/** Clears FD_CLOEXEC, so the descriptor survives an exec (Node marks even 0, 1 and 2). */
export function keepAcrossExec(fd: number): void {
  const l = libc();
  if (l.fcntl(fd, F_SETFD, 0) !== 0) throw new Error(`fcntl(${fd}) failed (errno ${l.errno()})`);
}

/**
 * A new session (so the child is not in the agent's process group: a `kill 0` in it can't reach
 * the agent), with the terminal on fd 0 as its controlling terminal when it is a pty.
 */
export function newSession(withTerminal: boolean): void {
  const l = libc();
  const TIOCSCTTY = 0x540e;
  if (l.setsid() < 0) throw new Error(`setsid failed (errno ${l.errno()})`);
  if (withTerminal && l.ioctl(0, TIOCSCTTY, 0) !== 0)
    throw new Error(`TIOCSCTTY failed (errno ${l.errno()})`);
}

/**
 * Undoes what Node set up that a program would inherit across exec: SIGPIPE and SIGXFSZ ignored
 * (so `yes | head` would misbehave), and descriptors 3 and up left open without close-on-exec.
 */
export function cleanForExec(): void {
  const l = libc();
  const SIGPIPE = 13;
  const SIGXFSZ = 25;
  l.signal(SIGPIPE, null); // SIG_DFL
  l.signal(SIGXFSZ, null);
  const CLOSE_RANGE_CLOEXEC = 4;
  if (l.closeRange(3, 0xffffffff, CLOSE_RANGE_CLOEXEC) !== 0)
    throw new Error(`close_range failed (errno ${l.errno()})`);
}

/**
 * execvpe(3): replaces this process. envp entries are NUL-terminated byte strings (Buffers, so
 * values never become JS strings). Returns only on failure, with errno.
 */
export function execvpe(file: string, argv: string[], envp: Buffer[]): number {
  const l = libc();
  l.execvpe(file, [...argv, null], [...envp, null]);
  return l.errno();
}

const TIOCSWINSZ = 0x5414;

/** Sets a terminal's size (rows and columns), as a resize of the window would. */
export function setWindowSize(fd: number, rows: number, cols: number): void {
  const ws = Buffer.alloc(8);
  ws.writeUInt16LE(rows, 0);
  ws.writeUInt16LE(cols, 2);
  libc().ioctlBuf(fd, TIOCSWINSZ, ws);
}

/**
 * A new pseudo-terminal: the master (kept by the caller) and the slave, opened, for a child's
 * stdio. Both close-on-exec here; spawn hands the slave to the child explicitly.
 */
export function openPty(rows: number, cols: number): { master: number; slave: number } {
  const l = libc();
  const O_RDWR = 2;
  const O_NOCTTY = 0o400;
  const O_CLOEXEC = 0o2000000;
  // Non-blocking: the agent reads what is left in the master synchronously when a run ends
  // (run-relay.ts), and a grandchild holding the terminal silently made that read wait for it,
  // with the whole agent (libuv leaves a pty master's blocking mode as it finds it).
  const O_NONBLOCK = 0o4000;
  const master = l.posixOpenpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
  if (master < 0) throw new Error(`posix_openpt failed (errno ${l.errno()})`);
  try {
    if (l.grantpt(master) !== 0 || l.unlockpt(master) !== 0)
      throw new Error(`grantpt/unlockpt failed (errno ${l.errno()})`);
    const name = Buffer.alloc(128);
    if (l.ptsnameR(master, name, name.length) !== 0)
      throw new Error(`ptsname failed (errno ${l.errno()})`);
    const slavePath = name.subarray(0, name.indexOf(0)).toString('utf8');
    const slave = fs.openSync(slavePath, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
    setWindowSize(master, rows, cols);
    return { master, slave };
  } catch (e) {
    fs.closeSync(master);
    throw e;
  }
}

/**
 * The agent's glibc malloc settings: no per-thread cache (withoutMallocCache says why), and one
 * arena. Node's threads (libuv's pool, V8's helpers) would each get an arena of their own, whose
 * touched pages stay resident: one arena keeps the agent ~2.4 MiB smaller (docs/PERFORMANCE.md).
 */
const AGENT_TUNABLES = ['glibc.malloc.tcache_count=0', 'glibc.malloc.arena_max=1'];

/** Whether each of the agent's tunables is in force: the last setting of its name is its value. */
function hasAgentTunables(value: string | undefined): boolean {
  const last = new Map<string, string>();
  for (const t of value?.split(':') ?? []) {
    const eq = t.indexOf('=');
    if (eq > 0) last.set(t.slice(0, eq), t);
  }
  return AGENT_TUNABLES.every((t) => last.get(t.slice(0, t.indexOf('='))) === t);
}

/**
 * The Node options `agent start` runs the agent with. V8 lets its young generation grow to 16 MiB
 * a half under load and keeps it: for a process that allocates little and lives for hours, 1 MiB
 * keeps the agent's resident memory ~6 MiB lower idle and ~12 MiB lower after 10,000 requests
 * (docs/PERFORMANCE.md), for more frequent, smaller scavenges. A limit, not a code-loading
 * option: the runtime guard lets it through (lib/runtime-guard.ts).
 */
export const AGENT_NODE_OPTIONS: readonly string[] = ['--max-semi-space-size=1'];

/**
 * env with the agent's malloc settings (AGENT_TUNABLES: the cache off, one arena), for a process
 * started with it: no exec needed then.
 */
export function mallocCacheOff(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const current = env['GLIBC_TUNABLES'];
  if (hasAgentTunables(current)) return env;
  // Appended: glibc reads tunables left to right, so these win over the same names before them.
  return { ...env, GLIBC_TUNABLES: [current, ...AGENT_TUNABLES].filter(Boolean).join(':') };
}

/**
 * Makes this process run with glibc's per-thread malloc cache (tcache) off, by executing itself
 * again (same pid, same descriptors) with GLIBC_TUNABLES set, unless it already is. Blocks freed
 * into tcache skip M_PERTURB's overwrite, so a copy of a key OpenSSL freed could stay readable
 * there (docs/THREAT-MODEL.md, "ECDSA and RSA keys"). Call it first, before anything is held.
 * Returns only when the tunable is in force; keeps `keep` (and 0, 1, 2) open across the exec.
 */
export function withoutMallocCache(keep: readonly number[] = []): void {
  if (hasAgentTunables(process.env['GLIBC_TUNABLES'])) return;
  const env = mallocCacheOff(process.env);
  const envp = Object.entries(env).flatMap(([k, v]) =>
    v === undefined ? [] : [Buffer.from(`${k}=${v}\0`)],
  );
  for (const fd of [0, 1, 2, ...keep]) keepAcrossExec(fd);
  const errno = execvpe(
    process.execPath,
    [process.argv0, ...process.execArgv, ...process.argv.slice(1)],
    envp,
  );
  throw new Error(`could not start again without glibc's malloc cache (errno ${errno})`);
}

/** kernel.yama.ptrace_scope ('0' to '3'), or undefined on a kernel without Yama. */
export function yamaPtraceScope(): string | undefined {
  try {
    return fs.readFileSync('/proc/sys/kernel/yama/ptrace_scope', 'utf8').trim();
  } catch {
    return undefined;
  }
}
