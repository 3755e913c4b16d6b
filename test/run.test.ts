/**
 * `keyward run` (issue 7) with a real agent, real children and real signals: injection, masking
 * of every encoded form, env files, exit codes and signals, stdin, fd delivery, policy, audit,
 * and memory scans of the agent and the CLI (root).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import {
  agentHome,
  type AgentHome,
  auditEntries,
  pendingId,
  scanMemory,
  scanWindows,
  startAgent,
  stopAgent,
  withoutAgent,
} from './agent-helpers.js';
import { runPrompt } from '../src/agent/run-prompt.js';
import { maskingForms } from '../src/run/index.js';
import { BIN, eventually, kw, ROOT, rootTests, sleep } from './helpers.js';
import { asUser } from './as-user.js';

const ALLOW_ALL = 'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n';
const MARK = '<concealed by keyward>';
const CONFIRM_ALL =
  'version: 1\nrules:\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n';

const homes: AgentHome[] = [];

/** Runs `keyward run ARGV` on a real pty (test/pty-driver.py); the transcript, then EXIT=N. */
function drivePty(h: AgentHome, argv: string[], steps: string[][]): Promise<string> {
  return new Promise<string>((resolve) => {
    const d = spawn('python3', [
      path.join(ROOT, 'test/pty-driver.py'),
      JSON.stringify({ argv: [process.execPath, BIN, 'run', ...argv], env: h.env, steps }),
    ]);
    let out = '';
    d.stdout.on('data', (b: Buffer) => (out += b.toString()));
    d.on('close', () => resolve(out));
  });
}

/** Waits (polling, up to 30 s) until probe returns something other than undefined or false. */
async function until<T>(probe: () => T | undefined | false): Promise<T> {
  for (let i = 0; i < 1500; i++) {
    try {
      const v = probe();
      if (v !== undefined && v !== false) return v;
    } catch {
      // not yet
    }
    await sleep(20);
  }
  throw new Error('timed out waiting');
}
after(async () => {
  for (const h of homes) await stopAgent(h);
});

async function running(policy = ALLOW_ALL): Promise<AgentHome> {
  const h = agentHome(policy);
  homes.push(h);
  await startAgent(h);
  const u = kw(['unlock'], { env: h.env });
  assert.equal(u.code, 0, u.stderr);
  return h;
}

function setSecret(h: AgentHome, name: string, value: string | Buffer): void {
  const r = kw(['secret', 'set', '--raw', name], { env: h.env, input: value });
  assert.equal(r.code, 0, r.stderr);
}

/** `keyward run ARGS` as a child; resolves with its exit code and output. */
function run(
  h: AgentHome,
  args: string[],
  o: {
    input?: string;
    onStdout?: (all: string, pid: number) => void;
    cwd?: string;
    env?: NodeJS.ProcessEnv;
  } = {},
): Promise<{ code: number | null; stdout: string; stderr: string; pid: number }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [BIN, 'run', ...args], {
      env: { ...h.env, ...o.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      cwd: o.cwd ?? h.dir,
    });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      o.onStdout?.(stdout, c.pid ?? 0);
    });
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.stdin.end(o.input ?? '');
    // 'close', not 'exit': the output may still be in the pipe when the process has exited.
    c.on('close', (code) => resolve({ code, stdout, stderr, pid: c.pid ?? 0 }));
  });
}

describe('masking forms', () => {
  test('each is what the encoder writes, byte for byte: astral characters, U+2028, DEL, control characters, invalid UTF-8', () => {
    const values = [
      'emoji \u{1F600} key/\u2260',
      'line\u2028sep <&> x',
      'del\x7Fchar ctrl\x01\t',
      'plain-ascii-token',
    ];
    // Python's encoders (and PHP's and Go's JSON, made exactly from Python's), run for real.
    const py = spawnSync(
      'python3',
      [
        '-c',
        [
          'import json, sys, urllib.parse',
          'for v in json.loads(sys.stdin.read()):',
          '  g = json.dumps(v, ensure_ascii=False)[1:-1]',
          "  for a, b in (('<', '\\u003c'), ('>', '\\u003e'), ('&', '\\u0026'), ('\u2028', '\\u2028')): g = g.replace(a, b)",
          "  forms = [json.dumps(v)[1:-1], json.dumps(v)[1:-1].replace('/', '\\/'), g, urllib.parse.quote(v), urllib.parse.quote_plus(v)]",
          "  print(json.dumps([f.encode('utf-8').hex() for f in forms]))",
        ].join('\n'),
      ],
      { input: JSON.stringify(values), encoding: 'utf8' },
    );
    assert.equal(py.status, 0, py.stderr);
    const fromPython = py.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as string[]);
    for (const [i, v] of values.entries()) {
      const forms = maskingForms(Buffer.from(v)).map((f) => Buffer.from(f).toString('hex'));
      const expected = [
        ...(fromPython[i] ?? []),
        Buffer.from(JSON.stringify(v).slice(1, -1)).toString('hex'),
        Buffer.from(encodeURIComponent(v)).toString('hex'),
        Buffer.from(new URLSearchParams({ v }).toString().slice(2)).toString('hex'),
      ];
      for (const e of expected)
        assert.ok(
          forms.includes(e),
          `${JSON.stringify(v)}: ${Buffer.from(e, 'hex').toString()} is not a form`,
        );
    }
    // Not UTF-8: no JSON form with \u escapes (the bytes are no string to those encoders); the
    // others are still made.
    const bytes = Buffer.from([0x61, 0x62, 0xff, 0x63, 0x64, 0x65, 0x2f]);
    const forms = maskingForms(bytes).map((f) => Buffer.from(f).toString('latin1'));
    assert.ok(forms.includes('ab%FFcde%2F') && forms.includes('ab%FFcde/'), forms.join(' '));
    assert.ok(!forms.some((f) => f.includes('\\u')), forms.join(' '));
  });
});

