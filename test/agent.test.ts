/**
 * The agent on its real socket, with real processes: the acceptance test that matters most, the
 * approval rules, peer identity, fail-closed socket permissions, lock wiping memory, the unlock
 * window, concurrency and malformed frames.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { call } from '../src/agent/index.js';
import { inFlight, IN_FLIGHT_RESERVED, SMALL_FRAME } from '../src/agent/inflight.js';
import {
  agentHome,
  auditEntries,
  closeAll,
  kwAsync,
  pendingId,
  scanMemory,
  scanWindows,
  unlockedMappings,
  startAgent,
  stopAgent,
  type AgentHome,
  withoutAgent,
} from './agent-helpers.js';
import { BIN, eventually, kw, PASSPHRASE, ROOT, rootTests } from './helpers.js';
import { consoleUrl, loginOverHttp, rawRequest, waitingCommand } from './console-helpers.js';
import { readHeader, subkeys, unwrapDk } from './independent/vault.js';

/** libfaketime (Debian's faketime package): a process's wall clock moved, its monotonic one not. */
const FAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

async function running(
  policy?: string,
  env: NodeJS.ProcessEnv = {},
  args: string[] = [],
): Promise<AgentHome> {
  const h = agentHome(policy);
  homes.push(h);
  await startAgent(h, env, args);
  const u = kw(['unlock'], { env: h.env });
  assert.equal(u.code, 0, u.stderr);
  return h;
}

function auditTypes(h: AgentHome): string[] {
  return kw(['audit', 'export'], { env: h.env })
    .stdout.trim()
    .split('\n')
    .map((l) => (JSON.parse(l) as { type: string }).type);
}

describe('the acceptance test: after unlock, a second process cannot read without the approval step', () => {
  test('denied without approval; approved once, it reads once; a third process is asked again', async () => {
    const h = await running();
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'the-value-1234' }).code,
      0,
    );
    h.answer('no');
    let r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.code, 6, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /keyward: error: the request was not approved/);
    assert.equal(h.prompts().length, 1);
    assert.match(
      h.prompts()[0] ?? '',
      /^keyward, request [0-9a-f]{8}: a request to read the secret "app\/token" \(rule default-secrets\)\..* Asked by .*\(pid \d+\) running ".*" ".*keyward\.js" "read" "app\/token" in ".*", started by .*\. Allow\?$/,
    );
    // The id the requesting command printed as it waited is the one the prompt shows.
    const printed = /waiting for approval of request ([0-9a-f]{8})/.exec(r.stderr)?.[1];
    assert.ok(printed, r.stderr);
    assert.ok(h.prompts()[0]?.startsWith(`keyward, request ${printed}: `), h.prompts()[0]);
    h.answer('yes');
    r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'the-value-1234');
    r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.code, 0);
    assert.equal(h.prompts().length, 3, 'the third process was asked again');
    const types = auditTypes(h);
    for (const t of ['approval.requested', 'approval.denied', 'approval.granted', 'secret.read'])
      assert.ok(types.includes(t), t);
  });

  test("on the agent's own terminal a person types the challenge; a blind yes does not pass", async () => {
    const h = agentHome();
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'typed-approval-1' }).code,
      0,
    );
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(h.env)) if (v !== undefined) env[k] = v;
    env['TERM'] = 'dumb';
    const spec = {
      argv: [process.execPath, BIN, 'agent', 'run'],
      env,
      steps: [
        ['listening on', ''],
        ['re:type ([a-z2-9]{4}) and Enter', '{1}\r'],
        ['re:type ([a-z2-9]{4}) and Enter', 'yes\r'],
      ],
    };
    const driver = spawn('python3', [path.join(ROOT, 'test/pty-driver.py'), JSON.stringify(spec)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let transcript = '';
    driver.stdout.on('data', (d: Buffer) => (transcript += d.toString()));
    const driverDone = new Promise((r) => driver.once('exit', r));
    await eventually(() => fs.existsSync(h.sock), 'the agent socket');
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    const first = await kwAsync(['read', 'app/token'], h.env);
    assert.equal(first.code, 0, first.stderr + transcript);
    assert.equal(first.stdout, 'typed-approval-1');
    const second = await kwAsync(['read', 'app/token'], h.env);
    assert.equal(second.code, 6, second.stderr);
    kw(['agent', 'stop'], { env: h.env });
    await driverDone;
    assert.match(transcript, /a request to read the secret "app\/token"/);
    assert.match(transcript, /keyward: allowed\./);
    assert.match(transcript, /denied \(that was not the challenge\)/);
  });

  test('with no channel for confirm (no askpass, no terminal, no console), the answer is an immediate deny, never allow', async () => {
    const h = await running(undefined, { KEYWARD_ASKPASS: '', SSH_ASKPASS: '' }, ['--no-console']);
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'the-value-1234' }).code,
      0,
    );
    const r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.code, 6);
    // Decided at once: nothing was put up for approval.
    assert.match(r.stderr, /no approval channel can give confirm approval here/);
    assert.doesNotMatch(r.stderr, /waiting for approval/);
  });
});

const PASSPHRASE_RULE = `version: 1
rules:
  - name: needs-passphrase
    targets: ["**"]
    decision: approve
    approve: { mode: passphrase, timeout: 20s }
`;

/** What test/fixtures/self-approver.js reports: its approver's exit and stderr, and the request's end. */
interface SelfApproval {
  code: number;
  stderr: string;
  stillPending: boolean;
  outcome: string;
}

/** Runs the self-approver fixture against secret s: its child (or --double-fork grandchild) tries to approve. */
function selfApproval(h: AgentHome, env: NodeJS.ProcessEnv, how: string[] = []): SelfApproval {
  const r = spawnSync(
    process.execPath,
    [path.join(ROOT, 'dist/test/fixtures/self-approver.js'), h.sock, 's', BIN, ...how],
    { env, encoding: 'utf8', timeout: 120_000 },
  );
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as SelfApproval;
}

