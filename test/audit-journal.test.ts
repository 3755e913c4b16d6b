/**
 * The agent's journal (src/audit/journal.ts; docs/AUDIT.md, "The journal"): a batch is durable in
 * it before anything of the batch is released, so a crash of the system that loses the segment's
 * unsynced tail loses no record. Tried as the crash would leave the disk (the tail cut, or its
 * blocks zeros) and as a process of the user would try it (the segment changed, the journal
 * replaced by its own file or a link).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  auditEntries,
  startAgent,
  stopAgent,
  unlockedAgent,
  withoutAgent,
  type AgentHome,
} from './agent-helpers.js';
import { eventually, kw, ROOT } from './helpers.js';

const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

const ALLOW =
  'version: 1\nrules:\n  - { name: all, targets: ["**"], decision: allow }\n' +
  '  - { name: logs, kind: audit, targets: ["**"], decision: allow }\n';

const auditDir = (h: AgentHome) => path.join(h.home, 'audit');
const segment = (h: AgentHome) => path.join(auditDir(h), 'log-000001.jsonl');
const journal = (h: AgentHome) => path.join(auditDir(h), 'journal');
const setAside = (h: AgentHome) =>
  fs.readdirSync(auditDir(h)).filter((n) => n.startsWith('journal.damaged-'));
const lines = (h: AgentHome) => fs.readFileSync(segment(h), 'utf8').split('\n');
const drops = (h: AgentHome) =>
  lines(h).filter((l) => l.includes('"type":"credential.drop"')).length;

/** An unlocked agent with app/token set, and the segment's size once that is recorded. */
async function agentWithSecret(): Promise<{ h: AgentHome; before: number }> {
  const h = await unlockedAgent(ALLOW, homes);
  assert.equal(kw(['secret', 'set', 'app/token'], { env: h.env, input: 'v-journal' }).code, 0);
  return { h, before: fs.statSync(segment(h)).size };
}

/**
 * n reads through the agent, and their last records (written after the value) in the log and in
 * the journal: the segment has a batch's lines a moment before the journal does, and a crash
 * made in between would take a batch no release waited for.
 */
async function reads(h: AgentHome, n: number): Promise<void> {
  const had = drops(h);
  for (let i = 0; i < n; i++)
    assert.equal(kw(['read', 'app/token'], { env: h.env }).stdout, 'v-journal');
  await eventually(() => drops(h) >= had + n, "the reads' last records");
  await eventually(() => {
    const last = lines(h).at(-2) ?? '';
    return fs.readFileSync(journal(h)).includes(Buffer.from(`${last}\n`));
  }, 'the last batch in the journal');
}

/** Ends the agent at once, as a crash of the system ends it: nothing of its own runs after. */
async function crash(h: AgentHome): Promise<void> {
  const c = h.agent;
  assert.ok(c);
  const done = new Promise((r) => c.once('exit', r));
  c.kill('SIGKILL');
  await done;
}

/** The agent of h started again and unlocked. */
async function unlockedAgentOn(h: AgentHome): Promise<AgentHome> {
  await startAgent(h);
  const u = kw(['unlock'], { env: h.env });
  assert.equal(u.code, 0, u.stderr);
  return h;
}

/** The log records a journal not replayed, as a break. */
const notReplayed = (h: AgentHome) =>
  auditEntries(h).some(
    (e) => e.type === 'audit.gap' && /the journal was not replayed/.test(e.reason ?? ''),
  );

const readsOf = (h: AgentHome) =>
  auditEntries(h).filter((e) => e.type === 'secret.read' && e.target === 'app/token');