describe('keyward run: the agent starts the child with the secret', () => {
  test('--env puts the value in the child environment; stdout and stderr are masked; the exit code passes through', async () => {
    const h = await running();
    setSecret(h, 'app/token', 'sup3r-s3cret-value-123');
    const r = await run(h, [
      '--env',
      'TOKEN=app/token',
      '--',
      'sh',
      '-c',
      'test "$TOKEN" = sup3r-s3cret-value-123 && echo same; echo "out $TOKEN"; echo "err $TOKEN" >&2; exit 7',
    ]);
    assert.equal(r.code, 7);
    assert.equal(r.stdout, `same\nout ${MARK}\n`);
    assert.equal(r.stderr, `err ${MARK}\n`);
  });

  test('every encoded form is masked: base64 (any alignment), base64url, hex, URL and JSON escaping, and values split across writes', async () => {
    const h = await running();
    const value = 'p@ss/w0rd+"quoted"\\and more';
    setSecret(h, 'enc/value', value);
    const v = Buffer.from(value);
    const forms = {
      raw: value,
      b64: v.toString('base64'),
      b64shifted: Buffer.concat([Buffer.from('xy'), v, Buffer.from('z')]).toString('base64'),
      b64url: v.toString('base64url'),
      hexLower: v.toString('hex'),
      hexUpper: v.toString('hex').toUpperCase(),
      url: encodeURIComponent(value),
      json: JSON.stringify(value).slice(1, -1),
    };
    // A node child writes each form, and the raw value once more in three separate writes with
    // pauses, so the pieces arrive in different chunks.
    const script = `
      const forms = ${JSON.stringify(forms)};
      for (const [k, f] of Object.entries(forms)) process.stdout.write(k + '=' + f + '\\n');
      const v = ${JSON.stringify(value)};
      const parts = [v.slice(0, 5), v.slice(5, 11), v.slice(11) + '\\n'];
      (async () => { for (const p of parts) { process.stdout.write('split=' .slice(0, parts.indexOf(p) === 0 ? 6 : 0) + p); await new Promise(r => setTimeout(r, 120)); } })();
    `;
    const r = await run(h, ['--env', 'V=enc/value', '--', process.execPath, '-e', script]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    for (const line of lines) {
      const [k] = line.split('=');
      if (k === 'b64shifted') {
        // The characters that depend on the value alone are masked; at most a group of
        // neighbours' characters shows on each side.
        assert.match(line, new RegExp(`^b64shifted=[A-Za-z0-9+/]{0,4}${MARK}[A-Za-z0-9+/=]{0,8}$`));
      } else assert.match(line, new RegExp(`^${k}=${MARK}$`), line);
    }
    assert.equal(lines.length, Object.keys(forms).length + 1);
    assert.ok(!r.stdout.includes('w0rd'), 'no piece of the value');
  });

  test("other encoders' forms are masked: Python's json and urllib, PHP's and Go's JSON, URLSearchParams, lowercase percent-encoding", async () => {
    const h = await running();
    // Every character some encoder writes its own way: non-ASCII, a slash, a space, HTML's
    // three, and the marks that encoders keep or escape differently.
    const value = 'pä/ss <w&rd> ~*x+y!';
    setSecret(h, 'enc/other', value);
    // The encoders themselves, in the child: Python's standard library, and the JSON of PHP
    // (json_encode: \u escapes and an escaped slash) and Go (json.Marshal: HTML's characters
    // escaped), which CI has no interpreter for, made exactly from Python's.
    const python = [
      'import json, os, urllib.parse',
      "v = os.environb[b'V'].decode('utf-8')",
      'forms = {',
      "  'pyjson': json.dumps(v)[1:-1],",
      "  'quote': urllib.parse.quote(v),",
      "  'quoteplus': urllib.parse.quote_plus(v),",
      "  'quotelower': ''.join(chr(b) if chr(b).isalnum() and b < 128 or chr(b) in '-._~' else '%%%02x' % b for b in v.encode()),",
      "  'php': json.dumps(v)[1:-1].replace('/', '\\\\/'),",
      "  'go': json.dumps(v, ensure_ascii=False)[1:-1].replace('<', '\\\\u003c').replace('>', '\\\\u003e').replace('&', '\\\\u0026'),",
      '}',
      "for k, f in forms.items(): print(k + '=' + f, flush=True)",
    ].join('\n');
    const py = await run(h, ['--env', 'V=enc/other', '--', 'python3', '-c', python]);
    assert.equal(py.code, 0, py.stderr);
    const node = await run(h, [
      '--env',
      'V=enc/other',
      '--',
      process.execPath,
      '-e',
      `const v = process.env.V;
       console.log('usp=' + new URLSearchParams({ v }).toString().slice(2));
       console.log('urilower=' + encodeURIComponent(v).replace(/%[0-9A-F]{2}/g, (s) => s.toLowerCase()));`,
    ]);
    assert.equal(node.code, 0, node.stderr);
    const lines = `${py.stdout}${node.stdout}`.trim().split('\n');
    assert.equal(lines.length, 8, `${py.stdout}${node.stdout}`);
    for (const line of lines) assert.match(line, new RegExp(`^[a-z]+=${MARK}$`), line);
  });

  test('--no-masking passes the output as it is; values shorter than 6 bytes are never masked', async () => {
    const h = await running();
    setSecret(h, 'm/long', 'long-enough-value');
    setSecret(h, 'm/short', 'abc12');
    let r = await run(h, ['--no-masking', '--env', 'A=m/long', '--', 'sh', '-c', 'echo $A']);
    assert.equal(r.stdout, 'long-enough-value\n');
    r = await run(h, ['--env', 'A=m/short', '--', 'sh', '-c', 'echo $A']);
    assert.equal(r.stdout, 'abc12\n');
  });

  test('--env-file: keyward: references are resolved, other values pass through; bad lines are usage errors', async () => {
    const h = await running();
    setSecret(h, 'db/password', 'correct-horse-battery');
    const file = path.join(h.dir, 'app.env');
    fs.writeFileSync(
      file,
      '# settings\nexport DB_PASSWORD=keyward:db/password\nREGION="eu-west-1"\n\nMODE=plain\n',
    );
    const r = await run(h, [
      '--env-file',
      file,
      '--',
      'sh',
      '-c',
      'echo "$REGION $MODE"; test "$DB_PASSWORD" = correct-horse-battery && echo injected',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'eu-west-1 plain\ninjected\n');
    fs.writeFileSync(file, 'NOT A LINE\n');
    const bad = await run(h, ['--env-file', file, '--', 'true']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /app\.env:1: expected NAME=VALUE/);
  });

  test('stdin reaches the child; a missing command exits 127; a child killed by a signal gives 128+N', async () => {
    const h = await running();
    let r = await run(h, ['--', 'sh', '-c', 'cat; echo done'], { input: 'line1\nline2\n' });
    assert.equal(r.stdout, 'line1\nline2\ndone\n');
    r = await run(h, ['--', 'no-such-command-keyward']);
    assert.equal(r.code, 127);
    assert.match(r.stderr, /no-such-command-keyward.*command not found/);
    r = await run(h, ['--', 'sh', '-c', 'kill -TERM $$']);
    assert.equal(r.code, 143);
  });

  test('Ctrl-C (SIGINT to keyward run) reaches the child, whose exit code is the result', async () => {
    const h = await running();
    let sent = false;
    const r = await run(
      h,
      [
        '--',
        'sh',
        '-c',
        'trap "echo got-int; exit 42" INT; echo ready; while :; do sleep 0.1; done',
      ],
      {
        onStdout: (all, pid) => {
          if (!sent && all.includes('ready')) {
            sent = true;
            process.kill(pid, 'SIGINT');
          }
        },
      },
    );
    assert.equal(r.code, 42);
    assert.equal(r.stdout, 'ready\ngot-int\n');
  });

  test('on a terminal the child gets a pty: colours and the size pass, keys reach it, Ctrl-C interrupts it; output still masked', async () => {
    const h = await running();
    setSecret(h, 'pty/token', 'pty-secret-value-77');
    const drive = (argv: string[], steps: string[][]) => drivePty(h, argv, steps);
    let out = await drive(
      [
        '--env',
        'T=pty/token',
        '--',
        'sh',
        '-c',
        'test -t 1 && echo tty-yes; printf "\\033[31mred\\033[0m $T\\n"; read x; echo got-$x',
      ],
      [['tty-yes', 'hello\r']],
    );
    assert.match(out, /tty-yes/);
    assert.ok(out.includes(`\x1b[31mred\x1b[0m ${MARK}`), out);
    assert.match(out, /got-hello/);
    assert.ok(!out.includes('pty-secret-value-77'));
    assert.match(out, /EXIT=0/);
    out = await drive(
      [
        '--',
        'sh',
        '-c',
        'trap "echo got-int; exit 42" INT; echo ready; while :; do sleep 0.1; done',
      ],
      [['ready', '\x03']],
    );
    assert.match(out, /got-int/);
    assert.match(out, /EXIT=42/);
  });

  test('on a terminal, a grandchild that holds it silently never freezes the agent: the run ends, and the agent answers meanwhile', async () => {
    // The child leaves a detached grandchild on the terminal (its own session, so no hang-up
    // reaches it) and exits; after 2 s without output the run ends and the agent reads what is
    // left. A blocking read of the master there waited for the grandchild: every client of the
    // agent, its timers and its stop with it.
    const h = await running();
    const dir = fs.mkdtempSync(path.join(h.home, 'held-'));
    const gpid = path.join(dir, 'gpid');
    const script = `setsid sh -c 'echo $$ > ${gpid}; exec sleep 120' & while [ ! -s ${gpid} ]; do sleep 0.05; done; echo started; exit 0`;
    const out = drivePty(h, ['--', 'sh', '-c', script], []);
    const text = await out;
    const holder = Number(await until(() => fs.readFileSync(gpid, 'utf8').trim() || undefined));
    try {
      assert.match(text, /started/);
      assert.match(text, /EXIT=0/, text.slice(-200));
      // The run ended while the grandchild still held the terminal, and the agent answers.
      // (Not gone, nor a zombie: the agent, a subreaper, may not have reaped it yet.)
      const state = fs.readFileSync(`/proc/${holder}/stat`, 'utf8').replace(/^.*\) /s, '')[0];
      assert.notEqual(state, 'Z', 'the run ended only once the holder had exited');
      const st = kw(['status'], { env: h.env });
      assert.equal(st.code, 0, st.stderr);
    } finally {
      try {
        process.kill(holder, 'SIGKILL');
      } catch {
        // gone
      }
    }
  });

  test('on a terminal, what the child wrote just before it exited all arrives, however late the agent reads it', async () => {
    // The agent is stopped while the child writes and exits, so it finds the terminal hung up
    // with more waiting than one read returns (4 KB; libuv took that for the end: the tail was
    // lost). 6,000 bytes: more than one read, less than a pty takes without a reader.
    const h = await running();
    const dir = fs.mkdtempSync(path.join(h.home, 'late-'));
    const pidFile = path.join(dir, 'pid');
    const go = path.join(dir, 'go');
    const script = `echo $$ > ${pidFile}; while [ ! -e ${go} ]; do sleep 0.05; done; head -c 6000 /dev/zero | tr '\\0' x; echo; echo END-$((6*7))`;
    const out = drivePty(h, ['--', 'sh', '-c', script], []);
    const agent = h.agentPid;
    assert.ok(agent !== undefined);
    const pid = Number(await until(() => fs.readFileSync(pidFile, 'utf8').trim() || undefined));
    process.kill(agent, 'SIGSTOP');
    try {
      fs.writeFileSync(go, '');
      // The child exits while the agent can't read: it stays a zombie until the agent reaps it.
      await until(() => /^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')));
    } finally {
      process.kill(agent, 'SIGCONT');
    }
    const text = await out;
    assert.match(text, /END-42/, text.slice(-200));
    assert.equal((text.match(/x/g) ?? []).length, 6000);
    assert.match(text, /EXIT=0/);
  });

  test('a run whose reader went away ends as a pipeline does: the child gets SIGPIPE, no stack trace', async () => {
    const h = await running();
    setSecret(h, 'p/t', 'pipe-secret-value');
    const c = spawn(
      process.execPath,
      [BIN, 'run', '--env', 'T=p/t', '--', 'sh', '-c', 'while :; do echo "line $T"; done'],
      { env: h.env, stdio: ['ignore', 'pipe', 'pipe'], cwd: h.dir },
    );
    let stderr = '';
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    // `keyward run ... | head -1`: the reader takes a line and goes.
    c.stdout.once('data', () => c.stdout.destroy());
    const code = await new Promise<number | null>((resolve) => c.on('close', resolve));
    assert.equal(code, 128 + 13, stderr); // the child's end by SIGPIPE, as a shell reports it
    assert.doesNotMatch(stderr, /internal error|EPIPE|^\s+at /m);
  });

  test('--fd 3=NAME: the child reads the value from descriptor 3; it is not in its environment', async () => {
    const h = await running();
    setSecret(h, 'fd/secret', 'value-on-a-descriptor-42');
    const script = `
      const fs = require('fs');
      const v = fs.readFileSync(3, 'utf8');
      const environ = fs.readFileSync('/proc/self/environ', 'latin1');
      const link = fs.readlinkSync('/proc/self/fd/3');
      let sealed = false;
      try { fs.writeSync(3, 'x'); } catch { sealed = true; }
      console.log(JSON.stringify({ right: v === 'value-on-a-descriptor-42', inEnviron: environ.includes(v), memfd: link.startsWith('/memfd:'), sealed }));
    `;
    const r = await run(h, ['--fd', '3=fd/secret', '--', process.execPath, '-e', script]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), {
      right: true,
      inEnviron: false,
      memfd: true,
      sealed: true,
    });
  });

  test(
    'found in review: the exec step gets no descriptor of a value until no other process of the user can list its own; it dying then, or the run stopped then, ends only the run',
    { skip: !rootTests && 'needs root (setpriv)' },
    () => {
      // As another user, so the step is that user's and this process sees it as that user's
      // other processes would.
      const fixture = path.join(ROOT, 'dist/test/fixtures/exec-step.js');
      const as = (mode: string) => {
        const [cmd, ...pre] = asUser as [string, ...string[]];
        const r = spawnSync(cmd, [...pre, process.execPath, fixture, mode], { encoding: 'utf8' });
        assert.equal(r.status, 0, `${mode}: ${r.stderr}`);
        return JSON.parse(r.stdout) as Record<string, unknown>;
      };
      // When the values are about to go, the step is not dumpable: its descriptors can't be
      // listed (nor opened through /proc) by the user's other processes; and it gets them.
      const value = 'value-for-the-exec-step-7';
      assert.deepEqual(as('deliver'), { listed: 'EACCES', stdout: `${value}${value}` });
      // Killed once it said it hardened: the run fails, said as such; this process lives on.
      const died = as('die');
      assert.match(String(died['error']), /the command did not start: the exec step went away/);
      // Found by the re-attack: another process of the user takes the step's handshake socket
      // before the step hardens and answers in its place: its answer is not taken, nothing
      // goes to it, and the step is killed.
      const impostor = as('impostor');
      assert.match(String(impostor['error']), /the exec step's answer came from another process/);
      assert.equal(impostor['stepKilled'], true);
      assert.ok(Number(impostor['got']) <= 0, `the impostor got ${String(impostor['got'])}`);
      // Stopped there (a lock while the step started): the step is killed, nothing delivered.
      assert.deepEqual(as('stop'), {
        listed: 'EACCES',
        error: 'stopped before the values went',
        stepKilled: true,
      });
    },
  );

  test('keyward/client: a running program gets the value on a descriptor (SCM_RIGHTS) into secure memory, or inline; refusals are KeywardErrors', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: no, targets: ["denied/**"], decision: deny }\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    setSecret(h, 'client/token', 'client-module-value-9');
    const client = pathToFileURL(path.join(ROOT, 'dist/src/client/index.js')).href;
    const script = `
      const { getCredential, freeCredential } = await import(${JSON.stringify(client)});
      const { createHash } = await import('node:crypto');
      const hash = (b) => createHash('sha256').update(b).digest('hex');
      const out = {};
      const a = await getCredential('client/token');
      out.fd = hash(a); out.secure = a.secure === true; freeCredential(a); out.freed = a.length === 0;
      const b = await getCredential('client/token', { inline: true });
      out.inline = hash(b); freeCredential(b);
      try { await getCredential('denied/x'); } catch (e) { out.denied = e.code; }
      try { await getCredential('client/none'); } catch (e) { out.missing = e.code; }
      console.log(JSON.stringify(out));
    `;
    const c = spawn(process.execPath, ['--input-type=module', '-e', script], { env: h.env });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    await new Promise((r) => c.on('exit', r));
    const want = createHash('sha256').update('client-module-value-9').digest('hex');
    assert.deepEqual(
      JSON.parse(stdout || '{}'),
      {
        fd: want,
        secure: true,
        freed: true,
        inline: want,
        denied: 'POLICY_DENIED',
        missing: 'SECRET_NOT_FOUND',
      },
      stderr,
    );
    const reads = auditEntries(h)
      .filter(
        (l) => l.type === 'secret.read' && l.target === 'client/token' && l.decision === 'allow',
      )
      .map((l) => l.details['via']);
    assert.deepEqual(reads, ['fd', 'inline']);
  });

  test('policy decides: a denied secret starts no child (exit 6); the deliveries, drop and exit are audited and the chain verifies', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: no, targets: ["denied/**"], decision: deny }\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    setSecret(h, 'denied/x', 'never-delivered-value');
    setSecret(h, 'ok/y', 'delivered-value-here');
    const marker = path.join(h.dir, 'ran');
    const denied = await run(h, ['--env', 'X=denied/x', '--', 'touch', marker]);
    assert.equal(denied.code, 6, denied.stderr);
    assert.match(denied.stderr, /denied by policy/);
    assert.equal(fs.existsSync(marker), false, 'no child started');
    const ok = await run(h, ['--env', 'Y=ok/y', '--', 'true']);
    assert.equal(ok.code, 0);
    const lines = auditEntries(h);
    const of = (type: string, target: string) =>
      lines.filter((l) => l.type === type && l.target === target).map((l) => l.decision);
    assert.deepEqual(of('credential.deliver', 'denied/x'), ['deny']);
    assert.deepEqual(of('credential.deliver', 'ok/y'), ['allow']);
    assert.deepEqual(of('credential.drop', 'ok/y'), ['info']);
    assert.deepEqual(of('run.exit', 'ok/y'), ['info']);
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v.code, 0, v.stderr);
  });

  test('a locked agent runs nothing (exit 5); an unknown secret exits 3', async () => {
    const h = await running();
    let r = await run(h, ['--env', 'X=nope/none', '--', 'true']);
    assert.equal(r.code, 3, r.stderr);
    kw(['lock'], { env: h.env });
    r = await run(h, ['--', 'true']);
    assert.equal(r.code, 5, r.stderr);
  });
});

