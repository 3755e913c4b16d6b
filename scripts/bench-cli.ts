/**
 * The command line's own cost (issue 17): `keyward read NAME` through an unlocked agent (policy
 * allow, the release fsynced in the audit log), `keyward --version` (start-up alone), against
 * `node -e 0` measured in the same run; the median of many runs each. Also how long loading the
 * CLI's modules takes, measured inside one process, which is what start-up work can shrink.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { benchHome, median, timeOne } from './bench-home.js';

export async function cliBench(root: string): Promise<void> {
  const home = benchHome(
    root,
    'cli',
    'version: 1\nrules:\n  - { name: bench, targets: ["**"], decision: allow }\n',
  );
  const { bin, kw } = home;
  // Every process is timed without NODE_EXTRA_CA_CERTS: Node reads and parses that file before it
  // runs any code (34 ms of each start on this machine, where the environment sets it to the
  // system's bundle; `node -e 0` 55 ms with it, 21 ms without). Left in, it is a constant on both
  // sides of the read's ratio and flatters it (1.24x with it, 1.61x without, in one run); a
  // user's shell seldom sets it. It is measured once more as it is, for the record.
  const given = home.env;
  const env = { ...given };
  delete env['NODE_EXTRA_CA_CERTS'];
  kw(['secret', 'set', 'bench/token'], 'a-benchmark-token-value');
  await home.startAgent();
  const n = Number(process.env['BENCH_RUNS'] ?? 30);
  const cases: Array<[string, string, string[], NodeJS.ProcessEnv?]> = [
    ['node -e 0', process.execPath, ['-e', '0']],
    ...(given['NODE_EXTRA_CA_CERTS'] === undefined
      ? []
      : [
          [
            'node -e 0 (with NODE_EXTRA_CA_CERTS as set here)',
            process.execPath,
            ['-e', '0'],
            given,
          ] as [string, string, string[], NodeJS.ProcessEnv],
        ]),
    ['keyward --version', process.execPath, [bin, '--version']],
    ['keyward read NAME (agent)', process.execPath, [bin, 'read', 'bench/token']],
  ];
  const results: Record<string, number> = {};
  // The cases in turns, not one after the other: a machine that speeds up or slows down during
  // the runs (as a shared one does, minutes after a build) moves every case alike, and the
  // ratios to `node -e 0` stay what they are.
  for (const [, cmd, args, e] of cases) timeOne(cmd, args, e ?? env); // warm the page cache
  const times = cases.map((): number[] => []);
  for (let i = 0; i < n; i++)
    cases.forEach(([, cmd, args, e], c) => times[c]?.push(timeOne(cmd, args, e ?? env)));
  cases.forEach(([name], c) => (results[name] = Math.round(median(times[c] ?? []) * 10) / 10));
  // Agent start and stop (each a CLI process waiting for the agent), against OpenSSH's ssh-agent
  // started and killed the same way, from a shell.
  kw(['agent', 'stop']);
  const starts: number[] = [];
  const stops: number[] = [];
  for (let i = 0; i < Math.min(n, 10); i++) {
    starts.push(timeOne(process.execPath, [bin, 'agent', 'start'], env));
    stops.push(timeOne(process.execPath, [bin, 'agent', 'stop'], env));
  }
  const ssh: number[] = [];
  for (let i = 0; i < Math.min(n, 10); i++)
    ssh.push(
      timeOne('sh', ['-c', 'eval "$(ssh-agent -s)" >/dev/null && ssh-agent -k >/dev/null'], env),
    );
  results['keyward agent start'] = Math.round(median(starts) * 10) / 10;
  results['keyward agent stop'] = Math.round(median(stops) * 10) / 10;
  results['ssh-agent start and stop'] = Math.round(median(ssh) * 10) / 10;
  await home.stop();
  // Module loading alone: importing the CLI's entry in a fresh process.
  const loads: number[] = [];
  const main = path.join(root, 'dist/src/cli/main.js');
  for (let i = 0; i < 10; i++) {
    const r = spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const t = performance.now(); await import(${JSON.stringify(main)}); process.stdout.write(String(performance.now() - t));`,
      ],
      { encoding: 'utf8' },
    );
    loads.push(Number(r.stdout));
  }
  const node = results['node -e 0'] ?? 1;
  const out = {
    when: new Date().toISOString(),
    runs: n,
    medianMs: results,
    ratioToNode: Object.fromEntries(
      Object.entries(results).map(([k, v]) => [k, Math.round((v / node) * 100) / 100]),
    ),
    cliModuleLoadMs: Math.round(median(loads) * 10) / 10,
  };
  fs.writeFileSync(path.join(root, 'bench/results/cli.json'), `${JSON.stringify(out, null, 2)}\n`);
  const lines = Object.entries(results).map(
    ([k, ms]) =>
      `cli  ${k.padEnd(28)} median ${ms.toFixed(1)} ms  (${(ms / node).toFixed(2)}x node -e 0)`,
  );
  lines.push(`cli  loading the CLI's modules: median ${out.cliModuleLoadMs} ms`);
  process.stdout.write(`${lines.join('\n')}\nwritten to bench/results/cli.json\n`);
}
