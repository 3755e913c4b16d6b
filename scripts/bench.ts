/**
 * npm run bench: speed targets live here, not in timed tests. Each figure is printed as a number
 * and as a ratio against a reference measured in the same run on the same machine, and written
 * to bench/results/<name>.json.
 *
 * Audit (issue 3): append throughput with durability on, one writer and eight concurrent (group
 * commit); verify throughput; beside the raw HMAC-SHA256 rate (node:crypto) over lines of the
 * same size.
 */
import { cliBench } from './bench-cli.js';
import { writeReport } from './bench-report.js';
import { createHmac, randomBytes } from 'node:crypto';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { call } from '../src/agent/index.js';
import {
  AuditLog,
  GroupCommitter,
  listSegments,
  NO_SHIPPING,
  verifySegments,
} from '../src/audit/index.js';
import { boxKeypair } from '../src/audit/keys.js';
import { secureTake } from '../src/lib/secure.js';
import { mcpBench } from './bench-mcp.js';
import { overwriteLog } from './overwrite-log.js';
import { proxyBench } from './bench-proxy.js';
import { runBench } from './bench-run.js';
import { benchHome } from './bench-home.js';
import { signBench } from './bench-sign.js';
import { vaultBench } from './bench-vault.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function rate(count: number, ms: number): number {
  return Math.round((count / ms) * 1000);
}

/** The bench's own temporary directories, removed when it exits (it leaves nothing in /tmp). */
const scratch: string[] = [];
process.on('exit', () => {
  for (const d of scratch) fs.rmSync(d, { recursive: true, force: true });
});
function scratchDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-bench-'));
  scratch.push(d);
  return d;
}

function freshLog(keep = false): {
  log: AuditLog;
  seed: ReturnType<typeof secureTake>;
  home: string;
} {
  const home = scratchDir();
  fs.chmodSync(home, 0o700);
  const seed = secureTake(randomBytes(32));
  // A keeping writer is the agent's: it journals as the agent does (docs/AUDIT.md, "The journal").
  const log = new AuditLog(home, { keep, journal: keep });
  log.create(seed, boxKeypair().publicKey);
  return { log, seed, home };
}

