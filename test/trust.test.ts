/**
 * The trust core (docs/THREAT-MODEL.md), tried as an attacker running as the same user, or as
 * another uid, would: a debuggable agent, a fake agent on a socket the victim uses, a caller that
 * hides or forges its identity, a grant carried across exec.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test, type TestContext } from 'node:test';
import {
  agentHome,
  auditEntries,
  startAgent,
  stopAgent,
  withoutAgent,
  type AgentHome,
} from './agent-helpers.js';
import { describeSignData } from '../src/agent/ssh.js';
import { BIN, eventually, kw, PASSPHRASE, ROOT, rootTests, straced } from './helpers.js';
import { agentRunning, asUser, chownTree, kwAs, OTHER_UID } from './as-user.js';

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

  test('an inspector opened before keyward ran a line, with no option that says so, is found: whether stdio are files or sockets', () => {
    // node:inspector is asked only when the process holds a socket (an inspector listens on
    // one); this is the case the shortcut must not miss: the inspector's socket the only one.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-inspector-'));
    try {
      const wrapper = path.join(dir, 'opened-first.cjs');
      fs.writeFileSync(
        wrapper,
        `require('node:inspector').open(0, '127.0.0.1');\nprocess.argv = [process.argv[0], ${JSON.stringify(BIN)}, 'read', 'app/token'];\nrequire(${JSON.stringify(BIN)});\n`,
      );
      const env: NodeJS.ProcessEnv = { ...process.env, KEYWARD_HOME: path.join(dir, 'home') };
      delete env['NODE_OPTIONS'];
      const errFile = path.join(dir, 'stderr');
      const err = fs.openSync(errFile, 'w');
      const files = spawnSync(process.execPath, [wrapper], {
        env,
        stdio: ['ignore', 'ignore', err],
      });
      fs.closeSync(err);
      assert.equal(files.status, 8, fs.readFileSync(errFile, 'utf8'));
      assert.match(fs.readFileSync(errFile, 'utf8'), /refuses to run .*a Node inspector is open/);
      const sockets = spawnSync(process.execPath, [wrapper], { env, encoding: 'utf8' });
      assert.equal(sockets.status, 8, sockets.stderr);
      assert.match(sockets.stderr, /a Node inspector is open/);
      // And the question itself: no socket in a process whose stdio are files; one once it
      // listens.
      const probe = path.join(dir, 'probe.mjs');
      fs.writeFileSync(
        probe,
        `import net from 'node:net';\nimport fs from 'node:fs';\nconst { holdsSocket } = await import(${JSON.stringify(path.join(ROOT, 'dist/src/lib/runtime-guard.js'))});\nconst before = holdsSocket();\nconst s = net.createServer().listen(0, '127.0.0.1', () => { fs.writeSync(1, JSON.stringify([before, holdsSocket()])); s.close(); });\n`,
      );
      const outFile = path.join(dir, 'out');
      const out = fs.openSync(outFile, 'w');
      const probed = spawnSync(process.execPath, [probe], {
        env,
        stdio: ['ignore', out, 'ignore'],
      });
      fs.closeSync(out);
      assert.equal(probed.status, 0);
      assert.deepEqual(JSON.parse(fs.readFileSync(outFile, 'utf8')), [false, true]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
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
    const start = auditEntries(h)
      .filter((e) => e.type === 'agent.start')
      .at(-1);
    assert.match(String(start?.details['debuggable']), /inspector is open/);
    // A client sends such an agent no passphrase unless it is told to, too: what the client
    // writes, read by strace, never holds it; the same capture of the unlock it is told to
    // make does (so the capture would have seen it).
    const passphrase = [...Buffer.from(PASSPHRASE)]
      .map((b) => `\\x${b.toString(16).padStart(2, '0')}`)
      .join('');
    const refused = writesOf(['unlock'], h.env);
    assert.equal(refused.code, 8, refused.stderr);
    assert.match(refused.stderr, /the agent can be debugged .*; keyward sends it no secret/);
    assert.match(refused.trace, /connect\(/, 'it connected (and read the greeting)');
    assert.ok(!refused.trace.includes(passphrase), 'the passphrase was written to the agent');
    assert.equal(kw(['status'], { env: h.env }).code, 5, 'still locked');
    const unlocked = writesOf(['--allow-debugger', 'unlock'], h.env);
    assert.equal(unlocked.code, 0, unlocked.stderr);
    assert.ok(unlocked.trace.includes(passphrase), 'the capture sees a passphrase sent');
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'debuggable-agent-value' }).code,
      0,
    );
    h.answer('no');
    assert.equal(kw(['read', 'app/token'], { env: h.env }).code, 6);
    assert.match(
      h.prompts()[0] ?? '',
      /^keyward, request [0-9a-f]{8}: WARNING: this agent can be debugged \(a Node inspector is open/,
    );
  });
});

/** The CLI's own writes and connects under strace, each byte as \\xNN. */
const writesOf = (args: string[], env: NodeJS.ProcessEnv) =>
  straced(['-xx', '-s', '1000000', '-e', 'trace=connect,write,writev,sendto,sendmsg'], args, env);

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
      { skip: !rootTests && 'needs root for setpriv' },
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
      { skip: !rootTests && 'needs root for setpriv' },
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

/** Whether OTHER_UID may make a user and mount namespace of its own (unprivileged ones on). */
const userNamespaces =
  rootTests &&
  spawnSync(asUser[0] as string, [...asUser.slice(1), 'unshare', '-Urm', 'true']).status === 0;
const RAW_CLIENT = path.join(ROOT, 'test/fixtures/raw-client.py');
const PYTHON = '/usr/bin/python3';

/**
 * The attacker's own copy of python3, in a directory of its own, owned by OTHER_UID (so it can
 * chmod it), and the copy's SHA-256; removed after the file's tests.
 */