function events(h: AgentHome, target: string): string[] {
  return auditEntries(h)
    .filter((l) => l.target === target)
    .map((l) => l.type);
}

describe('caching and eviction', () => {
  test('without cache: every release fetches from the vault and drops the copy at once', async () => {
    const h = await running();
    setSecret(h, 'c/none', 'not-cached-value-1');
    assert.equal(kw(['read', 'c/none'], { env: h.env }).stdout, 'not-cached-value-1');
    assert.equal((await run(h, ['--env', 'X=c/none', '--', 'true'])).code, 0);
    await eventually(() => events(h, 'c/none').includes('run.exit'), 'the run.exit record');
    assert.deepEqual(events(h, 'c/none'), [
      'secret.set',
      'credential.fetch',
      'secret.read',
      'credential.drop',
      'credential.fetch',
      'credential.deliver',
      'credential.drop',
      'run.exit',
    ]);
  });

  test('a caching rule keeps the value until it is idle for its TTL, even while a consumer runs; lock evicts the rest', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: cached, targets: ["c/**"], decision: allow, cache: { idle: 1s } }\n',
    );
    setSecret(h, 'c/kept', 'cached-value-for-a-second');
    setSecret(h, 'c/other', 'another-cached-value');
    assert.equal(kw(['read', 'c/kept'], { env: h.env }).code, 0);
    assert.equal(kw(['read', 'c/kept'], { env: h.env }).code, 0);
    // A consumer that outlives the idle time: the cache evicts anyway.
    const r = await run(h, ['--env', 'K=c/kept', '--', 'sleep', '2']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(kw(['read', 'c/other'], { env: h.env }).code, 0);
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    await eventually(
      () =>
        events(h, 'c/kept').includes('run.exit') &&
        events(h, 'c/other').includes('credential.evict'),
      'the run.exit and eviction records',
    );
    assert.deepEqual(events(h, 'c/kept'), [
      'secret.set',
      'credential.fetch',
      'secret.read',
      'secret.read',
      'credential.deliver',
      'credential.evict',
      'run.exit',
    ]);
    assert.deepEqual(events(h, 'c/other'), [
      'secret.set',
      'credential.fetch',
      'secret.read',
      'credential.evict',
    ]);
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v.code, 0, v.stderr);
  });

  test(
    'after eviction the agent holds no fragment of the value (root: /proc/PID/mem)',
    { skip: !rootTests && 'needs root to read /proc/PID/mem' },
    async () => {
      const h = await running(
        'version: 1\nrules:\n  - { name: cached, targets: ["**"], decision: allow, cache: { idle: 10s } }\n',
      );
      const value = randomBytes(36).toString('base64url');
      setSecret(h, 'c/scan', value);
      // Positive control: cached, the agent holds it. A scan on a loaded machine can outlast
      // the idle time, so a read (which caches it again) and a scan repeat until one scan has
      // seen it: the control is an event, not a race against the clock.
      await eventually(() => {
        assert.equal(kw(['read', 'c/scan'], { env: h.env }).stdout, value);
        return scanMemory(h.agentPid ?? 0, [Buffer.from(value)]).length === 1;
      }, 'the cached value seen in the agent (the positive control)');
      // Idle for its TTL, the value is evicted and wiped: waited for, not timed. The wipe comes
      // before the record, so one scan after the record must find nothing: not a scan repeated
      // until it happens to.
      await eventually(() => events(h, 'c/scan').includes('credential.evict'), 'the eviction');
      assert.deepEqual(
        scanWindows(h.agentPid ?? 0, forms(value)),
        [],
        'a 12-byte window of the value, its base64 or its hex is still in the agent',
      );
    },
  );

  test(
    'what passes the masker (a prefix of a value the child printed) is not left in the agent (root: /proc/PID/mem)',
    { skip: !rootTests && 'needs root to read /proc/PID/mem' },
    async () => {
      const h = await running();
      const value = randomBytes(28).toString('base64url'); // 38 characters
      setSecret(h, 'm/tok', value);
      // Tools print the first characters of a token: no form of the value, so it passes.
      const prefix = value.slice(0, 25);
      const r = await run(h, [
        '--env',
        'T=m/tok',
        '--',
        'sh',
        '-c',
        'for i in 1 2 3 4 5 6 7 8 9 10; do printf "%sX\\n" "$(printf %s "$T" | cut -c1-25)"; done',
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.split(`${prefix}X`).length - 1, 10, 'the prefix is printed');
      assert.deepEqual(
        scanMemory(h.agentPid ?? 0, [Buffer.from(prefix)]).map(String),
        [],
        'the printed prefix is still in the agent',
      );
    },
  );

  test('a high_value secret needs a fresh passphrase approval for every run', async () => {
    const h = await running(
      'version: 1\nrules:\n  - name: hv\n    targets: ["hv/**"]\n    decision: approve\n    high_value: true\n    approve: { mode: passphrase }\n',
    );
    setSecret(h, 'hv/key', 'high-value-secret-1');
    for (let i = 0; i < 2; i++) {
      const running_ = run(h, [
        '--env',
        'K=hv/key',
        '--',
        'sh',
        '-c',
        'test "$K" = high-value-secret-1',
      ]);
      const id = await pendingId(h);
      const a = kw(['approve', id], { env: h.env });
      assert.equal(a.code, 0, a.stderr);
      assert.equal((await running_).code, 0);
    }
    assert.equal(
      auditEntries(h).filter((l) => l.type === 'approval.granted' && l.target === 'hv/key').length,
      2,
    );
  });
});

