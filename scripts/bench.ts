/**
 * npm run bench: speed targets live here, not in timed tests. Each figure is printed as a number
 * and as a ratio against a reference measured in the same run on the same machine, and written
 * to bench/results/<name>.json.
 *
 * Audit (issue 3): append throughput with durability on, one writer and eight concurrent (group
 * commit); verify throughput; beside the raw HMAC-SHA256 rate (node:crypto) over lines of the
 * same size.
 */
import { createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AuditLog, GroupCommitter, listSegments, verifySegments } from '../src/audit/index.js';
import { boxKeypair } from '../src/audit/keys.js';
import { secureTake } from '../src/lib/secure.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function rate(count: number, ms: number): number {
  return Math.round((count / ms) * 1000);
}

function freshLog(): { log: AuditLog; seed: ReturnType<typeof secureTake>; home: string } {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-bench-'));
  fs.chmodSync(home, 0o700);
  const seed = secureTake(randomBytes(32));
  const log = new AuditLog(home);
  log.create(seed, boxKeypair().publicKey);
  return { log, seed, home };
}

const record = (i: number) => ({
  type: 'secret.read' as const,
  target: `bench/item-${i}`,
  decision: 'allow' as const,
});

async function main(): Promise<void> {
  // Reference: raw HMAC-SHA256 over a line of the size keyward writes.
  const sample = freshLog();
  sample.log.append([record(0)]);
  const lineBytes = fs.readFileSync(listSegments(sample.log.paths.dir)[0] ?? '').length;
  const line = randomBytes(lineBytes);
  const key = randomBytes(32);
  const hmacN = 200_000;
  let t = performance.now();
  for (let i = 0; i < hmacN; i++) createHmac('sha256', key).update(line).digest();
  const hmacRate = rate(hmacN, performance.now() - t);

  // One writer, each append durable (fsync) before the next.
  const one = freshLog();
  const n1 = Number(process.env['BENCH_APPENDS'] ?? 400);
  t = performance.now();
  for (let i = 0; i < n1; i++) one.log.append([record(i)]);
  const oneRate = rate(n1, performance.now() - t);

  // Eight concurrent writers in one process (the agent's case): group commit shares fsyncs.
  const eight = freshLog();
  const gc = new GroupCommitter(eight.log);
  const n8 = n1 * 4;
  t = performance.now();
  await Promise.all(
    Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; i < n8 / 8; i++) await gc.record(record(w * n8 + i));
    }),
  );
  const eightRate = rate(n8, performance.now() - t);

  // Verify: chain and every MAC, over a log of 20,000 entries.
  const big = freshLog();
  const nv = 20_000;
  for (let i = 0; i < nv; i += 500)
    big.log.append(Array.from({ length: 500 }, (_, j) => record(i + j)));
  t = performance.now();
  const r = verifySegments(listSegments(big.log.paths.dir), { seed: big.seed });
  const verifyRate = rate(nv, performance.now() - t);
  if (!r.ok) throw new Error(`bench log did not verify: ${r.finding.reason}`);

  const results = {
    machine: {
      cpus: os.cpus().length,
      model: os.cpus()[0]?.model ?? 'unknown',
      node: process.version,
    },
    when: new Date().toISOString(),
    reference: { name: 'HMAC-SHA256 (node:crypto), one line', lineBytes, perSecond: hmacRate },
    audit: {
      appendOneWriterDurable: { perSecond: oneRate, ratioToHmac: oneRate / hmacRate },
      appendEightWritersGroupCommit: {
        perSecond: eightRate,
        ratioToHmac: eightRate / hmacRate,
        batches: gc.batches,
        recordsPerFsync: n8 / gc.batches,
      },
      verify: { perSecond: verifyRate, ratioToHmac: verifyRate / hmacRate, entries: nv },
    },
  };
  const out = path.join(ROOT, 'bench/results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'audit.json'), `${JSON.stringify(results, null, 2)}\n`);
  const pct = (x: number) => `${(x * 100).toFixed(3)}%`;
  process.stdout.write(
    [
      `reference  HMAC-SHA256 over a ${lineBytes}-byte line: ${hmacRate.toLocaleString()} /s`,
      `audit      append, 1 writer, fsync each:     ${oneRate.toLocaleString()} entries/s  (${pct(oneRate / hmacRate)} of HMAC)`,
      `audit      append, 8 writers, group commit:  ${eightRate.toLocaleString()} entries/s  (${pct(eightRate / hmacRate)} of HMAC; ${(n8 / gc.batches).toFixed(1)} records per fsync)`,
      `audit      verify (chain + MAC):             ${verifyRate.toLocaleString()} entries/s  (${pct(verifyRate / hmacRate)} of HMAC)`,
      `written to bench/results/audit.json`,
      '',
    ].join('\n'),
  );
  for (const h of [sample, one, eight, big]) fs.rmSync(h.home, { recursive: true, force: true });
}

await main();