function attackerPython(where = os.tmpdir()): { dir: string; copy: string; digest: string } {
  const dir = fs.mkdtempSync(path.join(where, 'kw-exe-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const copy = path.join(dir, 'python3');
  fs.copyFileSync(fs.realpathSync(PYTHON), copy);
  fs.chmodSync(dir, 0o755);
  fs.chownSync(copy, OTHER_UID, OTHER_UID);
  return { dir, copy, digest: createHash('sha256').update(fs.readFileSync(copy)).digest('hex') };
}

/** A policy line denying app/** to the executable with this hash. */
const noCopyRule = (digest: string): string =>
  `  - { name: no-copy, targets: ["app/**"], callers: { exe_sha256: "${digest}" }, decision: deny }\n`;

/** A policy allowing app/** to the executable with this hash, and nothing else. */
const thisBuildOnly = (digest: string): string =>
  'version: 1\nrules:\n' +
  `  - { name: this-build, targets: ["app/**"], callers: { exe_sha256: "${digest}" }, decision: allow }\n`;

/** python3's bytes, and the hash of the build an attacker makes them into (its last byte flipped). */
function flippedPython(): { py: Buffer; flipped: string } {
  const py = fs.readFileSync(fs.realpathSync(PYTHON));
  const allowed = Buffer.from(py);
  allowed[allowed.length - 1] = (allowed[allowed.length - 1] ?? 0) ^ 0xff;
  return { py, flipped: createHash('sha256').update(allowed).digest('hex') };
}

/** What a write through a shared mapping must leave as it was: the stat the agent keys on. */
function statKey(file: string): string {
  const s = fs.statSync(file, { bigint: true });
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
}

/**
 * A python3 script (as OTHER_UID) that maps its first argument shared and writable, runs
 * `touch` on each page (`m[i]`: read it; `m[i] = m[i]`: dirty it), then `then`, and flips the
 * file's last byte (in the section headers, which no loader reads: the program still runs).
 */
const mappedRewrite = (touch: string, then: string[] = []): string =>
  [
    'import mmap, os, sys',
    'fd = os.open(sys.argv[1], os.O_RDWR)',
    'm = mmap.mmap(fd, 0, mmap.MAP_SHARED)',
    'os.close(fd)',
    `for i in range(0, len(m), 4096): ${touch}`,
    ...then,
    'm[len(m) - 1] ^= 0xff',
    'm.close()',
  ].join('\n');

/** A program as OTHER_UID, or as this user, with its output lines. */
function runLines(argv: string[], o: { env: NodeJS.ProcessEnv; user: boolean }): string[] {
  const full = o.user ? [...asUser, ...argv] : argv;
  const r = spawnSync(full[0] as string, full.slice(1), { env: o.env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout.trim().split('\n');
}

/**
 * PTRACE_ATTACH to pid from a process of OTHER_UID (python's ctypes, no debugger needed):
 * 'attached' (then detached), or the errno's name.
 */
function ptraceAs(pid: number): string {
  const script = [
    'import ctypes, errno, os, sys',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]',
    'libc.ptrace.restype = ctypes.c_long',
    'pid = int(sys.argv[1])',
    'if libc.ptrace(16, pid, None, None) != 0:',
    '    print(errno.errorcode[ctypes.get_errno()]); sys.exit(0)',
    'os.waitpid(pid, 0x40000000)',
    'libc.ptrace(17, pid, None, None)',
    "print('attached')",
  ].join('\n');
  return runLines([PYTHON, '-c', script, String(pid)], { env: {}, user: true })[0] ?? '';
}

/**
 * An unlocked agent of `policy`, run by OTHER_UID (user: true) or by this user, with the
 * askpass of agent-helpers answering.
 */
async function agentOf(policy: string, o: { user: boolean }): Promise<AgentHome> {
  const h = agentHome(policy);
  homes.push(h);
  if (o.user) chownTree(h.dir, OTHER_UID);
  h.agent = await agentRunning({ ...h.env, KEYWARD_ASKPASS: h.askpass }, o.user);
  const u = o.user ? kwAs(['unlock'], h.env) : kw(['unlock'], { env: h.env });
  assert.equal(u.code, 0, u.stderr);
  return h;
}

/** Runs a python3 launcher (its argv: python3's path, raw-client.py, the socket) as the user. */
function launched(h: AgentHome, launcher: string): string[] {
  return runLines([PYTHON, '-c', launcher, fs.realpathSync(PYTHON), RAW_CLIENT, h.sock], {
    env: { ...h.env },
    user: true,
  });
}

function setSecret(h: AgentHome, name: string, value: string, user: boolean): void {
  const r = user
    ? kwAs(['secret', 'set', name], h.env, value)
    : kw(['secret', 'set', name], { env: h.env, input: value });
  assert.equal(r.code, 0, r.stderr);
}

/**
 * Waits (for the event, not for a time) until the agent lists a pending request; fails if the
 * requester exits first.
 */
async function pendingRequest(
  h: AgentHome,
  user: boolean,
  requester: { exitCode: number | null },
): Promise<Record<string, unknown>> {
  for (;;) {
    if (requester.exitCode !== null)
      throw new Error(`the requester exited (${requester.exitCode}) before it asked`);
    const r = user
      ? kwAs(['approvals', '--json'], h.env)
      : kw(['approvals', '--json'], { env: h.env });
    const list = JSON.parse(r.stdout || '[]') as Array<Record<string, unknown>>;
    if (list[0]) return list[0];
    await new Promise((res) => setImmediate(res));
  }
}

/** g/** asks a person, and the answer is remembered for the asking process. */
const REMEMBER_PROCESS =
  'version: 1\nrules:\n  - { name: remember, targets: ["g/**"], decision: approve, approve: { mode: confirm, remember: { scope: process, for: 10m } } }\n';

const ask = (mode: string) =>
  `version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: ${mode} } }\n`;

describe('caller identity that cannot be hidden, forged in a prompt, or carried across exec', () => {
  test(
    'a pid reused by another process never inherits the grant remembered for the first (pid namespace, ns_last_pid)',
    { skip: !rootTests && 'needs root for unshare' },
    () => {
      const h = agentHome(
        'version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm, remember: { scope: process, for: 10m } } }\n',
      );
      homes.push(h);
      const value = 'pid-reuse-value';
      assert.equal(kw(['secret', 'set', 'reuse/x'], { env: h.env, input: value }).code, 0);
      // Agent and readers in a pid namespace of their own, where the test decides which pid the
      // next process gets: the second reader is given the first one's pid.
      const r = spawnSync(
        'unshare',
        [
          '--pid',
          '--fork',
          '--mount-proc',
          process.execPath,
          path.join(ROOT, 'test/fixtures/pid-reuse.mjs'),
          BIN,
          'reuse/x',
          path.join(h.dir, 'answer'),
        ],
        { env: { ...h.env, KEYWARD_ASKPASS: h.askpass }, encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      const out = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}') as {
        error?: string;
        aPid: number;
        bPid: number;
        first: { code: number; stdout: string };
        second: { code: number; stderr: string };
      };
      assert.equal(out.error, undefined, out.error);
      assert.equal(out.bPid, out.aPid, "the second reader got the first one's pid");
      assert.deepEqual([out.first.code, out.first.stdout], [0, value], 'the first was approved');
      // Same pid, same program, within the 10 minutes: still asked, and refused.
      assert.equal(out.second.code, 6, out.second.stderr);
      assert.equal(h.prompts().length, 2, 'the person was asked again');
      const asked = auditEntries(h).filter((e) => e.type === 'approval.requested');
      assert.equal(asked.length, 2);
    },
  );

  test(
    "the agent sees keyward's own CLI for what it is, and the CLI hides itself before it holds the value",
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      const h = await agentOf(ask('passphrase'), { user: true });
      setSecret(h, 'app/token', 'cli-identity-value', true);
      const [cmd, ...pre] = asUser as [string, ...string[]];
      const reader = spawn(cmd, [...pre, process.execPath, BIN, 'read', 'app/token'], {
        env: h.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      reader.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((r) => reader.on('exit', r));
      const p = await pendingRequest(h, true, reader);
      const requester = p['requester'] as { description: string; exe: string; pid: number };
      // Before the fix the CLI made itself non-dumpable first: "(unknown executable)".
      assert.equal(requester.exe, fs.realpathSync(process.execPath));
      assert.match(
        requester.description,
        /^"\/usr\/bin\/node" \(pid \d+\) running "[^"]*node" "[^"]*keyward\.js" "read" "app\/token" in "/,
      );
      // While it waits for the value it is already hidden from other processes of its user.
      const probe = spawnSync(
        asUser[0] as string,
        [...asUser.slice(1), PYTHON, '-c', `import os; os.readlink("/proc/${requester.pid}/exe")`],
        { encoding: 'utf8' },
      );
      assert.notEqual(probe.status, 0, 'a same-user process could read the waiting CLI');
      assert.match(probe.stderr, /PermissionError/);
      // No core dump, and no ptrace by a process of their own user: the agent, and the CLI
      // waiting for the value (THREAT-MODEL.md).
      const targets: Array<[string, number]> = [
        ['the agent', h.agent?.pid ?? 0],
        ['the waiting CLI', requester.pid],
      ];
      for (const [who, pid] of targets) {
        assert.match(
          fs.readFileSync(`/proc/${pid}/limits`, 'utf8'),
          /^Max core file size\s+0\s+0\s+bytes/m,
          `${who}: core limit 0`,
        );
        assert.equal(ptraceAs(pid), 'EPERM', `${who} could be ptraced by its own user`);
      }
      // The positive control: a plain process of that user can be.
      const control = spawn(asUser[0] as string, [...asUser.slice(1), 'sleep', '600']);
      try {
        await eventually(
          () => /^Uid:\s+43210\b/m.test(fs.readFileSync(`/proc/${control.pid}/status`, 'utf8')),
          'the control process to run as the other user',
        );
        await eventually(
          () => fs.readFileSync(`/proc/${control.pid}/comm`, 'utf8').trim() === 'sleep',
          'the control process to run sleep',
        );
        assert.equal(ptraceAs(control.pid ?? 0), 'attached', 'the probe works on a plain process');
      } finally {
        control.kill('SIGKILL');
      }
      assert.equal(kwAs(['approve', String(p['id'])], h.env).code, 0);
      assert.equal(await exited, 0);
      assert.equal(out, 'cli-identity-value');
    },
  );

  /** Each selector the claim names, written so that python3, seen, matches it. */
  const visibleMatches: Array<[string, () => string]> = [
    ['exe', () => '"/usr/bin/python3*"'],
    [
      'exe_sha256',
      () =>
        createHash('sha256')
          .update(fs.readFileSync(fs.realpathSync(PYTHON)))
          .digest('hex'),
    ],
    ['cwd', () => JSON.stringify(process.cwd())],
    ['loader_vars', () => 'absent'],
  ];
  for (const [selector, value] of visibleMatches)
    test(
      `a process that hides before it connects matches no ${selector} rule, and its prompt says it hid`,
      { skip: !rootTests && 'needs root for setpriv' },
      async () => {
        const h = await agentOf(
          'version: 1\nrules:\n' +
            `  - { name: python-ok, targets: ["app/**"], callers: { ${selector}: ${value()} }, decision: allow }\n` +
            '  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n',
          { user: true },
        );
        setSecret(h, 'app/token', 'hidden-caller-value', true);
        h.answer('no');
        const env = { ...h.env };
        // python3 as the child of a shell that waits for it (`; exit` keeps sh from exec'ing it).
        const client = ['/bin/sh', '-c', '"$0" "$@"; exit $?', PYTHON, RAW_CLIENT, h.sock];
        assert.deepEqual(runLines([...client, 'app/token'], { env, user: true }), [
          'value:hidden-caller-value',
        ]);
        assert.equal(h.prompts().length, 0, `python3, seen, matched its ${selector} rule`);
        const hidden = runLines([...client, 'app/token', '--hide'], { env, user: true });
        assert.match(hidden[0] ?? '', /^error:APPROVAL_REJECTED:/);
        assert.match(
          h.prompts()[0] ?? '',
          /^keyward, request [0-9a-f]{8}: a request to read the secret "app\/token" \(rule ask\)\..* Asked by a process that hid its identity \(pid \d+: its executable, directory and environment can't be read\) running "\/usr\/bin\/python3" ".*raw-client\.py" /,
        );
      },
    );

  test(
    'a process that hides after its greeting is still hashed as the program it ran: exe_sha256 is read from the executable opened at identification',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      // The agent hashes an executable only when a rule or grant needs it, possibly after the
      // caller became unreadable: what it hashes must be what the caller ran when it connected.
      const digest = createHash('sha256')
        .update(fs.readFileSync(fs.realpathSync(PYTHON)))
        .digest('hex');
      const h = await agentOf(
        'version: 1\nrules:\n' +
          `  - { name: python-ok, targets: ["app/**"], callers: { exe_sha256: "${digest}" }, decision: allow }\n` +
          '  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n',
        { user: true },
      );
      setSecret(h, 'app/token', 'late-hider-value', true);
      h.answer('no');
      const env = { ...h.env };
      const client = ['/bin/sh', '-c', '"$0" "$@"; exit $?', PYTHON, RAW_CLIENT, h.sock];
      // Two connections: the second is recalled from the registry, the process hidden by then.
      assert.deepEqual(
        runLines([...client, 'app/token', '--hide-after-hello', '--repeat', '2'], {
          env,
          user: true,
        }),
        ['value:late-hider-value', 'value:late-hider-value'],
      );
      assert.equal(h.prompts().length, 0, 'python3 matched its exe_sha256 rule');
    },
  );

  test(
    'a caller whose executable changes on disk after its greeting is refused, never let past a rule that denies its hash',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      // The attacker runs its own copy of python3, denied by hash, and after the greeting moves
      // the file's ctime (chmod): a hash taken now can't be said to be the program's.
      const { copy, digest } = attackerPython();
      const h = await agentOf(
        'version: 1\nrules:\n' +
          noCopyRule(digest) +
          '  - { name: rest, targets: ["**"], decision: allow }\n',
        { user: true },
      );
      setSecret(h, 'app/token', 'changed-exe-value', true);
      const env = { ...h.env };
      const run = (...extra: string[]) =>
        runLines(
          ['/bin/sh', '-c', '"$0" "$@"; exit $?', copy, RAW_CLIENT, h.sock, 'app/token', ...extra],
          { env, user: true },
        );
      // First sight of this file: no hash is known, so it is taken at the request, after the
      // chmod. The second connection of the same process (recalled from the registry) is refused
      // too: a hash refused once stays refused, never turns unknown.
      const changed = /^error:POLICY_DENIED:the caller's executable changed on disk/;
      const [first, second] = run('--chmod-exe-after-hello', '--repeat', '2');
      assert.match(first ?? '', changed);
      assert.match(second ?? '', changed);
      assert.match(run()[0] ?? '', /^error:POLICY_DENIED:.*rule no-copy/, 'denied by its hash');
      // Each refusal is recorded as a denial (and counts toward the lock on probing).
      const exported = kwAs(['audit', 'export', '--decrypt'], withoutAgent(h));
      assert.equal(exported.code, 0, exported.stderr);
      const refusals = exported.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { body: { decision: string; reason: string | null } })
        .filter(
          (e) =>
            e.body.decision === 'deny' && /executable changed on disk/.test(e.body.reason ?? ''),
        );
      assert.equal(refusals.length, 2);
      // Asked for an MCP client (inline): the same refusal, recorded and counted, not one
      // thrown by the inline check before the gate.
      const mcp = run('--chmod-exe-after-hello', '--mcp', 'a-client', '--repeat', '2');
      assert.match(mcp[0] ?? '', changed);
      assert.match(mcp[1] ?? '', changed);
      const after2 = kwAs(['audit', 'export', '--decrypt'], withoutAgent(h)).stdout;
      assert.equal(
        after2.match(/executable changed on disk/g)?.length,
        4,
        'four refusals recorded',
      );
    },
  );

  test(
    'an executable of the user rewritten through a shared mapping, its stat unchanged, is hashed again: never known by the hash of the bytes it had',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      // The attacker's copy of python3 on tmpfs, where a write through a shared mapping to a
      // page read first changes no time, size or inode. Allowed by its hash once; rewritten
      // (its last byte, in the section headers no loader reads: it still runs); run again.
      const { copy, digest } = attackerPython('/dev/shm');
      const h = await agentOf(thisBuildOnly(digest), { user: true });
      setSecret(h, 'app/token', 'mapped-exe-value', true);
      const ask = () =>
        runLines([copy, RAW_CLIENT, h.sock, 'app/token'], { env: { ...h.env }, user: true })[0];
      assert.equal(ask(), 'value:mapped-exe-value', 'the copy as it was is allowed by its hash');
      const before = statKey(copy);
      runLines([PYTHON, '-c', mappedRewrite('m[i]'), copy], { env: {}, user: true });
      assert.equal(statKey(copy), before, 'the rewrite left the stat as it was');
      assert.notEqual(createHash('sha256').update(fs.readFileSync(copy)).digest('hex'), digest);
      assert.match(ask() ?? '', /^error:POLICY_DENIED:/, 'the rewritten copy is not this build');
    },
  );

  test(
    "a run's program, hashed for a request the policy refuses, lends that hash to no caller once rewritten through pages mapped before",
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      // On ext4 a write fault updates the times once; pages dirtied through a mapping made
      // before the agent's stat stay writable, and later writes through them update nothing.
      // The attacker has the agent hash its copy for a run (refused: the CLI is no caller the
      // rule allows), then rewrites it and runs it as a caller: never the hash of before.
      const { copy, digest } = attackerPython();
      const h = await agentOf(thisBuildOnly(digest), { user: true });
      setSecret(h, 'app/token', 'mapped-run-value', true);
      const [cmd, ...pre] = asUser as [string, ...string[]];
      const mapper = spawn(
        cmd,
        [
          ...pre,
          PYTHON,
          '-c',
          mappedRewrite('m[i] = m[i]', ["print('mapped', flush=True)", 'sys.stdin.readline()']) +
            "\nprint('rewritten', flush=True)",
          copy,
        ],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      );
      let out = '';
      const said = (word: string) =>
        new Promise<void>((resolve, reject) => {
          const look = () => (out.includes(word) ? resolve() : undefined);
          mapper.stdout.on('data', (d: Buffer) => {
            out += d.toString();
            look();
          });
          // 'close', not 'exit': a process's last output may come after its exit event.
          mapper.once('close', () => (out.includes(word) ? resolve() : reject(new Error(out))));
          look();
        });
      await said('mapped');
      const before = statKey(copy);
      const run = kwAs(['run', '--env', 'T=app/token', '--', copy, '-c', 'pass'], { ...h.env });
      assert.match(run.stderr, /POLICY_DENIED|no rule/i, run.stderr);
      mapper.stdin.write('go\n');
      await said('rewritten');
      assert.equal(statKey(copy), before, 'the rewrite left the stat as it was');
      assert.notEqual(createHash('sha256').update(fs.readFileSync(copy)).digest('hex'), digest);
      const lines = runLines([copy, RAW_CLIENT, h.sock, 'app/token'], {
        env: { ...h.env },
        user: true,
      });
      assert.match(lines[0] ?? '', /^error:POLICY_DENIED:/, 'the rewritten copy is not this build');
    },
  );

  test(
    "another user's program this user can write (its group), run through a read-only bind of its own, is refused where its hash is needed, before and after a rewrite",
    {
      skip: !userNamespaces && 'needs root for setpriv, and unprivileged user namespaces',
    },
    async () => {
      // A teammate's program in a shared group directory, on tmpfs: owned by another uid, the
      // attacker's group may write it. In a user and mount namespace of its own the attacker
      // binds the directory read-only over itself and runs the program from there (so writing
      // through the agent's descriptor of it would be EROFS); then rewrites it through the
      // writable path by a shared mapping (no stat change) and runs it from the bind again. A
      // mount outside the agent's namespace is one the user may have made: never hashed.
      const dir = fs.mkdtempSync('/dev/shm/kw-grp-');
      after(() => fs.rmSync(dir, { recursive: true, force: true }));
      const copy = path.join(dir, 'python3');
      fs.copyFileSync(fs.realpathSync(PYTHON), copy);
      const digest = createHash('sha256').update(fs.readFileSync(copy)).digest('hex');
      fs.chownSync(dir, OTHER_UID + 1, OTHER_UID);
      fs.chmodSync(dir, 0o2775);
      fs.chownSync(copy, OTHER_UID + 1, OTHER_UID);
      fs.chmodSync(copy, 0o775);
      const h = await agentOf(thisBuildOnly(digest), { user: true });
      setSecret(h, 'app/token', 'bind-exe-value', true);
      const throughBind = () =>
        runLines(
          [
            'unshare',
            '-Urm',
            'sh',
            '-c',
            'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && exec "$1/python3" "$2" "$3" app/token',
            'sh',
            dir,
            RAW_CLIENT,
            h.sock,
          ],
          { env: { ...h.env }, user: true },
        )[0];
      const outside =
        /^error:POLICY_DENIED:the caller's executable is reached through a mount outside/;
      assert.match(throughBind() ?? '', outside, 'the program as it was, through the bind');
      const before = statKey(copy);
      runLines([PYTHON, '-c', mappedRewrite('m[i]'), copy], { env: {}, user: true });
      assert.equal(statKey(copy), before, 'the rewrite left the stat as it was');
      assert.match(throughBind() ?? '', outside, 'the rewritten program, through the bind');
      // The same file run by its own path (the agent's mounts) is hashed as what it is now.
      assert.match(
        runLines([copy, RAW_CLIENT, h.sock, 'app/token'], { env: { ...h.env }, user: true })[0] ??
          '',
        /^error:POLICY_DENIED:denied by policy/,
      );
    },
  );

  test(
    "an `exe` rule is not passed by another program that a bind mount of the caller's own gives the rule's path",
    {
      skip: !userNamespaces && 'needs root for setpriv, and unprivileged user namespaces',
    },
    async () => {
      // In a user and mount namespace of its own, the attacker binds python3 over /usr/bin/true
      // and runs it by that path: /proc/PID/exe reads /usr/bin/true (the caller's view), while
      // in the agent's view that path is another file than the one running.
      const trueExe = fs.realpathSync('/bin/true');
      const h = await agentOf(
        'version: 1\nrules:\n' +
          `  - { name: only-true, targets: ["app/*"], kind: secret, callers: { exe: ${trueExe} }, decision: allow }\n` +
          '  - { name: rest, targets: ["**"], decision: deny }\n',
        { user: true },
      );
      setSecret(h, 'app/token', 'bound-exe-value', true);
      const lines = runLines(
        [
          'unshare',
          '-Urm',
          'sh',
          '-c',
          'mount --bind "$1" "$2" && exec "$2" "$3" "$4" app/token',
          'sh',
          fs.realpathSync(PYTHON),
          trueExe,
          RAW_CLIENT,
          h.sock,
        ],
        { env: { ...h.env }, user: true },
      );
      assert.match(lines[0] ?? '', /^error:POLICY_DENIED:denied by policy/, lines.join('\n'));
    },
  );

  test(
    "the real program, started in a mount namespace of the caller's own, gets no allow by its path or hash: there its root may load a library of the caller's",
    {
      skip: !userNamespaces && 'needs root for setpriv, and unprivileged user namespaces',
    },
    async () => {
      // The review's shape: pivot_root into a root of its own whose /etc/ld.so.preload names the
      // attacker's library, then exec the real /usr/bin/git (same file, same hash). Shown here
      // with the step that makes it possible: the caller runs in a mount namespace of its own.
      const py = fs.realpathSync(PYTHON);
      const digest = createHash('sha256').update(fs.readFileSync(py)).digest('hex');
      const h = await agentOf(
        'version: 1\nrules:\n' +
          `  - { name: this-python, targets: ["app/*"], kind: secret, callers: { exe: ${py}, exe_sha256: "${digest}" }, decision: allow }\n` +
          '  - { name: rest, targets: ["**"], decision: deny }\n',
        { user: true },
      );
      setSecret(h, 'app/token', 'own-namespace-value', true);
      const direct = runLines([py, RAW_CLIENT, h.sock, 'app/token'], {
        env: { ...h.env },
        user: true,
      });
      assert.equal(direct[0], 'value:own-namespace-value', 'the rule allows the program itself');
      const inOwn = runLines(['unshare', '-Urm', py, RAW_CLIENT, h.sock, 'app/token'], {
        env: { ...h.env },
        user: true,
      });
      // Refused by the rule's namespace check, or before it: its program, reached through a
      // mount of its own, has no hash the agent can vouch for.
      assert.match(
        inOwn[0] ?? '',
        /^error:POLICY_DENIED:(denied by policy|the caller's executable is reached through a mount outside)/,
        inOwn.join('\n'),
      );
      // A user namespace alone (the agent's mounts) lets it chroot into a root of its own, exec
      // the real program there, and come back under / before it asks.
      const inOwnUser = runLines(['unshare', '-Ur', py, RAW_CLIENT, h.sock, 'app/token'], {
        env: { ...h.env },
        user: true,
      });
      assert.match(
        inOwnUser[0] ?? '',
        /^error:POLICY_DENIED:denied by policy/,
        inOwnUser.join('\n'),
      );
    },
  );

  test(
    'a remembered executable grant is no grant for the same program run in a user namespace of its own',
    {
      skip: !userNamespaces && 'needs root for setpriv, and unprivileged user namespaces',
    },
    async () => {
      const py = fs.realpathSync(PYTHON);
      const h = await agentOf(
        'version: 1\nrules:\n  - { name: remember-exe, targets: ["**"], decision: approve, approve: { mode: confirm, remember: { scope: executable, for: 10m } } }\n',
        { user: true },
      );
      setSecret(h, 'app/token', 'ns-grant-value', true);
      h.answer('yes');
      const ask = (argv: string[]) =>
        runLines([...argv, py, RAW_CLIENT, h.sock, 'app/token'], { env: { ...h.env }, user: true });
      assert.equal(ask([])[0], 'value:ns-grant-value');
      assert.equal(ask([])[0], 'value:ns-grant-value');
      assert.equal(h.prompts().length, 1, 'the executable grant serves the second read');
      h.answer('no');
      const inOwn = ask(['unshare', '-Ur']);
      assert.match(inOwn[0] ?? '', /^error:/, inOwn.join('\n'));
      assert.equal(h.prompts().length, 2, 'asked again, in a namespace of its own');
      assert.match(h.prompts()[1] ?? '', /which the agent can't vouch for/);
    },
  );

  test(
    'a program run through an overlay the user mounted, its lower file rewritten while it runs, is refused where its hash is needed',
    {
      skip: !userNamespaces && 'needs root for setpriv, and unprivileged user namespaces',
    },
    async () => {
      // In a user and mount namespace of its own the attacker mounts an overlay whose lower
      // directory is its own, and runs python3 from the merged one: the running (overlay) file
      // is held against writing, the lower one it reads from is not. Once the agent has
      // identified the process, the lower file becomes the build the rule allows.
      const { py, flipped } = flippedPython();
      const base = fs.mkdtempSync('/dev/shm/kw-ovl-');
      after(() => fs.rmSync(base, { recursive: true, force: true }));
      for (const d of ['lower', 'upper', 'work', 'merged']) {
        fs.mkdirSync(path.join(base, d));
        fs.chownSync(path.join(base, d), OTHER_UID, OTHER_UID);
      }
      fs.chownSync(base, OTHER_UID, OTHER_UID);
      const lower = path.join(base, 'lower', 'python3');
      fs.writeFileSync(lower, py, { mode: 0o755 });
      fs.chownSync(lower, OTHER_UID, OTHER_UID);
      const h = await agentOf(thisBuildOnly(flipped), { user: true });
      setSecret(h, 'app/token', 'overlay-exe-value', true);
      const launcher = [
        'import mmap, os, subprocess, sys',
        'base, raw, sock = sys.argv[1:4]',
        "subprocess.run(['mount', '-t', 'overlay', 'overlay', '-o',",
        "    f'lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work', f'{base}/merged'],",
        '    check=True)',
        "p = subprocess.Popen([f'{base}/merged/python3', raw, sock, 'app/token', '--wait-after-hello'],",
        '    stdin=subprocess.PIPE, stdout=subprocess.PIPE)',
        "assert p.stdout.readline().strip() == b'hello'",
        "fd = os.open(f'{base}/lower/python3', os.O_RDWR)",
        'm = mmap.mmap(fd, 0, mmap.MAP_SHARED)',
        'for i in range(0, len(m), 4096): m[i]',
        'm[len(m) - 1] ^= 0xff',
        'm.close()',
        "p.stdin.write(b'go\\n'); p.stdin.flush()",
        'print(p.stdout.readline().decode().strip(), flush=True)',
        'p.wait()',
      ].join('\n');
      const lines = runLines(
        ['unshare', '-Urm', PYTHON, '-c', launcher, base, RAW_CLIENT, h.sock],
        {
          env: { ...h.env },
          user: true,
        },
      );
      assert.match(
        lines.at(-1) ?? '',
        /^error:POLICY_DENIED:the caller's executable is reached through a mount outside/,
      );
    },
  );

  /**
   * A program on a loop mount over an image its user owns, the program the user's or root's
   * (mode 0755, as in an image the user built offline: mkfs.ext4 -d and debugfs need no
   * privilege). Found in review: root's was taken for a file no process of the user can change,
   * and its hash was remembered by its stat, which a write through the image keeps.
   */
  async function onUsersImage(
    t: TestContext,
    owner: 'user' | 'root',
    deleted = false,
  ): Promise<void> {
    // As udisks mounts an image for the active session: ext4 on a loop device over a file the
    // user owns, mounted in the agent's namespace. The user can rewrite a running file's blocks
    // through the image and drop its page cache; the agent must not hash it, nor remember a
    // hash of it.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kw-loop-'));
    const img = path.join(dir, 'image');
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 32 << 20);
    assert.equal(spawnSync('mkfs.ext4', ['-q', '-F', img]).status, 0);
    if (spawnSync('mount', ['-o', 'loop', img, mnt]).status !== 0) {
      fs.rmSync(dir, { recursive: true, force: true });
      t.skip('no loop device here');
      return;
    }
    after(() => {
      spawnSync('umount', ['-l', mnt]);
      fs.rmSync(dir, { recursive: true, force: true });
    });
    fs.chownSync(img, OTHER_UID, OTHER_UID);
    fs.chmodSync(dir, 0o755);
    const { copy, digest } = attackerPython(mnt);
    if (owner === 'root') {
      fs.chownSync(copy, 0, 0);
      fs.chmodSync(copy, 0o755);
    }
    // The image deleted while mounted, and its old path made to name a file of root's: what the
    // device says it stands on now reads "(deleted)" (found in review: the path was followed).
    if (deleted) {
      fs.unlinkSync(img);
      fs.symlinkSync(fs.realpathSync(PYTHON), img);
    }
    await refusedOnUsersBlocks(copy, digest);
  }

  /** The program at copy, allowed by its hash, is refused: it stands on blocks its user writes. */
  async function refusedOnUsersBlocks(copy: string, digest: string): Promise<void> {
    const h = await agentOf(thisBuildOnly(digest), { user: true });
    setSecret(h, 'app/token', 'loop-exe-value', true);
    const lines = runLines([copy, RAW_CLIENT, h.sock, 'app/token'], {
      env: { ...h.env },
      user: true,
    });
    assert.match(
      lines[0] ?? '',
      /^error:POLICY_DENIED:the caller's executable is on a loop \(or nbd\) device over an image its user can write/,
    );
  }

  test(
    "a program on a loop mount over an image its user owns, the program its user's, is refused where its hash is needed: its blocks are written past the running file",
    { skip: !rootTests && 'needs root for setpriv and mount' },
    (t) => onUsersImage(t, 'user'),
  );

  test(
    "a program on a loop mount over an image its user owns, the program root's, is refused where its hash is needed: its blocks are written past the running file",
    { skip: !rootTests && 'needs root for setpriv and mount' },
    (t) => onUsersImage(t, 'root'),
  );

  test(
    "a program on a loop mount over an image its user owns, the program root's and the image deleted, its path a link to a file of root's, is refused where its hash is needed",
    { skip: !rootTests && 'needs root for setpriv and mount' },
    (t) => onUsersImage(t, 'root', true),
  );

  test(
    "a program on a loop image of root's that stands inside a loop image its user owns is refused where its hash is needed",
    { skip: !rootTests && 'needs root for setpriv and mount' },
    async (t) => {
      // Found in review: the inner image is root's alone by its path (every directory from /
      // root's, none writable by others), but its blocks are the outer image's, which the user
      // writes. Made at / so that no sticky directory (/tmp) is on the way.
      const base = fs.mkdtempSync('/kw-stack-');
      fs.chmodSync(base, 0o755);
      const outer = path.join(base, 'outer.img');
      const outerMnt = path.join(base, 'outer');
      const innerMnt = path.join(base, 'inner');
      const mounted: string[] = [];
      after(() => {
        for (const m of mounted.reverse()) spawnSync('umount', ['-l', m]);
        fs.rmSync(base, { recursive: true, force: true });
      });
      for (const d of [outerMnt, innerMnt]) fs.mkdirSync(d, { mode: 0o755 });
      fs.writeFileSync(outer, '');
      fs.truncateSync(outer, 96 << 20);
      assert.equal(spawnSync('mkfs.ext4', ['-q', '-F', outer]).status, 0);
      if (spawnSync('mount', ['-o', 'loop', outer, outerMnt]).status !== 0) {
        t.skip('no loop device here');
        return;
      }
      mounted.push(outerMnt);
      fs.chownSync(outer, OTHER_UID, OTHER_UID);
      const inner = path.join(outerMnt, 'inner.img');
      fs.writeFileSync(inner, '', { mode: 0o644 });
      fs.truncateSync(inner, 48 << 20);
      assert.equal(spawnSync('mkfs.ext4', ['-q', '-F', inner]).status, 0);
      assert.equal(spawnSync('mount', ['-o', 'loop', inner, innerMnt]).status, 0);
      mounted.push(innerMnt);
      const copy = path.join(innerMnt, 'python3');
      fs.copyFileSync(fs.realpathSync(PYTHON), copy);
      fs.chmodSync(copy, 0o755);
      await refusedOnUsersBlocks(
        copy,
        createHash('sha256').update(fs.readFileSync(copy)).digest('hex'),
      );
    },
  );

  test(
    'a program run from a memfd and rewritten while it runs, then sealed, is refused where its hash is needed, never hashed as what it became',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      // A memfd's writers write on while a process runs it (no ETXTBSY), and a shared mapping
      // changes nothing of its stat. The attacker runs python3 from a memfd; once the agent has
      // identified it, makes the memfd's bytes those of the build the rule allows (python3 with
      // its last byte flipped), seals it against writing (a seal says nothing of the bytes it
      // ran before), and only then asks.
      const { flipped } = flippedPython();
      const h = await agentOf(thisBuildOnly(flipped), { user: true });
      setSecret(h, 'app/token', 'memfd-exe-value', true);
      const launcher = [
        'import mmap, os, subprocess, sys',
        'py, raw, sock = sys.argv[1:4]',
        "fd = os.memfd_create('python3', os.MFD_ALLOW_SEALING)",
        "os.write(fd, open(py, 'rb').read())",
        "p = subprocess.Popen([f'/proc/self/fd/{fd}', raw, sock, 'app/token', '--wait-after-hello'],",
        '    pass_fds=(fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE)',
        "assert p.stdout.readline().strip() == b'hello'",
        'm = mmap.mmap(fd, 0, mmap.MAP_SHARED)',
        'for i in range(0, len(m), 4096): m[i]',
        'm[len(m) - 1] ^= 0xff',
        'm.close()',
        'import fcntl',
        'fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)',
        "p.stdin.write(b'go\\n'); p.stdin.flush()",
        'print(p.stdout.readline().decode().strip(), flush=True)',
        'p.wait()',
      ].join('\n');
      const lines = launched(h, launcher);
      assert.match(
        lines.at(-1) ?? '',
        /^error:POLICY_DENIED:the caller's executable is a memfd, whose bytes can change while it runs/,
      );
    },
  );

  test(
    'a program run from a memfd is asked about with its hash said unknown, under a policy that names no hash, and nothing of the answer is remembered',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      // An AppImage's FUSE mount, an NFS home, a memfd: the agent can't hold the bytes to the
      // running ones. No rule needs the hash here, so the person is asked (not refused), told
      // the hash is unknown and why; a grant per process would be bound to a hash nobody knows,
      // so each request asks again.
      const h = await agentOf(
        'version: 1\nrules:\n' +
          '  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm, remember: { scope: process, for: 10m } } }\n',
        { user: true },
      );
      setSecret(h, 'app/token', 'memfd-asked-value', true);
      h.answer('yes');
      const launcher = [
        'import os, subprocess, sys',
        'py, raw, sock = sys.argv[1:4]',
        "fd = os.memfd_create('python3')",
        "os.write(fd, open(py, 'rb').read())",
        "p = subprocess.run([f'/proc/self/fd/{fd}', raw, sock, 'app/token', '--repeat', '2'],",
        '    pass_fds=(fd,), stdout=subprocess.PIPE)',
        'print(p.stdout.decode().strip(), flush=True)',
      ].join('\n');
      const lines = launched(h, launcher);
      assert.deepEqual(lines, ['value:memfd-asked-value', 'value:memfd-asked-value']);
      const prompts = h.prompts();
      assert.equal(prompts.length, 2, 'asked for each request: nothing was remembered');
      assert.match(
        prompts[0] ?? '',
        /^keyward, request [0-9a-f]{8}: a request to read the secret "app\/token".* Asked by .*its program's sha-256 is unknown: the caller's executable is a memfd, whose bytes can change while it runs.*; this approval is for this request only\)/,
      );
      const exported = kwAs(['audit', 'export', '--decrypt'], withoutAgent(h));
      assert.equal(exported.code, 0, exported.stderr);
      const requested = exported.stdout
        .split('\n')
        .filter((l) => l.includes('"approval.requested"'));
      assert.equal(requested.length, 2, exported.stdout);
      assert.match(requested[0] ?? '', /"exeUnknown":"the caller's executable is a memfd/);
    },
  );

  test(
    'an execute-only executable, seen but unreadable, is refused where its hash is needed, never let past a deny rule on it',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      // Mode 0111: the caller can run its copy but no one of its uid can read it, so the agent
      // (the same uid) can stat /proc/PID/exe but not open it. The process turns itself
      // dumpable again after exec so that the agent sees it.
      const { dir, copy, digest } = attackerPython();
      const wrap = path.join(dir, 'wrap.py');
      fs.writeFileSync(
        wrap,
        'import ctypes, sys, runpy\nctypes.CDLL(None).prctl(4, 1, 0, 0, 0)\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name="__main__")\n',
      );
      fs.chmodSync(copy, 0o111);
      fs.chmodSync(wrap, 0o644);
      const h = await agentOf(
        'version: 1\nrules:\n' +
          noCopyRule(digest) +
          `  - { name: by-path, targets: ["**"], callers: { exe: "${copy}" }, decision: allow }\n`,
        { user: true },
      );
      setSecret(h, 'app/token', 'exec-only-value', true);
      const lines = runLines([copy, wrap, RAW_CLIENT, h.sock, 'app/token'], {
        env: { ...h.env },
        user: true,
      });
      assert.match(lines[0] ?? '', /^error:POLICY_DENIED:the caller's executable can not be read/);
    },
  );

  test(
    'a process that hides still matches an ancestor rule: its parents can be read, so a rule on what a program starts still catches it',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      // The parent must be a process of this uid (the agent's): a shell, not this test (root).
      const shell = fs.realpathSync('/bin/sh');
      const h = await agentOf(
        'version: 1\nrules:\n' +
          `  - { name: not-from-shells, targets: ["app/**"], callers: { ancestor: ${JSON.stringify(shell)} }, decision: deny }\n` +
          '  - { name: rest, targets: ["**"], decision: allow }\n',
        { user: true },
      );
      setSecret(h, 'app/token', 'ancestor-value', true);
      const env = { ...h.env };
      // `; exit` keeps sh from exec'ing python3 in its place: python3 is the shell's child.
      const viaShell = ['/bin/sh', '-c', '"$0" "$@"; exit $?', PYTHON, RAW_CLIENT, h.sock];
      const direct = [PYTHON, RAW_CLIENT, h.sock];
      const got = (argv: string[]) => runLines(argv, { env, user: true })[0] ?? '';
      assert.equal(got([...direct, 'app/token']), 'value:ancestor-value', 'no shell, no rule');
      assert.match(got([...viaShell, 'app/token']), /^error:POLICY_DENIED:/);
      assert.match(got([...viaShell, 'app/token', '--hide']), /^error:POLICY_DENIED:/);
      assert.equal(h.prompts().length, 0);
    },
  );

  test('a grant remembered for a process is not the grant of the program it execs next, even the same interpreter', async () => {
    const h = await agentOf(REMEMBER_PROCESS, { user: false });
    setSecret(h, 'g/token', 'remembered-value', false);
    h.answer('yes');
    const lines = runLines(
      [
        PYTHON,
        RAW_CLIENT,
        h.sock,
        'g/token',
        '--repeat',
        '2',
        '--then-exec',
        PYTHON,
        RAW_CLIENT,
        h.sock,
        'g/token',
      ],
      { env: h.env, user: false },
    );
    assert.deepEqual(lines, [
      'value:remembered-value',
      'value:remembered-value',
      'value:remembered-value',
    ]);
    // One prompt for the first program's two reads; the program it exec'd was asked again.
    assert.equal(h.prompts().length, 2, h.prompts().join('\n'));
    const node = runLines(
      [
        PYTHON,
        RAW_CLIENT,
        h.sock,
        'g/token',
        '--then-exec',
        process.execPath,
        '-e',
        `import(${JSON.stringify(path.join(ROOT, 'dist/src/client/index.js'))}).then(async (m) => { const v = await m.getCredential('g/token', { socket: ${JSON.stringify(h.sock)}, inline: true }); console.log('value:' + Buffer.from(v).toString()); })`,
      ],
      { env: h.env, user: false },
    );
    assert.deepEqual(node, ['value:remembered-value', 'value:remembered-value']);
    assert.equal(h.prompts().length, 4, 'python3 was asked, then node after the exec');
    assert.match(h.prompts()[3] ?? '', / Asked by "\/usr\/bin\/node" \(pid \d+\)/);
  });

  test('a connection carried across exec is refused: the program that asks is not the one that connected', async () => {
    const h = await agentOf(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
      { user: false },
    );
    setSecret(h, 'app/token', 'carried-connection-value', false);
    const lines = runLines([PYTHON, RAW_CLIENT, h.sock, 'app/token', '--exec-with-connection'], {
      env: h.env,
      user: false,
    });
    assert.equal(lines[0], 'value:carried-connection-value');
    assert.match(
      lines[1] ?? '',
      /^error:POLICY_DENIED:the requesting process ran another program \(exec\) since it connected/,
    );
  });

  test(
    'a process granted once that execs and hides gets no grant: it is asked, and the prompt says it hid',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      const h = await agentOf(REMEMBER_PROCESS, { user: true });
      setSecret(h, 'g/token', 'hide-after-exec-value', true);
      h.answer('yes');
      const lines = runLines(
        [
          PYTHON,
          RAW_CLIENT,
          h.sock,
          'g/token',
          '--then-exec',
          PYTHON,
          RAW_CLIENT,
          h.sock,
          'g/token',
          '--hide',
        ],
        { env: h.env, user: true },
      );
      assert.deepEqual(lines, ['value:hide-after-exec-value', 'value:hide-after-exec-value']);
      assert.equal(h.prompts().length, 2);
      assert.match(h.prompts()[1] ?? '', /a process that hid its identity/);
    },
  );
});