/** A value as the scans look for it: itself, its base64 and its hex (all masked, all secret). */
function forms(value: string): Buffer[] {
  const b = Buffer.from(value);
  return [b, Buffer.from(b.toString('base64')), Buffer.from(b.toString('hex'))];
}

describe('memory: no plaintext stays behind', () => {
  test(
    'the CLI never holds the value; after the run the agent holds neither it, nor any 12-byte fragment, nor its base64 or hex (root: /proc/PID/mem)',
    { skip: !rootTests && 'needs root to read /proc/PID/mem' },
    async () => {
      const h = await running();
      const value = randomBytes(36).toString('base64url');
      setSecret(h, 'scan/run', value);
      let cliFound: number[] | undefined;
      let agentDuring: number | undefined;
      const r = await run(
        h,
        [
          '--env',
          'S=scan/run',
          '--',
          'sh',
          '-c',
          'echo "$S"; echo "$S" | base64; sleep 3; echo end',
        ],
        {
          onStdout: (all, pid) => {
            if (cliFound === undefined && all.includes(MARK) && all.split(MARK).length >= 3) {
              // Positive control: while the run lasts the agent holds the value's masking forms.
              agentDuring = scanMemory(h.agentPid ?? 0, [Buffer.from(value)]).length;
              cliFound = scanWindows(pid, forms(value));
            }
          },
        },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.ok(!r.stdout.includes(value));
      assert.deepEqual(cliFound, [], 'the CLI never held the value');
      assert.equal(agentDuring, 1, 'the scanner finds what the agent does hold');
      // The agent wipes the masking forms before it sends the exit status: once the run is over,
      // one scan (every 12-byte window of the value, its base64 and its hex) finds nothing.
      assert.deepEqual(
        scanWindows(h.agentPid ?? 0, forms(value)),
        [],
        'a 12-byte window of the value, its base64 or its hex is still in the agent',
      );
    },
  );
});

/** The inodes of the TCP sockets process pid owns that listen (from /proc/net and its fds). */
function listeningSockets(pid: number): string[] {
  const listening = new Set<string>();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!fs.existsSync(f)) continue;
    for (const line of fs.readFileSync(f, 'utf8').split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === '0A' && cols[9] !== undefined) listening.add(cols[9]);
    }
  }
  const owned: string[] = [];
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    const target = (() => {
      try {
        return fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        return '';
      }
    })();
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    if (inode !== undefined && listening.has(inode)) owned.push(inode);
  }
  return owned.sort();
}

