/**
 * A write's cost against the vault's size (issue 17): `keyward secret set` (direct mode, the
 * fastest KDF, so the KDF is aside) on vaults of 10, 10,000 and 100,000 secrets, the median of
 * several runs each, and the ratio of the largest to the smallest. The vaults are filled in this
 * process through the library, in one save.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { secureFree, secureTake } from '../src/lib/secure.js';
import { Vault, vaultPaths } from '../src/vault/index.js';
import { benchHome, median } from './bench-home.js';

const SIZES = (process.env['BENCH_VAULT_SIZES'] ?? '10,10000,100000').split(',').map(Number);

function fill(home: string, passFile: string, n: number): void {
  const paths = vaultPaths(home);
  const pass = secureTake(Buffer.from(fs.readFileSync(passFile, 'utf8').trim(), 'utf8'));
  const v = Vault.open(paths, { passphrase: pass });
  secureFree(pass);
  const value = secureTake(Buffer.alloc(24));
  try {
    for (let i = 0; i < n; i++) {
      value.write(`value-${String(i).padStart(18, '0')}`);
      v.set(`fill/${String(i).padStart(6, '0')}`, value);
    }
    v.save();
  } finally {
    secureFree(value);
    v.close();
  }
}

export async function vaultBench(root: string): Promise<void> {
  const runs = Number(process.env['BENCH_VAULT_RUNS'] ?? 11);
  const results: Record<string, { medianMs: number; fileBytes: number }> = {};
  const lines: string[] = [];
  // Every vault filled first, then their runs in turns: a machine that drifts during the runs
  // moves each size alike, and the ratio between them stays what it is.
  const homes = SIZES.map((n) => benchHome(root, `vault${n}`, 'version: 1\nrules: []\n'));
  try {
    SIZES.forEach((n, k) => {
      const env = homes[k]?.env ?? {};
      fill(env['KEYWARD_HOME'] ?? '', env['KEYWARD_PASSPHRASE_FILE'] ?? '', n);
    });
    const times = SIZES.map((): number[] => []);
    for (let i = 0; i <= runs; i++)
      homes.forEach((home, k) => {
        const t = performance.now();
        const r = spawnSync(process.execPath, [home.bin, 'secret', 'set', `bench/new-${i}`], {
          env: home.env,
          input: 'a-new-secret-value',
          stdio: ['pipe', 'ignore', 'pipe'],
        });
        const ms = performance.now() - t;
        if (r.status !== 0) throw new Error(`secret set exited ${r.status}: ${String(r.stderr)}`);
        if (i > 0) times[k]?.push(ms); // the first warms the page cache
      });
    SIZES.forEach((n, k) => {
      const home = homes[k]?.env['KEYWARD_HOME'] ?? '';
      const fileBytes = fs.statSync(path.join(home, 'vault.kw')).size;
      results[String(n)] = { medianMs: Math.round(median(times[k] ?? []) * 10) / 10, fileBytes };
      lines.push(
        `vault  secret set on ${n.toLocaleString('en')} secrets: median ${results[String(n)]?.medianMs} ms (vault.kw ${fileBytes.toLocaleString('en')} bytes)`,
      );
    });
  } finally {
    for (const home of homes) await home.stop();
  }
  const first = results[String(SIZES[0])]?.medianMs ?? 1;
  const last = results[String(SIZES[SIZES.length - 1])]?.medianMs ?? 0;
  const out = {
    when: new Date().toISOString(),
    runs,
    // Keyed by size (no arrays: the file stays as prettier writes JSON).
    secretSet: results,
    ratioLargestToSmallest: Math.round((last / first) * 100) / 100,
  };
  fs.writeFileSync(
    path.join(root, 'bench/results/vault.json'),
    `${JSON.stringify(out, null, 2)}\n`,
  );
  lines.push(`vault  largest / smallest: ${out.ratioLargestToSmallest}x`);
  process.stdout.write(`${lines.join('\n')}\nwritten to bench/results/vault.json\n`);
}