/** The prompt with every quoted (caller-controlled) string replaced by Q: what keyward wrote. */
const skeleton = (prompt: string) => prompt.replace(/"(?:[^"\\]|\\.)*"/g, 'Q');

describe('prompts a caller cannot write', () => {
  test('quotes, backslashes and a sentence of its own in argv[0] and the cwd stay inside quotes; cuts say so; approvals --json has it all', async () => {
    const h = await agentOf(ask('passphrase'), { user: false });
    setSecret(h, 'app/token', 'forged-prompt-value', false);
    const forged = 'x" wants to read the secret "public/config" (rule public). Allow? \\" ';
    const dir = path.join(h.dir, 'a" (rule public). Allow? "');
    fs.mkdirSync(dir);
    const long = 'L'.repeat(5000);
    const many = Array.from({ length: 300 }, (_, i) => `arg${i}`);
    const reader = spawn(
      process.execPath,
      [BIN, 'run', '--env', 'T=app/token', '--', 'true', long, ...many],
      {
        env: h.env,
        cwd: dir,
        argv0: forged,
        stdio: 'ignore',
      },
    );
    const exited = new Promise((r) => reader.on('exit', r));
    const p = await pendingRequest(h, false, reader);
    const requester = p['requester'] as { description: string; cmdline: string[]; cwd: string };
    const d = requester.description;
    // What keyward wrote, with every caller-controlled value as Q: no sentence of the caller's.
    assert.match(
      skeleton(d),
      /^Q \(pid \d+\) running Q Q Q Q Q Q Q Q ... \+4\d{3} more characters( Q)* ... \+\d+ more arguments in Q, started by .*$/,
    );
    assert.ok(d.includes(JSON.stringify(forged).slice(1, -1)), 'argv[0] shown, escaped');
    assert.ok(d.includes('(rule public). Allow? \\"'), 'the cwd shown, escaped');
    // The whole values, uncut.
    assert.equal(requester.cmdline[0], forged);
    assert.equal(requester.cmdline.length, 8 + many.length);
    assert.equal(requester.cmdline[7], long);
    assert.equal(requester.cwd, dir);
    assert.equal(kw(['deny', String(p['id'])], { env: h.env }).code, 0);
    await exited;
  });

  test('the approval prompt shows the loader variables of every caller, and a rule can deny callers that carry them', async () => {
    const lib = ['/lib/x86_64-linux-gnu/libm.so.6', '/lib/aarch64-linux-gnu/libm.so.6'].find((p) =>
      fs.existsSync(p),
    ) as string;
    const h = await agentOf(
      'version: 1\nrules:\n' +
        '  - { name: no-loaders, targets: ["strict/**"], callers: { loader_vars: present }, decision: deny }\n' +
        '  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n',
      { user: false },
    );
    setSecret(h, 'app/token', 'loader-var-value', false);
    setSecret(h, 'strict/token', 'strict-value', false);
    h.answer('no');
    const r = kw(['read', 'app/token'], {
      env: { ...h.env, LD_PRELOAD: lib, NODE_OPTIONS: '--no-warnings' },
    });
    assert.equal(r.code, 6, r.stderr);
    assert.match(
      h.prompts()[0] ?? '',
      new RegExp(
        `, with LD_PRELOAD="${lib.replace(/[/.]/g, '\\$&')}" NODE_OPTIONS="--no-warnings"\\. Allow\\?$`,
      ),
    );
    const denied = kw(['read', 'strict/token'], { env: { ...h.env, LD_PRELOAD: lib } });
    assert.equal(denied.code, 6, denied.stderr);
    assert.match(denied.stderr, /denied by policy/);
    assert.equal(h.prompts().length, 1, 'denied by the rule, nobody asked');
    h.answer('yes');
    const clean = kw(['read', 'strict/token'], { env: h.env });
    assert.equal(clean.code, 0, clean.stderr);
    assert.equal(clean.stdout, 'strict-value');
    const explain = kw(
      ['policy', 'explain', '--target', 'strict/token', '--loader-var', 'LD_PRELOAD'],
      { env: h.env },
    );
    assert.match(explain.stdout, /^deny by rule no-loaders/);
  });
});

