/**
 * The exec step of `keyward run` (docs/RUN.md): a short-lived process the agent starts for each
 * run. It reads the program, its arguments and its whole environment from a sealed memfd, builds
 * the environment as NUL-terminated byte strings (Buffers: no secret becomes a JS string), and
 * calls execvpe(3), which replaces this process with the program. Nothing it read survives the
 * exec; if the exec fails, it zeroes what it read and exits 127 (not found) or 126.
 */
import fs from 'node:fs';
import { hardenProcess } from '../lib/libc.js';
import { cleanForExec, execvpe, keepAcrossExec, moveFd, newSession } from '../lib/process.js';
import { recvWithFd, sendWithFd, socketPair } from '../lib/unix.js';
import { FLAG_PTY, GO, HARDENED, MORE, parseControl } from './control.js';

const ENOENT = 2;

function fail(message: string, code: number): never {
  fs.writeSync(2, `keyward run: ${message}\n`);
  process.exit(code);
}

function main(): void {
  // No inspector on SIGUSR1 while this process holds the child's environment.
  process.on('SIGUSR1', () => undefined);
  hardenProcess();
  const controlAt = Number(process.argv[2]);
  const hs = Number(process.argv[3]);
  if (!Number.isInteger(controlAt) || controlAt < 3 || hs !== controlAt + 1)
    fail('no control descriptor', 126);
  // Not dumpable now: say so, with one end of a socket pair made now (no other
  // process can take it from this one any more; the first socket another may have). The agent
  // passes the memfds over it (exec.ts): the control data first, then each --fd value, the
  // last with GO.
  const [mine, theirs] = socketPair();
  const said = sendWithFd(hs, Buffer.from([HARDENED]), theirs);
  fs.closeSync(theirs);
  fs.closeSync(hs);
  if (said !== 1) fail('the agent went away', 126);
  const got: number[] = [];
  const one = Buffer.alloc(1);
  for (;;) {
    const r = recvWithFd(mine, one, true);
    if (r.n !== 1 || r.fd === undefined || (one[0] !== MORE && one[0] !== GO))
      fail('the agent went away', 126);
    got.push(r.fd);
    if (one[0] === GO) break;
  }
  fs.closeSync(mine);
  const [controlFd, ...valueFds] = got as [number, ...number[]];
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
    if (c.fds.length !== valueFds.length) throw new Error('the descriptors do not match');
    // Each value's memfd to its number (every number up to the handshake's was taken at
    // spawn, so those received are all above them).
    c.fds.forEach((fd, i) => moveFd(valueFds[i] as number, fd));
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
