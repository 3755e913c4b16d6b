/**
 * `keyward read NAME` through an agent talks over a blocking socket of its own
 * (agent/read-blocking.ts), without node:net: what it prints and refuses is the async client's,
 * and the process never loads node:net (which is most of what it would cost: docs/PERFORMANCE.md,
 * "keyward read").
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, test } from 'node:test';
import { kwAsync, stopAgent, unlockedAgent, type AgentHome } from './agent-helpers.js';
import { BIN, initHome, kw } from './helpers.js';
import { agentReadBlocking } from '../src/agent/index.js';
import { frameHead, RES_ERROR, RES_HELLO, RES_OK } from '../src/agent/protocol.js';
import { koffi } from '../src/lib/koffi.js';
import { unixConnect } from '../src/lib/unix.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

const ALLOW_APP =
  'version: 1\nrules:\n  - { name: app, targets: ["app/**"], decision: allow }\n' +
  '  - { name: no, targets: ["**"], decision: deny }\n';

test('read through the agent loads no node:net, through a pipe as through a file; it prints the value, and refusals as before', async () => {
  const h = await unlockedAgent(ALLOW_APP, homes);
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'tok-123' }).code, 0);
  assert.equal(kw(['secret', 'set', 'other/x'], { env: h.env, input: 'no' }).code, 0);
  // bin/keyward.js run as `keyward read NAME`, by a wrapper that says at exit whether
  // node:net was ever loaded in the process.
  const wrapper = path.join(h.dir, 'read-wrapper.cjs');
  fs.writeFileSync(
    wrapper,
    `const fs = require('node:fs');\n` +
      `process.on('exit', () => fs.writeSync(2, '\\nnet loaded: ' + process.moduleLoadList.includes('NativeModule net') + '\\n'));\n` +
      `process.argv = [process.argv[0], ${JSON.stringify(BIN)}, 'read', process.env.READ_NAME];\n` +
      `require(${JSON.stringify(BIN)});\n`,
  );
  const env: NodeJS.ProcessEnv = { ...h.env, READ_NAME: 'app/token' };
  delete env['NODE_OPTIONS'];
  // Standard output a pipe (Node would make it a net.Socket if asked for process.stdout).
  const piped = spawnSync(process.execPath, [wrapper], { env, encoding: 'utf8' });
  assert.equal(piped.status, 0, piped.stderr);
  assert.equal(piped.stdout, 'tok-123');
  assert.match(piped.stderr, /net loaded: false/);
  // A refusal: the policy's, with its exit code and message, and still no node:net.
  const denied = spawnSync(process.execPath, [wrapper], {
    env: { ...env, READ_NAME: 'other/x' },
    encoding: 'utf8',
  });
  assert.equal(denied.status, 6, denied.stderr);
  assert.match(denied.stderr, /denied by policy: rule no matches and decides: deny/);
  assert.equal(denied.stdout, '');
  // A name the vault does not hold: exit 3, as the async client said it.
  const missing = kw(['read', 'app/none'], { env: h.env });
  assert.equal(missing.code, 3, missing.stderr);
  assert.match(missing.stderr, /no secret named app\/none/);
});

test('read against a listener of your own that never accepts (its queue full) is refused at once, not waited for', () => {
  const h = initHome();
  const run = path.join(h.dir, 'run');
  fs.mkdirSync(run, { mode: 0o700 });
  const sockPath = path.join(run, 'agent.sock');
  const libc = koffi.load('libc.so.6');
  const socket = libc.func('int socket(int, int, int)');
  const bind = libc.func('int bind(int, const uint8_t *, uint32_t)');
  const listen = libc.func('int listen(int, int)');
  const close = libc.func('int close(int)');
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(1, 0); // AF_UNIX
  Buffer.from(sockPath).copy(addr, 2);
  const listener = socket(1, 1, 0) as number;
  const held: number[] = [listener];
  try {
    assert.equal(bind(listener, addr, 2 + Buffer.byteLength(sockPath) + 1), 0);
    assert.equal(listen(listener, 0), 0);
    // Fill its queue: connections it never accepts (a queue of 0 still takes one).
    for (;;) {
      try {
        held.push(unixConnect(sockPath));
      } catch (e) {
        assert.equal((e as NodeJS.ErrnoException).code, 'EAGAIN');
        break;
      }
      assert.ok(held.length < 10, 'the queue filled');
    }
    const r = spawnSync(process.execPath, [BIN, 'read', 'app/token'], {
      env: { ...h.env, KEYWARD_SOCKET_DIR: run },
      encoding: 'utf8',
      timeout: 120_000, // a safety net only: the read must end on its own, at once
    });
    assert.equal(r.signal, null, 'the read waited on the connect');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /takes no connection \(its queue is full\)/);
  } finally {
    for (const fd of held) close(fd);
  }
});

test("the greeting's 30 s are one deadline: a listener of your own that sends a byte now and then does not hold the read past it", async () => {
  const h = initHome();
  const run = path.join(h.dir, 'run');
  fs.mkdirSync(run, { mode: 0o700 });
  const sockPath = path.join(run, 'agent.sock');
  const sent = path.join(h.dir, 'sent');
  // The trickler, in a process of its own (the read below blocks this one): accepts, then sends
  // one byte every 8 s of a frame that never ends (4,096 bytes long), eight in all, counting them
  // in a file.
  const trickler = spawn(
    process.execPath,
    [
      '-e',
      `const net = require('node:net'); const fs = require('node:fs'); let n = 0;
       net.createServer((c) => { c.on('error', () => {});
         const bytes = [0, 0, 16, 0, 1, 2, 3, 4]; const t = setInterval(() => { c.write(Buffer.of(bytes[n] ?? 0)); fs.writeFileSync(${JSON.stringify(sent)}, String(++n)); if (n === 8) clearInterval(t); }, 8000);
         c.on('close', () => clearInterval(t)); }).listen(${JSON.stringify(sockPath)}, () => process.stdout.write('ready\\n'));`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  try {
    await new Promise<void>((resolve) => trickler.stdout.once('data', () => resolve()));
    // No greeting in 30 s: no agent, as agentRead said (the caller reads the vault itself).
    assert.equal(agentReadBlocking(sockPath, 'app/token', 1, false), false);
    const n = fs.existsSync(sent) ? Number(fs.readFileSync(sent, 'utf8')) : 0;
    // Bytes did come meanwhile; per receive, each would have started 30 s again, and the read
    // would have ended only 30 s after the last (the eighth, at 64 s).
    assert.ok(n >= 1 && n < 8, `${n} bytes sent while the read waited`);
  } finally {
    trickler.kill('SIGKILL');
  }
});

/** A listener of the user's own at DIR/agent.sock; conn is given each connection. */
async function ownListener(
  dir: string,
  conn: (s: net.Socket) => void,
): Promise<{ sock: string; close: () => void }> {
  fs.mkdirSync(dir, { mode: 0o700, recursive: true });
  const sock = path.join(dir, 'agent.sock');
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    conn(s);
  });
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  return { sock, close: () => server.close() };
}