describe('hardening found in review', () => {
  test('SIGUSR1 opens no debugger in the agent; a `kill 0` in the child does not reach the agent', async () => {
    const h = await running();
    const pid = h.agentPid ?? 0;
    const before = listeningSockets(pid);
    // A positive control: a plain node, signalled at the same moment, opens its inspector. Once
    // it has (an event, whatever the load), the agent had as long to do the same; a status
    // round trip then makes sure its event loop has run since.
    const control = spawn(
      process.execPath,
      ['--inspect-port=0', '-e', 'console.log("ready"); setInterval(() => {}, 1000)'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    try {
      const said = (stream: NodeJS.ReadableStream, what: RegExp) =>
        new Promise<void>((resolve) => {
          let text = '';
          stream.on('data', (d: Buffer) => {
            text += d.toString();
            if (what.test(text)) resolve();
          });
        });
      const opened = said(control.stderr, /Debugger listening on/);
      // Running its script, so past installing its own SIGUSR1 handler.
      await said(control.stdout, /ready/);
      process.kill(pid, 'SIGUSR1');
      process.kill(control.pid ?? 0, 'SIGUSR1');
      await opened;
    } finally {
      control.kill();
    }
    assert.equal(kw(['status'], { env: h.env }).code, 0);
    assert.deepEqual(listeningSockets(pid), before, 'no new listening socket: no inspector');
    assert.ok(before.length >= 1, 'the console listens: the scan sees listening sockets at all');
    const r = await run(h, ['--', 'sh', '-c', 'kill 0; sleep 5']);
    assert.equal(r.code, 143);
    assert.equal(kw(['status'], { env: h.env }).code, 0, 'the agent still runs, unlocked');
  });

  test('the child starts clean: its own session, SIGPIPE not ignored, no descriptors but 0, 1, 2 and --fd ones', async () => {
    const h = await running();
    setSecret(h, 'clean/fd', 'descriptor-value-123');
    const r = await run(h, [
      '--fd',
      '5=clean/fd',
      '--',
      'sh',
      '-c',
      // The shell lists its own descriptors with a glob (no pipe of its own open meanwhile).
      'grep SigIgn /proc/$$/status; (cd /proc/$$/fd && echo *); cut -d" " -f6 /proc/$$/stat; echo $$',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const [sigIgn, fds, sid, pid] = r.stdout.trim().split('\n');
    assert.equal(sigIgn, 'SigIgn:\t0000000000000000');
    assert.equal(fds?.trim(), '0 1 2 5');
    assert.equal(sid?.trim(), pid?.trim(), 'the child leads its own session');
  });

  test('a long command line and a large piped input go through (backpressure, no frame limit)', async () => {
    const h = await running();
    const args = Array.from({ length: 5000 }, (_, i) => `argument-${i}`);
    let r = await run(h, ['--', 'sh', '-c', 'echo $#', 'x', ...args]);
    assert.equal(r.stdout, '5000\n', r.stderr);
    const big = 'x'.repeat(5 * 1024 * 1024);
    r = await run(h, ['--', 'wc', '-c'], { input: big });
    assert.equal(r.stdout.trim(), String(big.length), r.stderr);
  });

  test('the approval prompt names the program that will run (resolved path), the cwd, and variables like LD_PRELOAD, MAKEFILES and SHELLOPTS', async () => {
    const h = await running(CONFIRM_ALL);
    setSecret(h, 'p/token', 'prompted-token-value');
    h.answer('no');
    // Found in review: MAKEFILES and SHELLOPTS (with PS4) make an approved make or bash script
    // run code of the caller's, and the prompt said nothing of them.
    // Twenty made-up names of the same families first can't push them out of sight; a name that
    // only says which session this is (SSH_CONNECTION) is not listed.
    const padding = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`PAD${i}_OPTS`, 'x']));
    const env = {
      ...h.env,
      NODE_OPTIONS: '--no-warnings',
      ...padding,
      MAKEFILES: '/tmp/evil.mk',
      SHELLOPTS: 'xtrace',
      SSH_CONNECTION: '10.0.0.1 1 10.0.0.2 22',
    };
    const r = await new Promise<number | null>((resolve) => {
      const c = spawn(process.execPath, [BIN, 'run', '--env', 'T=p/token', '--', 'true', 'a b'], {
        env,
        cwd: h.dir,
        stdio: 'ignore',
      });
      c.on('exit', resolve);
    });
    assert.equal(r, 6);
    const prompt = h.prompts().join('\n');
    assert.match(
      prompt,
      /run "\/(usr\/)?bin\/true" \(sha256 [0-9a-f]{16}\) as: "true" "a b", in "\//,
    );
    assert.match(prompt, /its environment sets NODE_OPTIONS/);
    assert.match(
      prompt,
      /its environment sets what programs run otherwise than your session does: (MAKEFILES, SHELLOPTS|SHELLOPTS, MAKEFILES), PAD0_OPTS, .* and 4 more/,
    );
    assert.ok(!prompt.includes('SSH_CONNECTION'), 'what says which session this is, is not listed');
  });

  test('a secret never goes into BASH_ENV, LD_PRELOAD or PATH: a value the caller knows would name a file of its own to run', async () => {
    const h = await running();
    setSecret(h, 'cfg/pub', 'payload.sh');
    // The caller's file, named by a value it knows (one released to it before, say).
    fs.writeFileSync(path.join(h.dir, 'payload.sh'), 'echo PAYLOAD-RAN\n');
    for (const v of [
      'BASH_ENV',
      'LD_PRELOAD',
      'NODE_OPTIONS',
      'PATH',
      'GIT_SSH_COMMAND',
      'GIT_DIR',
      'ZDOTDIR',
      'EDITOR',
      'OPENSSL_CONF',
      'npm_config_script_shell',
      'XDG_CONFIG_HOME',
      'HTTPS_PROXY',
    ]) {
      const r = await run(h, ['--env', `${v}=cfg/pub`, '--', 'bash', '-c', 'echo hello']);
      assert.equal(r.code, 2, `${v}: ${r.stderr}`);
      assert.match(
        r.stderr,
        new RegExp(
          `--env ${v}: a secret never goes into a variable that makes a program load or run code`,
        ),
      );
      assert.doesNotMatch(r.stdout, /PAYLOAD-RAN|hello/);
    }
    // A name that says it is a credential is what a secret is for, family or not.
    const ok = await run(h, ['--env', 'NODE_AUTH_TOKEN=cfg/pub', '--', 'true']);
    assert.equal(ok.code, 0, ok.stderr);
  });

  test('every prompt of a run names every variable it sets, from which secret, and every other secret its approval gives', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: pub, targets: ["cfg/**"], decision: allow }\n  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n',
    );
    setSecret(h, 'cfg/pub', 'public-value-1');
    setSecret(h, 'gh/token', 'gh-token-value-1');
    setSecret(h, 'gh/other', 'gh-other-value-1');
    h.answer('no');
    const r = await run(h, [
      '--env',
      'T=gh/token',
      '--env',
      'O=gh/other',
      '--env',
      'X=cfg/pub',
      '--',
      'true',
    ]);
    assert.equal(r.code, 6, r.stderr);
    const prompt = h.prompts().join('\n');
    // The secret allowed outright is in the run all the same, and said.
    assert.match(
      prompt,
      /in all the run sets \$T from "gh\/token", \$O from "gh\/other", \$X from "cfg\/pub"/,
    );
    // One approval for the rule's two secrets: the other one is named whole.
    assert.match(prompt, /This approval also gives it "gh\/(other|token)"\./);
  });

  test("found in review: a run's prompt names the caller's variables that send traffic elsewhere or change what is trusted, and the record keeps them", async () => {
    const h = await running(CONFIRM_ALL);
    setSecret(h, 'gh/token', 'gh-token-value-2');
    // The caller's own proxy and certificate authority, set for an approved `curl` to use: the
    // token would go to the caller's proxy, under the caller's certificate.
    const evil = {
      HTTPS_PROXY: 'http://127.0.0.1:18666',
      https_proxy: 'http://127.0.0.1:18666',
      SSL_CERT_FILE: path.join(h.dir, 'evil-ca.pem'),
      NODE_TLS_REJECT_UNAUTHORIZED: '0',
      CURL_HOME: h.dir,
      // The user's own (the test's home sets another).
      HOME: os.userInfo().homedir,
    };
    h.answer('yes');
    const r = await run(h, ['--env', 'GITHUB_TOKEN=gh/token', '--', 'true'], { env: evil });
    assert.equal(r.code, 0, r.stderr);
    const prompt = h.prompts().join('\n');
    assert.match(
      prompt,
      /its environment may send its traffic elsewhere or change what it trusts: HTTPS_PROXY, https_proxy, SSL_CERT_FILE, NODE_TLS_REJECT_UNAUTHORIZED, CURL_HOME/,
    );
    // Names only: a proxy's address may hold its password.
    assert.doesNotMatch(prompt, /18666|evil-ca/);
    const released = auditEntries(h)
      .filter((e) => e.details?.['notableEnv'] !== undefined)
      .at(-1);
    assert.equal(
      released?.details?.['notableEnv'],
      'HTTPS_PROXY,https_proxy,SSL_CERT_FILE,NODE_TLS_REJECT_UNAUTHORIZED,CURL_HOME',
    );
    // A HOME that is not the user's: where curl, git and gh read their proxies and hosts.
    h.answer('no');
    const moved = await run(h, ['--env', 'GITHUB_TOKEN=gh/token', '--', 'true'], {
      env: { HOME: h.dir },
    });
    assert.equal(moved.code, 6, moved.stderr);
    assert.match(h.prompts().join('\n'), /change what it trusts: HOME/);
    // The user's own HOME says nothing.
    h.answer('no');
    await run(h, ['--env', 'GITHUB_TOKEN=gh/token', '--', 'true'], {
      env: { HOME: os.userInfo().homedir },
    });
    assert.doesNotMatch(h.prompts().at(-1) ?? '', /change what it trusts/);
  });

  test("found in review: a run's prompt names libpq's PGHOST and PGPORT, a DATABASE_URL and a SOCKS server", async () => {
    const h = await running(CONFIRM_ALL);
    setSecret(h, 'db/pass', 'db-pass-value-3');
    // An approved `psql` with PGPASSWORD sends it to whatever PGHOST and PGPORT name.
    h.answer('no');
    const r = await run(h, ['--env', 'PGPASSWORD=db/pass', '--', 'true'], {
      env: {
        PGHOST: '127.0.0.1',
        PGPORT: '5544',
        PGSSLMODE: 'disable',
        DATABASE_URL: 'postgres://127.0.0.1:5544/prod',
        SOCKS5_SERVER: '127.0.0.1:1080',
      },
    });
    assert.equal(r.code, 6, r.stderr);
    assert.match(
      h.prompts().at(-1) ?? '',
      /may send its traffic elsewhere or change what it trusts: [^\n]*\bPGHOST\b/,
    );
    for (const name of ['PGPORT', 'PGSSLMODE', 'DATABASE_URL', 'SOCKS5_SERVER'])
      assert.match(h.prompts().at(-1) ?? '', new RegExp(`\\b${name}\\b`), name);
  });

  test("found in review: a run's prompt names libldap's LDAPURI and LDAPTLS_REQCERT, gcloud's CLOUDSDK_PYTHON, and any other variable set otherwise than the session's", async () => {
    const h = await running(CONFIRM_ALL);
    setSecret(h, 'ldap/admin', 'ldap-bind-value-4');
    h.answer('yes');
    const r = await run(h, ['--fd', '3=ldap/admin', '--', 'true'], {
      env: {
        LDAPURI: 'ldap://127.0.0.1:3899',
        LDAPTLS_REQCERT: 'never',
        CLOUDSDK_PYTHON: '/tmp/not-python',
        // A tool of its own whose names no shape knows, behind sixteen made-up names.
        ...Object.fromEntries(Array.from({ length: 16 }, (_, n) => [`DECOY_${n}`, '1'])),
        ACME_TOOL_TARGET: 'evil.example',
      },
    });
    assert.equal(r.code, 0, r.stderr);
    const prompt = h.prompts().at(-1) ?? '';
    assert.match(
      prompt,
      /may send its traffic elsewhere or change what it trusts: [^;]*\bLDAPURI\b/,
    );
    for (const name of ['LDAPTLS_REQCERT', 'CLOUDSDK_PYTHON'])
      assert.match(prompt, new RegExp(`may send its traffic elsewhere[^;]*\\b${name}\\b`), name);
    assert.match(
      prompt,
      /; and its environment sets 17 other variables otherwise than your session does: DECOY_0, [^;]* and 1 more/,
    );
    // Pushed out of the prompt's list, not out of the record.
    const recorded = auditEntries(h)
      .filter((e) => e.details?.['notableEnv'] !== undefined)
      .at(-1);
    assert.match(String(recorded?.details?.['notableEnv']), /\bLDAPURI\b.*\bACME_TOOL_TARGET\b/);
    // What it shares with the session is not news.
    assert.doesNotMatch(prompt, /otherwise than your session does: [^;]*\bKEYWARD_HOME\b/);
    assert.doesNotMatch(String(recorded?.details?.['notableEnv']), /\bKEYWARD_HOME\b/);
  });

  test('a command line too long for the prompt says it is cut, and the pending request holds it whole', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: hv, targets: ["**"], decision: approve, approve: { mode: passphrase } }\n',
    );
    setSecret(h, 'p/long', 'long-command-value');
    // What follows the padding is what the cut prompt would not show.
    const script = `echo status${' '.repeat(300)}; echo HIDDEN-PART`;
    const waiting = run(h, ['--env', 'T=p/long', '--', 'sh', '-c', script]);
    const id = await pendingId(h);
    const pending = JSON.parse(kw(['approvals', '--json'], { env: h.env }).stdout) as Array<{
      id: string;
      what?: string;
      command?: string[];
    }>;
    const p = pending.find((x) => x.id === id);
    assert.match(p?.what ?? '', /\(cut here; the whole command: keyward approvals --json\)/);
    assert.doesNotMatch(p?.what ?? '', /HIDDEN-PART/);
    assert.deepEqual(p?.command, ['sh', '-c', script]);
    assert.equal(kw(['deny', id], { env: h.env }).code, 0);
    assert.equal((await waiting).code, 6);
  });

  test('a program replaced while the person reads its prompt is not run: the hash approved is the program run', async () => {
    const h = agentHome(CONFIRM_ALL);
    homes.push(h);
    const tool = path.join(h.dir, 'tool');
    fs.writeFileSync(tool, '#!/bin/sh\necho BENIGN\n', { mode: 0o755 });
    // The attacker swaps the program while the prompt is up, then the person says yes.
    fs.writeFileSync(
      h.askpass,
      `#!/bin/sh\nprintf '#!/bin/sh\\necho SWAPPED\\n' > '${tool}'\nexit 0\n`,
      { mode: 0o700 },
    );
    await startAgent(h);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    setSecret(h, 'p/token', 'swap-token-value');
    const r = await run(h, ['--env', 'T=p/token', '--', tool]);
    assert.notEqual(r.code, 0, r.stdout);
    assert.doesNotMatch(r.stdout, /SWAPPED/);
    assert.match(r.stderr, /changed after it was hashed for the approval: not run/);
    assert.match(fs.readFileSync(tool, 'utf8'), /SWAPPED/, 'the swap did happen');
  });

  test('overlapping secrets and multi-line values under a pty are masked whole', async () => {
    const h = await running();
    setSecret(h, 'o/a', 'token-123456');
    setSecret(h, 'o/b', '123456789abcdef');
    const r = await run(h, [
      '--env',
      'A=o/a',
      '--env',
      'B=o/b',
      '--',
      'echo',
      'token-123456789abcdef',
    ]);
    assert.equal(r.stdout, `${MARK}\n`);
    // Multi-line values as a terminal prints them (each \n as \r\n): with \n line ends, with
    // \r\n ones (shown as \r\r\n: it leaked), and one over 64 KiB (only its own bytes were
    // masked, which a terminal never shows: all of it leaked).
    const big = Array.from({ length: 1100 }, (_, i) => `bundle-line-${i}-${'c'.repeat(50)}`).join(
      '\n',
    );
    for (const [name, value, tell] of [
      ['o/pem', 'line-one-of-the-key\nline-two-of-the-key', 'line-two-of-the-key'],
      ['o/crlf', 'crlf-line-one-of-it\r\ncrlf-line-two-of-it\r\nend', 'crlf-line-two-of-it'],
      ['o/big', big, 'bundle-line-1099-'],
    ] as const) {
      setSecret(h, name, value);
      const out = await new Promise<string>((resolve) => {
        const d = spawn('python3', [
          path.join(ROOT, 'test/pty-driver.py'),
          JSON.stringify({
            argv: [
              process.execPath,
              BIN,
              'run',
              '--env',
              `P=${name}`,
              '--',
              'sh',
              '-c',
              'printf "%s\\n" "$P"',
            ],
            env: h.env,
            steps: [],
          }),
        ]);
        let o = '';
        d.stdout.on('data', (b: Buffer) => (o += b.toString()));
        d.on('close', () => resolve(o));
      });
      assert.ok(out.includes(MARK), `${name}: ${out.slice(0, 300)}`);
      assert.ok(!out.includes(tell), `${name} leaked: ${out.slice(0, 300)}`);
      assert.match(out, /EXIT=0/, name);
    }
  });
});