describe('found in review: loader variables OpenSSL reads', () => {
  test('OPENSSL_CONF, which loads a provider into any program that links OpenSSL, is a loader variable: a rule on them catches it', async () => {
    const h = await agentOf(
      'version: 1\nrules:\n' +
        '  - { name: no-loaders, targets: ["**"], callers: { loader_vars: present }, decision: deny }\n' +
        '  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n',
      { user: false },
    );
    setSecret(h, 'app/token', 'openssl-conf-value', false);
    h.answer('yes');
    const clean = runLines([PYTHON, RAW_CLIENT, h.sock, 'app/token'], {
      env: { ...h.env },
      user: false,
    });
    assert.equal(clean[0], 'value:openssl-conf-value', 'asked, and approved');
    for (const name of ['OPENSSL_CONF', 'OPENSSL_MODULES']) {
      const lines = runLines([PYTHON, RAW_CLIENT, h.sock, 'app/token'], {
        env: { ...h.env, [name]: '/dev/null' },
        user: false,
      });
      assert.match(
        lines[0] ?? '',
        /^error:POLICY_DENIED:denied by policy/,
        `${name}: ${lines.join('\n')}`,
      );
    }
  });
});

describe('found in review: a variable that turns an editor into Node', () => {
  /** An agent that denies callers with loader variables and allows the rest; app/token set. */
  async function loadersDenied(value: string): Promise<AgentHome> {
    const h = await agentOf(
      'version: 1\nrules:\n' +
        '  - { name: no-loaders, targets: ["**"], callers: { loader_vars: present }, decision: deny }\n' +
        '  - { name: allow, targets: ["**"], decision: allow }\n',
      { user: false },
    );
    setSecret(h, 'app/token', value, false);
    return h;
  }
  /** What a raw client gets for app/token with these variables added to its environment. */
  const readWith = (h: AgentHome, extra: Record<string, string>) =>
    runLines([PYTHON, RAW_CLIENT, h.sock, 'app/token'], {
      env: { ...h.env, ...extra },
      user: false,
    });

  test('ELECTRON_RUN_AS_NODE, which makes an Electron program (an editor a rule trusts by its exe) run any script as plain Node, is a loader variable', async () => {
    const h = await loadersDenied('electron-value');
    const clean = readWith(h, {});
    assert.equal(clean[0], 'value:electron-value');
    const lines = readWith(h, { ELECTRON_RUN_AS_NODE: '1' });
    assert.match(lines[0] ?? '', /^error:POLICY_DENIED:denied by policy/, lines.join('\n'));
  });

  test('PYTHONWARNINGS (a category names a module Python imports) and LUA_INIT (code Lua runs first) are loader variables', async () => {
    const h = await loadersDenied('warned-value');
    for (const [name, value] of [
      ['PYTHONWARNINGS', 'ignore::evil.Category'],
      ['LUA_INIT', '@/tmp/evil.lua'],
      ['LUA_INIT_5_4', 'os.execute("id")'],
    ] as const) {
      const lines = readWith(h, { [name]: value });
      assert.match(
        lines[0] ?? '',
        /^error:POLICY_DENIED:denied by policy/,
        `${name}: ${lines.join('\n')}`,
      );
    }
  });
});