describe('approving from another terminal', () => {
  test('approve ID with the passphrase releases the waiting read; the approval is recorded', async () => {
    const h = await running(PASSPHRASE_RULE);
    assert.equal(kw(['secret', 'set', 's'], { env: h.env, input: 'approved-value' }).code, 0);
    const reader = kwAsync(['read', 's'], h.env);
    const id = await pendingId(h);
    const list = kw(['approvals'], { env: h.env }).stdout;
    assert.match(
      list,
      new RegExp(
        `^${id}  read s  \\(rule needs-passphrase, passphrase, \\d+ s left\\)\\n    by .*node.*"read" "s"`,
      ),
    );
    const a = kw(['approve', id], { env: h.env });
    assert.equal(a.code, 0, a.stderr);
    // What it approves is said before the factor is asked: an id alone tells the person nothing
    // (another process can put its own request's id on the person's screen).
    assert.match(
      a.stderr,
      new RegExp(
        `^keyward: approving ${id}  read s  \\(rule needs-passphrase, passphrase, \\d+ s left\\)\\n    by .*node.*"read" "s"`,
      ),
    );
    const r = await reader;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'approved-value');
  });

  test('a bare approve (no passphrase) or a wrong one never approves; the request stays pending; deny ends it', async () => {
    const h = await running(PASSPHRASE_RULE);
    assert.equal(kw(['secret', 'set', 's'], { env: h.env, input: 'approved-value' }).code, 0);
    const reader = kwAsync(['read', 's'], h.env);
    const id = await pendingId(h);
    const bare = { ...h.env };
    delete bare['KEYWARD_PASSPHRASE_FILE'];
    let a = kw(['approve', id], { env: bare });
    assert.equal(a.code, 2, a.stderr);
    const wrong = path.join(h.dir, 'wrong');
    fs.writeFileSync(wrong, 'not the passphrase!\n', { mode: 0o600 });
    a = kw(['approve', id, '--passphrase-file', wrong], { env: h.env });
    assert.equal(a.code, 4, a.stderr);
    assert.equal(await pendingId(h), id, 'still pending');
    assert.equal(kw(['deny', id], { env: h.env }).code, 0);
    const r = await reader;
    assert.equal(r.code, 6);
    assert.equal(r.stdout, '');
    // The denial names the process that denied (keyward deny needs no factor).
    const denied = auditEntries(h).find((e) => e.type === 'approval.denied');
    assert.match(String(denied?.details['denierPid']), /^\d+$/);
    assert.notEqual(Number(denied?.details['denierPid']), denied?.actor?.pid);
  });

  test('found in review: a request another process ends with keyward deny tells its requester which process did, and the request that reads the same after it has another id', async () => {
    const h = await running(PASSPHRASE_RULE);
    assert.equal(kw(['secret', 'set', 's'], { env: h.env, input: 'approved-value' }).code, 0);
    const reader = kwAsync(['read', 's'], h.env);
    const id = await pendingId(h);
    // A process of the user ends the person's request, and sends the same command line.
    assert.equal(kw(['deny', id], { env: h.env }).code, 0);
    const copy = kwAsync(['read', 's'], h.env);
    const r = await reader;
    assert.equal(r.code, 6);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, new RegExp(`waiting for approval of request ${id}`));
    assert.match(
      r.stderr,
      /the request was denied by another process of yours \(pid \d+, ".*", keyward deny\): if that was not you, a program running as you did it/,
    );
    const other = await pendingId(h);
    assert.notEqual(other, id, 'the copy waits under another id');
    assert.equal(kw(['deny', other], { env: h.env }).code, 0);
    assert.equal((await copy).code, 6);
  });

  test('wrong passphrases are recorded with the process that gave them; the third denies the request; an approval names its approver', async () => {
    const h = await running(PASSPHRASE_RULE);
    assert.equal(kw(['secret', 'set', 's'], { env: h.env, input: 'approved-value' }).code, 0);
    const wrong = path.join(h.dir, 'wrong');
    fs.writeFileSync(wrong, 'not the passphrase!\n', { mode: 0o600 });
    const reader = kwAsync(['read', 's'], h.env);
    const id = await pendingId(h);
    for (const n of [1, 2]) {
      const a = kw(['approve', id, '--passphrase-file', wrong], { env: h.env });
      assert.equal(a.code, 4, a.stderr);
      assert.match(a.stderr, /wrong passphrase; the request is still pending/, `try ${n}`);
    }
    const third = kw(['approve', id, '--passphrase-file', wrong], { env: h.env });
    assert.equal(third.code, 4, third.stderr);
    assert.match(third.stderr, /wrong passphrase: 3 wrong answers, the request is denied/);
    const r = await reader;
    assert.equal(r.code, 6, r.stderr);
    assert.equal(r.stdout, '');
    const failed = auditEntries(h).filter((e) => e.type === 'approval.factor_failed');
    assert.deepEqual(
      failed.map((e) => [
        e.details['request'],
        e.details['factor'],
        e.details['wrong'],
        e.details['denied'],
      ]),
      [
        [id, 'passphrase', 1, false],
        [id, 'passphrase', 2, false],
        [id, 'passphrase', 3, true],
      ],
    );
    // The actor is the process that gave the passphrase (keyward approve), not the requester.
    for (const e of failed)
      assert.ok(e.actor?.cmdline?.includes('approve'), JSON.stringify(e.actor));
    // A right one: the approval names the process that gave it.
    const reader2 = kwAsync(['read', 's'], h.env);
    const id2 = await pendingId(h);
    assert.equal(kw(['approve', id2], { env: h.env }).code, 0);
    assert.equal((await reader2).stdout, 'approved-value');
    const granted = auditEntries(h).find((e) => e.type === 'approval.granted');
    assert.match(String(granted?.details['approverPid']), /^\d+$/);
    assert.notEqual(Number(granted?.details['approverPid']), granted?.actor?.pid);
  });

  test('an approval cannot be replayed: the same id again is not found (exit 3)', async () => {
    const h = await running(PASSPHRASE_RULE);
    assert.equal(kw(['secret', 'set', 's'], { env: h.env, input: 'approved-value' }).code, 0);
    const reader = kwAsync(['read', 's'], h.env);
    const id = await pendingId(h);
    assert.equal(kw(['approve', id], { env: h.env }).code, 0);
    await reader;
    const again = kw(['approve', id], { env: h.env });
    assert.equal(again.code, 3);
    assert.match(again.stderr, /no pending request/);
  });

  test('a request expires (exit 7) when nobody decides', async () => {
    const h = await running(PASSPHRASE_RULE.replace('timeout: 20s', 'timeout: 1s'));
    assert.equal(kw(['secret', 'set', 's'], { env: h.env, input: 'approved-value' }).code, 0);
    const r = kw(['read', 's'], { env: h.env });
    assert.equal(r.code, 7, r.stderr);
    assert.ok(auditTypes(h).includes('approval.expired'));
  });

  test('the requesting process and its descendants can never approve its request, whatever the factor', async () => {
    const h = await running(PASSPHRASE_RULE);
    assert.equal(kw(['secret', 'set', 's'], { env: h.env, input: 'approved-value' }).code, 0);
    const out = selfApproval(h, h.env);
    assert.equal(out.code, 6, JSON.stringify(out));
    assert.match(out.stderr, /cannot approve its own request/);
    // Refused and nothing else: the request still waited for a person, and ended denied.
    assert.equal(out.stillPending, true, 'the refused approval settled the request');
    assert.equal(out.outcome, 'APPROVAL_REJECTED', 'the request ended other than denied');
    const refused = auditEntries(h).find(
      (e) => e.type === 'approval.denied' && e.reason === 'self-approval refused',
    );
    assert.ok(refused, 'the refusal is recorded');
  });
  test('a descendant that leaves the tree (a double fork into its own session) escapes the ancestor check: with the passphrase file in its environment it approves (THREAT-MODEL "Not protected")', async () => {
    // Evidence for a limit the threat model states, not a guarantee: the ancestor check sees only
    // the chain of parents, which a double fork cuts. What stops such a process is the factor, and
    // a passphrase in a file every process of the user can read is no factor.
    const h = await running(PASSPHRASE_RULE);
    assert.equal(kw(['secret', 'set', 's'], { env: h.env, input: 'approved-value' }).code, 0);
    const out = selfApproval(h, h.env, ['--double-fork']);
    assert.deepEqual([out.code, out.outcome], [0, 'released'], JSON.stringify(out));
    // The same process without the file has no factor to give: a bare approve never approves.
    const bare = { ...h.env };
    delete bare['KEYWARD_PASSPHRASE_FILE'];
    const refused = selfApproval(h, bare, ['--double-fork']);
    assert.deepEqual(
      [refused.code, refused.stillPending, refused.outcome],
      [2, true, 'APPROVAL_REJECTED'],
      JSON.stringify(refused),
    );
  });
});

