/**
 * Signing (issue 6): the same client drives OpenSSH's ssh-agent (started here) and keyward's SSH
 * agent socket with the same keys (imported into keyward from the files ssh-add loads): sign
 * throughput and p50 / p99 latency at concurrency 1 and 8 for ed25519, ECDSA P-256 and RSA-3072,
 * after WARM_UP untimed signatures of each key by each agent, in four rounds each, in turns.
 * keyward runs with its audit on (one durable record per signature) and a policy that allows
 * the benchmark keys. Ratios are keyward / ssh-agent from this run.
 */
import { spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes, sign as nodeSign } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import sodium from 'sodium-native';
import { benchHome } from './bench-home.js';
import { overwriteLog } from './overwrite-log.js';

type Timing = { p50: number; p99: number; perSecond: number };

/** Rounds of each agent, in turns. */
const ROUNDS = 4;
/**
 * Signatures each agent makes, untimed, before a key's timed rounds: the agents are long-running,
 * and what is compared is how each serves once running, not a fresh Node process's first
 * compilations (the audit's appends are measured after a warm-up for the same reason).
 */
const WARM_UP = Number(process.env['BENCH_SIGN_WARMUP'] ?? 1000);
/**
 * Signatures in a round of ed25519 and ECDSA (a fifth of it for RSA). BENCH_SIGN_WARMUP=0
 * BENCH_SIGN_ROUND=500 measures as the bench did before 2026-12-05.
 */
const ROUND = Number(process.env['BENCH_SIGN_ROUND'] ?? 2000);
/** The key types measured (BENCH_SIGN_KEYS=ed25519,ecdsa-p256 for some): all by default. */
const ONLY_KEYS = process.env['BENCH_SIGN_KEYS']?.split(',');
/** Runs of a new `ssh-keygen -Y sign` process per signature, for each agent. */
const COLD_RUNS = Number(process.env['BENCH_SIGN_COLD'] ?? 100);

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
}

const str = (b: Buffer) => {
  const l = Buffer.alloc(4);
  l.writeUInt32BE(b.length);
  return Buffer.concat([l, b]);
};

/** One agent connection that sends sign requests one after another. */
async function connection(
  sock: string,
): Promise<{ send: (req: Buffer) => Promise<void>; close: () => Promise<void> }> {
  const c = net.connect(sock);
  await new Promise<void>((r, j) => c.once('connect', r).once('error', j));
  let buf = Buffer.alloc(0);
  let waiting: ((ok: boolean) => void) | undefined;
  c.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const type = buf[4];
      buf = buf.subarray(4 + buf.readUInt32BE(0));
      waiting?.(type === 14);
    }
  });
  return {
    send: (req) =>
      new Promise<void>((resolve, reject) => {
        waiting = (ok) => (ok ? resolve() : reject(new Error('the agent refused to sign')));
        c.write(req);
      }),
    // Open connections would keep the benchmark process alive after it is done. Waited for, so
    // that what an agent does at a connection's end is counted in its round's CPU.
    close: () =>
      new Promise<void>((resolve) => {
        c.once('close', () => resolve());
        c.end();
      }),
  };
}

/** One round's latencies and wall time. */
type Round = { lat: number[]; ms: number; total: number };

async function timedRound(
  sock: string,
  req: Buffer,
  concurrency: number,
  total: number,
): Promise<Round> {
  const conns = await Promise.all(Array.from({ length: concurrency }, () => connection(sock)));
  for (const { send } of conns) await send(req); // warm up (and load keys)
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(
    conns.map(async ({ send }) => {
      for (let i = 0; i < total / concurrency; i++) {
        const t = performance.now();
        await send(req);
        lat.push(performance.now() - t);
      }
    }),
  );
  const ms = performance.now() - t0;
  await Promise.all(conns.map((c) => c.close()));
  return { lat, ms, total };
}

function timing(rounds: Round[]): Timing {
  const lat = rounds.flatMap((r) => r.lat).sort((a, b) => a - b);
  const ms = rounds.reduce((a, r) => a + r.ms, 0);
  const total = rounds.reduce((a, r) => a + r.total, 0);
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  return {
    p50: r3(percentile(lat, 0.5)),
    p99: r3(percentile(lat, 0.99)),
    perSecond: Math.round((total / ms) * 1000),
  };
}

