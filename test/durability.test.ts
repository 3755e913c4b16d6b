/**
 * Durability shown by what the kernel is asked to do, in what order (issue 23, section 3). A
 * SIGKILL test can't tell an fsync from none (the page cache outlives a killed process); strace
 * can. Each test runs a real operation under `strace -f` and checks the order the docs promise:
 * the audit line synced before the vault changes or a value leaves; a rewrite's data synced before
 * its rename, and the directory synced after it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { kwAsync, stopAgent, unlockedAgent, type AgentHome } from './agent-helpers.js';
import { FAST_KDF, initHome, kw, makeHome, STRACE, straced } from './helpers.js';
import { agentWith, CHANGING, INIT, rawGateway, tool, toolsFile } from './mcp-helpers.js';

// CI installs strace (.ci/run); a developer without it is told, rather than a silent pass.
const skip = !fs.existsSync(STRACE) && process.env['CI'] !== 'true' ? 'needs strace' : false;
const TRACED =
  'trace=openat,write,writev,pwrite64,pwritev,sendmsg,fsync,fdatasync,rename,renameat2';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

/** One system call that completed: its name, the path of its first descriptor, its arguments. */
interface Call {
  index: number;
  pid: number;
  name: string;
  fd: string | undefined;
  args: string;
  ok: boolean;
}

/**
 * strace -f -y output, in the order the calls completed. A call cut by another thread's
 * ("<unfinished ...>") is placed where it resumed: that is when it was done.
 */