describe('peer identity and the socket', () => {
  test('where Yama is absent or ptrace_scope is 0, the agent says at start that a command can be held before it hardens', async () => {
    let scope: string | undefined;
    try {
      scope = fs.readFileSync('/proc/sys/kernel/yama/ptrace_scope', 'utf8').trim();
    } catch {
      scope = undefined;
    }
    const h = agentHome();
    const agent = spawn(process.execPath, [BIN, 'agent', 'run', '--no-console'], {
      env: h.env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let said = '';
    // All it said is read once its standard error closes, after it stops.
    const exited = new Promise((r) => agent.once('close', r));
    await new Promise<void>((resolve) =>
      agent.stderr.on('data', (d: Buffer) => {
        said += d.toString();
        if (/listening on/.test(said)) resolve();
      }),
    );
    assert.equal(kw(['agent', 'stop'], { env: h.env }).code, 0);
    await exited;
    const warned =
      /the memory of a keyward process, this agent's included, in the milliseconds before it hardens, and keep that hold \(sysctl kernel\.yama\.ptrace_scope=1 closes it\)/;
    if (scope === undefined || scope === '0') assert.match(said, warned);
    else assert.doesNotMatch(said, warned);
  });

  test(
    'another uid is rejected before its request is read, and audited as peer.rejected',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      const h = await running();
      // Make the socket reachable to another uid, only for this test.
      fs.chmodSync(h.dir, 0o711);
      fs.chmodSync(h.sockDir, 0o711);
      fs.chmodSync(h.sock, 0o666);
      const py = [
        'import socket,sys',
        's=socket.socket(socket.AF_UNIX)',
        's.connect(sys.argv[1])',
        'try:',
        "  s.sendall(b'\\x00\\x00\\x00\\x06\\x01\\x01\\x00\\x02{}')",
        "  print('answer' if s.recv(100) else 'closed')",
        'except (ConnectionResetError, BrokenPipeError):',
        "  print('closed')",
      ].join('\n');
      const r = spawnSync(
        'setpriv',
        ['--reuid=43210', '--regid=43210', '--clear-groups', '/usr/bin/python3', '-c', py, h.sock],
        { encoding: 'utf8' },
      );
      fs.chmodSync(h.sockDir, 0o700);
      fs.chmodSync(h.sock, 0o600);
      fs.chmodSync(h.dir, 0o700);
      assert.equal(
        r.stdout.trim(),
        'closed',
        `the other uid got an answer: ${r.stdout} ${r.stderr}`,
      );
      type Row = { type: string; body: { actor: { uid: number }; reason: string } };
      let rejected: Row | undefined;
      // The agent records the rejection after closing the connection: wait for the record.
      await eventually(() => {
        rejected = kw(['audit', 'tail', '--json', '-n', '50'], { env: withoutAgent(h) })
          .stdout.trim()
          .split('\n')
          .map((l) => JSON.parse(l) as Row)
          .find((e) => e.type === 'peer.rejected');
        return rejected !== undefined;
      }, 'the peer.rejected record');
      assert.ok(rejected);
      assert.equal(rejected.body.actor.uid, 43210);
    },
  );

  const refusals: Array<[string, (h: AgentHome) => void, RegExp]> = [
    [
      'a socket directory others can read (0755)',
      (h) => fs.mkdirSync(h.sockDir, { mode: 0o755 }),
      /mode 755/,
    ],
    [
      'a socket directory owned by another user',
      (h) => {
        fs.mkdirSync(h.sockDir, { mode: 0o700 });
        fs.chownSync(h.sockDir, 65534, 65534);
      },
      /owned by uid 65534/,
    ],
    [
      'a symlinked socket directory',
      (h) => {
        const real = `${h.sockDir}-real`;
        fs.mkdirSync(real, { mode: 0o700 });
        fs.symlinkSync(real, h.sockDir);
      },
      /symbolic link/,
    ],
    [
      'a non-socket file where the socket goes',
      (h) => {
        fs.mkdirSync(h.sockDir, { mode: 0o700 });
        fs.writeFileSync(h.sock, 'x');
      },
      /not a socket/,
    ],
  ];
  for (const [label, arrange, why] of refusals) {
    test(
      `the agent refuses to start with ${label} (fail closed, with a hint)`,
      { skip: !rootTests && label.includes('another user') && 'needs root' },
      () => {
        const h = agentHome();
        arrange(h);
        const r = kw(['agent', 'run'], { env: h.env });
        assert.equal(r.code, 8, r.stderr);
        assert.match(r.stderr, why);
        assert.match(r.stderr, /keyward: hint: /);
      },
    );
  }

  test('a policy applied while the agent is unlocked takes effect at the next request', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['secret', 'set', 'p/x'], { env: h.env, input: 'value-pppp' }).code, 0);
    assert.equal(kw(['read', 'p/x'], { env: h.env }).code, 0);
    const f = path.join(h.dir, 'deny.yaml');
    fs.writeFileSync(
      f,
      'version: 1\nrules:\n  - { name: none, targets: ["**"], decision: deny }\n',
    );
    assert.equal(kw(['policy', 'apply', f], { env: h.env }).code, 0);
    const r = kw(['read', 'p/x'], { env: h.env });
    assert.equal(r.code, 6);
    assert.match(r.stderr, /rule none matches and decides: deny/);
  });

  test('a second agent for the same socket directory is refused; a stale socket is cleared', async () => {
    const h = await running();
    const r = kw(['agent', 'run'], { env: h.env });
    assert.equal(r.code, 5);
    assert.match(r.stderr, /already runs/);
    const dead = new Promise((r) => h.agent?.once('exit', r));
    h.agent?.kill('SIGKILL');
    await dead;
    assert.ok(fs.existsSync(h.sock), 'a killed agent leaves its socket');
    await startAgent(h);
    assert.equal(kw(['status'], { env: h.env }).code, 5, 'a new agent starts locked');
  });

  test('the socket is 0600 in a 0700 directory', async () => {
    const h = await running();
    assert.equal(fs.statSync(h.sockDir).mode & 0o777, 0o700);
    assert.equal(fs.statSync(h.sock).mode & 0o777, 0o600);
  });
});