describe('the journal', () => {
  test('a crash that loses the segment’s tail after releases loses none of them: the journal puts the lines back, and the log says so', async () => {
    const { h, before } = await agentWithSecret();
    await reads(h, 3);
    const after = fs.statSync(segment(h)).size;
    assert.ok(after > before);
    await crash(h);
    // What the disk may hold after a crash: the segment as it was before the reads (its size
    // never written), the page cache's lines gone.
    fs.truncateSync(segment(h), before);
    // Any writer that comes next (here the CLI, no agent running) puts them back first.
    const entries = readsOf(h);
    assert.equal(entries.length, 3, 'the three releases are in the log');
    const recovered = auditEntries(h).filter(
      (e) => e.type === 'audit.recovered' && /were put back from the journal/.test(e.reason ?? ''),
    );
    assert.equal(recovered.length, 1);
    assert.equal(recovered[0]?.details['restoredBytes'], after - before);
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v.code, 0, v.stderr);
  });

  test('a crash that left the tail’s blocks zeros (the size written, the data not): the journal writes the lines over the zeros', async () => {
    const { h, before } = await agentWithSecret();
    await reads(h, 2);
    const size = fs.statSync(segment(h)).size;
    await crash(h);
    const fd = fs.openSync(segment(h), 'r+');
    fs.writeSync(fd, Buffer.alloc(size - before), 0, size - before, before);
    fs.closeSync(fd);
    assert.equal(readsOf(h).length, 2);
    assert.equal(fs.statSync(segment(h)).size > size, true, 'the next writer went on after them');
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.equal(v.code, 0, v.stderr);
  });

  test('a segment that holds other bytes than the journal where it is short keeps them: nothing is written over them, and the journal is kept aside as evidence', async () => {
    const { h, before } = await agentWithSecret();
    await reads(h, 2);
    await crash(h);
    // A process of the user's: the segment cut, and a line of its own where the reads were (a
    // copy of the last one before them, which a writer takes for the log's head).
    fs.truncateSync(segment(h), before);
    const copy = `${lines(h).at(-2) ?? ''}\n`;
    fs.appendFileSync(segment(h), copy);
    const forgedAt = before + Buffer.byteLength(copy);
    // The next writer (the CLI, no agent running) finds the journal at odds with the segment.
    kw(['secret', 'set', 'app/other'], { env: withoutAgent(h), input: 'v2' });
    const kept = setAside(h);
    assert.equal(kept.length, 1, 'the journal is kept aside');
    assert.equal(fs.statSync(path.join(auditDir(h), kept[0] as string)).size, 4096 + (1 << 20));
    const seg = fs.readFileSync(segment(h));
    assert.equal(seg.subarray(before, forgedAt).toString(), copy, 'not written over');
    assert.ok(notReplayed(h), 'the log records the journal not replayed as a break');
    assert.equal(readsOf(h).length, 0, 'nothing of the journal was put back');
    const v = kw(['audit', 'verify'], { env: withoutAgent(h) });
    assert.notEqual(v.code, 0, 'the copied line is found');
  });

  test('a journal replaced by a link while the agent runs is never written through: it is set aside, the break recorded, and the agent locks', async () => {
    const { h } = await agentWithSecret();
    await reads(h, 1);
    const victim = path.join(h.dir, 'victim');
    fs.writeFileSync(victim, 'the user’s own file\n');
    // A link where the journal was: the agent's next batch finds it (no times asked) and makes
    // that batch durable in the segment; the next sets the link aside and records the break.
    fs.rmSync(journal(h));
    fs.symlinkSync(victim, journal(h));
    // The batch that finds it is a break: the agent locks before the value goes out.
    assert.equal(kw(['read', 'app/token'], { env: h.env }).code, 5, 'the agent locked');
    await eventually(
      () => lines(h).some((l) => l.includes('"type":"audit.gap"')),
      'the break recorded',
    );
    assert.equal(fs.readFileSync(victim, 'utf8'), 'the user’s own file\n');
    const kept = setAside(h);
    assert.equal(kept.length, 1);
    assert.ok(fs.lstatSync(path.join(auditDir(h), kept[0] as string)).isSymbolicLink());
    assert.ok(fs.lstatSync(journal(h)).isFile());
    const gaps = auditEntries(h).filter((e) => e.type === 'audit.gap');
    assert.match(gaps.at(-1)?.reason ?? '', /journal was removed or replaced while the agent ran/);
    // Unlocked again, the new journal holds what comes after: a crash after one more read loses
    // nothing.
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    const had = readsOf(h).length;
    const before = fs.statSync(segment(h)).size;
    await reads(h, 1);
    await crash(h);
    fs.truncateSync(segment(h), before);
    assert.equal(readsOf(h).length, had + 1);
  });

  test('found in review: a copy of the journal put back under a running agent, for a writer without the agent to replay over a cut, is a break the agent records, and it locks', async () => {
    const { h } = await agentWithSecret();
    await reads(h, 1);
    const before = fs.statSync(segment(h)).size;
    await reads(h, 1);
    // The cut the agent would find at its next batch ...
    fs.truncateSync(segment(h), before);
    // ... undone by a writer that replays a copy of the journal (a new file, which no flock of
    // the agent's holds), so that the agent finds its last line where it left it.
    const copy = fs.readFileSync(journal(h));
    fs.rmSync(journal(h));
    fs.writeFileSync(journal(h), copy, { mode: 0o600 });
    assert.equal(kw(['secret', 'set', 'app/other'], { env: withoutAgent(h), input: 'v2' }).code, 0);
    // The agent's next batch finds its journal replaced: a break, and it locks before the value
    // goes out.
    const r1 = kw(['read', 'app/token'], { env: h.env });
    assert.equal(r1.code, 5, `the agent locked (${r1.stderr})`);
    const gaps = auditEntries(h).filter((e) => e.type === 'audit.gap');
    assert.ok(
      gaps.some((g) => /journal was removed or replaced while the agent ran/.test(g.reason ?? '')),
      'the break is in the log',
    );
  });

  test('found in review: a hard link at the journal’s path is set aside before a byte of it is read or written', async () => {
    const { h } = await agentWithSecret();
    await stopAgent(h);
    // A file of the user's, of a journal's size, linked in where the journal is.
    const victim = path.join(h.dir, 'victim.img');
    const bytes = Buffer.alloc(4096 + (1 << 20));
    bytes.write('the user’s own data', 8192);
    fs.writeFileSync(victim, bytes, { mode: 0o600 });
    fs.rmSync(journal(h));
    fs.linkSync(victim, journal(h));
    const again = await unlockedAgentOn(h);
    await reads(again, 2);
    assert.ok(fs.readFileSync(victim).equals(bytes), 'the linked file is as it was');
    assert.equal(setAside(h).length, 1);
    assert.equal(fs.statSync(journal(h)).nlink, 1);
  });

  test('found in review: a directory, or a file another process holds locked, at the journal’s path is set aside and the agent journals in a file of its own', async () => {
    const { h } = await agentWithSecret();
    await stopAgent(h);
    fs.rmSync(journal(h));
    fs.mkdirSync(journal(h), { mode: 0o700 });
    await unlockedAgentOn(h);
    await reads(h, 1);
    assert.ok(fs.lstatSync(journal(h)).isFile(), 'a journal of its own');
    assert.equal(setAside(h).length, 1);
    await stopAgent(h);
    // A process of the user's holds the journal's lock as the agent begins (it waits for the
    // lock: a process that has it a moment longer, the agent just stopped, is no failure).
    const holder = spawn('flock', ['-o', journal(h), 'sleep', '600'], {
      stdio: 'ignore',
      detached: true,
    });
    await eventually(() => {
      const r = spawnSync('flock', ['-n', journal(h), 'true']);
      return r.status !== 0;
    }, 'the lock held');
    try {
      await unlockedAgentOn(h);
      await reads(h, 1);
      assert.equal(setAside(h).length, 2, 'the held file is set aside');
      // The agent's own journal is locked by the agent: no other writer can replay it.
      assert.notEqual(spawnSync('flock', ['-n', journal(h), 'true']).status, 0);
      // And it is the agent's journal: a crash after a read loses nothing.
      const before = fs.statSync(segment(h)).size;
      await reads(h, 1);
      await crash(h);
      fs.truncateSync(segment(h), before);
      assert.equal(readsOf(h).length, 3);
    } finally {
      // flock and its sleep, both.
      if (holder.pid !== undefined) process.kill(-holder.pid, 'SIGKILL');
    }
  });

  test('found in review: a replay checks every entry before it writes one: a segment that contradicts a later entry gets none of them', async () => {
    const { h, before } = await agentWithSecret();
    await reads(h, 1);
    const mid = fs.statSync(segment(h)).size;
    await reads(h, 1);
    await crash(h);
    // Zeros where the first read's lines were (as a crash leaves them) and a byte of the
    // user's in the second's.
    const fd = fs.openSync(segment(h), 'r+');
    fs.writeSync(fd, Buffer.alloc(mid - before), 0, mid - before, before);
    fs.writeSync(fd, Buffer.from('X'), 0, 1, mid + 10);
    fs.closeSync(fd);
    kw(['secret', 'set', 'app/other'], { env: withoutAgent(h), input: 'v2' });
    const seg = fs.readFileSync(segment(h));
    assert.ok(
      seg.subarray(before, mid).every((b) => b === 0),
      'nothing was written before the refusal',
    );
    assert.equal(setAside(h).length, 1);
    assert.ok(notReplayed(h), 'recorded as a break');
  });

  test('a journal that wrapped (the segment fsynced before its entries were written over) still puts back what a crash took after the wrap', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-journal-wrap-'));
    fs.chmodSync(dir, 0o700);
    const seedFile = path.join(dir, 'seed');
    // A writer of its own process (as the agent is): more lines than the journal holds, then the
    // size of its segment, ten more batches, and an end with no close (its lock let go, the
    // journal left in use), as a crash ends it.
    const script = `
      import fs from 'node:fs';
      import { randomBytes } from 'node:crypto';
      const D = ${JSON.stringify(path.join(ROOT, 'dist/src'))};
      const { AuditLog } = await import(D + '/audit/log.js');
      const { GroupCommitter } = await import(D + '/audit/group.js');
      const { secureTake } = await import(D + '/lib/secure.js');
      const { boxKeypair } = await import(D + '/audit/keys.js');
      const { NO_SHIPPING } = await import(D + '/audit/ship.js');
      const seed = randomBytes(32);
      fs.writeFileSync(${JSON.stringify(seedFile)}, seed, { mode: 0o600 });
      const log = new AuditLog(${JSON.stringify(dir)}, { keep: true, journal: true });
      log.create(secureTake(Buffer.from(seed)), boxKeypair().publicKey);
      log.setShipping(NO_SHIPPING);
      const gc = new GroupCommitter(log);
      const rec = (i) => ({ type: 'secret.read', target: 'wrap/item-' + i, decision: 'allow' });
      for (let i = 0; i < 2200; i++) await gc.record(rec(i));
      const seg = ${JSON.stringify(path.join(dir, 'audit', 'log-000001.jsonl'))};
      process.stdout.write(String(fs.statSync(seg).size) + '\\n');
      for (let i = 2200; i < 2210; i++) await gc.record(rec(i));
      process.exit(0);
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    const before = Number(r.stdout.trim());
    assert.ok(before > 1 << 20, 'more lines than the journal holds: it wrapped');
    const seg = path.join(dir, 'audit', 'log-000001.jsonl');
    fs.truncateSync(seg, before);
    // The next writer (no journal of its own) puts the ten back, then writes its own.
    const { AuditLog } = await import('../src/audit/log.js');
    const { listSegments, verifySegments } = await import('../src/audit/verify.js');
    const { secureTake } = await import('../src/lib/secure.js');
    const log = new AuditLog(dir);
    log.append([{ type: 'vault.list', decision: 'info' }]);
    const text = fs.readFileSync(seg, 'utf8');
    const all = text.trim().split('\n');
    assert.ok(
      all.some((l) => l.includes('"type":"audit.recovered"')),
      'the put-back is recorded',
    );
    const v = verifySegments(listSegments(path.join(dir, 'audit')), {
      seed: secureTake(fs.readFileSync(seedFile)),
    });
    assert.ok(v.ok, v.ok ? '' : v.finding.reason);
    // Every line of the writer's is there, the ten after the wrap among them.
    assert.equal(all.filter((l) => l.includes('"type":"secret.read"')).length, 2210);
    // The wrap wrote within the journal, which stayed the one file, of its size, all along: a
    // journal that grew past its size would have been a break and set aside (found when this
    // test was first watched failing: with the wrap taken out, it passed on a new journal).
    assert.equal(
      all.some((l) => l.includes('"type":"audit.gap"')),
      false,
      'no break was recorded',
    );
    const audit = path.join(dir, 'audit');
    assert.deepEqual(
      fs.readdirSync(audit).filter((f) => f.startsWith('journal')),
      ['journal'],
      'no journal was set aside',
    );
    assert.equal(fs.statSync(path.join(audit, 'journal')).size, 4096 + (1 << 20));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('an agent stopped as it should be leaves nothing to replay: the segment fsynced, the journal marked not in use', async () => {
    const { h } = await agentWithSecret();
    await reads(h, 1);
    await stopAgent(h);
    const header = Buffer.alloc(5);
    const fd = fs.openSync(journal(h), 'r');
    fs.readSync(fd, header, 0, 5, 0);
    fs.closeSync(fd);
    assert.equal(header.subarray(0, 4).toString(), 'KWJ1');
    assert.equal(header[4], 0, 'not in use');
    assert.equal(
      auditEntries(h).filter((e) => e.type === 'audit.recovered').length,
      0,
      'nothing was put back',
    );
  });
});
