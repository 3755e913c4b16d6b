/**
 * Secret memory that can't be locked is refused (docs/THREAT-MODEL.md). Any process of the user
 * can lower the locked-memory limit of another of its processes (prlimit needs no privilege for
 * that), and libsodium's sodium_malloc goes on silently where mlock fails: a secret could then be
 * swapped to disk. Tried as the attacker would, from a process of the agent's own user (root is
 * not limited: CAP_IPC_LOCK), so the agent and the attacker run as OTHER_UID.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { agentHome, scanWindows, unlockedMappings, withoutAgent } from './agent-helpers.js';
import { agentRunning, asUser, chownTree, kwAs, OTHER_UID } from './as-user.js';
import { BIN, eventually, kw, ROOT, rootTests, straced } from './helpers.js';

const agents: ChildProcess[] = [];
after(() => {
  for (const a of agents) a.kill('SIGKILL');
});

const skip = !rootTests && 'needs root (setpriv to another user)';
const ALLOW = 'version: 1\nrules:\n  - { name: everything, targets: ["**"], decision: allow }\n';
const VALUE = 'memlock-value-7c1e9a';

/** prlimit as the agent's own user: what any of that user's processes can do. */
function lowerLimitAs(args: string[]): void {
  const [cmd, ...pre] = asUser as [string, ...string[]];
  const r = spawnSync(cmd, [...pre, 'prlimit', ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, `prlimit as the same user: ${r.stderr}`);
}

test(
  "found in review: a process of the agent's user that lowers its locked-memory limit gets no secret held in memory that could swap: the next unlock is refused, and says why",
  { skip },
  async () => {
    const h = agentHome(ALLOW);
    chownTree(h.dir, OTHER_UID);
    assert.equal(kwAs(['secret', 'set', 'app/tok'], h.env, VALUE).code, 0);
    const agent = await agentRunning(h.env, true);
    agents.push(agent);
    assert.equal(kwAs(['unlock'], h.env).code, 0);
    assert.equal(kwAs(['read', 'app/tok'], h.env).stdout, VALUE, 'the agent serves reads');
    // The attacker, as the same user: the agent's limit down to nothing, soft and hard.
    lowerLimitAs(['--pid', String(agent.pid), '--memlock=0:0']);
    // The person locks and unlocks as usual: the unlock would put the vault's keys in memory
    // that is not locked. Refused, with the reason.
    assert.equal(kwAs(['lock'], h.env).code, 0);
    const u = kwAs(['unlock'], h.env);
    assert.equal(u.code, 5, u.stderr);
    assert.match(
      u.stderr,
      /could be swapped to disk: the kernel would not lock it \(the limit on locked memory, RLIMIT_MEMLOCK, is 0 bytes/,
    );
    const r = kwAs(['read', 'app/tok'], h.env);
    assert.notEqual(r.code, 0);
    assert.ok(!r.stdout.includes(VALUE), 'a value served from a vault opened in unlocked memory');
    assert.equal(agent.exitCode, null, 'the agent still runs (locked)');

    // A command that opens the vault itself, started under such a limit: the same refusal.
    const [cmd, ...pre] = asUser as [string, ...string[]];
    const direct = spawnSync(
      cmd,
      [...pre, 'prlimit', '--memlock=0:0', process.execPath, BIN, 'read', 'app/tok'],
      { env: withoutAgent(h), encoding: 'utf8' },
    );
    assert.equal(direct.status, 5, direct.stderr);
    assert.match(direct.stderr, /MEMORY_NOT_LOCKED|could be swapped to disk/);
    assert.ok(!direct.stdout.includes(VALUE));
  },
);

test(
  "an agent started where memory can not be locked refuses to start, says why, and exits (none at all, or room for OpenSSL's heap alone)",
  { skip },
  () => {
    const h = agentHome(ALLOW);
    chownTree(h.dir, OTHER_UID);
    const [cmd, ...pre] = asUser as [string, ...string[]];
    for (const [limit, said] of [
      [
        0,
        /OpenSSL's secure heap .* could not be locked in memory \(RLIMIT_MEMLOCK\), so keys could be swapped to disk/,
      ],
      // The heap locks; the first secret buffer after it can't be (found in review: the agent
      // printed the refusal and went on running, its sockets listening).
      [1024 * 1024, /could be swapped to disk/],
    ] as const) {
      const r = spawnSync(
        cmd,
        [
          ...pre,
          'prlimit',
          `--memlock=${limit}:${limit}`,
          process.execPath,
          BIN,
          'agent',
          'run',
          '--no-console',
        ],
        { env: h.env, encoding: 'utf8', timeout: 120_000 },
      );
      assert.equal(r.status, 5, `limit ${limit}: ${r.stderr}`);
      assert.match(r.stderr, said);
      assert.doesNotMatch(r.stderr, /listening on/);
    }
  },
);

/**
 * A program on a pseudo-terminal, as uid OTHER_UID: it waits for `prompt` and raw mode, types `typed`
 * (no Enter), waits until the program has read every byte of it (the terminal's input queue
 * empty, the program blocked reading it), prints the program's pid, and types Enter once a line
 * comes on its standard input. Then it prints the program's output and exit status.
 */
const TYPIST = String.raw`
import fcntl, json, os, select, sys, termios, time
cfg = json.loads(sys.argv[1])
master, slave = os.openpty()
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2): os.dup2(slave, fd)
    os.close(master)
    os.execvpe(cfg['argv'][0], cfg['argv'], cfg['env'])
seen = b''
while cfg['prompt'].encode() not in seen:
    select.select([master], [], [])
    seen += os.read(master, 4096)
# The program asks, then puts the terminal in raw mode: typed before that, the line would be
# flushed.
while termios.tcgetattr(slave)[3] & termios.ICANON: select.select([], [], [], 0.01)
os.write(master, cfg['typed'].encode())
def consumed():
    left = fcntl.ioctl(slave, termios.FIONREAD, b'\0\0\0\0')
    if int.from_bytes(left, 'little') != 0: return False
    with open('/proc/%d/stat' % pid) as f: return f.read().rsplit(')', 1)[1].split()[0] == 'S'
while not consumed(): select.select([], [], [], 0.01)
print(pid, flush=True)
os.close(slave)  # else the program's end never reads as the end of its output
sys.stdin.readline()
os.write(master, b'\r')
out = b''
while True:
    try: chunk = os.read(master, 4096)
    except OSError: break
    if not chunk: break
    out += chunk
_, status = os.waitpid(pid, 0)
print(json.dumps({'out': out.decode('utf8', 'replace'), 'status': os.waitstatus_to_exitcode(status)}), flush=True)
`;

test(
  'found in review: a value typed at the prompt is held in locked memory while it is typed, under the usual 8 MiB limit',
  { skip },
  async () => {
    const h = agentHome(ALLOW);
    chownTree(h.dir, OTHER_UID);
    const typed = 'typed-value-5e8b1c04-not-swappable';
    const env = { ...withoutAgent(h), PATH: process.env['PATH'] ?? '', TERM: 'dumb' };
    const argv = [...asUser, 'prlimit', '--memlock=8388608:8388608', process.execPath, BIN];
    const typist = spawn(
      'python3',
      [
        '-c',
        TYPIST,
        JSON.stringify({
          argv: [...argv, 'secret', 'set', 't/typed'],
          env,
          prompt: 'value',
          typed,
        }),
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    const lines = readLines(typist);
    const pid = Number(await lines.next());
    assert.ok(pid > 0);
    // Root reads the not-dumpable program's memory: the value only where it is locked.
    const needle = [Buffer.from(typed)];
    assert.deepEqual(scanWindows(pid, needle), [0], 'the typed value is in its memory');
    assert.deepEqual(
      scanWindows(pid, needle, 12, unlockedMappings),
      [],
      'in memory that is not locked',
    );
    typist.stdin.end('\n');
    const done = JSON.parse(await lines.next()) as { out: string; status: number };
    assert.equal(done.status, 0, done.out);
    assert.equal(kwAs(['read', 't/typed'], withoutAgent(h)).stdout, typed);
  },
);

/** The lines a child prints, one at a time as they come. */
function readLines(child: ChildProcess): { next: () => Promise<string> } {
  let buffered = '';
  const waiting: Array<() => void> = [];
  child.stdout?.on('data', (d: Buffer) => {
    buffered += d.toString();
    for (const w of waiting.splice(0)) w();
  });
  const next = async (): Promise<string> => {
    for (;;) {
      const at = buffered.indexOf('\n');
      if (at >= 0) {
        const line = buffered.slice(0, at);
        buffered = buffered.slice(at + 1);
        return line;
      }
      if (child.exitCode !== null) throw new Error(`the typist exited: ${buffered}`);
      await new Promise<void>((r) => waiting.push(r));
    }
  };
  child.on('exit', () => {
    for (const w of waiting.splice(0)) w();
  });
  return { next };
}

test(
  'found in review: rekey opens the small values into a scratch of their own size, which is locked, not into one as large as the largest value',
  { skip },
  () => {
    const h = agentHome(ALLOW);
    const env = withoutAgent(h);
    assert.equal(kw(['secret', 'set', 'big'], { env, input: 'b'.repeat(200_000) }).code, 0);
    assert.equal(kw(['secret', 'set', 'small'], { env, input: 's'.repeat(1000) }).code, 0);
    const r = straced(['-e', 'trace=mlock'], ['rekey'], env);
    assert.equal(r.code, 0, r.stderr);
    const locked = [...r.trace.matchAll(/mlock\(0x[0-9a-f]+, (\d+)\)\s+= 0/g)].map((m) =>
      Number(m[1]),
    );
    // A record is its value and 40 bytes (nonce and tag): the small one's scratch, and the large
    // one's buffer of its own.
    assert.ok(locked.includes(1040), `a scratch for the small values: ${locked.join(' ')}`);
    assert.ok(locked.includes(200_040), 'the large value in a buffer of its own');
  },
);

test(
  "found in review: masking memory that can't be locked ends the run, not the agent",
  { skip },
  async () => {
    const h = agentHome(ALLOW);
    chownTree(h.dir, OTHER_UID);
    // A value whose percent-encoded form (%2F a byte) is longer than the masker's first buffer.
    assert.equal(kwAs(['secret', 'set', 'app/slashes'], h.env, '/'.repeat(30_000)).code, 0);
    const agent = await agentRunning(h.env, true);
    agents.push(agent);
    assert.equal(kwAs(['unlock'], h.env).code, 0);
    fs.mkdirSync(path.join(h.dir, 'flags'));
    chownTree(path.join(h.dir, 'flags'), OTHER_UID);
    // The child prints the form's first 65,536 bytes (all held back: they may be the form), says
    // so, and once told prints one more byte of it: the masker must grow past 64 KiB.
    const child = [
      "const fs = require('fs');",
      "const form = '%2F'.repeat(30000);",
      'process.stdout.write(form.slice(0, 65536), () => {',
      `  fs.writeFileSync(${JSON.stringify(path.join(h.dir, 'flags', 'ready'))}, '');`,
      '  const t = setInterval(() => {',
      `    if (!fs.existsSync(${JSON.stringify(path.join(h.dir, 'flags', 'go'))})) return;`,
      '    clearInterval(t);',
      '    process.stdout.write(form.slice(65536, 65537));',
      '    setInterval(() => undefined, 1000);',
      '  }, 5);',
      '});',
    ].join('\n');
    const [cmd, ...pre] = asUser as [string, ...string[]];
    const run = spawn(
      cmd,
      [
        ...pre,
        process.execPath,
        BIN,
        'run',
        '--env',
        'T=app/slashes',
        '--',
        process.execPath,
        '-e',
        child,
      ],
      { env: h.env, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '';
    let out = '';
    run.stderr.on('data', (d: Buffer) => (err += d.toString()));
    run.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const ended = new Promise<number | null>((r) => run.once('close', (code) => r(code)));
    await eventually(
      () => fs.existsSync(path.join(h.dir, 'flags', 'ready')),
      'the first part printed',
    );
    // The limit lowered to what the agent has locked and 64 KiB more: small requests still fit,
    // the masker's next 128 KiB does not.
    const vmLck = /VmLck:\s+(\d+) kB/.exec(
      fs.readFileSync(`/proc/${agent.pid}/status`, 'utf8'),
    )?.[1];
    const limit = Number(vmLck) * 1024 + 64 * 1024;
    lowerLimitAs(['--pid', String(agent.pid), `--memlock=${limit}:${limit}`]);
    fs.writeFileSync(path.join(h.dir, 'flags', 'go'), '');
    const code = await ended;
    assert.notEqual(code, 0);
    assert.match(err, /could be swapped to disk/);
    // What the masker held back (the form's start) was dropped, not let out unmasked.
    assert.ok(
      !out.includes('%2F'.repeat(22)),
      `the form's start reached the client: ${out.length} bytes`,
    );
    // The agent goes on, and answers.
    const s = kwAs(['status'], h.env);
    assert.equal(s.code, 0, s.stderr);
  },
);

test(
  'found in review: the masking forms of a value of 64 KiB or less are locked or refused, however long the form',
  { skip },
  async () => {
    // A program of the agent's user that makes the forms of 25,000 "é" (50,000 bytes; its JSON
    // and percent forms are 150,000), under a limit with room for all but about a million of the
    // 3.9 MB the forms and their scratch lock (each small one a page and more): where a form of
    // 150,000 bytes stayed unlocked before the fix.
    const { pid, said, stop } = await underLoweredLimit(
      [
        `import { maskingForms } from ${JSON.stringify(path.join(ROOT, 'dist/src/run/index.js'))};`,
        `import { secureAlloc } from ${JSON.stringify(path.join(ROOT, 'dist/src/lib/secure.js'))};`,
        'const v = secureAlloc(50000);',
        'for (let i = 0; i < 50000; i += 2) { v[i] = 0xc3; v[i + 1] = 0xa9; }',
        'function run() {',
        "  try { globalThis.kept = maskingForms(v); return 'made'; } catch (e) { return e.code; }",
        '}',
      ],
      2_950_000,
    );
    assert.ok(said === 'made' || said === 'MEMORY_NOT_LOCKED', said);
    // Root reads the program's memory: the JSON and percent forms nowhere unlocked.
    const forms = ['\\u00e9'.repeat(20), '%C3%A9'.repeat(20), '%c3%a9'.repeat(20)].map((f) =>
      Buffer.from(f),
    );
    if (said === 'made')
      assert.deepEqual(scanWindows(pid, forms, 60), [0, 1, 2], 'the forms are in its memory');
    assert.deepEqual(scanWindows(pid, forms, 60, unlockedMappings), [], said);
    stop();
  },
);

test(
  "found in review: what can't hold a value's forms is refused, and only that: a large chunk to mask and a large multi-line value's forms pass under a low limit",
  { skip },
  async () => {
    // Room for a value's forms and a slice, not for a megabyte.
    const { said, stop } = await underLoweredLimit(
      [
        `import { Masker, maskingForms } from ${JSON.stringify(path.join(ROOT, 'dist/src/run/index.js'))};`,
        'function run() {',
        '  const said = [];',
        '  try {',
        "    // A megabyte of output with a small value in it, masked as one chunk (a gateway's message).",
        "    const m = new Masker(maskingForms(Buffer.from('small-value-4c1d')));",
        "    const chunk = Buffer.concat([Buffer.alloc(600000, 0x61), Buffer.from('small-value-4c1d'), Buffer.alloc(600000, 0x62)]);",
        '    const out = Buffer.concat([m.push(chunk), m.flush()]);',
        "    said.push(out.includes('small-value-4c1d') ? 'unmasked' : out.includes('concealed') ? 'masked' : 'lost');",
        '  } catch (e) { said.push(e.code); }',
        '  try {',
        '    // A multi-line value of a megabyte (a bundle of certificates): its forms, held as it is.',
        '    const big = Buffer.alloc(1024 * 1024, 0x61); for (let i = 0; i < big.length; i += 64) big[i] = 0x0a;',
        '    said.push(`${maskingForms(big).length} forms`);',
        '  } catch (e) { said.push(e.code); }',
        "  return said.join(' ');",
        '}',
      ],
      768 * 1024,
    );
    stop();
    assert.equal(said, 'masked 2 forms');
  },
);

/**
 * A program of the agent's user: `lines`, a module whose run() returns what it says. It says
 * what it has locked, waits while its limit is lowered (as the same user) to that and `headroom`
 * bytes more, runs, and says what run() returned. The caller stops it.
 */
async function underLoweredLimit(
  lines: string[],
  headroom: number,
): Promise<{ pid: number; said: string; stop: () => void }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-limit-'));
  fs.chmodSync(dir, 0o755);
  const script = path.join(dir, 'run.mjs');
  fs.writeFileSync(
    script,
    [
      "import fs from 'node:fs';",
      ...lines,
      "const locked = /VmLck:\\s+(\\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1];",
      'process.stdout.write(`${locked}\\n`);',
      "process.stdin.once('data', () => process.stdout.write(`${run()}\\n`));",
    ].join('\n'),
  );
  const [cmd, ...pre] = asUser as [string, ...string[]];
  const child = spawn(cmd, [...pre, process.execPath, script], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  agents.push(child);
  const out = readLines(child);
  const limit = Number(await out.next()) * 1024 + headroom;
  lowerLimitAs(['--pid', String(child.pid), `--memlock=${limit}:${limit}`]);
  child.stdin.write('go\n');
  const said = await out.next();
  return {
    pid: child.pid ?? 0,
    said,
    stop: () => {
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