/** Appends made before each append measurement starts (and raw ones before the reference's). */
const WARM_APPENDS = 400;

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
  // Both sides of the verify ratio are measured in turns, five rounds each, and each side's
  // median taken: one round of either is a tenth of a second, and this machine's neighbours
  // move a single one by a third, so the two must see the same moments.
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
  const hmacN = 40_000;
  const hmacRates: number[] = [];
  const hmacRound = () => {
    const t0 = performance.now();
    for (let i = 0; i < hmacN; i++) createHmac('sha256', key).update(line).digest();
    hmacRates.push(rate(hmacN, performance.now() - t0));
  };
  hmacRound();
  let t: number;

  // Raw references: a line appended and fsynced, from Node, on the same disk (the fsync on
  // libuv's thread pool); and for eight writers in lockstep, eight lines appended in one write
  // and fsynced together, as a batch of eight is (a larger write makes a slower fsync than one
  // line's). Since 2026-12-07 the limit is the journal's way (below); these stay beside it. The limits and the agent's appends are measured in
  // turns, five rounds each, and each row is its median: one round lasts a fraction of a
  // second, and this machine's neighbours move single rounds by a third.
  const n1 = Number(process.env['BENCH_APPENDS'] ?? 2000);
  const rounds = 5;
  const per = Math.ceil(n1 / rounds);
  const rawFile = path.join(scratchDir(), 'raw');
  const rawFd = fs.openSync(rawFile, 'a', 0o600);
  const rawLine = Buffer.alloc(lineBytes, 0x61);
  const rawBatch = Buffer.alloc(8 * lineBytes, 0x61);
  const rawAppend = async (data: Buffer) => {
    fs.writeSync(rawFd, data);
    await new Promise<void>((res, rej) => fs.fsync(rawFd, (e) => (e ? rej(e) : res())));
  };
  for (let i = 0; i < WARM_APPENDS; i++) await rawAppend(rawLine);
  // The agent's way since 2026-12-07 (docs/AUDIT.md, "The journal"): lines written over a file of
  // fixed size and fdatasynced, which writes no inode. Its raw form is this row's limit now.
  const over = overwriteLog(path.join(scratchDir(), 'over'));
  const rawOver = async (data: Buffer) => {
    over.write(data);
    await new Promise<void>((res, rej) => fs.fdatasync(over.fd, (e) => (e ? rej(e) : res())));
  };
  for (let i = 0; i < WARM_APPENDS; i++) await rawOver(rawLine);

  // One writer in the agent (its keeping log and group committer), each append durable before
  // the next: one request at a time.
  const one = freshLog(true);
  // An unlocked agent ships by the policy it holds (setShipping), never reading audit/ship.
  one.log.setShipping(NO_SHIPPING);
  const gc1 = new GroupCommitter(one.log);
  // Eight concurrent writers in the agent: group commit shares fsyncs.
  const eight = freshLog(true);
  eight.log.setShipping(NO_SHIPPING);
  const gc = new GroupCommitter(eight.log);
  const n8 = per * 4;
  // The agent is a long-running process: its appends are measured warm (JIT-compiled, its state
  // and segment known), as they are after its first minute.
  for (let i = 0; i < WARM_APPENDS; i++) await gc1.record(record(i));
  await Promise.all(
    Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; i < WARM_APPENDS / 8; i++) await gc.record(record(w * n8 + i));
    }),
  );
  const fsyncRates: number[] = [];
  const fsyncBatchRates: number[] = [];
  const overRates: number[] = [];
  const overBatchRates: number[] = [];
  const oneRates: number[] = [];
  const eightRates: number[] = [];
  let eightBatches = 0;
  for (let round = 0; round < rounds; round++) {
    t = performance.now();
    for (let i = 0; i < per; i++) await rawAppend(rawLine);
    fsyncRates.push(rate(per, performance.now() - t));
    const nb = Math.ceil(per / 2);
    t = performance.now();
    for (let i = 0; i < nb; i++) await rawAppend(rawBatch);
    fsyncBatchRates.push(rate(8 * nb, performance.now() - t));
    t = performance.now();
    for (let i = 0; i < per; i++) await rawOver(rawLine);
    overRates.push(rate(per, performance.now() - t));
    t = performance.now();
    for (let i = 0; i < nb; i++) await rawOver(rawBatch);
    overBatchRates.push(rate(8 * nb, performance.now() - t));
    t = performance.now();
    for (let i = 0; i < per; i++) await gc1.record(record(i));
    oneRates.push(rate(per, performance.now() - t));
    const batchesBefore = gc.batches;
    t = performance.now();
    await Promise.all(
      Array.from({ length: 8 }, async (_, w) => {
        for (let i = 0; i < n8 / 8; i++) await gc.record(record(w * n8 + i));
      }),
    );
    eightRates.push(rate(n8, performance.now() - t));
    eightBatches += gc.batches - batchesBefore;
  }
  fs.closeSync(rawFd);
  fs.closeSync(over.fd);
  one.log.close();
  const fsyncRate = median(fsyncRates);
  const fsyncBatchRate = median(fsyncBatchRates);
  const overRate = median(overRates);
  const overBatchRate = median(overBatchRates);
  const oneRate = median(oneRates);
  const eightRate = median(eightRates);

  // A CLI process's own append (direct mode): the state and the tail read again every time.
  const direct = freshLog();
  const nd = Math.ceil(n1 / 2);
  t = performance.now();
  for (let i = 0; i < nd; i++) direct.log.append([record(i)]);
  const directRate = rate(nd, performance.now() - t);

  // Verify: chain and every MAC, over a log of 20,000 entries.
  const big = freshLog();
  const nv = 20_000;
  for (let i = 0; i < nv; i += 500)
    big.log.append(Array.from({ length: 500 }, (_, j) => record(i + j)));
  const verifyRates: number[] = [];
  for (let round = 0; round < 5; round++) {
    if (round > 0) hmacRound();
    t = performance.now();
    const r = verifySegments(listSegments(big.log.paths.dir), { seed: big.seed });
    verifyRates.push(rate(nv, performance.now() - t));
    if (!r.ok) throw new Error(`bench log did not verify: ${r.finding.reason}`);
  }
  const hmacRate = median(hmacRates);
  const verifyRate = median(verifyRates);

  const results = {
    machine: {
      cpus: os.cpus().length,
      model: os.cpus()[0]?.model ?? 'unknown',
      node: process.version,
    },
    when: new Date().toISOString(),
    reference: { name: 'HMAC-SHA256 (node:crypto), one line', lineBytes, perSecond: hmacRate },
    fsync: { name: 'one line appended and fsynced (thread pool), raw', perSecond: fsyncRate },
    fsyncBatch: {
      name: 'eight lines appended in one write and fsynced (thread pool), raw: lines per second',
      perSecond: fsyncBatchRate,
    },
    over: {
      name: 'one line written over a file of fixed size and fdatasynced (thread pool), raw',
      perSecond: overRate,
    },
    overBatch: {
      name: 'eight lines so in one write, raw: lines per second',
      perSecond: overBatchRate,
    },
    audit: {
      appendOneWriterDurable: {
        perSecond: oneRate,
        ratioToHmac: oneRate / hmacRate,
        ratioToFsync: oneRate / fsyncRate,
        ratioToLimit: oneRate / overRate,
      },
      appendDirectCli: { perSecond: directRate, ratioToFsync: directRate / fsyncRate },
      appendEightWritersGroupCommit: {
        perSecond: eightRate,
        ratioToHmac: eightRate / hmacRate,
        batches: eightBatches,
        recordsPerFsync: (n8 * rounds) / eightBatches,
        // Eight writers in lockstep put at most eight records in each fsync.
        ratioToLimit: eightRate / overBatchRate,
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
      `audit      raw append+fsync:                ${fsyncRate.toLocaleString()} /s`,
      `audit      raw 8-line append+fsync:         ${fsyncBatchRate.toLocaleString()} lines/s`,
      `audit      raw write over+fdatasync (limit): ${overRate.toLocaleString()} /s`,
      `audit      raw 8-line write over+fdatasync: ${overBatchRate.toLocaleString()} lines/s`,
      `audit      append, 1 writer, each durable:  ${oneRate.toLocaleString()} entries/s  (${pct(oneRate / overRate)} of the limit)`,
      `audit      append, CLI direct mode:          ${directRate.toLocaleString()} entries/s`,
      `audit      append, 8 writers, group commit:  ${eightRate.toLocaleString()} entries/s  (${pct(eightRate / hmacRate)} of HMAC; ${((n8 * rounds) / eightBatches).toFixed(1)} records per sync)`,
      `audit      verify (chain + MAC):             ${verifyRate.toLocaleString()} entries/s  (${pct(verifyRate / hmacRate)} of HMAC)`,
      `written to bench/results/audit.json`,
      '',
    ].join('\n'),
  );
  for (const h of [sample, one, eight, big]) fs.rmSync(h.home, { recursive: true, force: true });
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
}

