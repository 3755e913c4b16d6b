/**
 * The credential proxy (issue 22): requests per second and the latency a request gains through
 * `keyward run --proxy`, against the same requests made direct to the same HTTPS server, in the
 * same run. The client is a small Node program inside the run (only the run's tree may use its
 * proxy): keep-alive HTTP/1.1 over TLS, one connection at a time (latency) and eight at once
 * (throughput). Through the proxy each request is framed, checked, its substitution made durable
 * in the audit log (an fsync: rule 4) and re-encrypted; direct, it is only TLS.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type net from 'node:net';
import path from 'node:path';
import { upstreamCertificates } from '../test/upstream-ca.js';
import { benchHome } from './bench-home.js';

/** The client: N requests over C keep-alive TLS connections, direct or through HTTPS_PROXY. */
const CLIENT = `
import net from 'node:net'; import tls from 'node:tls'; import fs from 'node:fs';
const [mode, port, n, c, upstreamCa] = process.argv.slice(2);
const viaProxy = mode === 'proxy';
const ca = fs.readFileSync(viaProxy ? process.env.NODE_EXTRA_CA_CERTS : upstreamCa);
const token = process.env.T;
async function connect() {
  let raw;
  if (viaProxy) {
    const u = new URL(process.env.HTTPS_PROXY);
    raw = net.connect(Number(u.port), u.hostname);
    const auth = Buffer.from(u.username + ':' + u.password).toString('base64');
    raw.write('CONNECT 127.0.0.1:' + port + ' HTTP/1.1\\r\\nHost: 127.0.0.1:' + port + '\\r\\nProxy-Authorization: Basic ' + auth + '\\r\\n\\r\\n');
    await new Promise((res, rej) => { let got = ''; const on = (d) => { got += d; if (got.includes('\\r\\n\\r\\n')) { raw.off('data', on); got.startsWith('HTTP/1.1 200') ? res() : rej(new Error(got)); } }; raw.on('data', on); });
  }
  const s = tls.connect({ host: '127.0.0.1', ...(raw ? { socket: raw } : { port: Number(port) }), ca, ALPNProtocols: ['http/1.1'] });
  await new Promise((res, rej) => { s.once('secureConnect', res); s.once('error', rej); });
  return s;
}
function request(s, i) {
  return new Promise((res, rej) => {
    let got = Buffer.alloc(0);
    const on = (d) => { got = Buffer.concat([got, d]); const end = got.indexOf('\\r\\n\\r\\n'); if (end < 0) return; const len = Number(/content-length: (\\d+)/i.exec(got.subarray(0, end).toString())?.[1] ?? 0); if (got.length >= end + 4 + len) { s.off('data', on); res(); } };
    s.on('data', on); s.once('error', rej);
    s.write('GET /r' + i + ' HTTP/1.1\\r\\nHost: 127.0.0.1:' + port + '\\r\\nAuthorization: token ' + token + '\\r\\n\\r\\n');
  });
}
const lat = [];
const t0 = performance.now();
await Promise.all(Array.from({ length: Number(c) }, async (_, w) => {
  const s = await connect();
  for (let i = 0; i < Number(n) / Number(c); i++) { const t = performance.now(); await request(s, w * 100000 + i); lat.push(performance.now() - t); }
  s.end();
}));
const ms = performance.now() - t0;
lat.sort((a, b) => a - b);
console.log(JSON.stringify({ perSecond: Math.round(Number(n) / ms * 1000), p50: lat[Math.floor(lat.length / 2)], p99: lat[Math.floor(lat.length * 0.99)] }));
`;

interface Measure {
  perSecond: number;
  p50: number;
  p99: number;
}

export async function proxyBench(root: string): Promise<void> {
  const home = benchHome(root, 'proxy', 'version: 1\n');
  const { dir, bin, env, kw } = home;
  const certs = upstreamCertificates(dir, ['127.0.0.1']);
  kw(['secret', 'set', 'bench/token'], 'ghp_BenchmarkTokenValue0123456789abcdef');
  const server = https.createServer(certs.good, (_req, res) => res.end('ok'));
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const policy = path.join(dir, 'proxy-policy.yaml');
  const sha = createHash('sha256').update(fs.readFileSync(certs.ca)).digest('hex');
  fs.writeFileSync(
    policy,
    `version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\nproxy:\n  upstream_ca: ${certs.ca}\n  upstream_ca_sha256: ${sha}\n  hosts:\n    127.0.0.1: { secret: bench/token, port: ${port} }\n`,
  );
  kw(['policy', 'apply', policy]);
  const client = path.join(dir, 'client.mjs');
  fs.writeFileSync(client, CLIENT);
  await home.startAgent();
  const n = Number(process.env['BENCH_PROXY_REQUESTS'] ?? 2000);
  const measure = (mode: 'direct' | 'proxy', c: number) =>
    new Promise<Measure>((resolve, reject) => {
      const p = spawn(
        process.execPath,
        [
          bin,
          ...(process.env['BENCH_PROFILE'] ? ['--allow-debugger'] : []),
          'run',
          '--proxy',
          '--no-masking',
          '--env',
          'T=bench/token',
          '--',
          process.execPath,
          client,
          mode,
          String(port),
          String(n),
          String(c),
          path.join(dir, 'ca.pem'),
        ],
        { env, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      p.on('exit', (code) =>
        code === 0
          ? resolve(JSON.parse(out) as Measure)
          : reject(new Error(`proxy bench client: ${err}`)),
      );
    });
  // Alternated, so a machine that gets busier during the run weighs on both the same.
  const rounds: Record<string, Measure[]> = { d1: [], p1: [], d8: [], p8: [] };
  try {
    for (let round = 0; round < 2; round++) {
      rounds['d1']?.push(await measure('direct', 1));
      rounds['p1']?.push(await measure('proxy', 1));
      rounds['d8']?.push(await measure('direct', 8));
      rounds['p8']?.push(await measure('proxy', 8));
    }
  } finally {
    await home.stop();
    server.close();
  }
  const best = (xs: Measure[] = []) =>
    xs.reduce((a, b) => (b.perSecond > a.perSecond ? b : a), { perSecond: 0, p50: 0, p99: 0 });
  const r = (x: number) => Math.round(x * 1000) / 1000;
  const [d1, p1, d8, p8] = [
    best(rounds['d1']),
    best(rounds['p1']),
    best(rounds['d8']),
    best(rounds['p8']),
  ];
  const results = {
    when: new Date().toISOString(),
    requests: n,
    direct: { one: d1, eight: d8 },
    proxy: { one: p1, eight: p8 },
    addedMs: { p50: r(p1.p50 - d1.p50), p99: r(p1.p99 - d1.p99) },
    ratio: { one: r(p1.perSecond / d1.perSecond), eight: r(p8.perSecond / d8.perSecond) },
  };
  const out = path.join(root, 'bench/results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'proxy.json'), `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(
    `proxy requests/s, 1 connection: direct ${d1.perSecond}, through keyward run --proxy ${p1.perSecond} (${results.ratio.one}x); 8 connections: direct ${d8.perSecond}, proxy ${p8.perSecond} (${results.ratio.eight}x)\nproxy added latency (1 connection): p50 +${results.addedMs.p50} ms, p99 +${results.addedMs.p99} ms\nwritten to bench/results/proxy.json\n`,
  );
}
