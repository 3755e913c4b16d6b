/**
 * npm run test:load: the whole suite (`npm test`) beside busy loops, as on a loaded machine.
 * A test that passes only when the machine is idle is a test that lies (issue 23, section 5):
 * this is how such tests are found. Eight loops by default, on however many cores there are;
 * KEYWARD_LOAD_LOOPS=N for another number. The loops end with the suite, however it ends.
 *
 *   npm run test:load
 */
import { spawn, type ChildProcess } from 'node:child_process';

const loops = Number(process.env['KEYWARD_LOAD_LOOPS'] ?? 8);
if (!Number.isInteger(loops) || loops < 1 || loops > 64) {
  process.stderr.write(
    `KEYWARD_LOAD_LOOPS=${String(process.env['KEYWARD_LOAD_LOOPS'])}: 1 to 64\n`,
  );
  process.exit(2);
}

const hogs: ChildProcess[] = Array.from({ length: loops }, () =>
  spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }),
);
const stopHogs = () => {
  for (const h of hogs) h.kill('SIGKILL');
};
process.on('exit', stopHogs);
for (const sig of ['SIGINT', 'SIGTERM'] as const)
  process.on(sig, () => {
    stopHogs();
    process.exit(130);
  });

process.stderr.write(`test:load: npm test beside ${loops} busy loops\n`);
const started = Date.now();
const suite = spawn('npm', ['test'], { stdio: 'inherit' });
suite.on('exit', (code, signal) => {
  stopHogs();
  process.stderr.write(
    `test:load: ${code === 0 ? 'passed' : `failed (${signal ?? code})`} in ${Math.round((Date.now() - started) / 1000)} s beside ${loops} busy loops\n`,
  );
  process.exit(code ?? 1);
});