export async function signBench(root: string): Promise<void> {
  const home = benchHome(
    root,
    'sign',
    'version: 1\nrules:\n  - { name: bench, targets: ["**"], kind: key, decision: allow }\n',
  );
  const { dir, kw } = home;
  const must = (cmd: string, args: string[], e: NodeJS.ProcessEnv = home.env) => {
    const r = spawnSync(cmd, args, { env: e, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const keys = [
    // Rounds of 2,000 (400 for RSA): rounds of 500 lasted ~70 ms at concurrency 8, and their
    // start (eight connections sending at once) and end (connections finishing one by one) were
    // a tenth of them.
    { name: 'ed25519', args: ['-t', 'ed25519'], flags: 0, n: ROUND * ROUNDS },
    { name: 'ecdsa-p256', args: ['-t', 'ecdsa', '-b', '256'], flags: 0, n: ROUND * ROUNDS },
    { name: 'rsa-3072', args: ['-t', 'rsa', '-b', '3072'], flags: 4, n: (ROUND * ROUNDS) / 5 },
  ].filter((k) => ONLY_KEYS === undefined || ONLY_KEYS.includes(k.name));
  for (const k of keys) {
    must('ssh-keygen', ['-q', '-N', '', '-C', k.name, '-f', path.join(dir, k.name), ...k.args]);
    kw(['key', 'import', path.join(dir, k.name)]);
  }
  await home.startAgent();
  // The design's floor (scripts/sign-floor.ts): an agent in Node that only frames, appends a
  // line durably (group commit) and signs; for ed25519 and ECDSA, in turns with the two agents.
  const floorSock = path.join(dir, 'floor.sock');
  const floorAgent = spawn(
    process.execPath,
    [path.join(root, 'dist/scripts/sign-floor.js'), floorSock, path.join(dir, 'floor.log')],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  process.once('exit', () => floorAgent.kill('SIGTERM'));
  await new Promise((r) => floorAgent.stdout?.once('data', r));
  const kwSock = path.join(dir, 'run', 'ssh-agent.sock');
  const sshSock = path.join(dir, 'ssh-agent.sock');
  const sshAgent = spawn('ssh-agent', ['-D', '-a', sshSock], { stdio: 'ignore' });
  for (let i = 0; i < 100 && !fs.existsSync(sshSock); i++)
    await new Promise((r) => setTimeout(r, 50));
  must(
    'ssh-add',
    keys.map((k) => path.join(dir, k.name)),
    { ...process.env, SSH_AUTH_SOCK: sshSock },
  );

  // A third reference: libsodium's ed25519 signing rate in one process, no agent at all.
  const sk = Buffer.alloc(64);
  const pk = Buffer.alloc(32);
  sodium.crypto_sign_keypair(pk, sk);
  const data = randomBytes(64);
  const sig = Buffer.alloc(64);
  const nRaw = 20_000;
  const t = performance.now();
  for (let i = 0; i < nRaw; i++) sodium.crypto_sign_detached(sig, data, sk);
  const libsodiumRate = Math.round((nRaw / (performance.now() - t)) * 1000);

  // And the floor under any agent written in Node: a bare Unix-socket server answering each
  // request with a reply of a signature's size, on one connection, at concurrency 1.
  const echoPath = path.join(dir, 'echo.sock');
  const reply = str(Buffer.concat([Buffer.of(14), str(Buffer.alloc(83, 1))]));
  const echo = net.createServer((c) =>
    c.on('data', (d: Buffer) => {
      if (d.length > 0) c.write(reply);
    }),
  );
  await new Promise<void>((r) => echo.listen(echoPath, r));
  const probe = str(Buffer.concat([Buffer.of(13), Buffer.alloc(150, 2)]));
  const floor0 = timing([await timedRound(echoPath, probe, 1, 5000)]);
  echo.close();

  // ECDSA P-256 signing in one process, through OpenSSL (node:crypto: the bench's own key, never
  // the agent's): the signing part of the ECDSA rows' physical limit.
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const nEc = 5_000;
  const tEc = performance.now();
  for (let i = 0; i < nEc; i++) nodeSign('sha256', data, ec);
  const opensslP256Rate = Math.round((nEc / (performance.now() - tEc)) * 1000);

  const results: Record<string, unknown> = {
    when: new Date().toISOString(),
    libsodiumEd25519PerSecond: libsodiumRate,
    opensslP256PerSecond: opensslP256Rate,
    nodeSocketFloor: floor0,
  };
  const lines: string[] = [
    `reference  libsodium ed25519 sign in-process: ${libsodiumRate.toLocaleString()} /s`,
    `reference  OpenSSL ECDSA P-256 sign in-process: ${opensslP256Rate.toLocaleString()} /s`,
    `reference  bare Node Unix-socket request/reply, conc 1: ${floor0.perSecond.toLocaleString()} /s (p50 ${floor0.p50} ms)`,
  ];
  // The physical limit at concurrency 1: a signature that is durable in a log first waits for one
  // durable write of a line, one round trip and one signature, one after another. The write is
  // timed in turns with the agents' rounds (a line of an audit entry's size, to a file beside
  // theirs), the round trip is the bare socket's p50 above, the signature the in-process rate.
  // Since 2026-12-07 the line is written over a file of fixed size and fdatasynced, as the
  // agent's journal does (docs/AUDIT.md, "The journal"); before, appended and fsynced.
  const rawLog = overwriteLog(path.join(dir, 'raw.log'), 4 << 20);
  const rawLine = Buffer.alloc(580, 0x20);
  rawLine[rawLine.length - 1] = 0x0a;
  const rawAppends = (n: number): number => {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      rawLog.write(rawLine);
      fs.fdatasyncSync(rawLog.fd);
    }
    return performance.now() - t0;
  };
  const signMs: Record<string, number> = {
    ed25519: 1000 / libsodiumRate,
    'ecdsa-p256': 1000 / opensslP256Rate,
  };
  // CPU a process has used (user + system), in ms, from /proc: the agent's cost per signature,
  // against ssh-agent's, over the same signatures (both concurrencies).
  const tick = 1000 / Number(must('getconf', ['CLK_TCK']).trim());
  const cpuMs = (pid: number | undefined) => {
    const f = fs.readFileSync(`/proc/${pid ?? 0}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) * tick;
  };
  for (const k of keys) {
    const blob = Buffer.from(
      fs.readFileSync(path.join(dir, `${k.name}.pub`), 'utf8').split(' ')[1] ?? '',
      'base64',
    );
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(k.flags);
    const body = Buffer.concat([Buffer.of(13), str(blob), str(data), flags]);
    const req = str(body);
    const cpu = { keyward: 0, sshAgent: 0, signatures: 0 };
    const withFloor = k.name !== 'rsa-3072';
    const socks = withFloor ? [sshSock, kwSock, floorSock] : [sshSock, kwSock];
    if (WARM_UP > 0) for (const sock of socks) await timedRound(sock, req, 8, WARM_UP);
    for (const conc of [1, 8]) {
      // The agents (and the floor) in turns, four rounds each: a machine that drifts during the
      // runs moves all alike, and the ratios stay what they are.
      const sshRounds: Round[] = [];
      const kwRounds: Round[] = [];
      const floorRounds: Round[] = [];
      const raw = { ms: 0, n: 0 };
      const per = Math.ceil(k.n / ROUNDS / conc) * conc;
      // Each round runs the agents in another order (ssh-agent, keyward, the floor; then
      // keyward first; ...): none is always the one that runs right after another's burst.
      const runs: Array<() => Promise<void>> = [
        async () => {
          const c0 = cpuMs(sshAgent.pid);
          sshRounds.push(await timedRound(sshSock, req, conc, per));
          cpu.sshAgent += cpuMs(sshAgent.pid) - c0;
        },
        async () => {
          const c0 = cpuMs(home.agentPid());
          kwRounds.push(await timedRound(kwSock, req, conc, per));
          cpu.keyward += cpuMs(home.agentPid()) - c0;
        },
        ...(withFloor
          ? [
              async () => {
                floorRounds.push(await timedRound(floorSock, req, conc, per));
              },
            ]
          : []),
        ...(conc === 1 && signMs[k.name] !== undefined
          ? [
              async () => {
                raw.ms += rawAppends(per);
                raw.n += per;
              },
            ]
          : []),
      ];
      for (let r = 0; r < ROUNDS; r++) {
        for (let i = 0; i < runs.length; i++) await runs[(r + i) % runs.length]?.();
        cpu.signatures += per + conc; // the warm-up sends one a connection
      }
      const ssh = timing(sshRounds);
      const keyward = timing(kwRounds);
      const ratio = keyward.perSecond / ssh.perSecond;
      const floor = withFloor ? timing(floorRounds) : undefined;
      const sMs = signMs[k.name];
      const r3 = (x: number) => Math.round(x * 1000) / 1000;
      const limit =
        raw.n > 0 && sMs !== undefined
          ? (() => {
              const fsyncMs = raw.ms / raw.n;
              const perSecond = Math.round(1000 / (fsyncMs + floor0.p50 + sMs));
              return {
                fsyncMs: r3(fsyncMs),
                roundTripMs: floor0.p50,
                signMs: r3(sMs),
                perSecond,
                ratio: perSecond / ssh.perSecond,
              };
            })()
          : undefined;
      results[`${k.name}-concurrency${conc}`] = {
        sshAgent: ssh,
        keyward,
        throughputRatio: ratio,
        ...(floor ? { floor, floorRatio: floor.perSecond / ssh.perSecond } : {}),
        ...(limit ? { limit } : {}),
      };
      lines.push(
        `sign ${k.name.padEnd(10)} conc ${conc}: ssh-agent ${ssh.perSecond.toLocaleString()} /s (p50 ${ssh.p50} ms, p99 ${ssh.p99} ms) | keyward ${keyward.perSecond.toLocaleString()} /s (p50 ${keyward.p50} ms, p99 ${keyward.p99} ms) | ratio ${ratio.toFixed(2)}x` +
          (floor
            ? ` | the design's floor ${floor.perSecond.toLocaleString()} /s (p50 ${floor.p50} ms): ${(floor.perSecond / ssh.perSecond).toFixed(2)}x`
            : '') +
          (limit
            ? ` | the physical limit ${limit.perSecond.toLocaleString()} /s (sync ${limit.fsyncMs} + round trip ${limit.roundTripMs} + sign ${limit.signMs} ms): ${limit.ratio.toFixed(2)}x`
            : ''),
      );
    }
    const per = (ms: number) => Math.round((ms / cpu.signatures) * 1000) / 1000;
    results[`${k.name}-cpu`] = {
      keywardMsPerSignature: per(cpu.keyward),
      sshAgentMsPerSignature: per(cpu.sshAgent),
      signatures: cpu.signatures,
    };
    lines.push(
      `sign ${k.name.padEnd(10)} CPU per signature: keyward agent ${per(cpu.keyward)} ms | ssh-agent ${per(cpu.sshAgent)} ms (${cpu.signatures} signatures, /proc/PID/stat)`,
    );
  }
  // What a real SSH client pays: a new process and a new connection for each signature
  // (`ssh-keygen -Y sign` asks the agent for its keys, then signs once), each agent in turns.
  // Measured with the ed25519 key, so only when BENCH_SIGN_KEYS includes it.
  if (keys.some((k) => k.name === 'ed25519')) {
    const pub = path.join(dir, 'ed25519.pub');
    const cold = { sshAgent: [] as number[], keyward: [] as number[] };
    const once = (sock: string) => {
      const t = performance.now();
      must('ssh-keygen', ['-Y', 'sign', '-n', 'file', '-f', pub], {
        ...process.env,
        SSH_AUTH_SOCK: sock,
      });
      return performance.now() - t;
    };
    for (let i = 0; i < COLD_RUNS; i++) {
      cold.sshAgent.push(once(sshSock));
      cold.keyward.push(once(kwSock));
    }
    const p = (a: number[], q: number) =>
      Math.round(
        percentile(
          [...a].sort((x, y) => x - y),
          q,
        ) * 1000,
      ) / 1000;
    results['ed25519-new-process'] = {
      runs: COLD_RUNS,
      sshAgent: { p50: p(cold.sshAgent, 0.5), p99: p(cold.sshAgent, 0.99) },
      keyward: { p50: p(cold.keyward, 0.5), p99: p(cold.keyward, 0.99) },
    };
    lines.push(
      `sign ed25519    a new ssh-keygen -Y sign per signature (${COLD_RUNS} runs): ssh-agent p50 ${p(cold.sshAgent, 0.5)} ms | keyward p50 ${p(cold.keyward, 0.5)} ms`,
    );
  }
  results['method'] = { warmUp: WARM_UP, round: ROUND, rounds: ROUNDS };
  sshAgent.kill('SIGTERM');
  floorAgent.kill('SIGTERM');
  fs.closeSync(rawLog.fd);
  await home.stop();
  const out = path.join(root, 'bench/results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'sign.json'), `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`${lines.join('\n')}\nwritten to bench/results/sign.json\n`);
}
