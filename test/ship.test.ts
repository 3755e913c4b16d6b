/**
 * A copy of the audit log off the machine (docs/AUDIT.md, "Shipping"), through a real rsyslogd
 * and a real systemd-journald, each run by the test on a private socket: entries arrive in
 * order with the right fields, a cut of the local log is caught against the copy, shipping
 * never stops a durable append and counts what the system log missed, and the agent releases
 * nothing whose entry the system log did not take.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { agentHome, auditEntries, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import { kw, rootTests } from './helpers.js';

const RSYSLOGD = '/usr/sbin/rsyslogd';
const JOURNALD = '/lib/systemd/systemd-journald';

const homes: AgentHome[] = [];
const daemons: Array<() => void> = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
  for (const stop of daemons) stop();
});

/** Waits for a condition, driven by events of the world outside (no deadline of its own). */
async function until<T>(f: () => T | undefined): Promise<T> {
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** rsyslogd, on a private socket, writing keyward's messages to a file. */
async function rsyslog(
  dir: string,
): Promise<{ socket: string; collected: string; stop: () => void; pid: number }> {
  const socket = path.join(dir, 'log.sock');
  const collected = path.join(dir, 'collected.log');
  fs.mkdirSync(path.join(dir, 'work'), { recursive: true });
  const conf = path.join(dir, 'rsyslog.conf');
  fs.writeFileSync(
    conf,
    [
      `global(workDirectory="${dir}/work")`,
      'module(load="imuxsock" SysSock.Use="off")',
      `input(type="imuxsock" Socket="${socket}" UseSpecialParser="off")`,
      'template(name="kw" type="string" string="%app-name% %procid% %msgid% %structured-data% %msg%\\n")',
      `if $app-name == "keyward" then action(type="omfile" file="${collected}" template="kw")`,
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn(RSYSLOGD, ['-n', '-f', conf, '-i', path.join(dir, 'pid')], {
    stdio: 'ignore',
  });
  const stop = () => child.kill('SIGTERM');
  daemons.push(stop);
  await until(() => (fs.existsSync(socket) ? true : undefined));
  return { socket, collected, stop, pid: child.pid ?? 0 };
}

const shipPolicy = (kind: string, socket: string) =>
  'version: 1\n' +
  `audit: { ship: ${kind}, socket: "${socket}" }\n` +
  'rules:\n  - { name: all, targets: ["**"], decision: allow }\n';

interface LocalEntry {
  seq: number;
  type: string;
  hash: string;
}
const localEntries = (h: AgentHome): LocalEntry[] =>
  kw(['audit', 'export'], { env: h.env })
    .stdout.trim()
    .split('\n')
    .map((l) => {
      // The stored line as it is: its hash is the SHA-256 of the line (docs/AUDIT.md).
      const e = JSON.parse(l) as { seq: number; type: string };
      return { seq: e.seq, type: e.type, hash: createHash('sha256').update(l).digest('hex') };
    });

function cutTail(h: AgentHome, n: number): void {
  const dir = path.join(h.home, 'audit');
  const seg = path.join(
    dir,
    fs
      .readdirSync(dir)
      .filter((x) => /^log-\d{6}\.jsonl$/.test(x))
      .sort()
      .at(-1) as string,
  );
  const ls = fs.readFileSync(seg, 'utf8').trimEnd().split('\n');
  fs.writeFileSync(seg, `${ls.slice(0, ls.length - n).join('\n')}\n`);
}

describe(
  'shipping the audit log to the system log',
  { skip: !fs.existsSync(RSYSLOGD) && 'needs rsyslogd (apt-get install rsyslog)' },
  () => {
    test('every entry after the policy turned shipping on reaches rsyslog in order, with seq, type, decision and hash; a local cut is caught against the copy', async () => {
      const h0 = agentHome();
      const rs = await rsyslog(h0.dir);
      const h = agentHome(shipPolicy('syslog', rs.socket));
      homes.push(h);
      await startAgent(h);
      assert.equal(kw(['unlock'], { env: h.env }).code, 0);
      assert.equal(
        kw(['secret', 'set', 'app/token'], { env: h.env, input: 'shipped-but-never-the-value' })
          .code,
        0,
      );
      for (let i = 0; i < 3; i++) assert.equal(kw(['read', 'app/token'], { env: h.env }).code, 0);
      const local = localEntries(h);
      const last = local.at(-1) as LocalEntry;
      const lines = await until(() => {
        const text = fs.existsSync(rs.collected) ? fs.readFileSync(rs.collected, 'utf8') : '';
        return text.includes(`seq="${last.seq}"`) ? text.trim().split('\n') : undefined;
      });
      const shipped = lines.map((l) => {
        const m =
          /^keyward (\d+) (\S+) \[keyward@32473 seq="(\d+)" type="([^"]+)" epoch="(\d+)" decision="(\w+)" hash="([0-9a-f]{64})" prev="([0-9a-f]{64})"\] keyward audit seq=\3 type=\4 decision=\6 hash=\7$/.exec(
            l,
          );
        assert.ok(m, `a well-formed RFC 5424 message: ${l}`);
        return {
          seq: Number(m[3]),
          type: m[4],
          msgid: m[2],
          decision: m[6],
          hash: m[7],
          prev: m[8],
        };
      });
      // In order, one each, from the first one shipped to the head, each matching the local entry.
      const first = shipped[0]?.seq ?? 0;
      assert.deepEqual(
        shipped.map((s) => s.seq),
        local.filter((e) => e.seq >= first).map((e) => e.seq),
      );
      for (const s of shipped) {
        const e = local.find((x) => x.seq === s.seq);
        assert.equal(s.hash, e?.hash);
        assert.equal(s.type, e?.type);
        assert.equal(s.msgid, e?.type);
      }
      assert.ok(shipped.some((s) => s.type === 'secret.read' && s.decision === 'allow'));
      assert.ok(!fs.readFileSync(rs.collected, 'utf8').includes('shipped-but-never-the-value'));
      // Untouched, the local log and the copy agree.
      const same = kw(['audit', 'verify', '--chain-only', '--against', rs.collected], {
        env: h.env,
      });
      assert.equal(same.code, 0, same.stdout + same.stderr);
      assert.match(same.stdout, /every entry of the copy is here, unchanged/);
      // The attacker cuts the local tail: the copy off the machine still has it. (The agent ships
      // its own last entries, vault.lock and agent.stop, by the policy it still holds.)
      await stopAgent(h);
      const end = localEntries(h).at(-1) as LocalEntry;
      await until(() =>
        fs.readFileSync(rs.collected, 'utf8').includes(`seq="${end.seq}"`) ? true : undefined,
      );
      cutTail(h, 2);
      const r = kw(['audit', 'verify', '--chain-only', '--against', rs.collected], { env: h.env });
      assert.equal(r.code, 8, r.stdout + r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `2 entries of the copy are missing here \\(deleted\\): seq ${end.seq - 1}, ${end.seq}`,
        ),
      );
    });

    test('with the system log away, appends go on and are counted; the count is shipped once it is back; a deleted audit/ship is put back by the agent', async () => {
      const h0 = agentHome();
      const socket = path.join(h0.dir, 'log.sock');
      const h = agentHome(shipPolicy('syslog', socket));
      homes.push(h);
      // Nobody listens yet: the durable append does not wait or fail.
      const set = kw(['secret', 'set', 'app/token'], { env: h.env, input: 'value-x1' });
      assert.equal(set.code, 0, set.stderr);
      const dropped = Number(fs.readFileSync(path.join(h.home, 'audit', 'ship-dropped'), 'utf8'));
      assert.ok(dropped >= 1, `${dropped} counted`);
      const rs = await rsyslog(h0.dir);
      assert.equal(rs.socket, socket);
      assert.equal(kw(['secret', 'set', 'app/other'], { env: h.env, input: 'value-x2' }).code, 0);
      await until(() =>
        fs.existsSync(rs.collected) &&
        fs.readFileSync(rs.collected, 'utf8').includes(`[keyward@32473 dropped="${dropped}"]`)
          ? true
          : undefined,
      );
      assert.equal(fs.existsSync(path.join(h.home, 'audit', 'ship-dropped')), false);
      // Turning shipping off behind keyward's back: the agent, which holds the policy, puts it back.
      fs.rmSync(path.join(h.home, 'audit', 'ship'));
      await startAgent(h);
      assert.equal(kw(['unlock'], { env: h.env }).code, 0);
      assert.equal(
        fs.readFileSync(path.join(h.home, 'audit', 'ship'), 'utf8'),
        `syslog ${socket}\n`,
      );
    });

    test('found in review: with shipping on, the agent releases nothing the system log did not take: its socket flooded and the count of what it missed made a directory, the agent locks and says why', async () => {
      const h0 = agentHome();
      const rs = await rsyslog(h0.dir);
      const h = agentHome(shipPolicy('syslog', rs.socket));
      homes.push(h);
      assert.equal(
        kw(['secret', 'set', 'app/token'], { env: h.env, input: 'flooded-value' }).code,
        0,
      );
      await startAgent(h);
      assert.equal(kw(['unlock'], { env: h.env }).code, 0);
      const first = kw(['read', 'app/token'], { env: h.env });
      assert.equal(first.stdout, 'flooded-value', first.stderr);
      // The attacker: the count of what the system log missed can't be written, and the system
      // log takes nothing more (a flood; here the daemon stopped, and its queue filled).
      fs.mkdirSync(path.join(h.home, 'audit', 'ship-dropped'));
      process.kill(rs.pid, 'SIGSTOP');
      try {
        const fill = spawnSync(
          'python3',
          [
            '-c',
            [
              'import socket, sys',
              's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
              's.setblocking(False)',
              'n = 0',
              'while True:',
              '    try: s.sendto(b"<14>1 - - flood - - - x", sys.argv[1]); n += 1',
              '    except BlockingIOError: break',
              'print(n)',
            ].join('\n'),
            rs.socket,
          ],
          { encoding: 'utf8' },
        );
        assert.equal(fill.status, 0, fill.stderr);
        const r = kw(['read', 'app/token'], { env: h.env });
        assert.notEqual(r.code, 0, 'nothing released');
        assert.equal(r.stdout, '');
        assert.match(kw(['status'], { env: h.env }).stdout, /locked/);
        // An unlock while the system log still takes nothing does not stand, and says so.
        const u = kw(['unlock'], { env: h.env });
        assert.notEqual(u.code, 0, u.stdout + u.stderr);
        assert.match(u.stderr, /the agent was locked again meanwhile/);
        assert.match(kw(['status'], { env: h.env }).stdout, /locked/);
      } finally {
        process.kill(rs.pid, 'SIGCONT');
      }
      await stopAgent(h);
      const lock = auditEntries(h)
        .filter((e) => e.type === 'vault.lock')
        .at(-1);
      assert.match(
        String(lock?.reason),
        /the system log \(syslog at .*\) did not take the copy of \d+ audit entr(y|ies); with shipping on, nothing is released that the copy lacks/,
      );
    });

    test("found in review: a restore ships its record by the restored vault's applied policy, not by an audit/ship planted before the backup, and makes that file again", async () => {
      const policyLog = await rsyslog(path.join(agentHome().dir));
      const planted = await rsyslog(path.join(agentHome().dir));
      const h = agentHome(shipPolicy('syslog', policyLog.socket));
      // The attacker (the same user) points the file that locked writers ship by elsewhere.
      fs.writeFileSync(path.join(h.home, 'audit', 'ship'), `syslog ${planted.socket}\n`, {
        mode: 0o600,
      });
      const out = path.join(h.dir, 'b.kwb');
      assert.equal(kw(['backup', '--output', out], { env: h.env }).code, 0);
      const to = path.join(h.dir, 'restored');
      const r = kw(['restore', '--input', out], { env: { ...h.env, KEYWARD_HOME: to } });
      assert.equal(r.code, 0, r.stderr);
      // Wherever the restore's record went, it arrives there: then see where.
      const got = (f: string) =>
        fs.existsSync(f) && fs.readFileSync(f, 'utf8').includes('type="audit.restored"');
      const where = await until(() =>
        got(policyLog.collected) ? 'policy' : got(planted.collected) ? 'planted' : undefined,
      );
      assert.equal(where, 'policy', 'the restore shipped its record where the planted file said');
      assert.equal(
        fs.readFileSync(path.join(to, 'audit', 'ship'), 'utf8'),
        `syslog ${policyLog.socket}\n`,
      );
      policyLog.stop();
      planted.stop();
    });

    test(
      'journald: entries arrive through the native protocol with KEYWARD_ fields, and verify --against reads journalctl -o json',
      { skip: (!fs.existsSync(JOURNALD) || !rootTests) && 'needs systemd-journald and root' },
      async () => {
        const ns = `kw${randomBytes(4).toString('hex')}`;
        const journald = spawn(JOURNALD, [ns], { stdio: 'ignore' });
        const socket = `/run/systemd/journal.${ns}/socket`;
        const stop = () => {
          journald.kill('SIGTERM');
          fs.rmSync(`/run/systemd/journal.${ns}`, { recursive: true, force: true });
          for (const base of ['/var/log/journal', '/run/log/journal'])
            for (const d of fs.existsSync(base) ? fs.readdirSync(base) : [])
              if (d.endsWith(`.${ns}`))
                fs.rmSync(path.join(base, d), { recursive: true, force: true });
        };
        daemons.push(stop);
        await until(() => (fs.existsSync(socket) ? true : undefined));
        const h = agentHome(shipPolicy('journald', socket));
        assert.equal(
          kw(['secret', 'set', 'app/token'], { env: h.env, input: 'journald-value' }).code,
          0,
        );
        assert.equal(kw(['read', 'app/token'], { env: h.env }).code, 0);
        const local = localEntries(h);
        const last = local.at(-1) as LocalEntry;
        const exported = path.join(h.dir, 'journal.json');
        const rows = await until(() => {
          const r = spawnSync('journalctl', [`--namespace=${ns}`, '-o', 'json', '--no-pager'], {
            encoding: 'utf8',
          });
          const mine = r.stdout
            .trim()
            .split('\n')
            .filter((l) => l.includes('KEYWARD_SEQ'));
          if (!mine.some((l) => l.includes(`"KEYWARD_SEQ":"${last.seq}"`))) return undefined;
          fs.writeFileSync(exported, r.stdout);
          return mine.map((l) => JSON.parse(l) as Record<string, string>);
        });
        for (const row of rows) {
          const e = local.find((x) => x.seq === Number(row['KEYWARD_SEQ']));
          assert.equal(row['KEYWARD_HASH'], e?.hash);
          assert.equal(row['KEYWARD_TYPE'], e?.type);
          assert.equal(row['SYSLOG_IDENTIFIER'], 'keyward');
        }
        assert.equal(
          kw(['audit', 'verify', '--chain-only', '--against', exported], { env: h.env }).code,
          0,
        );
        cutTail(h, 1);
        const r = kw(['audit', 'verify', '--chain-only', '--against', exported], { env: h.env });
        assert.equal(r.code, 8, r.stdout + r.stderr);
        assert.match(r.stderr, new RegExp(`missing here \\(deleted\\): seq ${last.seq}`));
        stop();
      },
    );
  },
);