describe('found in review: the question comes first', () => {
  test("a caller's environment, directory and arguments, thousands of characters and a sentence of its own, come after keyward's question", async () => {
    const h = await agentOf(
      'version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n',
      { user: false },
    );
    setSecret(h, 'app/token', 'question-first-value', false);
    h.answer('no');
    // Loader variables that do nothing here (DYLD_* on Linux), each as long as a prompt shows
    // one, and a directory whose name is a harmless question.
    const padding = Object.fromEntries(
      Array.from({ length: 16 }, (_, i) => [`DYLD_PAD_${i}`, 'x'.repeat(300)]),
    );
    const decoy = path.join(
      h.dir,
      'proj wants to list the names of the secrets (rule lists). Allow? ',
    );
    fs.mkdirSync(decoy);
    const r = kw(['read', 'app/token'], { env: { ...h.env, ...padding }, cwd: decoy });
    assert.equal(r.code, 6, r.stderr);
    const prompt = h.prompts()[0] ?? '';
    assert.ok(prompt.length > 3000, `the caller made it long: ${prompt.length}`);
    assert.match(
      prompt,
      /^keyward, request [0-9a-f]{8}: a request to read the secret "app\/token" \(rule ask\)\. Asked by /,
    );
    assert.ok(prompt.indexOf('wants to list') > prompt.indexOf(' Asked by '), 'the decoy after');
  });
});

