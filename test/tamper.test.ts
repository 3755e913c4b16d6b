/**
 * Tamper evidence that holds (docs/THREAT-MODEL.md), tried as a same-user attacker would: policy
 * files deleted or put back to an older version, an audit log deleted, truncated or healed.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  agentHome,
  auditEntries,
  kwAsync,
  withoutAgent,
  startAgent,
  stopAgent,
  unlockedAgent,
  type AgentHome,
} from './agent-helpers.js';
import { withFileLock } from '../src/lib/files.js';
import { encodeLine, lineHash, parseLine } from '../src/audit/entry.js';
import { sealBodyOnce } from '../src/audit/body.js';
import { auditPaths, readState } from '../src/audit/state.js';
import { secureFree, secureTake } from '../src/lib/secure.js';
import { Vault, vaultPaths } from '../src/vault/index.js';
import { acknowledge } from '../src/audit/index.js';
import { call } from '../src/agent/index.js';
import { BIN, eventually, initHome, kw, PASSPHRASE, ROOT } from './helpers.js';
import { koffi } from '../src/lib/koffi.js';
import { POLICY_FULL_CHECK_EVERY } from '../src/policy/store.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

const DENY_GITHUB =
  'version: 1\nrules:\n' +
  '  - { name: no-github, targets: ["github/**"], decision: deny }\n' +
  '  - { name: ask, targets: ["**"], decision: approve, approve: { mode: confirm } }\n';
const ALLOW_GITHUB =
  'version: 1\nrules:\n  - { name: github-ok, targets: ["github/**"], decision: allow }\n';

const unlocked = (policy: string) => unlockedAgent(policy, homes);

/** An unlocked agent that allows every secret and the audit log, after one release of app/token. */
async function releasedOnce(value: string): Promise<AgentHome> {
  const h = await unlocked(
    'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n' +
      '  - { name: logs, kind: audit, targets: ["**"], decision: allow }\n',
  );
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: value }).code, 0);
  assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, value);
  // The read's last record (credential.drop) is written after the value is sent: what a test
  // puts after the log's end must come after it, not race it.
  await eventually(
    () => (logLines(h).at(-1) ?? '').includes('"type":"credential.drop"'),
    "the read's last record",
  );
  return h;
}

/**
 * Each of three reads' last records (credential.drop, written after the value is sent, off the
 * client's path) is in the log after line `from`: what a test then cuts or puts after the log's
 * end must come after them, not race them (a CI run under load cut before the last one landed).
 */
async function threeDrops(h: AgentHome, from: number): Promise<void> {
  await eventually(
    () =>
      logLines(h)
        .slice(from)
        .filter((l) => l.includes('"type":"credential.drop"')).length >= 3,
    "the three reads' last records",
  );
}

function relock(h: AgentHome): void {
  assert.equal(kw(['lock'], { env: h.env }).code, 0);
  const u = kw(['unlock'], { env: h.env });
  assert.equal(u.code, 0, u.stderr);
}

describe('a policy that cannot be downgraded', () => {
  test('deleting every policy file changes no decision after lock and unlock; the drift is recorded and shown', async () => {
    const h = await unlocked(DENY_GITHUB);
    assert.equal(
      kw(['secret', 'set', 'github/token'], { env: h.env, input: 'ghp_downgraded' }).code,
      0,
    );
    h.answer('yes'); // were the default confirm rule in force, the read would pass
    let r = kw(['read', 'github/token'], { env: h.env });
    assert.equal(r.code, 6, r.stderr);
    fs.rmSync(path.join(h.home, 'policy'), { recursive: true, force: true });
    fs.rmSync(path.join(h.home, 'policy.yaml'), { force: true });
    relock(h);
    r = kw(['read', 'github/token'], { env: h.env });
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, /denied by policy: rule no-github matches and decides: deny/);
    assert.equal(r.stdout, '');
    assert.equal(h.prompts().length, 0, 'nobody was even asked');
    const drift = auditEntries(h).filter((e) => e.type === 'policy.drift');
    assert.ok(drift.length > 0, 'policy.drift recorded');
    assert.match(
      drift.at(-1)?.reason ?? '',
      /the policy history is missing; policy.yaml is missing/,
    );
    assert.match(kw(['status'], { env: h.env }).stdout, /WARNING: the policy files were changed/);
    assert.match(kw(['doctor'], { env: h.env }).stdout, /WARN\s+policy\s+the policy files differ/);
    const show = kw(['policy', 'show', '--verify'], { env: h.env });
    assert.equal(show.code, 8, show.stderr);
    assert.equal(show.stdout, DENY_GITHUB, 'what is in force, from the vault');
  });

  test('a policy history put back to an older valid version changes no decision; the drift is recorded', async () => {
    const h = agentHome(ALLOW_GITHUB);
    homes.push(h);
    const hist = path.join(h.home, 'policy', 'history');
    const older = fs.readdirSync(hist).sort().at(-1) as string;
    const olderText = fs.readFileSync(path.join(hist, older), 'utf8');
    const f = path.join(h.dir, 'deny.yaml');
    fs.writeFileSync(f, DENY_GITHUB);
    assert.equal(kw(['policy', 'apply', f], { env: h.env }).code, 0);
    assert.equal(
      kw(['secret', 'set', 'github/token'], { env: h.env, input: 'ghp_rolled_back' }).code,
      0,
    );
    // The attacker removes the newer version and puts the older one back in place.
    for (const n of fs.readdirSync(hist)) if (n > older) fs.rmSync(path.join(hist, n));
    fs.writeFileSync(path.join(h.home, 'policy.yaml'), olderText);
    await startAgent(h);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    const r = kw(['read', 'github/token'], { env: h.env });
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, /rule no-github/);
    const drift = auditEntries(h).filter((e) => e.type === 'policy.drift');
    assert.match(
      drift.at(-1)?.reason ?? '',
      /the policy history ends at version \d+ \(\w+\), not at the applied version \d+/,
    );
  });
});

describe('vault.kw changed under a running agent', () => {
  test('rewritten in place at the same size with its modification time put back: the agent re-reads it at the next request (and locks, the file being damaged)', async () => {
    const h = await unlocked(ALLOW_GITHUB);
    assert.equal(kw(['secret', 'set', 'github/token'], { env: h.env, input: 'ghp_x' }).code, 0);
    assert.equal(kw(['read', 'github/token'], { env: h.env }).code, 0);
    const file = vaultPaths(h.home).file;
    const before = fs.statSync(file, { bigint: true });
    // The times kept on another file, to the nanosecond, and put back with touch -r.
    const times = path.join(h.dir, 'times');
    fs.writeFileSync(times, '');
    assert.equal(spawnSync('touch', ['-r', file, times]).status, 0);
    const fd = fs.openSync(file, 'r+');
    try {
      // One byte of the header (the vault's id), in place: same inode, same size.
      const at = 12;
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, at);
      b[0] = (b[0] ?? 0) ^ 0xff;
      fs.writeSync(fd, b, 0, 1, at);
    } finally {
      fs.closeSync(fd);
    }
    assert.equal(spawnSync('touch', ['-r', times, file]).status, 0);
    const after = fs.statSync(file, { bigint: true });
    assert.equal(after.mtimeNs, before.mtimeNs, 'the time put back');
    assert.equal(after.size, before.size);
    assert.equal(after.ino, before.ino);
    const r = kw(['read', 'github/token'], { env: h.env });
    assert.notEqual(r.code, 0, 'served from the vault read before the change');
    assert.equal(r.stdout, '');
    assert.match(kw(['status'], { env: h.env }).stdout, /locked/);
  });
});