/** The vault's data key and its subkeys, derived from the file and the passphrase by test/independent. */
function vaultKeys(h: AgentHome): Buffer[] {
  const dk = unwrapDk(readHeader(fs.readFileSync(h.vaultFile)), PASSPHRASE);
  const k = subkeys(dk);
  return [dk, k.index, k.secrets, k.nameTag];
}

/**
 * After a lock, however it came: no 12-byte window of the value, of the data key or of any of
 * its subkeys in the agent's memory, and not the passphrase. (root: /proc/PID/mem)
 */
function assertWiped(h: AgentHome, value: string, why: string): void {
  if (!rootTests) return;
  const pid = h.agentPid ?? 0;
  assert.deepEqual(scanWindows(pid, [Buffer.from(value)]), [], `${why}: the value is left`);
  assert.deepEqual(scanWindows(pid, vaultKeys(h)), [], `${why}: the data key or a subkey is left`);
  assert.deepEqual(scanMemory(pid, [Buffer.from(PASSPHRASE)]).map(String), [], why);
}

describe('lock wipes keys', () => {
  test(
    'after lock, read exits 5 and the agent memory holds no 12-byte fragment of the value, of the data key or of its subkeys, nor the passphrase',
    { skip: !rootTests && 'needs root to read /proc/PID/mem' },
    async () => {
      const h = await running(
        'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
      );
      // Random, so no 12-byte fragment of it occurs anywhere by chance.
      const value = randomBytes(36).toString('base64url');
      assert.equal(kw(['secret', 'set', 'scan/me'], { env: h.env, input: value }).code, 0);
      for (let i = 0; i < 3; i++)
        assert.equal(kw(['read', 'scan/me'], { env: h.env }).stdout, value);
      // Positive control: the scanner finds what the agent does hold (the name, in its index,
      // and the data key or its subkeys, which an unlocked agent needs).
      assert.deepEqual(
        scanMemory(h.agentPid ?? 0, [Buffer.from('scan/me')]).length,
        1,
        'the scanner works',
      );
      assert.notDeepEqual(scanWindows(h.agentPid ?? 0, vaultKeys(h)), [], 'the keys are found');
      assert.equal(kw(['lock'], { env: h.env }).code, 0);
      // The lock wipes before it answers: the read above already found the agent locked.
      assert.equal(kw(['read', 'scan/me'], { env: h.env }).code, 5);
      // Every 12-byte window of the value, and the passphrase whole. The window scanner's own
      // positive control: this test process holds the value (a string), and it finds it.
      assert.deepEqual(scanWindows(process.pid, [Buffer.from(value)]), [0], 'the scanner works');
      assertWiped(h, value, 'after keyward lock');
    },
  );
});

describe('a passphrase given to the console', () => {
  test(
    "found in review: leaves no copy in the agent's ordinary memory (its login, an approval), before lock or after",
    { skip: !rootTests && 'needs root to read /proc/PID/mem' },
    async () => {
      const h = await running(
        'version: 1\nrules:\n  - { name: asked, targets: ["asked/**"], decision: approve, approve: { mode: passphrase, timeout: 5m } }\n',
      );
      assert.equal(kw(['secret', 'set', 'asked/one'], { env: h.env, input: 'v' }).code, 0);
      const url = consoleUrl(h);
      const headers = await loginOverHttp(url, PASSPHRASE);
      const w = waitingCommand(['read', 'asked/one'], h.env);
      const id = await w.id;
      const approved = await rawRequest(url, {
        method: 'POST',
        path: `/api/approvals/${id}/approve`,
        headers: { ...headers, 'Content-Type': 'application/octet-stream' },
        body: PASSPHRASE,
      });
      assert.equal(approved.status, 200, approved.body);
      assert.equal((await w.done).stdout, 'v');
      // Found in the re-attack: a body the console refuses before it reads it (a session that
      // ended, a wrong type, no Origin) was dropped by node:http unzeroed.
      const u = new URL(url);
      for (const [why, hs] of [
        ['no session', { Host: u.host, Origin: `http://${u.host}` }],
        ['a wrong type', { ...headers, 'Content-Type': 'text/plain' }],
        ['no Origin', { Host: u.host, Cookie: headers['Cookie'] ?? '' }],
      ] as const) {
        const refused = await rawRequest(url, {
          method: 'POST',
          path: '/api/totp',
          headers: { 'Content-Type': 'application/octet-stream', ...hs },
          body: PASSPHRASE,
        });
        assert.ok(refused.status >= 400, `${why}: ${refused.status}`);
      }
      const pid = h.agentPid ?? 0;
      // Positive control: a request's own words, which node:http keeps as it parsed them.
      assert.equal(scanMemory(pid, [Buffer.from(`/api/approvals/${id}/approve`)]).length, 1);
      // Node's HTTP parser reads a socket into one buffer of its own, used again for every
      // request and written over only as far as the next one reaches: a passphrase in a body
      // stayed there, in the process's heap, until a longer request came.
      const left = () => scanMemory(pid, [Buffer.from(PASSPHRASE)], unlockedMappings).map(String);
      assert.deepEqual(left(), [], 'unlocked: a copy outside secure memory');
      assert.equal(kw(['lock'], { env: h.env }).code, 0);
      assert.deepEqual(scanMemory(pid, [Buffer.from(PASSPHRASE)]).map(String), [], 'after lock');
    },
  );
});