test("a run's prompt says what matters first, whatever the caller's environment holds: 1,500 loader variables don't push \"not masked\" out of it", () => {
  const environ = Array.from(
    { length: 1500 },
    (_, i) => `LD_PADDING_VARIABLE_${String(i).padStart(4, '0')}`,
  );
  environ.push(`LD_${'X'.repeat(5000)}`);
  // What loads code into most programs comes last in the environment: shown all the same.
  environ.push('LD_PRELOAD', 'NODE_OPTIONS');
  const p = runPrompt({
    program: '/usr/bin/sh',
    programSha: 'a'.repeat(64),
    argv: ['sh', '-c', 'echo $TOKEN'],
    cwd: '/tmp',
    wanted: [{ name: 'api/token', as: [{ var: 'TOKEN' }] }],
    environ,
    mcp: 'an mcp client',
    project: { project: 'demo', names: ['A', 'B'] },
    masking: false,
    homeMoved: false,
    codeSetters: [],
  });
  const what = p.what({ name: 'api/token', as: [{ var: 'TOKEN' }] }, undefined);
  assert.ok(what.length < 2000, `${what.length} characters`);
  const loaders = what.indexOf('its environment sets');
  assert.ok(loaders > 0, what);
  for (const part of ['its output not masked', 'asked by an MCP client', 'the sealed project file'])
    assert.ok(
      what.indexOf(part) >= 0 && what.indexOf(part) < loaders,
      `${part} before the lists: ${what}`,
    );
  assert.match(what, /its environment sets LD_PRELOAD, NODE_OPTIONS, LD_PADDING_VARIABLE_0000, /);
  assert.match(what, /and 1485 more$/);
  // Every name is still recorded.
  assert.equal(p.notable.length, 1503);
});