describe('policy drift seen by a running agent', () => {
  test('an edit of policy.yaml through a hard link made elsewhere is recorded at the next request; one through a shared mapping (no inotify event) within POLICY_FULL_CHECK_EVERY', async () => {
    const h = await unlocked(ALLOW_GITHUB);
    assert.equal(kw(['secret', 'set', 'github/token'], { env: h.env, input: 'ghp_x' }).code, 0);
    const read = () => assert.equal(kw(['read', 'github/token'], { env: h.env }).code, 0);
    const drifts = () => auditEntries(h).filter((e) => e.type === 'policy.drift').length;
    read();
    assert.equal(drifts(), 0);
    // The agent watches its policy directories; the attacker edits the file through a link in
    // a directory it does not watch.
    const file = path.join(h.home, 'policy.yaml');
    const link = path.join(h.dir, 'elsewhere.yaml');
    fs.linkSync(file, link);
    fs.appendFileSync(link, '# edited through another link\n');
    read();
    assert.equal(drifts(), 1, 'recorded at the next request');
    // A write through a shared mapping: the content and the file's times change, no event. The
    // mapping stays (the last release of a file open for writing is an event: closing it, or
    // unmapping it once closed), and the agent answers a request after it is made, so the write
    // itself is all that is left to see.
    const libc = koffi.load('libc.so.6');
    const mmap = libc.func('void *mmap(void *, size_t, int, int, int, int64_t)');
    const munmap = libc.func('int munmap(void *, size_t)');
    const fd = fs.openSync(file, 'r+');
    const map = mmap(null, 1, 3 /* PROT_READ|PROT_WRITE */, 1 /* MAP_SHARED */, fd, 0);
    fs.closeSync(fd);
    try {
      read();
      const before = fs.statSync(file, { bigint: true });
      koffi.encode(map, 'uint8_t', 0x23); // '#': the file's first line becomes a comment
      const after = fs.statSync(file, { bigint: true });
      assert.notEqual(after.mtimeNs, before.mtimeNs, 'the file system dated the write');
      for (let i = 0; i <= POLICY_FULL_CHECK_EVERY; i++) read();
      assert.equal(drifts(), 2, 'recorded by the full check');
    } finally {
      munmap(map, 1);
    }
  });
});

/**
 * The attacker's rewrite: the first release (`secret.read`) made a `secret.list`, and every line
 * after it linked again to the one before and MACed with the epoch key from audit/state.
 */
function rewriteRelease(h: { home: string }, nth = 0): void {
  withFileLock(path.join(h.home, 'audit', 'lock'), 10_000, () => {
    const st = readState(auditPaths(h.home));
    try {
      const lines = logLines(h);
      const at = lines
        .map((l, i) => (l.includes('"type":"secret.read"') ? i : -1))
        .filter((i) => i >= 0)[nth];
      assert.ok(at !== undefined && at > 0, 'the release is in the log');
      let prev = parseLine(lines[at - 1] ?? '')?.hash ?? '';
      for (let i = at; i < lines.length; i++) {
        const e = parseLine(lines[i] ?? '');
        assert.ok(e);
        const out = encodeLine(
          { ...e, type: i === at ? 'secret.list' : e.type, prev, epoch: st.epoch },
          st.key,
        );
        lines[i] = out.line;
        prev = out.hash;
      }
      fs.writeFileSync(segmentOf(h), `${lines.join('\n')}\n`);
    } finally {
      secureFree(st.key);
    }
  });
}

/**
 * A break's record as any process of the user can write one: its body sealed to the public box
 * key, its line MACed with the state's key, naming every entry of the log as a checkpoint it
 * records (and an `auth` it can't make).
 */
function forgedGap(h: { home: string }, seq: number, prev: string, named: string): string {
  const st = readState(auditPaths(h.home));
  try {
    const body = sealBodyOnce(
      Buffer.from(
        JSON.stringify({
          actor: null,
          target: null,
          decision: 'error',
          reason: 'the log ends at seq 5 (benign)',
          details: { expectedSeq: 0, expectedHash: '', alsoExpected: named, auth: 'f'.repeat(64) },
        }),
      ),
      st.boxPublicKey,
    ).toString('base64');
    return encodeLine(
      { seq, time: new Date().toISOString(), type: 'audit.gap', epoch: st.epoch, prev, body },
      st.key,
    ).line;
  } finally {
    secureFree(st.key);
  }
}

/** The head `audit verify` shows the person (SEQ:SHA256), from its hint to acknowledge. */
function headShown(h: { env: NodeJS.ProcessEnv }): string {
  const v = kw(['audit', 'verify'], { env: h.env });
  assert.equal(v.code, 8, v.stdout + v.stderr);
  const m = /keyward audit acknowledge --head (\d+:[0-9a-f]{64})/.exec(v.stderr);
  assert.ok(m, v.stderr);
  return m[1] as string;
}

/** The chain hash of a line of text (without its newline). */
const lineHashOf = (line: string) => lineHash(Buffer.from(line, 'utf8'));

const segmentOf = (h: { home: string }) => {
  const dir = path.join(h.home, 'audit');
  const last = fs
    .readdirSync(dir)
    .filter((n) => /^log-\d{6}\.jsonl$/.test(n))
    .sort()
    .at(-1) as string;
  return path.join(dir, last);
};

/** The log's lines; and cutting its last n lines, as an attacker with the user's rights would. */
const logLines = (h: { home: string }) =>
  fs.readFileSync(segmentOf(h), 'utf8').trimEnd().split('\n');
function cutTail(h: { home: string }, n: number): Array<{ seq: number; type: string }> {
  // Under the log's lock, as its writers take it: an entry the agent still has queued (a read's
  // credential.drop, recorded after the value is sent) lands before the cut or after it, never
  // between the truncation and the rewrite (where it would chain from an empty file). An
  // attacker who races it is found by the agent's next write, which checks its last line.
  return withFileLock(path.join(h.home, 'audit', 'lock'), 10_000, () => {
    const ls = logLines(h);
    fs.writeFileSync(segmentOf(h), `${ls.slice(0, ls.length - n).join('\n')}\n`);
    return ls.slice(ls.length - n).map((l) => JSON.parse(l) as { seq: number; type: string });
  });
}