function parse(text: string): Call[] {
  const calls: Call[] = [];
  const open = new Map<string, { name: string; args: string }>();
  for (const line of text.split('\n')) {
    let m = /^(\d+)\s+(\w+)\((.*) <unfinished \.\.\.>$/.exec(line);
    if (m) {
      open.set(`${m[1]}:${m[2]}`, { name: m[2] ?? '', args: m[3] ?? '' });
      continue;
    }
    let pid: number;
    let name: string;
    let args: string;
    let ret: string;
    m = /^(\d+)\s+<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(\S+)/.exec(line);
    if (m) {
      const start = open.get(`${m[1]}:${m[2]}`);
      open.delete(`${m[1]}:${m[2]}`);
      [pid, name, args, ret] = [
        Number(m[1]),
        m[2] ?? '',
        (start?.args ?? '') + (m[3] ?? ''),
        m[4] ?? '',
      ];
    } else {
      m = /^(\d+)\s+(\w+)\((.*)\)\s+=\s+(\S+)/.exec(line);
      if (!m) continue;
      [pid, name, args, ret] = [Number(m[1]), m[2] ?? '', m[3] ?? '', m[4] ?? ''];
    }
    const fd = /^(?:AT_FDCWD|\d+)<([^>]*)>/.exec(args)?.[1];
    calls.push({ index: calls.length, pid, name, fd, args, ok: !ret.startsWith('-') });
  }
  return calls;
}

/** The CLI under strace; the calls it made. */
function traced(args: string[], env: NodeJS.ProcessEnv, input = ''): Call[] {
  const r = straced(['-y', '-s', '4096', '-e', TRACED], args, env, input);
  assert.equal(r.code, 0, r.stderr);
  return parse(r.trace);
}

const WRITES = new Set(['write', 'writev', 'pwrite64', 'pwritev']);
const SYNCS = new Set(['fsync', 'fdatasync']);

/** The first call matching, after `from` (an index), or a failure naming what was looked for. */
function first(calls: Call[], what: string, from: number, pred: (c: Call) => boolean): Call {
  const c = calls.find((x) => x.index > from && x.ok && pred(x));
  assert.ok(c, `no ${what} after call ${from}`);
  return c;
}

const isLog = (c: Call) => /\/audit\/log-\d+\.jsonl$/.test(c.fd ?? '');
const isJournal = (c: Call) => /\/audit\/journal$/.test(c.fd ?? '');

/**
 * The sync that made the audit line of `event` durable: its write to a segment, then the
 * segment's sync; or, in the agent (docs/AUDIT.md, "The journal"), the same line written to the
 * journal after it, then the journal's sync.
 */
function auditSynced(calls: Call[], event: string): Call {
  const line = first(calls, `audit write of ${event}`, -1, (c) => {
    return WRITES.has(c.name) && isLog(c) && c.args.includes(event);
  });
  const sync = first(calls, `sync of the audit log after ${event}`, line.index, (c) => {
    return SYNCS.has(c.name) && (c.fd === line.fd || isJournal(c));
  });
  if (isJournal(sync)) {
    const entry = first(calls, `journal entry of ${event}`, line.index, (c) => {
      return WRITES.has(c.name) && isJournal(c) && c.args.includes(event);
    });
    assert.ok(entry.index < sync.index, `the journal was synced before ${event} was written to it`);
  }
  return sync;
}

describe('durability by syscall order (strace)', { skip }, () => {
  for (const [op, event] of [
    ['set', 'secret.set'],
    ['rm', 'secret.rm'],
  ] as const)
    test(`secret ${op}: the audit line is written and synced before the vault is written, and the vault is synced`, () => {
      const h = initHome();
      if (op === 'rm') {
        assert.equal(kw(['secret', 'set', 'dur/x'], { env: h.env, input: 'v' }).code, 0);
      }
      const calls = traced(['secret', op, 'dur/x'], h.env, op === 'set' ? 'durable-set-value' : '');
      const lineSynced = auditSynced(calls, event);
      const vault = path.join(h.home, 'vault.kw');
      const written = first(calls, 'write to vault.kw', -1, (c) => {
        return WRITES.has(c.name) && c.fd === vault;
      });
      assert.ok(
        lineSynced.index < written.index,
        `vault.kw was written (call ${written.index}) before the audit line was synced (call ${lineSynced.index})`,
      );
      first(calls, 'sync of vault.kw', written.index, (c) => SYNCS.has(c.name) && c.fd === vault);
    });

  /** A whole-file rewrite: temp written and synced, renamed over vault.kw, directory synced. */
  function rewritten(calls: Call[], home: string): Call {
    const vault = path.join(home, 'vault.kw');
    const renamed = first(calls, 'rename to vault.kw', -1, (c) => {
      return c.name.startsWith('rename') && c.args.includes(`"${vault}"`);
    });
    const temp = /^"([^"]+)"/.exec(renamed.args)?.[1] ?? '';
    assert.match(path.basename(temp), /^\.vault\.kw\.tmp-/);
    const data = calls.filter((c) => WRITES.has(c.name) && c.fd === temp);
    assert.ok(data.length > 0, 'the temp file was written');
    const synced = first(calls, 'sync of the temp file', data.at(-1)?.index ?? -1, (c) => {
      return SYNCS.has(c.name) && c.fd === temp;
    });
    assert.ok(synced.index < renamed.index, 'the temp file was synced before the rename');
    assert.ok(
      !calls.some((c) => c.index < renamed.index && WRITES.has(c.name) && c.fd === vault),
      'nothing was written to vault.kw itself before it was complete',
    );
    first(calls, 'sync of the home directory', renamed.index, (c) => {
      return SYNCS.has(c.name) && c.fd === home;
    });
    return renamed;
  }

  test('init: the new vault is written to a temp file and synced, renamed over vault.kw, then the directory is synced', () => {
    const h = makeHome();
    rewritten(traced(['init', ...FAST_KDF], h.env), h.home);
  });

  for (const op of ['passwd', 'rekey'] as const)
    test(`${op}: the vault.${op} line is synced, then the vault is rewritten through a synced temp file, renamed, and the directory synced`, () => {
      const h = initHome();
      assert.equal(kw(['secret', 'set', 'dur/kept'], { env: h.env, input: 'v' }).code, 0);
      let args: string[] = [op];
      if (op === 'passwd') {
        const next = path.join(h.home, '..', `new-pass-${path.basename(h.home)}`);
        fs.writeFileSync(next, 'a different passphrase\n', { mode: 0o600 });
        args = ['passwd', '--new-passphrase-file', next, ...FAST_KDF];
      }
      const calls = traced(args, h.env);
      const renamed = rewritten(calls, h.home);
      const synced = auditSynced(calls, `vault.${op}`);
      assert.ok(
        synced.index < renamed.index,
        `the vault was replaced (call ${renamed.index}) before vault.${op} was synced (call ${synced.index})`,
      );
    });

  /**
   * The agent's calls (and its children's, and those of the other processes in `also`) while
   * `during` runs: strace attached by pid, one trace, so the order holds across the processes.
   */
  async function tracedAgent<T>(
    h: AgentHome,
    during: () => Promise<T>,
    also: number[] = [],
  ): Promise<[T, Call[]]> {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-strace-')), 'trace');
    const pids = [h.agentPid, ...also].flatMap((pid) => ['-p', String(pid)]);
    const tracer = spawn(
      STRACE,
      ['-f', '-y', '-s', '4096', '-e', `${TRACED},execve`, '-o', out, ...pids],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    // strace says when it has attached (to every thread): an event, not a delay.
    await new Promise<void>((resolve, reject) => {
      let said = '';
      tracer.stderr.on('data', (d: Buffer) => {
        said += d.toString();
        // Each process named: "Process PID attached" (with its threads, under -f).
        const all = [h.agentPid, ...also].every((pid) =>
          new RegExp(`Process ${pid} attached`).test(said),
        );
        if (all) resolve();
      });
      tracer.once('exit', () => reject(new Error(`strace exited: ${said}`)));
    });
    const result = await during();
    const exited = new Promise((resolve) => tracer.once('exit', resolve));
    tracer.kill('SIGINT');
    await exited;
    return [result, parse(fs.readFileSync(out, 'utf8'))];
  }

  test('read through the agent: the secret.read line is synced before the value is written to the socket', async () => {
    const h = await unlockedAgent(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
      homes,
    );
    const value = 'durable-release-value';
    assert.equal(kw(['secret', 'set', 'dur/read'], { env: h.env, input: value }).code, 0);
    const [r, calls] = await tracedAgent(h, () => kwAsync(['read', 'dur/read'], h.env));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, value);
    const sent = first(calls, 'the value written to a socket', -1, (c) => {
      return /^socket:/.test(c.fd ?? '') && c.args.includes(value);
    });
    const synced = auditSynced(calls, 'secret.read');
    assert.ok(
      synced.index < sent.index,
      `the value left (call ${sent.index}) before its audit line was synced (call ${synced.index})`,
    );
  });

  test('run through the agent: the credential.deliver line is synced before the child is started with the value', async () => {
    const h = await unlockedAgent(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
      homes,
    );
    assert.equal(kw(['secret', 'set', 'dur/run'], { env: h.env, input: 'durable-run' }).code, 0);
    const marker = 'durable-run-child';
    const [r, calls] = await tracedAgent(h, () =>
      kwAsync(
        ['run', '--env', 'DUR=dur/run', '--', 'sh', '-c', `test "$DUR" = durable-run # ${marker}`],
        h.env,
      ),
    );
    assert.equal(r.code, 0, r.stderr);
    const started = first(calls, 'the execve of the child', -1, (c) => {
      return c.name === 'execve' && c.args.includes(marker);
    });
    const synced = auditSynced(calls, 'credential.deliver');
    assert.ok(
      synced.index < started.index,
      `the child started (call ${started.index}) before credential.deliver was synced (call ${synced.index})`,
    );
  });

  for (const leak of [true, false])
    test(`a tools/call through the gateway (leak_blocking: ${leak}): the agent syncs its mcp.call line before the gateway writes the call to the server`, async () => {
      const h = await agentWith(`  leak_blocking: ${leak}\n`);
      if (leak) {
        // A released value, so the arguments are really scanned.
        assert.equal(
          kw(['secret', 'set', 'dur/mcp'], { env: h.env, input: 'durable-mcp-value-1' }).code,
          0,
        );
        assert.equal(kw(['read', 'dur/mcp'], { env: h.env }).code, 0);
      }
      const file = toolsFile(h, [tool('search', 'Search.')]);
      const gw = rawGateway(h, 'durable', [process.execPath, CHANGING], { MCP_TOOLS: file });
      gw.send(INIT);
      await gw.waitFor((l) => l.includes('"id":1'));
      gw.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
      // A first call lists and pins the tools (records of their own): the traced call is alone.
      gw.send({
        jsonrpc: '2.0',
        id: 2,
        method: 'tools/call',
        params: { name: 'search', arguments: { text: 'first' } },
      });
      await gw.waitFor((l) => l.includes('"id":2'));
      const marker = `durable-mcp-call-${leak}`;
      const pid = gw.g.pid ?? 0;
      const [, calls] = await tracedAgent(h, async () => {
        gw.send({
          jsonrpc: '2.0',
          id: 3,
          method: 'tools/call',
          params: { name: 'search', arguments: { text: marker } },
        });
        return gw.waitFor((l) => l.includes('"id":3'));
      }, [pid]);
      gw.g.stdin.end();
      await gw.exited;
      // The server's stdin is a socket pair, like the agent's connection: the call written to
      // it is the one under the gateway's own id (the scan sent to the agent keeps the client's).
      const forwarded = first(calls, 'the call written to the server', -1, (c) => {
        return (
          c.pid === pid &&
          WRITES.has(c.name) &&
          c.args.includes('tools/call') &&
          c.args.includes(marker) &&
          !/\\"id\\":3[,}]/.test(c.args)
        );
      });
      const lines = calls.filter(
        (c) => WRITES.has(c.name) && isLog(c) && c.args.includes('mcp.call'),
      );
      // One record for the call, and the agent's: the gateway writes none of its own.
      assert.deepEqual(
        lines.map((c) => c.pid),
        [h.agentPid],
        'the mcp.call line is written once, by the agent',
      );
      const synced = auditSynced(calls, 'mcp.call');
      assert.ok(
        synced.index < forwarded.index,
        `the call reached the server (call ${forwarded.index}) before its mcp.call line was synced (call ${synced.index})`,
      );
    });
});