test("found in review: a run's prompt names proxies and trust first, in any tool's spelling, however many other such variables come first", () => {
  const prompt = (environ: string[]) =>
    runPrompt({
      program: '/usr/bin/gcloud',
      programSha: 'a'.repeat(64),
      argv: ['gcloud', 'storage', 'ls'],
      cwd: '/tmp',
      wanted: [{ name: 'gcp/token', as: [{ fd: 3 }] }],
      environ,
      mcp: undefined,
      project: undefined,
      masking: true,
      homeMoved: false,
      codeSetters: [],
    });
  const what = (environ: string[]) =>
    prompt(environ).what({ name: 'gcp/token', as: [{ fd: 3 }] }, undefined);
  const tools = [
    'OPENAI_BASE_URL',
    'CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE',
    'CLOUDSDK_AUTH_DISABLE_SSL_VALIDATION',
    'CLOUDSDK_PROXY_ADDRESS',
    'VAULT_ADDR',
    'VAULT_SKIP_VERIFY',
    'DENO_CERT',
    'wss_proxy',
    'GIT_DIR',
    'GIT_TRACE_CURL',
    'GOFLAGS',
    'CARGO_REGISTRIES_EVIL_INDEX',
    'NO_PROXY',
    'npm_config_noproxy',
    'DBUS_SESSION_BUS_ADDRESS',
    'XDG_CONFIG_DIRS',
    'JAVA_HOME',
    'HOST',
    'AWS_SDK_LOAD_CONFIG',
    'EDITOR',
  ];
  const named = what(tools);
  assert.match(
    named,
    /change what it trusts: GIT_DIR, CLOUDSDK_PROXY_ADDRESS, wss_proxy, CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE, CLOUDSDK_AUTH_DISABLE_SSL_VALIDATION, VAULT_SKIP_VERIFY, DENO_CERT, GIT_TRACE_CURL, GOFLAGS, OPENAI_BASE_URL, VAULT_ADDR, CARGO_REGISTRIES_EVIL_INDEX$/,
  );
  // What neither sends traffic elsewhere nor changes trust is not named.
  assert.doesNotMatch(
    named,
    /NO_PROXY|noproxy|DBUS_SESSION_BUS_ADDRESS|XDG_CONFIG_DIRS|JAVA_HOME|HOST,|AWS_SDK_LOAD_CONFIG|EDITOR/,
  );
  assert.equal(prompt(tools).notable.length, 12);
  // Found by the re-attack: sixteen made-up proxies before the real ones hide nothing.
  const decoys = Array.from({ length: 20 }, (_, i) => `CORP_PROXY_BYPASS_${i}`);
  assert.match(
    what([...decoys, 'HTTPS_PROXY', 'NODE_TLS_REJECT_UNAUTHORIZED', 'SSL_CERT_FILE']),
    /change what it trusts: HTTPS_PROXY, NODE_TLS_REJECT_UNAUTHORIZED, SSL_CERT_FILE, CORP_PROXY_BYPASS_0, .* and 4 more$/,
  );
});