describe('the unlock window', () => {
  const allow = (unlock: string) =>
    `version: 1\nunlock: ${unlock}\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n`;

  test('the idle timeout locks the agent', async () => {
    const h = await running(allow('{ idle_timeout: 1s, max_lifetime: 1h }'));
    // Unlocked (running() checked the unlock), then, left alone, locked. Whether a status in
    // between still finds it open depends on the machine's load, so the lock's own record says
    // what locked it.
    await eventually(() => kw(['status'], { env: h.env }).code === 5, 'the idle lock');
    const lock = auditEntries(h)
      .filter((e) => e.type === 'vault.lock')
      .at(-1);
    assert.equal(lock?.reason, 'idle timeout', JSON.stringify(lock));
    assertWiped(h, 'no value was read', 'after the idle lock');
  });

  test('use slides the idle timeout, but the absolute cap locks anyway', async () => {
    // Reads back to back until one is refused; then the agent's own records, with its own clock,
    // say what happened. On a loaded machine one read can take longer than the idle timeout, and
    // the idle lock is then right: that run shows nothing about sliding, so it is tried again
    // with a fresh agent, never taken for a pass or a failure.
    for (let attempt = 1; ; attempt++) {
      const h = await running(allow('{ idle_timeout: 3s, max_lifetime: 6s }'));
      assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' }).code, 0);
      let code = 0;
      const started = Date.now();
      while (code === 0) {
        code = kw(['read', 'a'], { env: h.env }).code ?? -1;
        assert.ok(Date.now() - started < 120_000, 'the cap never locked');
      }
      assert.equal(code, 5, 'refused because locked');
      // The last lock, and the unlock before it (reading the log opens the vault: another one).
      const log = auditEntries(h);
      const at = log.map((e) => e.type).lastIndexOf('vault.lock');
      const lock = log[at];
      const unlock = log
        .slice(0, at)
        .filter((e) => e.type === 'vault.unlock')
        .at(-1);
      assert.ok(unlock && lock && lock.time > unlock.time, 'an unlock, then a lock');
      const uses = log.filter(
        (e) => e.type === 'secret.read' && e.time >= unlock.time && e.time <= lock.time,
      );
      const lastUse = Math.max(unlock.time, ...uses.map((e) => e.time));
      if (lock.reason === 'idle timeout') {
        // Right only if nothing used the window for the whole timeout before it.
        assert.ok(lock.time - lastUse >= 2900, `idle lock ${lock.time - lastUse} ms after a use`);
        assert.ok(attempt < 5, 'five loaded attempts in a row: the machine is too busy to tell');
        await stopAgent(h);
        continue;
      }
      assert.equal(lock.reason, 'absolute unlock limit');
      // Uses after the idle timeout would have locked an unused window: use slid it.
      assert.ok(
        uses.some((e) => e.time - unlock.time > 3000),
        'no read was served after the idle timeout',
      );
      // (The cap runs from the start of the unlock, before the KDF; its record comes after.)
      assert.ok(lock.time - unlock.time > 3000, 'the cap came before the idle timeout could');
      assertWiped(h, 'value-aaaa', 'after the absolute cap');
      return;
    }
  });

  test('a policy applied with a shorter max_lifetime ends a window already older than it at the next request', async () => {
    const h = await running(allow('{ idle_timeout: 1h, max_lifetime: 4h }'));
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' }).code, 0);
    assert.equal(kw(['read', 'a'], { env: h.env }).code, 0);
    const unlocked = auditEntries(h)
      .filter((e) => e.type === 'vault.unlock')
      .at(-1);
    assert.ok(unlocked);
    // The window is older than the new limit once it is applied (waited for: the clock moves).
    await eventually(() => Date.now() - unlocked.time > 2500, 'the window to pass two seconds');
    const f = path.join(h.dir, 'shorter.yaml');
    fs.writeFileSync(f, allow('{ idle_timeout: 2s, max_lifetime: 2s }'));
    assert.equal(kw(['policy', 'apply', f], { env: h.env }).code, 0);
    // Neither a status (which said "unlocked, 0s left") nor a read finds it open.
    assert.equal(kw(['status'], { env: h.env }).code, 5);
    assert.equal(kw(['read', 'a'], { env: h.env }).code, 5);
    const lock = auditEntries(h)
      .filter((e) => e.type === 'vault.lock')
      .at(-1);
    assert.equal(lock?.reason, 'absolute unlock limit');
    assert.ok(
      !auditEntries(h).some(
        (e) => e.type === 'secret.read' && e.decision === 'allow' && e.time > (lock?.time ?? 0),
      ),
    );
  });

  test('touching the policy file (the same policy read again) never slides the idle timeout', async () => {
    const h = await running(allow('{ idle_timeout: 2s, max_lifetime: 1h }'));
    const unlocked = auditEntries(h)
      .filter((e) => e.type === 'vault.unlock')
      .at(-1);
    assert.ok(unlocked);
    // Any process of the user can touch the file: the agent reads it again, and finds the
    // policy it has. A status (no use of the window) after each touch.
    const file = path.join(h.home, 'policy.yaml');
    let code = 0;
    while (code === 0) {
      const now = new Date();
      fs.utimesSync(file, now, now);
      code = kw(['status'], { env: h.env }).code ?? -1;
      assert.ok(Date.now() - unlocked.time < 60_000, 'the idle timeout never locked');
    }
    assert.equal(code, 5);
    const lock = auditEntries(h)
      .filter((e) => e.type === 'vault.lock')
      .at(-1);
    assert.equal(lock?.reason, 'idle timeout');
    // Nor does each touch grow the audit log: the same load is recorded once a window.
    const reloads = auditEntries(h).filter(
      (e) => e.type === 'policy.loaded' && e.time > unlocked.time,
    );
    assert.deepEqual(reloads, []);
  });

  test(
    'a sleep the timers never counted (the wall clock moved, the monotonic one did not) ends added keys and the window at the next request',
    {
      skip: fs.existsSync(FAKETIME)
        ? false
        : 'libfaketime is not installed (apt-get install faketime; CI installs it)',
    },
    async () => {
      // libfaketime moves the agent's wall clock, not its monotonic one: what a suspended
      // laptop's agent sees at resume. Node's timers (monotonic) have not fired.
      const h = agentHome(
        `version: 1\nunlock: { idle_timeout: 12h, max_lifetime: 24h }\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n`,
      );
      homes.push(h);
      const clock = path.join(h.dir, 'clock');
      fs.writeFileSync(clock, '+0\n');
      // A preloaded library: the agent runs only when told to, and says so (--allow-debugger).
      await startAgent(
        h,
        {
          LD_PRELOAD: FAKETIME,
          FAKETIME_TIMESTAMP_FILE: clock,
          FAKETIME_NO_CACHE: '1',
          DONT_FAKE_MONOTONIC: '1',
        },
        ['--allow-debugger'],
      );
      // libfaketime's shared memory (named by the pid), which Node's exit leaves behind: its
      // names go now (the agent keeps what it mapped).
      for (const f of [`faketime_shm_${h.agentPid}`, `sem.faketime_sem_${h.agentPid}`])
        fs.rmSync(path.join('/dev/shm', f), { force: true });
      const kwd = (args: string[], input?: string) =>
        kw(['--allow-debugger', ...args], {
          env: h.env,
          ...(input === undefined ? {} : { input }),
        });
      assert.equal(kwd(['unlock']).code, 0);
      assert.equal(kwd(['secret', 'set', 'a'], 'value-aaaa').code, 0);
      const env = { ...h.env, SSH_AUTH_SOCK: path.join(h.sockDir, 'ssh-agent.sock') };
      const key = path.join(h.dir, 'slept');
      assert.equal(
        spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'slept', '-f', key]).status,
        0,
      );
      assert.equal(spawnSync('ssh-add', ['-t', '3600', key], { env }).status, 0);
      assert.match(String(spawnSync('ssh-add', ['-l'], { env }).stdout), /slept/);
      // Two hours asleep: the key's hour is over, the window's twelve idle hours are not.
      fs.writeFileSync(clock, '+2h\n');
      assert.doesNotMatch(String(spawnSync('ssh-add', ['-l'], { env }).stdout), /slept/);
      assert.equal(kwd(['read', 'a']).code, 0);
      // Thirteen hours more: the window's idle time is over.
      fs.writeFileSync(clock, '+15h\n');
      assert.equal(kwd(['read', 'a']).code, 5);
      const lock = auditEntries(h)
        .filter((e) => e.type === 'vault.lock')
        .at(-1);
      assert.equal(lock?.reason, 'idle timeout');
    },
  );

  test('maximum uses per unlock locks the agent', async () => {
    const h = await running(allow('{ idle_timeout: 1h, max_lifetime: 4h, max_uses: 2 }'));
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' }).code, 0);
    assert.equal(kw(['read', 'a'], { env: h.env }).code, 0);
    assert.equal(kw(['read', 'a'], { env: h.env }).code, 0);
    await eventually(() => kw(['status'], { env: h.env }).code === 5, 'the lock after two uses');
    assert.equal(kw(['read', 'a'], { env: h.env }).code, 5);
    assertWiped(h, 'value-aaaa', 'after the maximum uses');
  });

  test('the circuit breaker locks after five denials in a minute', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: none, targets: ["**"], decision: deny }\n',
    );
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' }).code, 0);
    for (let i = 0; i < 5; i++) assert.equal(kw(['read', 'a'], { env: h.env }).code, 6);
    await eventually(() => kw(['status'], { env: h.env }).code === 5, 'the circuit breaker');
    assert.ok(auditTypes(h).filter((t) => t === 'vault.lock').length >= 1);
    assertWiped(h, 'value-aaaa', 'after the circuit breaker');
  });
});