describe('found in review: loader variables past the first sixteen', () => {
  test('twenty GIT_CONFIG_KEY_n before NODE_OPTIONS do not push it out of the prompt and the record; what is left out is counted', async () => {
    const h = await agentOf(
      'version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n',
      { user: false },
    );
    setSecret(h, 'app/token', 'loader-var-value', false);
    h.answer('no');
    const padding = Object.fromEntries(
      Array.from({ length: 20 }, (_, i) => [`GIT_CONFIG_KEY_${i}`, 'core.pager']),
    );
    const r = kw(['read', 'app/token'], {
      env: { ...h.env, ...padding, NODE_OPTIONS: '--no-warnings' },
    });
    assert.equal(r.code, 6, r.stderr);
    const prompt = h.prompts()[0] ?? '';
    assert.match(
      prompt,
      /, with NODE_OPTIONS="--no-warnings" GIT_CONFIG_KEY_0 \(value not shown\)/,
    );
    assert.match(
      prompt,
      /GIT_CONFIG_KEY_15 \(value not shown\) \(4 more loader variables\)\. Allow\?$/,
    );
    const asked = auditEntries(h).find((e) => e.type === 'approval.requested');
    const vars = (asked?.actor as { loaderVars?: string[] } | undefined)?.loaderVars ?? [];
    assert.equal(vars[0], 'NODE_OPTIONS');
    assert.equal(vars.at(-1), '(4 more loader variables)');
  });
});

