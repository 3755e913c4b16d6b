/**
 * Starting a `keyward run` child from the agent (docs/RUN.md). The agent never builds the child's
 * environment as JS strings: it writes the control data (control.ts), secret values straight from
 * secure memory, into a sealed memfd, and starts the exec step (exec-helper.ts) with it. Values
 * for `--fd N` go into their own sealed memfds, which the child gets as descriptor N.
 *
 * The exec step is a new Node process, and any process of the user can read it (its memory, its
 * descriptors: opened through /proc/PID/fd/N or taken with pidfd_getfd) until it makes itself
 * not dumpable, which it does first. So it is started with none of them, and with nothing the
 * values could go through: once it is not dumpable, it makes a new
 * socket pair and passes one end back over the first socket; the agent takes only an end made
 * by the step's own process (SO_PEERCRED), and only then makes, fills and seals the memfds and
 * passes them over it (SCM_RIGHTS). Where ptrace is not restricted (no Yama), a process of the
 * user can still attach to the step, or write into its memory, before it hardens, and keep that
 * hold: docs/THREAT-MODEL.md says so (the command it runs is as open to that process).
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KeywardError } from '../errors.js';
import { closeFd, peerCredentials } from '../lib/libc.js';
import { fillAndSeal, memfd } from '../lib/process.js';
import { EAGAIN, recvWithFd, sendWithFd, socketPair } from '../lib/unix.js';
import { controlPieces, FLAG_PTY, GO, HARDENED, MORE, type EnvPiece } from './control.js';

const HELPER = fileURLToPath(new URL('./exec-helper.js', import.meta.url));

export interface ChildSpec {
  /** argv[0] is the program's absolute path (what runs); argv0 is what the child sees as its name. */
  argv: readonly string[];
  argv0?: string;
  cwd: string;
  /** The whole environment, in order; later entries with the same name win. */
  env: readonly EnvPiece[];
  /** Descriptor number -> value (secure memory; not copied). */
  fds: ReadonlyArray<{ fd: number; value: Uint8Array }>;
  /** Descriptors for the child's 0, 1 and 2: 'pipe', or an open descriptor (a pty's slave). */
  stdio: 'pipe' | number;
  /** Make stdio (a pty) the controlling terminal of a new session. */
  pty: boolean;
  /** PATH used to find the program (the caller's). */
  path: string;
  /**
   * Called once the exec step is ready for the values (hardened), just before they go: throws
   * (or rejects) to stop the run there (the agent locked, the caller gone, while it started).
   */
  ready?: (step: ChildProcess) => void | Promise<void>;
  /**
   * Asked while the exec step starts: why the run should end now (the agent locked, the caller
   * gone), or undefined. The values are not held a moment longer than the run lives.
   */
  cancelled?: (step: ChildProcess) => string | undefined;
}

export const MAX_CHILD_FD = 255;

/** How long the exec step may take to start and harden before the run is given up. */
export const EXEC_STEP_START_MS = 60_000;

/**
 * Starts the child; resolves once the exec step has hardened and has the values; rejects, the
 * exec step killed, if it ends or fails before, or if `ready` throws.
 */
