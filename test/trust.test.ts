/**
 * The trust core (docs/THREAT-MODEL.md), tried as an attacker running as the same user, or as
 * another uid, would: a debuggable agent, a fake agent on a socket the victim uses, a caller that
 * hides or forges its identity, a grant carried across exec.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { agentHome, stopAgent, type AgentHome } from './agent-helpers.js';
import { BIN, kw, ROOT } from './helpers.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

/** A TCP port nothing listens on right now. */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

describe('a keyward process can never be debugged unless the user says so', () => {
  test('an agent started with NODE_OPTIONS=--inspect=127.0.0.1:PORT refuses to run, and no inspector port stays open', async () => {
    const h = agentHome();
    const port = await freePort();
    const r = spawnSync(process.execPath, [BIN, 'agent', 'run'], {
      env: { ...h.env, NODE_OPTIONS: `--inspect=127.0.0.1:${port}` },
      encoding: 'utf8',
    });
    assert.equal(r.status, 8, r.stderr);
    assert.match(r.stderr, /keyward: error: keyward refuses to run .*NODE_OPTIONS holds --inspect/);
    assert.match(r.stderr, /keyward: hint: .*--allow-debugger/);
    assert.equal(await listening(port), false, 'the inspector port is closed');
    assert.equal(fs.existsSync(h.sock), false, 'no agent socket was made');
  });

  const marker = (h: AgentHome) => path.join(h.dir, 'preloaded');
  const cases: Array<[string, (h: AgentHome) => { args: string[]; env: NodeJS.ProcessEnv }]> = [
    [
      'NODE_OPTIONS=--inspect=127.0.0.1:0',
      () => ({ args: [], env: { NODE_OPTIONS: '--inspect=127.0.0.1:0' } }),
    ],
    [
      'NODE_OPTIONS="--require FILE"',
      (h) => ({ args: [], env: { NODE_OPTIONS: `--require "${h.dir}/pre.cjs"` } }),
    ],
    [
      'NODE_OPTIONS=--import=FILE',
      (h) => ({ args: [], env: { NODE_OPTIONS: `--import=${h.dir}/pre.cjs` } }),
    ],
    [
      'NODE_OPTIONS=--experimental-loader=FILE',
      (h) => ({ args: [], env: { NODE_OPTIONS: `--experimental-loader=${h.dir}/pre.cjs` } }),
    ],
    [
      'node --inspect=127.0.0.1:0 on the command line',
      () => ({ args: ['--inspect=127.0.0.1:0'], env: {} }),
    ],
    ['node -r FILE on the command line', (h) => ({ args: ['-r', `${h.dir}/pre.cjs`], env: {} })],
    [
      'node --heapsnapshot-signal=SIGUSR2',
      () => ({ args: ['--heapsnapshot-signal=SIGUSR2'], env: {} }),
    ],
  ];
  for (const [label, arrange] of cases) {
    test(`the CLI refuses to run with ${label} (exit 8), before it reads anything`, () => {
      const h = agentHome();
      fs.writeFileSync(
        path.join(h.dir, 'pre.cjs'),
        `require('fs').writeFileSync(${JSON.stringify(marker(h))}, 'x')\n`,
      );
      const { args, env } = arrange(h);
      const r = spawnSync(process.execPath, [...args, BIN, 'secret', 'list'], {
        env: { ...h.env, ...env },
        encoding: 'utf8',
      });
      assert.equal(r.status, 8, r.stderr);
      assert.match(
        r.stderr,
        /keyward: error: keyward refuses to run where another process could debug it or load code into it/,
      );
      assert.doesNotMatch(r.stdout, /NAME|no secrets/);
    });
  }

  test('harmless Node options (a heap limit, no warnings) are not refused', () => {
    const h = agentHome();
    const r = kw(['secret', 'list'], {
      env: { ...h.env, NODE_OPTIONS: '--max-old-space-size=512 --no-warnings' },
    });
    assert.equal(r.code, 0, r.stderr);
  });

  test('agent run refuses LD_PRELOAD; agent start gives the agent a clean environment', async () => {
    const h = agentHome();
    const lib = ['/lib/x86_64-linux-gnu/libm.so.6', '/lib/aarch64-linux-gnu/libm.so.6'].find((p) =>
      fs.existsSync(p),
    );
    assert.ok(lib, 'a harmless library to preload');
    const run = spawnSync(process.execPath, [BIN, 'agent', 'run'], {
      env: { ...h.env, LD_PRELOAD: lib },
      encoding: 'utf8',
    });
    assert.equal(run.status, 8, run.stderr);
    assert.match(run.stderr, /LD_PRELOAD is set/);
    const started = kw(['agent', 'start'], {
      env: { ...h.env, LD_PRELOAD: lib, NODE_PATH: h.dir },
    });
    assert.equal(started.code, 0, started.stderr);
    try {
      const pid = Number(/pid (\d+)/.exec(started.stdout)?.[1]);
      const environ = fs.readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
      assert.ok(!environ.some((e) => e.startsWith('LD_PRELOAD=')), 'no LD_PRELOAD in the agent');
      assert.ok(!environ.some((e) => e.startsWith('NODE_PATH=')), 'no NODE_PATH in the agent');
    } finally {
      kw(['agent', 'stop'], { env: h.env });
    }
  });

  test('with --allow-debugger the agent runs, and says so in status, doctor, the audit log and every prompt', async () => {
    const h = agentHome();
    homes.push(h);
    // An inspector on a port of the kernel's choosing: only the announcement matters here.
    const child = spawn(process.execPath, [BIN, '--allow-debugger', 'agent', 'run'], {
      env: { ...h.env, KEYWARD_ASKPASS: h.askpass, NODE_OPTIONS: '--inspect=127.0.0.1:0' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    h.agent = child;
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    await new Promise<void>((resolve, reject) => {
      child.stderr.on(
        'data',
        () => /keyward agent: keyward agent \d+ listening on/.test(err) && resolve(),
      );
      child.once('exit', () => reject(new Error(`the agent exited: ${err}`)));
    });
    assert.match(err, /WARNING: this agent can be debugged/);
    const status = kw(['status'], { env: h.env });
    assert.match(status.stdout, /WARNING: the agent can be debugged .*inspector/);
    const doctor = kw(['doctor'], { env: h.env });
    assert.match(doctor.stdout, /FAIL\s+agent-runtime\s+the agent can be debugged/);
    const start = kw(['audit', 'export', '--decrypt'], { env: h.env })
      .stdout.trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; body: { details: Record<string, unknown> } })
      .filter((e) => e.type === 'agent.start')
      .at(-1);
    assert.match(String(start?.body.details['debuggable']), /inspector is open/);
    // A client sends such an agent no passphrase unless it is told to, too.
    const refused = kw(['unlock'], { env: h.env });
    assert.equal(refused.code, 8, refused.stderr);
    assert.match(refused.stderr, /the agent can be debugged .*; keyward sends it no secret/);
    assert.equal(kw(['status'], { env: h.env }).code, 5, 'still locked');
    const unlocked = kw(['--allow-debugger', 'unlock'], { env: h.env });
    assert.equal(unlocked.code, 0, unlocked.stderr);
    kw(['secret', 'set', 'app/token'], { env: h.env, input: 'debuggable-agent-value' });
    h.answer('no');
    assert.equal(kw(['read', 'app/token'], { env: h.env }).code, 6);
    assert.match(
      h.prompts()[0] ?? '',
      /^keyward: WARNING: this agent can be debugged \(a Node inspector is open/,
    );
  });
});

const isRoot = process.geteuid?.() === 0;
const OTHER_UID = 43210;

interface Fake {
  dir: string;
  events: () => Array<{ event: string; bytes?: number }>;
  stop: () => void;
}

/** A fake agent run by another uid, in a socket directory that uid made (fixtures/fake-agent.mjs). */
async function fakeAgent(): Promise<Fake> {
  // Like /tmp: anyone may create, nobody may remove what others made.
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-shared-'));
  fs.chmodSync(base, 0o1777);
  const dir = path.join(base, 'run');
  const child = spawn(
    'setpriv',
    [
      `--reuid=${OTHER_UID}`,
      `--regid=${OTHER_UID}`,
      '--clear-groups',
      process.execPath,
      path.join(ROOT, 'test/fixtures/fake-agent.mjs'),
      dir,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
    child.once('exit', (c) => reject(new Error(`the fake agent exited (${c})`)));
  });
  return {
    dir,
    events: () =>
      fs
        .readFileSync(path.join(dir, 'fake.log'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { event: string; bytes?: number }),
    stop: () => child.kill('SIGTERM'),
  };
}

const received = (f: Fake) =>
  f.events().reduce((n, e) => n + (e.event === 'data' ? (e.bytes ?? 0) : 0), 0);

describe('a client checks whom it talks to before it sends anything secret', () => {
  const commands: Array<[string, string[], string]> = [
    ['unlock (the passphrase)', ['unlock'], ''],
    ['approve (the passphrase)', ['approve', 'deadbeef'], ''],
    ['run (the whole environment)', ['run', '--env', 'T=app/token', '--', 'true'], ''],
    ['read', ['read', 'app/token'], ''],
  ];

  for (const [label, args] of commands) {
    test(
      `${label} against a fake agent in a directory another uid made: exit 8, and the fake receives nothing`,
      { skip: !isRoot && 'needs root for setpriv' },
      async () => {
        const fake = await fakeAgent();
        try {
          const h = agentHome();
          const r = kw(args, {
            env: { ...h.env, KEYWARD_SOCKET_DIR: fake.dir, SECRET_IN_ENV: 'x'.repeat(40) },
          });
          assert.equal(r.code, 8, r.stderr);
          assert.match(
            r.stderr,
            new RegExp(
              `keyward: error: the agent's directory .* belongs to uid ${OTHER_UID}, not to you`,
            ),
          );
          assert.deepEqual(
            fake.events().map((e) => e.event),
            ['listening'],
            'the client never even connected',
          );
        } finally {
          fake.stop();
        }
      },
    );

    test(
      `${label} to another uid's agent behind a socket that looks like mine: exit 8, and it receives no byte`,
      { skip: !isRoot && 'needs root for setpriv' },
      async () => {
        const fake = await fakeAgent();
        try {
          const h = agentHome();
          // The other uid's listening socket, moved into a directory of mine and given to me:
          // only the peer's credentials (SO_PEERCRED) still tell.
          fs.mkdirSync(h.sockDir, { mode: 0o700 });
          fs.renameSync(path.join(fake.dir, 'agent.sock'), h.sock);
          fs.chownSync(h.sock, 0, 0);
          const r = kw(args, { env: { ...h.env, SECRET_IN_ENV: 'x'.repeat(40) } });
          assert.equal(r.code, 8, r.stderr);
          assert.match(r.stderr, new RegExp(`runs as uid ${OTHER_UID}, not as you`));
          assert.ok(
            fake.events().some((e) => e.event === 'connection'),
            'it connected',
          );
          assert.equal(received(fake), 0, 'the fake agent received no byte');
        } finally {
          fake.stop();
        }
      },
    );
  }
});