async function timed(
  concurrency: number,
  total: number,
  op: () => Promise<unknown>,
): Promise<{ p50: number; p99: number; perSecond: number }> {
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let i = 0; i < total / concurrency; i++) {
        const t = performance.now();
        await op();
        lat.push(performance.now() - t);
      }
    }),
  );
  const ms = performance.now() - t0;
  lat.sort((a, b) => a - b);
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  return {
    p50: r3(percentile(lat, 0.5)),
    p99: r3(percentile(lat, 0.99)),
    perSecond: rate(total, ms),
  };
}

/**
 * Agent (issue 5): read latency and throughput through the real socket with policy and a durable
 * audit record per read, beside a bare Unix-socket round trip of the same size (the reference).
 */
async function agentBench(): Promise<void> {
  const home = benchHome(
    ROOT,
    'agent',
    'version: 1\nrules:\n  - { name: bench, targets: ["bench/*"], decision: allow }\n',
  );
  const { dir } = home;
  home.kw(['secret', 'set', 'bench/token'], 'x'.repeat(40));
  await home.startAgent();
  const sock = path.join(dir, 'run', 'agent.sock');
  // Reference: a bare echo server on a Unix socket, one connection per round trip, like the client.
  const echoPath = path.join(dir, 'echo.sock');
  const echo = net.createServer((s) => s.on('data', (d) => s.end(d)));
  await new Promise<void>((r) => echo.listen(echoPath, r));
  const frame = Buffer.alloc(64, 1);
  const roundTrip = () =>
    new Promise<void>((resolve, reject) => {
      const c = net.createConnection(echoPath, () => c.write(frame));
      c.on('data', () => c.destroy());
      c.on('close', () => resolve());
      c.on('error', reject);
    });
  const n = Number(process.env['BENCH_READS'] ?? 2000);
  // The agent's resident memory (VmRSS), idle after the unlock and after 10,000 requests.
  const rssMiB = () => {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(
      fs.readFileSync(`/proc/${home.agentPid()}/status`, 'utf8'),
    );
    return Math.round((Number(m?.[1] ?? 0) / 1024) * 10) / 10;
  };
  const idleMiB = rssMiB();
  const results: Record<string, unknown> = {};
  const lines: string[] = [];
  for (const conc of [1, 8]) {
    const ref = await timed(conc, n, roundTrip);
    const read = await timed(conc, n, async () => {
      const f = await call(sock, 'read', { name: 'bench/token' });
      f.raw?.fill(0);
    });
    results[`concurrency${conc}`] = {
      reference: ref,
      read,
      throughputRatio: read.perSecond / ref.perSecond,
      p50Ratio: read.p50 / ref.p50,
    };
    lines.push(
      `reference  unix socket round trip, concurrency ${conc}: p50 ${ref.p50} ms, p99 ${ref.p99} ms, ${ref.perSecond.toLocaleString()} /s`,
      `agent      read (policy + fsynced audit), conc. ${conc}: p50 ${read.p50} ms, p99 ${read.p99} ms, ${read.perSecond.toLocaleString()} /s  (${((read.perSecond / ref.perSecond) * 100).toFixed(1)}% of the reference)`,
    );
  }
  // Up to 10,000 requests in all (the two runs above made 2n), then the memory again.
  const rest = Math.max(0, 10_000 - 2 * n);
  await timed(8, rest, async () => {
    const f = await call(sock, 'read', { name: 'bench/token' });
    f.raw?.fill(0);
  });
  const rss = { idleMiB, after10kMiB: rssMiB(), requests: 2 * n + rest };
  lines.push(
    `agent      RSS idle ${rss.idleMiB} MiB, after ${rss.requests} requests ${rss.after10kMiB} MiB`,
  );
  echo.close();
  await home.stop();
  fs.writeFileSync(
    path.join(ROOT, 'bench/results/agent.json'),
    `${JSON.stringify({ when: new Date().toISOString(), reads: n, ...results, rss }, null, 2)}\n`,
  );
  process.stdout.write(`${lines.join('\n')}\nwritten to bench/results/agent.json\n`);
}

// BENCH_ONLY=cli|audit|agent|sign|run|mcp|vault|proxy runs one part (or several: cli,audit).
const only = process.env['BENCH_ONLY']?.split(',');
const runs = (part: string) => only === undefined || only.includes(part);
if (runs('cli')) await cliBench(ROOT);
if (runs('audit')) await main();
if (runs('agent')) await agentBench();
if (runs('sign')) await signBench(ROOT);
if (runs('run')) await runBench(ROOT);
if (runs('mcp')) await mcpBench(ROOT);
if (runs('vault')) await vaultBench(ROOT);
if (runs('proxy')) await proxyBench(ROOT);
process.stdout.write(`written ${writeReport(ROOT)}\n`);
