/**
 * Starting a `keyward run` child from the agent (docs/RUN.md). The agent never builds the child's
 * environment as JS strings: it writes the control data (control.ts), secret values straight from
 * secure memory, into a sealed memfd, and starts the exec step (exec-helper.ts) with it. Values
 * for `--fd N` go into their own sealed memfds, which the child gets as descriptor N.
 *
 * The exec step is a new Node process, and any process of the user can read it (its
 * descriptors, its memory) until it makes itself not dumpable, which it does first. So it gets
 * the memfds empty, says when it has hardened (a byte on a socket pair), and only then are they
 * filled and sealed: nothing of a value is in a process of keyward's that another can read.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import type net from 'node:net';
import { fileURLToPath } from 'node:url';
import { fillAndSeal, memfd } from '../lib/process.js';
import { controlPieces, FLAG_PTY, type EnvPiece } from './control.js';

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
}

export const MAX_CHILD_FD = 255;

/**
 * Starts the child; resolves once the exec step has hardened and has the values (the memfds are
 * closed here then); rejects, the exec step killed, if it ends or fails before.
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
  const opened: number[] = [];
  try {
    const fdMap = new Map<number, number>();
    const fills: Array<{ fd: number; pieces: Uint8Array[] }> = [];
    for (const f of spec.fds) {
      const m = memfd(`keyward-fd-${f.fd}`);
      opened.push(m);
      fdMap.set(f.fd, m);
      fills.push({ fd: m, pieces: [f.value] });
    }
    const controlAt = Math.max(3, ...spec.fds.map((f) => f.fd + 1));
    const control = memfd('keyward-exec');
    opened.push(control);
    fills.push({
      fd: control,
      pieces: controlPieces({
        flags: spec.pty ? FLAG_PTY : 0,
        file,
        argv: [spec.argv0 ?? file, ...spec.argv.slice(1)],
        env: [...byName.values()],
        fds: spec.fds.map((f) => f.fd),
      }),
    });
    // The exec step's own socket for the handshake, past the child's descriptors.
    const handshakeAt = controlAt + 1;
    const stdio: StdioOptions = [];
    for (let i = 0; i <= handshakeAt; i++) {
      if (i < 3) stdio.push(spec.stdio);
      else if (i === controlAt) stdio.push(control);
      else if (i === handshakeAt) stdio.push('pipe');
      else stdio.push(fdMap.get(i) ?? 'ignore');
    }
    const child = spawn(process.execPath, [HELPER, String(controlAt), String(handshakeAt)], {
      cwd: spec.cwd,
      env: { PATH: spec.path },
      stdio,
    });
    const hs = child.stdio[handshakeAt] as net.Socket;
    try {
      await hardened(child, hs);
      for (const f of fills) fillAndSeal(f.fd, f.pieces);
      hs.end(GO);
    } catch (e) {
      child.kill('SIGKILL');
      hs.destroy();
      throw e;
    }
    return child;
  } finally {
    for (const fd of opened) fs.closeSync(fd);
  }
}

/** What the exec step sends once it is not dumpable, and what it waits for then. */
const HARDENED = 0x68;
const GO = Buffer.from([0x67]);

function hardened(child: ChildProcess, hs: net.Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (e?: Error) => {
      hs.off('data', onData);
      hs.off('close', onClose);
      child.off('error', onError);
      if (e) reject(e);
      else resolve();
    };
    const onData = (d: Buffer) =>
      done(d[0] === HARDENED ? undefined : new Error('the exec step said something else'));
    const onClose = () => done(new Error('the exec step ended before it hardened'));
    const onError = (e: Error) => done(e);
    hs.on('data', onData);
    hs.once('close', onClose);
    child.once('error', onError);
  });
}
