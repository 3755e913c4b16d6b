/**
 * The exec step of `keyward run` (docs/RUN.md): a short-lived process the agent starts for each
 * run. It reads the program, its arguments and its whole environment from a sealed memfd, builds
 * the environment as NUL-terminated byte strings (Buffers: no secret becomes a JS string), and
 * calls execvpe(3), which replaces this process with the program. Nothing it read survives the
 * exec; if the exec fails, it zeroes what it read and exits 127 (not found) or 126.
 */
import fs from 'node:fs';
import { hardenProcess } from '../lib/libc.js';
import { blocking, cleanForExec, execvpe, keepAcrossExec, newSession } from '../lib/process.js';
import { FLAG_PTY, parseControl } from './control.js';

const ENOENT = 2;

function fail(message: string, code: number): never {
  fs.writeSync(2, `keyward run: ${message}\n`);
  process.exit(code);
}

function main(): void {
  // No inspector on SIGUSR1 while this process holds the child's environment.
  process.on('SIGUSR1', () => undefined);
  hardenProcess();
  const controlFd = Number(process.argv[2]);
  if (!Number.isInteger(controlFd) || controlFd < 3) fail('no control descriptor', 126);
  // Not dumpable now: say so, and wait until the agent has filled the memfds (exec.ts).
  const hs = Number(process.argv[3]);
  if (!Number.isInteger(hs) || hs <= controlFd) fail('no handshake descriptor', 126);
  blocking(hs);
  fs.writeSync(hs, Buffer.from([0x68]));
  const go = Buffer.alloc(1);
  if (fs.readSync(hs, go, 0, 1, null) !== 1 || go[0] !== 0x67) fail('the agent went away', 126);
  fs.closeSync(hs);
  const size = fs.fstatSync(controlFd).size;
  const data = Buffer.alloc(size);
  const block = Buffer.alloc(size);
  let file = '';
  try {
    let off = 0;
    while (off < size) {
      const n = fs.readSync(controlFd, data, off, size - off, off);
      if (n === 0) break;
      off += n;
    }
    fs.closeSync(controlFd);
    const c = parseControl(data, block);
    file = c.file;
    data.fill(0);
    cleanForExec();
    for (const fd of [0, 1, 2, ...c.fds]) keepAcrossExec(fd);
    newSession((c.flags & FLAG_PTY) !== 0);
    const errno = execvpe(c.file, c.argv, c.env);
    block.fill(0);
    fail(
      `cannot run ${JSON.stringify(file)}: ${errno === ENOENT ? 'command not found' : `exec failed (errno ${errno})`}`,
      errno === ENOENT ? 127 : 126,
    );
  } catch (e) {
    data.fill(0);
    block.fill(0);
    fail(`cannot start ${JSON.stringify(file)}: ${e instanceof Error ? e.message : 'error'}`, 126);
  }
}

main();