describe('load', () => {
  test('200 concurrent clients x 50 reads: zero errors, no cross-talk', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: all, targets: ["c/**"], decision: allow }\n',
    );
    for (let i = 0; i < 4; i++)
      assert.equal(
        kw(['secret', 'set', `c/s${i}`], { env: h.env, input: `value-of-secret-${i}-xyz` }).code,
        0,
      );
    let errors = 0;
    let crossTalk = 0;
    await Promise.all(
      Array.from({ length: 200 }, async (_, c) => {
        for (let j = 0; j < 50; j++) {
          const n = (c + j) % 4;
          try {
            const f = await call(h.sock, 'read', { name: `c/s${n}` });
            if (f.raw?.toString() !== `value-of-secret-${n}-xyz`) crossTalk++;
          } catch {
            errors++;
          }
        }
      }),
    );
    assert.deepEqual({ errors, crossTalk }, { errors: 0, crossTalk: 0 });
  });

  test('malformed frames get an error and a closed connection; the daemon still answers correctly', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(
      kw(['secret', 'set', 'f/ok'], { env: h.env, input: 'still-served-value' }).code,
      0,
    );
    const total = Number(process.env['KEYWARD_FUZZ_FRAMES'] ?? 100_000);
    // A smaller run is for trying things out; zero would make this test prove nothing.
    assert.ok(total >= 1000, `KEYWARD_FUZZ_FRAMES=${total}: at least 1,000 frames, or no test`);
    // The frames come from a process of their own, orphaned (its shell exits at once), as any
    // client of the user's: the agent identifies each connection by its process and ancestors.
    const fuzz = path.join(ROOT, 'dist/test/fixtures/frame-fuzz.js');
    const client = spawn(
      'sh',
      ['-c', `"$0" "$1" "$2" "$3" &`, process.execPath, fuzz, h.sock, String(total)],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    client.stdout.on('data', (d: Buffer) => (out += d.toString()));
    // The pipe ends when the client does (the shell exited long before).
    await new Promise<void>((resolve) => client.stdout.on('end', resolve));
    const result = JSON.parse(out) as { sent: number; errors: number; bad: string[] };
    assert.equal(result.sent, total);
    assert.deepEqual(result.bad, [], 'every reply is whole and well-formed');
    // Most malformed frames are answered with an error before the close (a frame cut short
    // gets only the close: the agent can't know it was meant to end there).
    assert.ok(
      result.errors > total / 3,
      `only ${result.errors} error replies to ${total} malformed frames`,
    );
    const r = kw(['read', 'f/ok'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'still-served-value');
    assert.equal(h.agent?.exitCode, null, 'the agent is still running');
  });

  test('a client that sends half a frame is cut off, the daemon unaffected', async () => {
    const h = await running();
    const closed = await new Promise<boolean>((resolve) => {
      const s = net.createConnection(h.sock);
      s.once('data', () => s.write(Buffer.from([0, 0, 0, 50, 1]))); // after the greeting
      s.resume(); // consume the error reply, or 'close' never comes
      s.on('close', () => resolve(true));
      s.on('error', () => resolve(true));
      // The agent's deadline is 5 s from the first byte; two minutes is a broken deadline.
      setTimeout(() => resolve(false), 120_000);
    });
    assert.equal(closed, true);
    assert.equal(kw(['status'], { env: h.env }).code, 0);
  });
});

