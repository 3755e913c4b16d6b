/**
 * Starting a `keyward run` child from the agent (docs/RUN.md). The agent never builds the child's
 * environment as JS strings: it writes the control data (control.ts), secret values straight from
 * secure memory, into a sealed memfd, and starts the exec step (exec-helper.ts) with it. Values
 * for `--fd N` go into their own sealed memfds, which the child gets as descriptor N.
 *
 * The exec step is a new Node process, and any process of the user can read it (its memory, its
 * descriptors, and through /proc/PID/fd/N open its files for itself) until it makes itself not
 * dumpable, which it does first. So it is started with none of them: once it is not dumpable
 * (and no tracer holds it), it says so with a byte on a socket pair of its own, and only then
 * does the agent make, fill and seal the memfds and pass them over that socket (SCM_RIGHTS).
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { KeywardError } from '../errors.js';
import { closeFd, dupFd } from '../lib/libc.js';
import { fillAndSeal, memfd } from '../lib/process.js';
import { EAGAIN, sendWithFd, socketPair } from '../lib/unix.js';
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
  let hs: net.Socket | undefined;
  let theirsOpen = true;
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
    // node:net reads the step's word from a copy of our end, and closes that copy when it
    // likes (the step gone): the values go over `mine`, which stays ours until the end, so a
    // descriptor number node:net freed (and the agent reused) is never written to.
    const copy = dupFd(mine);
    if (copy === undefined) throw stepError('no descriptor left for the exec step');
    hs = new net.Socket({ fd: copy, readable: true, writable: false });
    // For its whole life: a step that dies mid-way resets it, and that is the run's failure,
    // never an uncaught error in the agent.
    hs.on('error', () => undefined);
    try {
      await hardened(child, hs);
      await spec.ready?.(child);
      await handOver(mine, fills);
    } catch (e) {
      child.kill('SIGKILL');
      throw e;
    }
    return child;
  } finally {
    if (theirsOpen) closeFd(theirs);
    fs.closeSync(devNull);
    hs?.destroy();
    closeFd(mine);
  }
}

function hardened(child: ChildProcess, hs: net.Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => done(stepError(`the exec step did not start within ${EXEC_STEP_START_MS / 1000} s`)),
      EXEC_STEP_START_MS,
    );
    const done = (e?: Error) => {
      clearTimeout(timer);
      hs.off('data', onData);
      hs.off('close', onClose);
      child.off('error', onError);
      if (e) reject(e);
      else resolve();
    };
    const onData = (d: Buffer) =>
      done(d[0] === HARDENED ? undefined : stepError('the exec step said something else'));
    const onClose = () => done(stepError('the exec step ended before it started the command'));
    const onError = (e: Error) => done(stepError(e.message));
    hs.on('data', onData);
    hs.once('close', onClose);
    child.once('error', onError);
  });
}

/** Makes, fills and seals each memfd, and passes it with its byte; ours are closed as they go. */
async function handOver(sock: number, fills: Array<{ name: string; pieces: Uint8Array[] }>) {
  for (const [i, f] of fills.entries()) {
    const fd = memfd(f.name);
    try {
      fillAndSeal(fd, f.pieces);
      const byte = Buffer.from([i === fills.length - 1 ? GO : MORE]);
      for (;;) {
        const n = sendWithFd(sock, byte, fd);
        if (n === 1) break;
        // The socket's buffer is full (many --fd): the step is reading; try again shortly.
        if (n === -EAGAIN) await new Promise((r) => setImmediate(r));
        else throw stepError(`the exec step went away (errno ${-n})`);
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