export async function startChild(spec: ChildSpec): Promise<ChildProcess> {
  const [file] = spec.argv;
  if (file === undefined) throw new Error('no command');
  // Environment: last one of a name wins (injected values come after the caller's own).
  const byName = new Map<string, EnvPiece>();
  for (const e of spec.env) {
    byName.delete(e.name);
    byName.set(e.name, e);
  }
  // What goes to the exec step, in this order: the control data, then each --fd value.
  const fills = [
    {
      name: 'keyward-exec',
      pieces: controlPieces({
        flags: spec.pty ? FLAG_PTY : 0,
        file,
        argv: [spec.argv0 ?? file, ...spec.argv.slice(1)],
        env: [...byName.values()],
        fds: spec.fds.map((f) => f.fd),
      }),
    },
    ...spec.fds.map((f) => ({ name: `keyward-fd-${f.fd}`, pieces: [f.value] })),
  ];
  const controlAt = Math.max(3, ...spec.fds.map((f) => f.fd + 1));
  const handshakeAt = controlAt + 1;
  const [mine, theirs] = socketPair();
  // Every number up to the handshake's is taken in the exec step (/dev/null where nothing
  // else is), so what it receives lands above them all, and each value's memfd goes to its
  // number without taking another's place.
  const devNull = fs.openSync('/dev/null', 'r');
  let theirsOpen = true;
  let channel: number | undefined;
  try {
    const stdio: StdioOptions = [];
    for (let i = 0; i <= handshakeAt; i++)
      stdio.push(i < 3 ? spec.stdio : i === handshakeAt ? theirs : devNull);
    const child = spawn(process.execPath, [HELPER, String(controlAt), String(handshakeAt)], {
      cwd: spec.cwd,
      env: { PATH: spec.path },
      stdio,
    });
    // Only the step holds the other end now: when it goes, so does the socket.
    closeFd(theirs);
    theirsOpen = false;
    // The step's process can be read, and its descriptors taken (pidfd_getfd), until it
    // hardens: the handshake socket may be another's by then. So the values never go over it:
    // the step makes a new socket pair once it is hardened and passes one end back, and only
    // an end its own process made (SO_PEERCRED: the pid that made the pair) is taken.
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.once('error', () => undefined);
    try {
      channel = await hardened(mine, child, exited, spec.cancelled);
      await spec.ready?.(child);
      await handOver(channel, fills);
    } catch (e) {
      child.kill('SIGKILL');
      throw e;
    }
    return child;
  } finally {
    if (theirsOpen) closeFd(theirs);
    fs.closeSync(devNull);
    if (channel !== undefined) closeFd(channel);
    closeFd(mine);
  }
}

/** How often the agent looks for the step's word while it starts (a non-blocking recvmsg). */
const LOOK_MS = 2;

/**
 * Waits for the step's word: HARDENED, with an end of a socket pair its own process made. No
 * node:net here: it would read the byte and drop the descriptor that comes with it.
 */
async function hardened(
  sock: number,
  child: ChildProcess,
  exited: Promise<void>,
  cancelled: ((step: ChildProcess) => string | undefined) | undefined,
): Promise<number> {
  let gone = false;
  void exited.then(() => (gone = true));
  const buf = Buffer.alloc(1);
  const until = Date.now() + EXEC_STEP_START_MS;
  for (;;) {
    const r = recvWithFd(sock, buf);
    if (r.n === 1) {
      const fd = r.fd;
      if (buf[0] !== HARDENED || fd === undefined) {
        if (fd !== undefined) closeFd(fd);
        throw stepError('the exec step said something else');
      }
      let maker: number | undefined;
      try {
        maker = peerCredentials(fd).pid;
      } catch {
        maker = undefined;
      }
      if (maker !== child.pid) {
        closeFd(fd);
        throw stepError("the exec step's answer came from another process");
      }
      return fd;
    }
    if (r.n !== -EAGAIN) throw stepError('the exec step ended before it started the command');
    if (gone) throw stepError('the exec step ended before it started the command');
    const why = cancelled?.(child);
    if (why !== undefined) throw stepError(why);
    if (Date.now() > until)
      throw stepError(`the exec step did not start within ${EXEC_STEP_START_MS / 1000} s`);
    await new Promise((r) => setTimeout(r, LOOK_MS));
  }
}

/** Makes, fills and seals each memfd, and passes it with its byte; ours are closed as they go. */
async function handOver(sock: number, fills: Array<{ name: string; pieces: Uint8Array[] }>) {
  const until = Date.now() + EXEC_STEP_START_MS;
  for (const [i, f] of fills.entries()) {
    const fd = memfd(f.name);
    try {
      fillAndSeal(fd, f.pieces);
      const byte = Buffer.from([i === fills.length - 1 ? GO : MORE]);
      for (;;) {
        const n = sendWithFd(sock, byte, fd);
        if (n === 1) break;
        if (n !== -EAGAIN) throw stepError(`the exec step went away (errno ${-n})`);
        // The socket's buffer is full (many --fd, a small wmem): the step reads as it can. A
        // step that stops reading (stopped) fails the run in time, not the agent's CPU.
        if (Date.now() > until) throw stepError('the exec step stopped taking its descriptors');
        await new Promise((r) => setTimeout(r, LOOK_MS));
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}

/** A run whose command could not be started: said as such, never as an internal error. */
function stepError(message: string): KeywardError {
  return new KeywardError('INTERNAL', `the command did not start: ${message}`);
}