describe('hardening found in review', () => {
  test("a rule matching ** never reaches keyward's own records (@key/, @audit/, @totp/)", async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['key', 'generate', 'k1'], { env: h.env }).code, 0);
    for (const name of ['@key/k1', '@audit/seed', '@audit/box-secret', '@totp/secret']) {
      await assert.rejects(call(h.sock, 'read', { name }), (e: { code?: string }) => {
        assert.equal(e.code, 'INVALID_NAME', name);
        return true;
      });
    }
    const r = kw(['read', '@audit/seed'], { env: h.env });
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stdout, '');
    // Nor by the other ways out: a run's environment or descriptor (run needs the agent), or a
    // read with the vault opened directly.
    const show = ['--', 'sh', '-c', 'printf %s "$T"; cat <&3 2>/dev/null'];
    for (const [env, args] of [
      [h.env, ['run', '--env', 'T=@audit/seed', ...show]],
      [h.env, ['run', '--fd', '3=@totp/secret', ...show]],
      [h.env, ['read', '@key/k1']],
      [withoutAgent(h), ['read', '@key/k1']],
      [withoutAgent(h), ['read', '@audit/box-secret']],
    ] as const) {
      const o = kw([...args], { env });
      assert.equal(o.code, 2, `${args.join(' ')}: ${o.stderr}`);
      assert.equal(o.stdout, '', args.join(' '));
    }
    const types = auditTypes(h);
    assert.ok(!types.includes('secret.read'), 'nothing was released');
    assert.ok(!types.includes('credential.deliver'), 'nothing was delivered');
  });

  test('two frames in one write are refused (one request at a time); the daemon still answers', async () => {
    const h = await running();
    const status = Buffer.concat([Buffer.from([0, 0, 0, 6, 1, 1, 0, 2]), Buffer.from('{}')]);
    const got = await new Promise<Buffer>((resolve) => {
      const s = net.createConnection(h.sock);
      const parts: Buffer[] = [];
      s.on('data', (d: Buffer) => {
        // After the greeting (a client writes nothing before it): two frames in one write.
        if (parts.length === 0) s.write(Buffer.concat([status, status]));
        parts.push(d);
      });
      s.on('close', () => resolve(Buffer.concat(parts)));
      s.on('error', () => resolve(Buffer.concat(parts)));
    });
    // The agent's greeting comes first (it is sent before any request is read).
    assert.equal(got[5], 0x82, 'the hello');
    const afterHello = got.subarray(4 + got.readUInt32BE(0));
    assert.equal(afterHello[5], 0x81, 'an error reply, then the connection closes');
    assert.match(got.toString('latin1'), /one request at a time/);
    assert.equal(kw(['status'], { env: h.env }).code, 0);
  });

  test(
    'a flood of large frames across 200 connections is refused, not held: the agent grows by its in-flight budget at most, and still answers (root: /proc/PID/status)',
    { skip: !rootTests && 'needs root to read the agent status' },
    async () => {
      const h = await running(
        'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
      );
      assert.equal(kw(['secret', 'set', 'f/ok'], { env: h.env, input: 'after-the-flood' }).code, 0);
      const peak = () =>
        Number(
          /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${h.agentPid}/status`, 'utf8'))?.[1],
        );
      const before = peak();
      // Each connection: after the greeting, a frame that declares 16 MiB and sends 1 MiB of it.
      // A write's callback comes when the agent has read what the socket buffer can't hold, so
      // waiting for it (or for the close) is waiting for the agent to have taken the bytes.
      const head = Buffer.from([0, 0xff, 0, 0, 1, 1, 0, 2, 0x7b, 0x7d]);
      const body = Buffer.alloc(1024 * 1024, 0x20);
      const conns = Array.from({ length: 200 }, () => {
        const s = net.createConnection(h.sock);
        const c = { s, said: '', done: Promise.resolve() };
        c.done = new Promise<void>((resolve) => {
          s.once('data', () => {
            s.on('data', (d: Buffer) => (c.said += d.toString('latin1')));
            // Taken in full (the agent holds it, or refused it and closed): kept open meanwhile.
            s.write(Buffer.concat([head, body]), () => resolve());
          });
          s.on('close', () => resolve());
          s.on('error', () => resolve());
        });
        return c;
      });
      await Promise.all(conns.map((c) => c.done));
      const grew = (peak() - before) / 1024;
      // The refused were told why before their connection closed; the rest are closed now.
      await closeAll(conns.map((c) => c.s));
      const refused = conns.filter((c) => /too much request data/.test(c.said)).length;
      assert.ok(refused > 0, 'no connection was refused for the budget');
      // 200 MiB sent; the budget is 48 MiB: what the agent held at its peak stays near that.
      assert.ok(grew < 100, `the agent grew by ${grew.toFixed(0)} MiB`);
      assert.equal(kw(['read', 'f/ok'], { env: h.env }).stdout, 'after-the-flood');
    },
  );

  test("a frame's deadline runs from its first byte: trickling a byte a second doesn't keep it open", async () => {
    const h = await running();
    // A frame of 204 bytes, a byte a second: whole after 204 s. Before the fix each byte
    // restarted the 5 s deadline, so it stayed open until then; now it closes long before, and
    // what is counted is bytes sent (however slow the machine), not wall time.
    const bytes = [0, 0, 0, 200, 1, 1, 0, 2, 0x7b, 0x7d, ...Array<number>(194).fill(0x20)];
    const sentBeforeClose = await new Promise<number>((resolve) => {
      const s = net.createConnection(h.sock);
      let i = 0;
      let t: NodeJS.Timeout | undefined;
      // From the greeting on, a byte a second.
      s.once('data', () => {
        t = setInterval(() => {
          if (i >= bytes.length)
            done(); // all sent and still open: the deadline never came
          else if (!s.destroyed) s.write(Buffer.from([bytes[i++] ?? 0]));
        }, 1000);
      });
      s.resume();
      const done = () => {
        clearInterval(t);
        s.destroy();
        resolve(i);
      };
      s.on('close', done);
      s.on('error', done);
    });
    assert.ok(
      sentBeforeClose < bytes.length,
      `closed only after the whole frame (${sentBeforeClose} bytes)`,
    );
    assert.equal(kw(['status'], { env: h.env }).code, 0);
  });

  test('an older vault file put back under an unlocked agent is refused, and the agent locks', async () => {
    const h = await running(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    const file = h.vaultFile;
    assert.equal(
      kw(['secret', 'set', 'r/old'], { env: h.env, input: 'value-before-rotation' }).code,
      0,
    );
    assert.equal(kw(['read', 'r/old'], { env: h.env }).code, 0);
    const before = fs.readFileSync(file);
    kw(['secret', 'rm', 'r/old'], { env: h.env });
    assert.equal(kw(['read', 'r/old'], { env: h.env }).code, 3, 'removed');
    fs.writeFileSync(file, before);
    const r = kw(['read', 'r/old'], { env: h.env });
    assert.equal(r.stdout, '', 'the removed secret did not come back');
    assert.match(r.stderr, /older generation/);
    assert.notEqual(kw(['status'], { env: h.env }).code, 0, 'the agent locked');
  });

  test("control characters in a caller's command line are escaped in the prompt", async () => {
    const h = await running();
    assert.equal(
      kw(['secret', 'set', 'p/x'], { env: h.env, input: 'prompt-escape-value' }).code,
      0,
    );
    h.answer('no');
    const c = spawn(process.execPath, [BIN, 'read', 'p/x'], {
      env: h.env,
      argv0: '\x1b[2J\x1b[Hgit\u202e',
      stdio: 'ignore',
    });
    await new Promise((r) => c.on('exit', r));
    const prompt = h.prompts().join('\n');
    assert.match(prompt, /running "\\u\{1b\}\[2J\\u\{1b\}\[Hgit\\u\{202e\}/);
    assert.ok(!prompt.includes('\x1b') && !prompt.includes('\u202e'), 'no raw control characters');
  });

  test('an executable named with terminal escapes and bidi controls: audit tail shows it escaped, --json and export keep it as JSON escapes', async () => {
    const h = await running();
    assert.equal(kw(['secret', 'set', 'p/z'], { env: h.env, input: 'named-value' }).code, 0);
    h.answer('no');
    // The attacker's program is node under a name of its choosing: clear the line above, write
    // the clipboard, reverse what follows, an 8-bit CSI.
    const name = 'x\x1b[2K\r\x1b[1A\x1b]52;c;ZQ==\x07\u202egpj.exe\u009b31m\u2028';
    const exe = path.join(h.dir, name);
    // A copy, never a hard link: a link (and its removal at the end) changes the change time of
    // node's own inode, and an agent of another test file that identified a node process before
    // and hashes it after refuses that request ("changed on disk"), as it must.
    fs.copyFileSync(process.execPath, exe);
    fs.chmodSync(exe, 0o755);
    const c = spawn(exe, [BIN, 'read', 'p/z'], { env: h.env, stdio: 'ignore' });
    await new Promise((r) => c.on('exit', r));
    const env = withoutAgent(h);
    const text = kw(['audit', 'tail', '-n', '10'], { env });
    assert.equal(text.code, 0, text.stderr);
    assert.match(
      text.stdout,
      /x\\u\{1b\}\[2K\\u\{d\}\\u\{1b\}\[1A\\u\{1b\}\]52;c;ZQ==\\u\{7\}\\u\{202e\}gpj/,
    );
    // Found in review: by its path, never its last part alone (a copy of node at ./usr/bin/ssh
    // read as ssh): the directory, or the cut's mark, comes before the name.
    assert.match(text.stdout, /pid \d+ (\.\.\.|\S*\/)x\\u\{1b\}\[2K/);
    for (const out of [
      text.stdout,
      kw(['audit', 'tail', '-n', '10', '--json'], { env }).stdout,
      kw(['audit', 'export', '--decrypt'], { env }).stdout,
    ]) {
      // eslint-disable-next-line no-control-regex -- what must not be there
      assert.ok(!/[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u202e]/.test(out), 'a raw control character');
    }
    const json = kw(['audit', 'tail', '-n', '10', '--json'], { env }).stdout;
    assert.match(json, /\\u202egpj\.exe\\u009b31m\\u2028/);
    const exes = json
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { body?: { actor?: { exe?: string } } }).body?.actor?.exe);
    assert.ok(exes.includes(exe), 'the JSON holds the name as it is');
  });

  test("markup in a caller's command line reaches the askpass program escaped: a Qt or Pango dialog can't be made to hide the rest", async () => {
    const h = await running();
    assert.equal(kw(['secret', 'set', 'p/y'], { env: h.env, input: 'markup-value' }).code, 0);
    h.answer('no');
    // ksshaskpass's label takes rich text when it sees a tag: "<!--" would hide the real request.
    const c = spawn(process.execPath, [BIN, 'read', 'p/y'], {
      env: h.env,
      argv0: '<b>/usr/bin/git</b> fetch &amp; wants "ci/readonly". Allow?<!--',
      stdio: 'ignore',
    });
    await new Promise((r) => c.on('exit', r));
    const prompt = h.prompts().join('\n');
    assert.match(
      prompt,
      /\\u\{3c\}b\\u\{3e\}\/usr\/bin\/git\\u\{3c\}\/b\\u\{3e\} fetch \\u\{26\}amp;/,
    );
    assert.match(prompt, /Allow\?\\u\{3c\}!--/);
    assert.ok(!/[<>&]/.test(prompt), 'no raw markup character');
  });
});

test('SIGTERM wipes keys and removes the socket', async () => {
  const h = await running();
  await stopAgent(h);
  assert.equal(fs.existsSync(h.sock), false);
  assert.ok(auditTypes(h).includes('agent.stop'));
});

describe('secret list through the agent', () => {
  test('lists what the vault itself lists, sizes and times too (it showed 0 bytes and no times)', async () => {
    const h = agentHome(
      'version: 1\nrules:\n  - { name: names, kind: list, targets: ["**"], decision: allow }\n',
    );
    homes.push(h);
    for (let i = 0; i < 3; i++)
      assert.equal(
        kw(['secret', 'set', `list/s${i}`], { env: h.env, input: 'x'.repeat(24 + i) }).code,
        0,
      );
    const direct = kw(['secret', 'list', '--json'], { env: h.env });
    assert.equal(direct.code, 0, direct.stderr);
    await startAgent(h);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    const env = { ...h.env };
    delete env['KEYWARD_PASSPHRASE_FILE'];
    const viaAgent = kw(['secret', 'list', '--json'], { env });
    assert.equal(viaAgent.code, 0, viaAgent.stderr);
    assert.deepEqual(JSON.parse(viaAgent.stdout), JSON.parse(direct.stdout));
    assert.equal((JSON.parse(viaAgent.stdout) as Array<{ size: number }>)[0]?.size, 24);
  });
});

test('ssh-env says on stderr when ssh will find no keys: no agent, or a locked one', async () => {
  const h = agentHome('version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n');
  homes.push(h);
  const run = () => kw(['ssh-env'], { env: h.env });
  let r = run();
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^export SSH_AUTH_SOCK=.*\n$/);
  assert.match(r.stderr, /no agent runs/);
  await startAgent(h);
  r = run();
  assert.match(r.stderr, /the agent is locked/);
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  r = run();
  assert.equal(r.stderr, '');
  assert.match(r.stdout, /^export SSH_AUTH_SOCK=/);
});

test("the agent's malloc settings are in force however GLIBC_TUNABLES set them before: the last setting of a name wins", async () => {
  const { mallocCacheOff } = await import('../src/lib/process.js');
  const want = 'glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1';
  assert.equal(mallocCacheOff({})['GLIBC_TUNABLES'], want);
  const set = { GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1' };
  assert.equal(mallocCacheOff(set), set);
  // A later setting turns the cache back on: the agent's go after it again.
  const undone = 'glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1:glibc.malloc.tcache_count=7';
  assert.equal(mallocCacheOff({ GLIBC_TUNABLES: undone })['GLIBC_TUNABLES'], `${undone}:${want}`);
  assert.equal(
    mallocCacheOff({ GLIBC_TUNABLES: 'glibc.malloc.check=3' })['GLIBC_TUNABLES'],
    `glibc.malloc.check=3:${want}`,
  );
});

test('found in review: the in-flight budget keeps a part that only a small keyward frame (lock, approve, deny, status, stop) may take', () => {
  // SSH messages queued behind a signature that waits for a person held the whole budget, and
  // lock, approvals and agent stop were refused with it. The same budget object the agent uses.
  const taken: number[] = [];
  const chunk = 1024 * 1024;
  while (inFlight.reserve(chunk)) taken.push(chunk);
  try {
    assert.ok(taken.length > 0);
    assert.equal(inFlight.reserve(4096), false, 'an SSH message or a large frame');
    assert.equal(inFlight.reserve(4096, true), true, 'a small frame: lock');
    taken.push(4096);
    assert.equal(inFlight.reserve(SMALL_FRAME, true), true, 'a small frame of the largest size');
    taken.push(SMALL_FRAME);
    assert.ok(IN_FLIGHT_RESERVED >= 64 * SMALL_FRAME, 'room for many at once');
  } finally {
    for (const n of taken) inFlight.release(n);
  }
});