const greeting = () =>
  frameHead(RES_HELLO, { agent: 'keyward', pid: process.pid, debuggable: [] }, 0);

test('a fake agent of your own: its error is shown escaped and never crashes the read, a value it sends unasked or a second greeting is refused, nothing printed', async () => {
  const h = initHome();
  const run = path.join(h.dir, 'run');
  const env = { ...h.env, KEYWARD_SOCKET_DIR: run };
  let mode = '';
  const fake = await ownListener(run, (s) => {
    if (mode === 'value with the greeting') {
      // A value before the request is sent: it answers nothing.
      s.write(
        Buffer.concat([
          greeting(),
          frameHead(RES_OK, { name: 'app/token' }, 5),
          Buffer.from('fake!'),
        ]),
      );
      return;
    }
    s.write(greeting());
    s.once('data', () => {
      if (mode === 'greeting again') s.write(greeting());
      else
        s.write(
          frameHead(
            RES_ERROR,
            {
              // In ERROR_CODES through its prototype only; its exit code was no number.
              code: mode,
              message: 'refused \x1b]0;owned\x07\x1b[2J here',
              hint: 'run \x1b[8mhidden\x1b[0m now',
            },
            0,
          ),
        );
    });
  });
  try {
    for (const code of ['__proto__', 'toString', 'constructor']) {
      mode = code;
      const r = await kwAsync(['read', 'app/token'], env);
      assert.equal(r.code, 1, `${code}: ${r.stderr}`);
      assert.equal(r.stdout, '');
      assert.equal(r.stderr.includes('\x1b'), false, 'a terminal escape reached stderr');
      assert.doesNotMatch(r.stderr, /^\s+at /m, 'a stack trace');
      assert.match(r.stderr, /refused \\u\{1b\}\]0;owned\\u\{7\}\\u\{1b\}\[2J here/);
      assert.match(r.stderr, /hint: run \\u\{1b\}\[8mhidden/);
    }
    for (const [m, why] of [
      ['value with the greeting', /spoke before it was asked/],
      ['greeting again', /answered with frame type 130/],
    ] as const) {
      mode = m;
      const r = await kwAsync(['read', 'app/token'], env);
      assert.equal(r.code, 8, `${m}: ${r.stderr}`);
      assert.equal(r.stdout, '', `${m}: printed as the value`);
      assert.match(r.stderr, why);
    }
  } finally {
    fake.close();
  }
});

test('a fake agent that answers status and list with terminal escapes: doctor shows them escaped, secret list and key list refuse the list, nothing raw reaches the terminal', async () => {
  const h = initHome();
  const run = path.join(h.dir, 'run');
  const env = { ...h.env, KEYWARD_SOCKET_DIR: run };
  // Clear the line above, write the clipboard (OSC 52), and show a line of its own.
  const evil = '\x1b[2K\r\x1b[1A\x1b[2KOK    everything fine\x1b]52;c;ZXZpbA==\x07';
  let body = Buffer.from(
    JSON.stringify({
      entries: [{ name: `aws/prod${evil}`, size: 1, created: evil, updated: evil }],
      keys: [{ name: `deploy${evil}`, type: 'ssh-ed25519', bits: 256, publicBlob: '' }],
    }),
  );
  const fake = await ownListener(run, (s) => {
    s.write(greeting());
    s.once('data', () => {
      s.write(
        Buffer.concat([
          frameHead(
            RES_OK,
            {
              unlocked: true,
              locked: false,
              console: `http://127.0.0.1:1/${evil}`,
              debuggable: [evil],
              policy: { version: 1, drift: [evil] },
            },
            body.length,
          ),
          body,
        ]),
      );
    });
  });
  try {
    const d = await kwAsync(['doctor'], env);
    assert.equal(d.stdout.includes('\x1b') || d.stderr.includes('\x1b'), false, d.stdout);
    assert.match(d.stdout, /the agent's console: http:\/\/127\.0\.0\.1:1\/\\u\{1b\}\[2K/);
    assert.match(d.stdout, /differ from the applied policy.*\\u\{1b\}\]52;c;ZXZpbA==\\u\{7\}/);
    for (const args of [
      ['secret', 'list'],
      ['key', 'list'],
    ]) {
      const r = await kwAsync(args, env);
      assert.equal(r.code, 8, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '', `${args.join(' ')} printed the list`);
      assert.equal(r.stderr.includes('\x1b'), false);
      assert.match(
        r.stderr,
        /the agent sent a malformed frame \(a listed (entry is not a secret|key is not a key)\)/,
      );
    }
    // A pending request whose caller description would clear the screen's last line.
    body = Buffer.from(
      JSON.stringify([
        {
          id: 'r1',
          action: 'read',
          target: 'app/token',
          rule: 'ask',
          mode: 'confirm',
          expiresAt: Date.now() + 60_000,
          requester: { description: `pid 1 ${evil}` },
        },
      ]),
    );
    const a = await kwAsync(['approvals'], env);
    assert.equal(a.stdout.includes('\x1b'), false, a.stdout);
    assert.match(a.stdout, /by pid 1 \\u\{1b\}\[2K/);
  } finally {
    fake.close();
  }
});

test('a listener that never greets holds the read 30 s once, whatever signals arrive meanwhile; then the vault is read directly', async () => {
  const h = initHome();
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'direct-1' }).code, 0);
  const run = path.join(h.dir, 'run');
  const sent = path.join(h.dir, 'signals');
  let signaler: ReturnType<typeof spawn> | undefined;
  let readerPid = 0;
  // SIGUSR1 (bin/keyward.js handles it) every 2 s, 40 in all, counted in a file, from the moment
  // the read connects (so every one lands in its wait): each one made the receive start its 30 s
  // again, and the read waited until they stopped. They come at odd seconds (1, 3, ... 29, 31)
  // and stop once the value is out: while a process exits, Node has already put SIGUSR1 back to
  // its default (an end by the signal), and one at 30 s came in that moment once.
  const startSignals = () => {
    signaler ??= spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('node:fs'); let n = 0; let t;
         const tick = () => {
           try { process.kill(${readerPid}, 'SIGUSR1'); } catch { clearInterval(t); return; }
           fs.writeFileSync(${JSON.stringify(sent)}, String(++n)); if (n === 40) clearInterval(t); };
         setTimeout(() => { tick(); t = setInterval(tick, 2000); }, 1000);`,
      ],
      { stdio: 'ignore' },
    );
  };
  const silent = await ownListener(run, startSignals);
  const reader = spawn(process.execPath, [BIN, 'read', 'app/token'], {
    env: { ...h.env, KEYWARD_SOCKET_DIR: run },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  readerPid = reader.pid ?? 0;
  let stdout = '';
  let stderr = '';
  reader.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    signaler?.kill('SIGKILL');
  });
  reader.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  try {
    const code = await new Promise<number | null>((resolve) => reader.on('close', resolve));
    const n = fs.existsSync(sent) ? Number(fs.readFileSync(sent, 'utf8')) : 0;
    assert.equal(code, 0, stderr);
    assert.equal(stdout, 'direct-1');
    // Signals came during the wait (the first at 2 s of its 30), and it ended while they still
    // came, before a second 30 s wait (the async client's, after the blocking one's) could have
    // ended: one wait is ~15 signals, two would be 30, a wait restarted by each one 40.
    assert.ok(n >= 3 && n < 25, `${n} signals sent while the read waited`);
  } finally {
    signaler?.kill('SIGKILL');
    silent.close();
  }
});

test("a value whose reader went away is a quiet end (exit 0); one that can't be written is OUTPUT_FAILED, not a bug", async () => {
  const h = await unlockedAgent(ALLOW_APP, homes);
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'tok-456' }).code, 0);
  const direct = initHome();
  assert.equal(kw(['secret', 'set', 'app/token'], { env: direct.env, input: 'tok-789' }).code, 0);
  for (const [label, env] of [
    ['through the agent', h.env],
    ['directly', direct.env],
  ] as const) {
    // The reader's end of the pipe closed before the value comes: EPIPE.
    const gone = spawn(process.execPath, [BIN, 'read', 'app/token'], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    gone.stdout.destroy();
    let stderr = '';
    gone.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => gone.on('close', resolve));
    assert.equal(code, 0, `${label}: ${stderr}`);
    assert.equal(stderr, '', label);
    // A full device: ENOSPC, said as such.
    const full = spawnSync(process.execPath, [BIN, 'read', 'app/token'], {
      env,
      stdio: ['ignore', fs.openSync('/dev/full', 'w'), 'pipe'],
      encoding: 'utf8',
    });
    assert.equal(full.status, 5, `${label}: ${full.stderr}`);
    assert.match(full.stderr, /could not write to standard output \(ENOSPC\)/);
    assert.doesNotMatch(full.stderr, /internal error|bug in keyward/);
  }
});