/**
 * The attacker of test/fixtures/lock-holder.ts (it holds a lock file of keyward's and times its
 * moves by inotify); `saying(what)` resolves once it has printed that.
 */
function lockHolder(args: string[]) {
  const p = spawn(
    process.execPath,
    [path.join(ROOT, 'dist/test/fixtures/lock-holder.js'), ...args],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  let said = '';
  const listeners = new Set<() => void>();
  p.stdout.on('data', (d: Buffer) => {
    said += d.toString();
    for (const l of listeners) l();
  });
  const saying = (what: string) =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (!said.includes(what)) return;
        listeners.delete(check);
        resolve();
      };
      listeners.add(check);
      check();
    });
  const ended = new Promise<number | null>((resolve) => p.on('close', resolve));
  return { p, saying, ended, said: () => said };
}

/** What the last lock's record says became of the checkpoints. */
const lockCheckpoints = (h: AgentHome) =>
  String(
    auditEntries(h)
      .filter((e) => e.type === 'vault.lock')
      .at(-1)?.details['checkpoints'],
  );

/**
 * A write of the agent's own, any process can start: a review that pins a new MCP server's
 * instructions. Its answer or error (the write may wait for the vault's lock, or end locked).
 */
const pinWrite = (h: AgentHome, server: string) =>
  call(
    h.sock,
    'mcp',
    { op: 'review', server, caps: [] },
    secureTake(Buffer.from(JSON.stringify({ instructions: 'a'.repeat(64), tools: [] }))),
  ).catch((e: unknown) => e);

/**
 * After the agent stopped: the checkpoint file deleted and the log cut back to `before` lines
 * (the vault's last save), the agent's releases among what goes; verify must find it.
 */
async function windowCutIsFound(h: AgentHome, before: number): Promise<void> {
  await stopAgent(h);
  fs.rmSync(path.join(h.home, 'audit', 'checkpoint'), { force: true });
  const cut = cutTail(h, logLines(h).length - before);
  assert.ok(cut.filter((e) => e.type === 'secret.read').length >= 2, 'releases were cut');
  const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
  assert.equal(v.code, 8, v.stdout + v.stderr);
}

/** A command, ended if it hangs: a FIFO that holds the agent's thread would hold it for ever. */
function bounded(args: string[], h: AgentHome) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    env: h.env,
    input: '',
    timeout: 120_000,
    killSignal: 'SIGKILL',
  });
  return { code: r.status, stderr: r.stderr.toString() };
}

describe('a FIFO or a directory where a state file belongs', () => {
  test('a FIFO in place of policy.yaml, a history file or the audit checkpoint holds nothing: requests are answered and the agent locks', async () => {
    for (const where of ['policy.yaml', 'policy/history/000002.yaml', 'audit/checkpoint']) {
      const h = await unlocked(ALLOW_GITHUB);
      assert.equal(kw(['secret', 'set', 'github/token'], { env: h.env, input: 'v-1234' }).code, 0);
      const file = path.join(h.home, where);
      fs.rmSync(file);
      // Opening a FIFO for reading waits for a writer: none ever comes.
      assert.equal(spawnSync('mkfifo', ['-m', '600', file]).status, 0);
      const read = bounded(['read', 'github/token'], h);
      assert.notEqual(read.code, null, `${where}: the read hung`);
      const lock = bounded(['lock'], h);
      assert.equal(lock.code, 0, `${where}: ${lock.stderr}`);
      await stopAgent(h);
    }
  });

  test("a directory with a temporary file's name makes a write refuse with a reason, not an internal error", () => {
    const h = initHome();
    fs.mkdirSync(path.join(h.home, '.vault.kw.tmp-zz'));
    const r = kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaaa' });
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stderr, /internal error|this is a bug/);
    assert.match(r.stderr, /\.vault\.kw\.tmp-zz.*not a regular file/);
  });
});