describe('found in review: borrowed identities, code-loading variables, prompt fields, loader grants', () => {
  test('a request written before the greeting is refused: a program cannot connect, queue a request and exec a trusted one', async () => {
    const h = await agentOf(
      'version: 1\nrules:\n' +
        '  - { name: tail-ok, targets: ["app/**"], callers: { exe: "/usr/bin/tail" }, decision: allow }\n' +
        '  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n',
      { user: false },
    );
    setSecret(h, 'app/token', 'borrowed-identity-value', false);
    const swap = spawn(
      PYTHON,
      [
        path.join(ROOT, 'test/fixtures/exec-swap.py'),
        h.sock,
        'app/token',
        String(h.agent?.pid),
        '/usr/bin/tail',
        '-f',
        '/dev/null',
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const line = await new Promise<string>((resolve) => {
      let out = '';
      swap.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(out.trim());
      });
    });
    swap.kill('SIGKILL');
    assert.equal(line, 'closed', 'the queued request was not served as /usr/bin/tail');
    const rejected = auditEntries(h).filter((e) => e.type === 'peer.rejected');
    assert.ok(rejected.some((e) => /wrote before the agent greeted it/.test(e.reason ?? '')));
  });

  test('OPENSSL_CONF is refused by every keyward process; the agent refuses every LD_ variable, and agent start drops them', () => {
    const h = agentHome();
    const cnf = path.join(h.dir, 'openssl.cnf');
    fs.writeFileSync(cnf, 'openssl_conf = x\n[x]\n');
    const cli = kw(['secret', 'list'], { env: { ...h.env, OPENSSL_CONF: cnf } });
    assert.equal(cli.code, 8, cli.stderr);
    assert.match(cli.stderr, /OPENSSL_CONF is set/);
    const run = spawnSync(process.execPath, [BIN, 'agent', 'run'], {
      env: { ...h.env, LD_LIBRARY_PATH: h.dir },
      encoding: 'utf8',
    });
    assert.equal(run.status, 8, run.stderr);
    assert.match(run.stderr, /LD_LIBRARY_PATH is set/);
    const started = kw(['agent', 'start'], {
      env: { ...h.env, LD_LIBRARY_PATH: h.dir, GCONV_PATH: h.dir },
    });
    assert.equal(started.code, 0, started.stderr);
    try {
      const pid = Number(/pid (\d+)/.exec(started.stdout)?.[1]);
      const environ = fs.readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
      assert.deepEqual(
        environ.filter((e) => /^(LD_|GCONV_PATH=|OPENSSL_)/.test(e)),
        [],
        'the agent started clean',
      );
    } finally {
      kw(['agent', 'stop'], { env: h.env });
    }
  });

  test('every field of an SSH signature request is quoted in the prompt (SSHSIG namespace and hash algorithm, login user and service)', () => {
    const str = (s: string | Buffer) => {
      const b = Buffer.from(s);
      const n = Buffer.alloc(4);
      n.writeUInt32BE(b.length);
      return Buffer.concat([n, b]);
    };
    const forged = '") (rule ok). Allow?\n\nkeyward: "/usr/bin/git" wants to sign';
    const sshsig = Buffer.concat([
      Buffer.from('SSHSIG'),
      str(forged),
      str(''),
      str(forged),
      str(Buffer.alloc(64, 1)),
    ]);
    const login = Buffer.concat([
      str(Buffer.alloc(32, 2)),
      Buffer.from([50]),
      str(forged),
      str(forged),
      str('publickey'),
      Buffer.from([1]),
      str('ssh-ed25519'),
      str(Buffer.alloc(51, 3)),
    ]);
    assert.match(
      skeleton(describeSignData(sshsig).text),
      /^an SSHSIG signature \(namespace Q\) over data with Q \.\.\. \+\d+ more characters (01){16}\.\.\.$/,
    );
    assert.equal(skeleton(describeSignData(login).text), 'an SSH login as Q (Q)');
  });

  test('a remembered executable grant is not a grant for the same executable started with LD_PRELOAD, and values that may hold tokens are not shown', async () => {
    const lib = ['/lib/x86_64-linux-gnu/libm.so.6', '/lib/aarch64-linux-gnu/libm.so.6'].find((p) =>
      fs.existsSync(p),
    ) as string;
    const h = await agentOf(
      'version: 1\nrules:\n  - { name: remember-exe, targets: ["**"], decision: approve, approve: { mode: confirm, remember: { scope: executable, for: 10m } } }\n',
      { user: false },
    );
    setSecret(h, 'app/token', 'exe-grant-value', false);
    h.answer('yes');
    assert.equal(kw(['read', 'app/token'], { env: h.env }).code, 0);
    assert.equal(kw(['read', 'app/token'], { env: h.env }).code, 0);
    assert.equal(h.prompts().length, 1, 'the executable grant serves the second read');
    const token = 'AUTHORIZATION: bearer ghp_notForOtherUsers123';
    const r = kw(['read', 'app/token'], {
      env: { ...h.env, LD_PRELOAD: lib, GIT_CONFIG_PARAMETERS: `'http.extraheader'='${token}'` },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(h.prompts().length, 2, 'LD_PRELOAD: asked again');
    const prompt = h.prompts()[1] ?? '';
    assert.match(prompt, /GIT_CONFIG_PARAMETERS \(value not shown\)/);
    assert.ok(!prompt.includes('ghp_notForOtherUsers123'), 'the token is not in the prompt');
  });

  test('found in review: a remembered grant is not a grant for another value of a loader variable whose value is not shown, nor for one past the sixteenth', async () => {
    const h = await agentOf(
      'version: 1\nrules:\n  - { name: remember-exe, targets: ["**"], decision: approve, approve: { mode: confirm, remember: { scope: executable, for: 10m } } }\n',
      { user: false },
    );
    setSecret(h, 'app/token', 'exe-grant-value', false);
    h.answer('yes');
    // Seventeen GIT_CONFIG_KEY_n: the last is past what a prompt names.
    const keys = Object.fromEntries(
      Array.from({ length: 17 }, (_, i) => [`GIT_CONFIG_KEY_${i}`, `core.k${i}`]),
    );
    const asked = { ...h.env, ...keys, JAVA_TOOL_OPTIONS: '-Xmx64m' };
    assert.equal(kw(['read', 'app/token'], { env: asked }).code, 0);
    assert.equal(kw(['read', 'app/token'], { env: asked }).code, 0);
    assert.equal(h.prompts().length, 1, 'the executable grant serves the same environment');
    h.answer('no');
    for (const env of [
      { ...asked, JAVA_TOOL_OPTIONS: '-javaagent:/tmp/not-what-was-approved.jar' },
      { ...asked, GIT_CONFIG_KEY_16: 'core.sshCommand' },
    ]) {
      const r = kw(['read', 'app/token'], { env });
      assert.notEqual(r.code, 0, 'asked again, and refused');
      assert.equal(r.stdout, '');
    }
    assert.equal(h.prompts().length, 3, 'each other value asked again');
  });

  test(
    'keyward mcp serve is non-dumpable before it relays anything, even with no agent',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      const h = agentHome();
      chownTree(h.dir, OTHER_UID);
      const [cmd, ...pre] = asUser as [string, ...string[]];
      const serve = spawn(cmd, [...pre, process.execPath, BIN, 'mcp', 'serve'], {
        env: h.env,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      // Once it answers an MCP request it is past its start.
      serve.stdin.write(
        `${JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } } })}\n`,
      );
      await new Promise<void>((resolve) => serve.stdout.once('data', () => resolve()));
      try {
        const probe = spawnSync(
          cmd,
          [...pre, PYTHON, '-c', `import os; os.readlink("/proc/${serve.pid}/exe")`],
          { encoding: 'utf8' },
        );
        assert.notEqual(probe.status, 0, 'a same-user process could read keyward mcp serve');
      } finally {
        serve.kill('SIGKILL');
      }
    },
  );
});

describe('found in review: a kernel that cannot pin the process that connected', () => {
  /** An agent run as on a kernel whose getsockopt(SO_PEERPIDFD) fails with errno (a seccomp filter). */
  async function agentWithout(errno: 'ENOPROTOOPT' | 'EINVAL', policy: string | undefined) {
    const h = agentHome(policy);
    homes.push(h);
    const fixture = path.join(ROOT, 'dist/test/fixtures/no-peerpidfd.js');
    await startAgent(h, {}, [], [fixture, errno, process.execPath]);
    return h;
  }

  test('without SO_PEERPIDFD (Linux before 6.5) a caller is never allowed for who it is, nor remembered; the prompt and the record say why', async () => {
    const node = fs.realpathSync(process.execPath);
    const h = await agentWithout(
      'ENOPROTOOPT',
      'version: 1\nrules:\n' +
        `  - { name: this-node, targets: ["app/*"], callers: { exe: ${node}, loader_vars: absent }, decision: allow }\n` +
        '  - { name: no-git, targets: ["open/git-only"], callers: { exe: /usr/bin/git }, decision: deny }\n' +
        '  - { name: anyone, targets: ["open/*"], decision: allow }\n' +
        '  - { name: ask, targets: ["ask/*"], decision: approve, approve: { mode: confirm, remember: { scope: process, for: 10m } } }\n',
    );
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    for (const n of ['app/token', 'open/token', 'ask/token', 'open/git-only'])
      assert.equal(kw(['secret', 'set', n], { env: h.env, input: `value of ${n}` }).code, 0);
    // A rule that names no caller still allows: the agent works.
    const open = kw(['read', 'open/token'], { env: h.env });
    assert.deepEqual([open.code, open.stdout], [0, 'value of open/token'], open.stderr);
    // The allow by executable does not count: the process the agent read may not be the one
    // that connected (it exited, and another got its pid).
    const app = kw(['read', 'app/token'], { env: h.env });
    assert.equal(app.code, 6, app.stderr);
    assert.equal(app.stdout, '');
    const denied = auditEntries(h).find(
      (e) => e.type === 'secret.read' && e.target === 'app/token',
    );
    assert.equal(denied?.decision, 'deny');
    assert.equal(denied?.actor?.unpinned, true);
    // A deny by who asks holds for whoever it may be: the process read may be another than the
    // one that connected, so a deny on git is not passed by a caller that reads as node.
    const gitOnly = kw(['read', 'open/git-only'], { env: h.env });
    assert.equal(gitOnly.code, 6, gitOnly.stderr);
    const byGit = auditEntries(h).find(
      (e) => e.type === 'secret.read' && e.target === 'open/git-only',
    );
    assert.equal(byGit?.details['rule'], 'no-git');
    // An approval is asked, says why, and is not remembered.
    h.answer('yes');
    for (let i = 0; i < 2; i++) {
      const r = kw(['read', 'ask/token'], { env: h.env });
      assert.equal(r.code, 0, r.stderr);
    }
    assert.equal(h.prompts().length, 2, 'asked each time');
    assert.match(h.prompts()[0] ?? '', /which the kernel can't say is the process that connected/);
    assert.doesNotMatch(h.prompts()[0] ?? '', /A yes is remembered/);
  });

  test('a SO_PEERPIDFD that fails for a peer that exited (Linux 6.5 to 6.15) refuses the connection, not a pid found again', async () => {
    const h = await agentWithout('EINVAL', undefined);
    const refused = await new Promise<string>((resolve, reject) => {
      const c = net.connect(h.sock);
      let got = '';
      c.on('data', (d: Buffer) => (got += d.toString('latin1')));
      c.on('close', () => resolve(got));
      c.on('error', reject);
    });
    assert.equal(refused, '', 'no greeting');
    await eventually(
      () =>
        auditEntries(h).some(
          (e) =>
            e.type === 'peer.rejected' &&
            /it can't be pinned, so it is not served/.test(e.reason ?? ''),
        ),
      'the refusal recorded',
    );
  });
});
