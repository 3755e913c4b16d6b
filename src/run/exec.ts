/**
 * Starting a `keyward run` child from the agent (docs/RUN.md). The agent never builds the child's
 * environment as JS strings: it writes the control data (control.ts), secret values straight from
 * secure memory, into a sealed memfd, and starts the exec step (exec-helper.ts) with it. Values
 * for `--fd N` go into their own sealed memfds, which the child gets as descriptor N.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { sealedMemfd } from '../lib/process.js';
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

/** Starts the child; the memfds are closed here once the child has them. */
export function startChild(spec: ChildSpec): ChildProcess {
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
    for (const f of spec.fds) {
      const m = sealedMemfd(`keyward-fd-${f.fd}`, [f.value]);
      opened.push(m);
      fdMap.set(f.fd, m);
    }
    const controlAt = Math.max(3, ...spec.fds.map((f) => f.fd + 1));
    const control = sealedMemfd('keyward-exec', [
      ...controlPieces({
        flags: spec.pty ? FLAG_PTY : 0,
        file,
        argv: [spec.argv0 ?? file, ...spec.argv.slice(1)],
        env: [...byName.values()],
        fds: spec.fds.map((f) => f.fd),
      }),
    ]);
    opened.push(control);
    const stdio: StdioOptions = [];
    for (let i = 0; i <= controlAt; i++) {
      if (i < 3) stdio.push(spec.stdio);
      else if (i === controlAt) stdio.push(control);
      else stdio.push(fdMap.get(i) ?? 'ignore');
    }
    return spawn(process.execPath, [HELPER, String(controlAt)], {
      cwd: spec.cwd,
      env: { PATH: spec.path },
      stdio,
    });
  } finally {
    for (const fd of opened) fs.closeSync(fd);
  }
}