describe('an audit log that cannot be deleted, truncated or healed', () => {
  test('rm -rf audit: verify says the log is missing (exit 8), and audit init starts the new log with that fact', () => {
    const h = agentHome();
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'value-before-deletion' }).code,
      0,
    );
    fs.rmSync(path.join(h.home, 'audit'), { recursive: true, force: true });
    let r = kw(['audit', 'verify'], { env: h.env });
    assert.equal(r.code, 8, r.stdout + r.stderr);
    assert.match(r.stderr, /the log is missing: the vault's checkpoint says it reached seq \d+/);
    assert.doesNotMatch(r.stdout, /ok: 0 entries/);
    assert.equal(kw(['audit', 'init'], { env: h.env }).code, 0);
    r = kw(['audit', 'verify'], { env: h.env });
    assert.equal(r.code, 8, r.stdout + r.stderr);
    assert.match(r.stderr, /audit\.gap at seq 1/);
  });

  test('a state file naming segment 0, or an empty first segment while another exists, makes a writer refuse: nothing released, no chain begun apart', () => {
    const h = agentHome();
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'seg-value' }).code, 0);
    const dir = path.join(h.home, 'audit');
    const setSegment = (n: number) => {
      const st = fs.readFileSync(path.join(dir, 'state'));
      st.writeUInt32BE(n, 20);
      fs.writeFileSync(path.join(dir, 'state.attacker'), st);
      fs.renameSync(path.join(dir, 'state.attacker'), path.join(dir, 'state'));
    };
    setSegment(0);
    let r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.stdout, '', 'nothing released');
    assert.match(r.stderr, /segments begin at 1/);
    assert.equal(fs.existsSync(path.join(dir, 'log-000000.jsonl')), false);
    // The log moved to the second segment's name: the first is empty, so a writer would begin a
    // new chain there at seq 1.
    setSegment(1);
    fs.renameSync(path.join(dir, 'log-000001.jsonl'), path.join(dir, 'log-000002.jsonl'));
    r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.stdout, '', 'nothing released');
    assert.match(r.stderr, /which is empty, but the log has other segments/);
    assert.equal(fs.existsSync(path.join(dir, 'log-000001.jsonl')), false);
  });

  test('a segment file past the one the state names (a copy of the log) is a break for a writer that seals: said, recorded, nothing sealed over it', () => {
    const h = agentHome();
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'copy-value' }).code, 0);
    const dir = path.join(h.home, 'audit');
    // Readers that start from the highest-numbered file would walk the copy, not the log.
    fs.copyFileSync(path.join(dir, 'log-000001.jsonl'), path.join(dir, 'log-999999.jsonl'));
    const r = kw(['secret', 'set', 'other/x'], { env: h.env, input: 'x' });
    assert.match(r.stderr, /holds log-000002\.jsonl|holds log-999999\.jsonl/, r.stderr);
    const own = fs.readFileSync(path.join(dir, 'log-000001.jsonl'), 'utf8');
    assert.match(own, /"type":"audit\.gap"/, 'the break is recorded in the log itself');
  });

  test('bytes with no line end put after the entries (more than a tail read holds) make a writer refuse, never begin a new chain there', async () => {
    const h = await releasedOnce('junk-value');
    withFileLock(path.join(h.home, 'audit', 'lock'), 10_000, () =>
      fs.appendFileSync(segmentOf(h), 'x'.repeat(300_000)),
    );
    const r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.stdout, '', 'nothing released');
    assert.match(r.stderr, /hold no line end/);
    assert.doesNotMatch(fs.readFileSync(segmentOf(h), 'latin1'), /x\{"v":1,"seq":1,/);
  });

  test('a torn last line (a writer killed mid-line) is no break: the next command cuts it and says so, and records no audit.gap', () => {
    const h = agentHome();
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'torn-value' }).code, 0);
    fs.appendFileSync(segmentOf(h), '{"v":1,"seq":');
    const r = kw(['secret', 'set', 'other/x'], { env: h.env, input: 'x' });
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /tamper|break/i);
    const own = fs.readFileSync(segmentOf(h), 'utf8');
    assert.doesNotMatch(own, /"type":"audit\.gap"/);
    assert.equal(kw(['audit', 'verify'], { env: h.env }).code, 0);
  });

  test('a deleted last entry is recorded by the next ordinary command, never healed by later ones, and stays reported until acknowledged', () => {
    const h = agentHome();
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'exfiltrated-value' }).code,
      0,
    );
    assert.equal(kw(['read', 'app/token'], { env: h.env }).code, 0);
    const [cut] = cutTail(h, 1);
    assert.equal(cut?.type, 'secret.read', 'the attacker removed the read');
    // The next ordinary command finds the cut, records it before anything else, and says so.
    const list = kw(['secret', 'list'], { env: h.env });
    assert.equal(list.code, 0, list.stderr);
    assert.match(
      list.stderr,
      /WARNING: the audit log was cut: the log ends at seq \d+, but the checkpoint file sealed seq \d+: 1 entries are missing/,
    );
    const gap = JSON.parse(logLines(h).find((l) => l.includes('"audit.gap"')) ?? '{}') as {
      seq: number;
    };
    assert.equal(
      gap.seq,
      cut?.seq,
      'audit.gap takes the place of the deleted entry, chained from the one before',
    );
    // Ordinary use afterwards records nothing new and heals nothing.
    for (let i = 0; i < 3; i++) assert.equal(kw(['secret', 'list'], { env: h.env }).code, 0);
    assert.equal(logLines(h).filter((l) => l.includes('"audit.gap"')).length, 1);
    for (let i = 0; i < 2; i++) {
      const v = kw(['audit', 'verify'], { env: h.env });
      assert.equal(v.code, 8, v.stdout + v.stderr);
      assert.match(v.stderr, new RegExp(`audit\\.gap at seq ${gap.seq}`));
    }
    const gone = auditEntries(h).find((e) => e.type === 'audit.gap');
    assert.equal(gone?.details['expectedSeq'], cut?.seq);
    // The person looks, then acknowledges (with the passphrase, recorded).
    const ack = kw(['audit', 'acknowledge', '--head', headShown(h)], { env: h.env });
    assert.equal(ack.code, 0, ack.stderr);
    assert.match(
      ack.stdout,
      new RegExp(`acknowledged 1 recorded break\\(s\\) \\(audit\\.gap at seq ${gap.seq}\\)`),
    );
    const ok = kw(['audit', 'verify'], { env: h.env });
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(
      ok.stderr,
      new RegExp(`1 recorded break\\(s\\), acknowledged: audit\\.gap at seq ${gap.seq}`),
    );
    assert.ok(auditEntries(h).some((e) => e.type === 'audit.acknowledged'));
  });

  test('an acknowledgement seals no line that chains to a forged history: the release it would let an attacker replace stays evidence', () => {
    const h = agentHome();
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'forked-value' }).code, 0);
    // A break the person will look at and acknowledge: the log's last entry cut, recorded by the
    // next command. The person looks.
    cutTail(h, 1);
    assert.equal(kw(['secret', 'list'], { env: h.env }).code, 0);
    const seen = headShown(h);
    // A release after the person looked.
    assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'forked-value');
    const release = logLines(h).at(-1) ?? '';
    const r = parseLine(release);
    assert.equal(r?.type, 'secret.read', 'the release is the last entry');
    assert.ok(r);
    // The attacker's plan: put a forged entry in the release's place later. Now, just before the
    // person acknowledges, a line after the release that chains to the forged entry (MACed with
    // the epoch key, which any process of the user reads from audit/state).
    const st = readState(auditPaths(h.home));
    let forged: string;
    try {
      forged = encodeLine({ ...r, type: 'secret.list', body: r.body }, st.key).line;
      const fork = encodeLine(
        { ...r, seq: r.seq + 1, type: 'secret.list', prev: lineHashOf(forged) },
        st.key,
      ).line;
      fs.appendFileSync(segmentOf(h), `${fork}\n`);
    } finally {
      secureFree(st.key);
    }
    // The person acknowledges the break they saw. The broken link is not theirs to seal.
    const ack = kw(['audit', 'acknowledge', '--head', seen], { env: h.env });
    assert.equal(ack.code, 8, ack.stdout + ack.stderr);
    assert.match(ack.stderr, /nothing acknowledged/);
    assert.doesNotMatch(ack.stdout, /sealed/);
    // Nor with the head verify shows now: a broken link is never acknowledged.
    const again = kw(['audit', 'verify'], { env: h.env });
    assert.equal(again.code, 8);
    assert.match(again.stderr, /prev does not match/);
    assert.match(again.stderr, /a broken link or MAC is not acknowledged/);
    const head = kw(['audit', 'tail', '--sealed', '--json', '-n', '1'], { env: h.env });
    const last = JSON.parse(head.stdout) as { seq: number; hash: string };
    const ack2 = kw(['audit', 'acknowledge', '--head', `${last.seq}:${last.hash}`], {
      env: h.env,
    });
    assert.equal(ack2.code, 8, ack2.stdout + ack2.stderr);
    assert.match(ack2.stderr, new RegExp(`seq ${r.seq + 1}.*prev does not match`));
    // The attacker swaps the release for the forged entry: every link holds now.
    fs.writeFileSync(
      segmentOf(h),
      fs.readFileSync(segmentOf(h), 'utf8').replace(`${release}\n`, `${forged}\n`),
    );
    const v = kw(['audit', 'verify'], { env: h.env });
    assert.equal(v.code, 8, 'the swap is found: nothing was sealed over the fork');
    assert.doesNotMatch(v.stdout, /^ok:/m);
  });

  test('an acknowledgement covers the log the person looked at: one rewritten since, every link made to hold again, is refused', () => {
    const h = agentHome();
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'looked-value' }).code, 0);
    assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'looked-value');
    assert.equal(kw(['secret', 'set', 'other'], { env: h.env, input: 'other-value' }).code, 0);
    // A break, recorded; the person looks at it.
    cutTail(h, 1);
    assert.equal(kw(['secret', 'list'], { env: h.env }).code, 0);
    const seen = headShown(h);
    // Then the attacker rewrites the release and every line after it (each MACed with the epoch
    // key from audit/state, each linked to the one before): the chain holds, and the break
    // verify reports reads as it did.
    rewriteRelease(h);
    assert.ok(!logLines(h).some((l) => l.includes('"type":"secret.read"')), 'the release is gone');
    const ack = kw(['audit', 'acknowledge', '--head', seen], { env: h.env });
    assert.equal(ack.code, 8, ack.stdout + ack.stderr);
    assert.match(ack.stderr, /does not extend the head you looked at/);
    const v = kw(['audit', 'verify'], { env: h.env });
    assert.equal(v.code, 8, 'nothing was acknowledged');
  });

  test('a release written after a recorded break stays kept: rewritten before anyone looks, it is a break of its own', () => {
    const h = agentHome();
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'kept-value' }).code, 0);
    // A break, recorded by the next command; nobody looks at it yet.
    cutTail(h, 1);
    assert.equal(kw(['secret', 'list'], { env: h.env }).code, 0);
    assert.equal(logLines(h).filter((l) => l.includes('"type":"audit.gap"')).length, 1);
    // A release after it.
    assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'kept-value');
    // The attacker rewrites the release and every line after it, each linked to the one before
    // and MACed with the epoch key from audit/state: every link holds.
    rewriteRelease(h);
    // The next command finds it against what was sealed after the first break, and records it.
    const next = kw(['secret', 'list'], { env: h.env });
    assert.equal(next.code, 0, next.stderr);
    assert.match(next.stderr, /WARNING: the audit log was cut/);
    assert.equal(
      logLines(h).filter((l) => l.includes('"type":"audit.gap"')).length,
      2,
      'the rewrite is a break of its own',
    );
    const v = kw(['audit', 'verify'], { env: h.env });
    assert.equal(v.code, 8);
    assert.match(v.stderr, /2 break\(s\) a writer found/);
  });

  test('an acknowledgement covers no break recorded after the head the person looked at: a release of theirs rewritten since is looked at first', () => {
    const h = agentHome();
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'later-value' }).code, 0);
    cutTail(h, 1);
    assert.equal(kw(['secret', 'list'], { env: h.env }).code, 0);
    const seen = headShown(h);
    // The person's own release, after they looked; the attacker rewrites it before they
    // acknowledge.
    assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'later-value');
    rewriteRelease(h);
    const ack = kw(['audit', 'acknowledge', '--head', seen], { env: h.env });
    assert.equal(ack.code, 8, ack.stdout + ack.stderr);
    assert.match(ack.stderr, /a break was recorded after the head you looked at/);
    assert.equal(kw(['audit', 'verify'], { env: h.env }).code, 8);
  });

  test('an acknowledgement covers no break made after its command checked the log: a cut landing between that check and the seal is refused', () => {
    const h = agentHome();
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'raced-value' }).code, 0);
    cutTail(h, 1);
    assert.equal(kw(['secret', 'list'], { env: h.env }).code, 0);
    const seen = headShown(h);
    const [seq, hash] = seen.split(':') as [string, string];
    // Releases after the person looked, each command sealing the checkpoints over them.
    for (let i = 0; i < 2; i++)
      assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'raced-value');
    // The acknowledging command checks the log when it opens the vault (a cut found then is
    // recorded, and refused as a break after the head). The attacker's cut lands just after
    // that check, back to the head the person saw: here, the command's library call on a vault
    // opened without the check, at that instant.
    withFileLock(path.join(h.home, 'audit', 'lock'), 10_000, () => {
      const kept = logLines(h).filter((l) => (parseLine(l)?.seq ?? 0) <= Number(seq));
      fs.writeFileSync(segmentOf(h), `${kept.join('\n')}\n`);
    });
    assert.ok(
      !logLines(h).some((l) => l.includes('"type":"secret.read"')),
      'the releases are gone',
    );
    const v = Vault.open(vaultPaths(h.home), { passphrase: secureTake(Buffer.from(PASSPHRASE)) });
    try {
      assert.throws(
        () => acknowledge(h.home, v, { seq: Number(seq), hash }),
        /nothing acknowledged: the log changed while this command ran \(the log ends at seq/,
      );
    } finally {
      v.close();
    }
    const after = kw(['audit', 'verify'], { env: h.env });
    assert.equal(after.code, 8, 'the cut of the releases is still a break');
  });

  test('a break record a process of the user wrote names nothing: the cut it claims is recorded by the next writer, in the log or in a file past it', () => {
    const setup = () => {
      const h = agentHome();
      assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-one' }).code, 0);
      assert.equal(kw(['read', 'a'], { env: h.env }).stdout, 'value-one');
      assert.equal(kw(['secret', 'set', 'b'], { env: h.env, input: 'value-two' }).code, 0);
      return h;
    };
    const cutTo = (h: AgentHome, keep: number) =>
      withFileLock(path.join(h.home, 'audit', 'lock'), 10_000, () => {
        const kept = logLines(h).filter((l) => (parseLine(l)?.seq ?? 0) <= keep);
        fs.writeFileSync(segmentOf(h), `${kept.join('\n')}\n`);
        return parseLine(kept.at(-1) ?? '');
      });
    const releases = (h: AgentHome) =>
      logLines(h).filter((l) => l.includes('"type":"secret.read"')).length;
    // Every entry of the log as it is, as the checkpoints a forged record names.
    const everyEntry = (h: AgentHome) =>
      logLines(h)
        .map((l) => parseLine(l))
        .map((e) => `${e?.seq}:${e?.hash}`)
        .join(',');
    // In a file past the state's segment, where the search for records looked.
    const h = setup();
    const gap = forgedGap(h, 999, '0'.repeat(64), everyEntry(h));
    cutTo(h, 5);
    assert.equal(releases(h), 0, 'the release is cut');
    const planted = path.join(h.home, 'audit', 'log-000002.jsonl');
    fs.writeFileSync(planted, `${gap}\n`, { mode: 0o600 });
    assert.equal(kw(['secret', 'set', 'c'], { env: h.env, input: 'value-three' }).code, 0);
    fs.rmSync(planted);
    const v = kw(['audit', 'verify'], { env: h.env });
    assert.equal(v.code, 8, 'the cut is recorded, not sealed over');
    assert.match(v.stderr, /1 break\(s\) a writer found/);
    // In the log's own chain, in the place of a record a writer made.
    const h2 = setup();
    cutTo(h2, 5);
    assert.equal(kw(['secret', 'list'], { env: h2.env }).code, 0); // the writer's own record
    assert.equal(kw(['read', 'a'], { env: h2.env }).stdout, 'value-one');
    assert.equal(kw(['secret', 'set', 'd'], { env: h2.env, input: 'value-four' }).code, 0);
    const named = everyEntry(h2);
    const last = cutTo(h2, 5);
    assert.ok(last);
    fs.appendFileSync(segmentOf(h2), `${forgedGap(h2, last.seq + 1, last.hash, named)}\n`);
    assert.equal(kw(['secret', 'set', 'e'], { env: h2.env, input: 'value-five' }).code, 0);
    const v2 = kw(['audit', 'verify'], { env: h2.env });
    assert.equal(v2.code, 8);
    assert.match(v2.stderr, /2 break\(s\) a writer found/, 'the forged record, and the cut of it');
  });

  test("what an agent released is not erased by deleting the checkpoint file and cutting the log after it stops: the vault's own checkpoint moved at its lock", async () => {
    const h = await unlocked(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    // The vault's last change: its own checkpoint is sealed here (a save).
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'erased-release' }).code,
      0,
    );
    const before = logLines(h).length;
    // Releases through the agent, then the window ends (a lock) and the agent stops.
    for (let i = 0; i < 3; i++)
      assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'erased-release');
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    await stopAgent(h);
    // The attacker (the same user): the sealed checkpoint file goes, and every line since the
    // vault's last save with it, the releases among them.
    fs.rmSync(path.join(h.home, 'audit', 'checkpoint'));
    const cut = cutTail(h, logLines(h).length - before);
    assert.ok(cut.filter((e) => e.type === 'secret.read').length >= 3);
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v.code, 8, v.stdout + v.stderr);
    assert.match(v.stderr, /the checkpoint sealed in the vault says seq \d+: entries were deleted/);
  });

  test("a lock while another process holds the vault's lock still locks, leaving the vault's checkpoint where it was", async () => {
    const h = await unlocked(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'busy-vault' }).code, 0);
    assert.equal(kw(['read', 'app/token'], { env: h.env }).code, 0);
    const vaultFile = vaultPaths(h.home).file;
    const size = fs.statSync(vaultFile).size;
    // A writer holds the vault (here, this test) for as long as the lock takes.
    const r = withFileLock(vaultPaths(h.home).lock, 5_000, () => kw(['lock'], { env: h.env }));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(kw(['status'], { env: h.env }).code, 5, 'locked');
    assert.equal(fs.statSync(vaultFile).size, size, 'the vault was not written');
    // The lock's own entry says so.
    assert.match(lockCheckpoints(h), /the vault's not moved/);
    // With the vault free, a lock moves its checkpoint: one record appended.
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    assert.ok(fs.statSync(vaultFile).size > size, 'the vault holds the new checkpoint');
  });

  test("a log changed while the lock waits for the vault's lock keeps the agent's last entry in the vault", async () => {
    const h = await unlocked(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'under-lock' }).code, 0);
    const before = logLines(h).length;
    for (let i = 0; i < 3; i++)
      assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'under-lock');
    // The attacker holds the vault's lock, and the instant the agent's lock opens it (after the
    // log was walked and found whole) cuts the log's last line and lets the vault go: well
    // within the agent's wait for it.
    const attacker = lockHolder([vaultPaths(h.home).lock, 'cut', path.join(h.home, 'audit'), '1']);
    await attacker.saying('ready');
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    assert.equal(await attacker.ended, 0);
    assert.match(attacker.said(), /cut/);
    assert.match(lockCheckpoints(h), /the vault keeps the agent's last entry/);
    // Then the window goes: the checkpoint file, and the log back to the vault's last save.
    await windowCutIsFound(h, before);
  });

  test("a write of the agent's own waiting for the vault's lock does not keep the lock from sealing the vault", async () => {
    const h = await unlocked(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'pending-write' }).code,
      0,
    );
    const before = logLines(h).length;
    for (let i = 0; i < 3; i++)
      assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'pending-write');
    // The attacker holds the vault's lock, has the agent start a write of its own (a review
    // that pins a new MCP server's instructions), which waits for it, and lets the lock go as
    // the agent's lock reads the checkpoint file, before it seals.
    const attacker = lockHolder([
      vaultPaths(h.home).lock,
      'until-open',
      path.join(h.home, 'audit', 'checkpoint'),
    ]);
    const { saying } = attacker;
    await saying('ready');
    const review = pinWrite(h, 'pending');
    await saying('waited');
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    assert.equal(await attacker.ended, 0);
    await review;
    assert.match(lockCheckpoints(h), /the vault's at seq \d+/);
    await windowCutIsFound(h, before);
  });

  test("a window that ends inside the agent's own write (its idle deadline found there) still seals the vault", async () => {
    const h = await unlocked(
      'version: 1\nunlock: { idle_timeout: 8s, max_lifetime: 1h }\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'idle-inside' }).code, 0);
    const before = logLines(h).length;
    // The attacker holds the vault's lock and has the agent start a write of its own (a review
    // that pins a new server's instructions), which waits for it. Then it stops the agent
    // (SIGSTOP), lets the lock go, and lets the agent run again once its idle deadline has
    // passed: the write's next try, due first, takes the lock and finds the deadline there,
    // so the window ends inside the write, with the vault's lock this agent's own.
    const attacker = lockHolder([vaultPaths(h.home).lock, 'until-stdin']);
    const { saying } = attacker;
    await saying('ready');
    // The releases: the last is the agent's last use (its idle timer moves on releases), so
    // the deadline is 8 s after it, whatever setup took before.
    for (let i = 0; i < 3; i++)
      assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'idle-inside');
    const lastUse = Date.now();
    const review = pinWrite(h, 'idle');
    await saying('waited');
    const pid = h.agent?.pid ?? 0;
    assert.ok(pid > 0, 'the agent is a child of this test');
    process.kill(pid, 'SIGSTOP');
    try {
      attacker.p.stdin.end('go\n');
      assert.equal(await attacker.ended, 0);
      await eventually(() => Date.now() > lastUse + 8_500, 'the idle deadline to pass');
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await review;
    await eventually(
      () => auditEntries(h).some((e) => e.type === 'vault.lock'),
      'the lock at the idle deadline',
    );
    assert.match(lockCheckpoints(h), /the vault's at seq \d+/);
    await windowCutIsFound(h, before);
  });

  test("a cut made while the agent runs is a break at its lock: recorded once, with the vault, and the vault keeps the agent's last entry, so the window is not cut away once the agent stops", async () => {
    const h = await unlocked(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'cut-at-lock' }).code, 0);
    const before = logLines(h).length;
    for (let i = 0; i < 3; i++)
      assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'cut-at-lock');
    await threeDrops(h, before);
    // While the agent runs: the checkpoint file goes, and the log back to the vault's last save.
    const checkpointFile = path.join(h.home, 'audit', 'checkpoint');
    fs.rmSync(checkpointFile);
    cutTail(h, logLines(h).length - before);
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    // The log as it is now extends the vault's checkpoint, but not the agent's last entry: the
    // lock seals nothing over the cut, the vault keeps that entry (which the log no longer
    // holds), and the cut is recorded once, its record authenticated with the vault.
    assert.ok(!fs.existsSync(checkpointFile), 'no checkpoint file sealed over the cut');
    const entries = auditEntries(h);
    const gaps = entries.filter((e) => e.type === 'audit.gap');
    assert.equal(gaps.length, 1);
    assert.match(String(gaps[0]?.details['auth']), /^[0-9a-f]{64}$/);
    const locked = entries.filter((e) => e.type === 'vault.lock').at(-1);
    assert.match(
      String(locked?.details['checkpoints']),
      /no checkpoint sealed: .*; the vault keeps the agent's last entry, seq \d+/,
    );
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v.code, 8, v.stdout + v.stderr);
    // The agent stops; the attacker cuts the log back to the vault's last save again, taking
    // the releases, the record of the cut and the lock: the vault's checkpoint says so.
    await stopAgent(h);
    cutTail(h, logLines(h).length - before);
    assert.ok(!logLines(h).some((l) => l.includes('"type":"secret.read"')));
    const after = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(after.code, 8, after.stdout + after.stderr);
    assert.match(after.stderr, /entries were deleted from the end/);
  });

  test("a fork over a cut window, sealed by the person's own command while the agent runs, is no checkpoint the lock keeps, even with a copy of the agent's last line put under it: the window stays a break once the agent stops", async () => {
    const h = await unlocked(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'fork-at-lock' }).code, 0);
    const before = logLines(h).length;
    for (let i = 0; i < 3; i++)
      assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'fork-at-lock');
    await threeDrops(h, before);
    const agentEnd = logLines(h).length;
    const agentLastLine = logLines(h).at(-1) ?? '';
    const agentLastSeq = parseLine(agentLastLine)?.seq ?? 0;
    // The attacker cuts the window, then pads the log past the agent's last seq with genuine
    // entries (commands given a wrong passphrase record their failed unlock).
    cutTail(h, logLines(h).length - before);
    const wrong = path.join(h.dir, 'wrong-passphrase');
    fs.writeFileSync(wrong, 'not the passphrase at all\n', { mode: 0o600 });
    const direct = withoutAgent(h);
    while (logLines(h).length <= agentEnd)
      kw(['secret', 'list'], { env: { ...direct, KEYWARD_PASSPHRASE_FILE: wrong } });
    // The person's own command, directly: both checkpoints are extended, so it seals the fork.
    assert.equal(kw(['secret', 'set', 'app/other'], { env: direct, input: 'other-1' }).code, 0);
    // And a copy of the agent's last line, put under the person's entries, where a search by seq
    // finds it first.
    const copy = withFileLock(path.join(h.home, 'audit', 'lock'), 10_000, () => {
      const ls = logLines(h);
      const at = ls.findIndex((l) => parseLine(l)?.seq === agentLastSeq + 1);
      assert.ok(at > 0);
      ls.splice(at, 0, agentLastLine);
      fs.writeFileSync(segmentOf(h), `${ls.join('\n')}\n`);
      return at;
    });
    const forkEnd = logLines(h).length;
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    await stopAgent(h);
    // The lock's record, the record of the cut and the copied line go too.
    cutTail(h, logLines(h).length - forkEnd);
    withFileLock(path.join(h.home, 'audit', 'lock'), 10_000, () => {
      const ls = logLines(h);
      ls.splice(copy, 1);
      fs.writeFileSync(segmentOf(h), `${ls.join('\n')}\n`);
    });
    assert.ok(!logLines(h).some((l) => l.includes('"type":"secret.read"')));
    const v = kw(['audit', 'verify'], { env: direct });
    assert.equal(v.code, 8, v.stdout + v.stderr);
  });

  test('a break found at lock while another process holds the audit lock: the agent answers meanwhile, and records the break once the lock is free', async () => {
    const h = await unlocked(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'held-lock' }).code, 0);
    assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'held-lock');
    // The read's last entry (credential.drop) is written after the value is sent: the agent's
    // last entry is that one.
    await eventually(
      () => logLines(h).some((l) => l.includes('"credential.drop"')),
      "the read's credential.drop",
    );
    // A command without the agent writes after the agent's last entry and seals the checkpoint
    // file there; the attacker cuts those lines, back to exactly the agent's last entry.
    const agentEnd = logLines(h).length;
    assert.equal(kw(['secret', 'set', 'app/other'], { env: h.env, input: 'x-1234' }).code, 0);
    cutTail(h, logLines(h).length - agentEnd);
    // The attacker holds the audit lock (any process of the user can).
    const holder = spawn('/usr/bin/flock', [
      path.join(h.home, 'audit', 'lock'),
      'sh',
      '-c',
      'echo held; read x',
    ]);
    try {
      await new Promise<void>((r) => holder.stdout.once('data', () => r()));
      const locking = kwAsync(['lock'], h.env);
      // The agent's thread is not held by the lock's wait: it answers another client meanwhile
      // (locked already: the window closes before the lock's records are written). Asked until
      // the lock has reached the agent (the two commands start side by side: either may be
      // first); a held thread would answer none of them.
      await eventually(
        () =>
          spawnSync(process.execPath, [BIN, 'status'], { env: h.env, input: '', timeout: 120_000 })
            .status === 5,
        'a status answered, locked, while the lock waits for the audit lock',
      );
      holder.stdin.end('\n');
      const l = await locking;
      assert.equal(l.code, 0, l.stderr);
    } finally {
      holder.kill('SIGKILL');
    }
    const entries = auditEntries(h);
    const gaps = entries.filter((e) => e.type === 'audit.gap');
    assert.equal(gaps.length, 1, 'the break against the checkpoint file is recorded');
    assert.equal(gaps[0]?.details['checkpoint'], 'file');
    assert.equal(gaps[0]?.details['detectedBy'], 'the agent at lock');
    const locked = entries.filter((e) => e.type === 'vault.lock').at(-1);
    assert.match(String(locked?.details['checkpoints']), /no checkpoint sealed: the log ends at/);
    // Holding the log's lock kept nothing from the vault: once the agent is gone, the window cut
    // away with the record and the checkpoint file is still a break.
    await stopAgent(h);
    cutTail(h, logLines(h).length - agentEnd);
    fs.rmSync(path.join(h.home, 'audit', 'checkpoint'), { force: true });
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v.code, 8, v.stdout + v.stderr);
  });

  test('a rekey while the agent is unlocked: its lock leaves the checkpoint file the rekey sealed', async () => {
    const h = await unlocked(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n',
    );
    assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'rekeyed' }).code, 0);
    assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'rekeyed');
    const r = kw(['rekey'], { env: withoutAgent(h) });
    assert.equal(r.code, 0, r.stderr);
    const checkpointFile = path.join(h.home, 'audit', 'checkpoint');
    const sealedByRekey = fs.readFileSync(checkpointFile);
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    // Sealed with the agent's stale keys, it would open under no key and count as absent.
    assert.deepEqual(fs.readFileSync(checkpointFile), sealedByRekey);
    assert.match(lockCheckpoints(h), /left as the rekey sealed it/);
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v.code, 0, v.stdout + v.stderr);
  });

  test('a state file pointed at a segment no rotation began (one named past six digits), then back: nothing is released unseen, and verify finds it', async () => {
    const h = await releasedOnce('stray-value');
    const dir = path.join(h.home, 'audit');
    // The attacker's state: the same bytes, the segment number (bytes 20-24) changed, put in
    // place by rename; with `plant`, the new segment starts with a copy of the real last line,
    // so what is written there chains.
    const pointAt = (segment: number, plant: boolean) =>
      withFileLock(path.join(dir, 'lock'), 10_000, () => {
        const st = fs.readFileSync(path.join(dir, 'state'));
        if (plant) {
          const last = logLines(h).at(-1) ?? '';
          fs.writeFileSync(path.join(dir, `log-${segment}.jsonl`), `${last}\n`);
        }
        st.writeUInt32BE(segment, 20);
        fs.writeFileSync(path.join(dir, 'state.attacker'), st);
        fs.renameSync(path.join(dir, 'state.attacker'), path.join(dir, 'state'));
      });
    pointAt(1_000_000, true);
    const r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.stdout, '', 'nothing released into a segment the agent did not rotate to');
    assert.notEqual(r.code, 0);
    // While that file is there, verify lists it, whatever its name's length.
    const v1 = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v1.code, 8, v1.stdout + v1.stderr);
    // The agent put the state back and recorded the break in the log verify reads: deleting
    // the stray file loses nothing.
    fs.rmSync(path.join(dir, 'log-1000000.jsonl'));
    assert.equal(fs.readFileSync(path.join(dir, 'state')).readUInt32BE(20), 1);
    const u = kw(['unlock'], { env: h.env });
    assert.equal(u.code, 0, u.stderr);
    assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'stray-value');
    const v2 = kw(['audit', 'verify'], { env: h.env });
    assert.equal(v2.code, 8, v2.stdout + v2.stderr);
    const gaps = auditEntries(h).filter((e) => e.type === 'audit.gap');
    assert.match(String(gaps[0]?.reason), /the audit state named log-1000000\.jsonl/);
    // A cut behind the agent while it is locked is found by the unlock's own record: it says why
    // it locked again at once, and the next unlock goes on.
    kw(['lock'], { env: h.env });
    cutTail(h, 1);
    const again = kw(['unlock'], { env: h.env });
    assert.equal(again.code, 5, again.stderr);
    assert.match(
      again.stderr,
      /locked again at once: the audit log was tampered with \(the log ends at seq/,
    );
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  });

  test("a line put after the agent's release that chains to a forged history is a break at its next batch, or at its lock, where nothing is sealed over it", async () => {
    // The attacker's line: the next seq, a valid MAC with the epoch key any process of the user
    // can read from audit/state, and a prev that is the hash of a forged entry it means to put
    // in place of the release later (here any other hash).
    const forge = (h: AgentHome) =>
      withFileLock(path.join(h.home, 'audit', 'lock'), 10_000, () => {
        const last = parseLine(logLines(h).at(-1) ?? '');
        assert.ok(last);
        const st = readState(auditPaths(h.home));
        try {
          const { line } = encodeLine(
            { ...last, seq: last.seq + 1, prev: 'f'.repeat(64), epoch: st.epoch },
            st.key,
          );
          fs.appendFileSync(segmentOf(h), `${line}\n`);
        } finally {
          secureFree(st.key);
        }
      });
    // At the next batch.
    const h = await releasedOnce('fork-value');
    forge(h);
    const r = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r.stdout, '', 'nothing released on a forked log');
    assert.equal(kw(['status'], { env: h.env }).code, 5, 'the agent locked');
    const gap = auditEntries(h).find((e) => e.type === 'audit.gap');
    assert.match(String(gap?.reason), /does not link to seq \d+ before it/);
    // The break stays reported: the line that records it follows the forged one, and what
    // follows it is sealed at the lock, so it can be neither changed nor removed unseen.
    const v1 = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v1.code, 8, v1.stdout + v1.stderr);
    // At the lock, when no batch came between.
    const h2 = await releasedOnce('fork-value');
    // Lines up to the vault's last save (the secret set), before the read's.
    const released = logLines(h2).findIndex((l) => l.includes('"type":"secret.read"')) - 1;
    forge(h2);
    assert.equal(kw(['lock'], { env: h2.env }).code, 0);
    const lock2 = auditEntries(h2)
      .filter((e) => e.type === 'vault.lock')
      .at(-1);
    assert.match(
      String(lock2?.details['checkpoints']),
      /^no checkpoint sealed: .*do not link back/,
    );
    const v = kw(['audit', 'verify'], { env: withoutAgent(h2) });
    assert.equal(v.code, 8, v.stdout + v.stderr);
    // Once the agent is gone, the window cut away with the fork and the checkpoint file: the
    // vault kept the agent's last entry at the lock.
    await stopAgent(h2);
    cutTail(h2, logLines(h2).length - released);
    fs.rmSync(path.join(h2.home, 'audit', 'checkpoint'), { force: true });
    const gone = kw(['audit', 'verify'], { env: withoutAgent(h2) });
    assert.equal(gone.code, 8, gone.stdout + gone.stderr);
  });

  test('a cut behind the running agent is recorded in its next batch, and the agent locks before releasing anything', async () => {
    const h = await unlocked(
      'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n' +
        '  - { name: logs, kind: audit, targets: ["**"], decision: allow }\n',
    );
    assert.equal(
      kw(['secret', 'set', 'app/token'], { env: h.env, input: 'agent-cut-value' }).code,
      0,
    );
    assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'agent-cut-value');
    const cut = cutTail(h, 2);
    assert.ok(cut.some((e) => e.type === 'secret.read'));
    const r = kw(['read', 'app/token'], { env: h.env });
    assert.notEqual(r.code, 0, 'nothing released after the cut');
    assert.equal(r.stdout, '');
    assert.equal(kw(['status'], { env: h.env }).code, 5, 'the agent locked');
    const lines = logLines(h);
    const gapLine = lines.find((l) => l.includes('"audit.gap"'));
    assert.ok(gapLine, 'audit.gap recorded');
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v.code, 8, v.stdout + v.stderr);
    const gap = auditEntries(h).find((e) => e.type === 'audit.gap');
    assert.equal(gap?.details['detectedBy'], 'the agent');
    // Unlocked again, the agent tells the person at once, and verifies the same.
    const u = kw(['unlock'], { env: h.env });
    assert.equal(u.code, 0, u.stderr);
    assert.match(
      u.stderr,
      /WARNING: the audit log records 1 break\(s\) not acknowledged \(audit\.gap at seq \d+\)/,
    );
    const viaAgent = kw(['audit', 'verify'], { env: h.env });
    assert.equal(viaAgent.code, 8, viaAgent.stdout + viaAgent.stderr);
    assert.match(viaAgent.stderr, /break\(s\) a writer found/);
  });
});
