/**
 * Delivery (issue 7): the wall time of `keyward run -- true` (through a running, unlocked agent,
 * with one secret injected and masking on), beside a bare `node -e ""` and `true`, each the
 * median of many runs, and as ratios. keyward run is two Node processes (the CLI and the exec
 * step) plus the agent's work, so `node -e ""` is its natural unit.
 */
import fs from 'node:fs';
import path from 'node:path';
import { benchHome, median, timeOne } from './bench-home.js';

export async function runBench(root: string): Promise<void> {
  const home = benchHome(
    root,
    'run',
    'version: 1\nrules:\n  - { name: bench, targets: ["**"], decision: allow }\n',
  );
  const { bin, env, kw } = home;
  kw(['secret', 'set', 'bench/token'], 'a-benchmark-token-value');
  await home.startAgent();

  const n = Number(process.env['BENCH_RUNS'] ?? 40);
  const cases: Array<[string, string, string[]]> = [
    ['true', 'true', []],
    ['node -e ""', process.execPath, ['-e', '']],
    ['keyward run -- true', process.execPath, [bin, 'run', '--', 'true']],
    [
      'keyward run --env T=bench/token -- true',
      process.execPath,
      [bin, 'run', '--env', 'T=bench/token', '--', 'true'],
    ],
  ];
  const results: Record<string, number> = {};
  for (const [name, cmd, args] of cases) {
    timeOne(cmd, args, env); // warm the page cache
    const times: number[] = [];
    for (let i = 0; i < n; i++) times.push(timeOne(cmd, args, env));
    results[name] = Math.round(median(times) * 100) / 100;
  }
  await home.stop();

  const node = results['node -e ""'] ?? 1;
  const tru = results['true'] ?? 1;
  const lines = Object.entries(results).map(
    ([k, ms]) =>
      `run  ${k.padEnd(40)} median ${ms.toFixed(2)} ms  (${(ms / node).toFixed(2)}x node -e "", ${(ms / tru).toFixed(1)}x true)`,
  );
  const out = path.join(root, 'bench/results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(
    path.join(out, 'run.json'),
    `${JSON.stringify({ when: new Date().toISOString(), runs: n, medianMs: results, referenceNodeMs: node, referenceTrueMs: tru }, null, 2)}\n`,
  );
  process.stdout.write(`${lines.join('\n')}\nwritten to bench/results/run.json\n`);
}
