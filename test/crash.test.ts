/**
 * Nothing lost: a writer killed with SIGKILL at any instant leaves a vault that opens with the
 * old content or the new, never neither.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { test } from 'node:test';
import { BIN, initHome, kw, kwSpawn, type Home } from './helpers.js';

const VALUE_BYTES = 4 * 1024 * 1024; // large enough that encrypting and writing takes a while
const ITERATIONS = Number(process.env['KEYWARD_CRASH_ITERATIONS'] ?? 40);

function value(i: number): Buffer {
  const b = Buffer.alloc(VALUE_BYTES, i % 251);
  b.write(`version-${i}-`, 0);
  return b;
}

const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function keyId(h: Home): string {
  return (JSON.parse(kw(['whoami', '--json'], { env: h.env }).stdout) as { keyId: string }).keyId;
}

/** Runs args with input, kills it with SIGKILL after delayMs; true when it was still running. */
async function killAfter(
  h: Home,
  args: string[],
  input: Buffer | undefined,
  delayMs: number,
): Promise<boolean> {
  const child = kwSpawn(args, h.env);
  child.stdout.resume();
  child.stderr.resume();
  child.stdin.on('error', () => undefined);
  child.stdin.end(input ?? Buffer.alloc(0));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([new Promise((r) => (timer = setTimeout(r, delayMs))), exited]);
  clearTimeout(timer);
  const killed = child.exitCode === null && child.signalCode === null && child.kill('SIGKILL');
  await exited;
  return killed;
}

async function timeOf(h: Home, args: string[], input?: Buffer): Promise<number> {
  const start = Date.now();
  await killAfter(h, args, input, 60_000);
  return Date.now() - start;
}

test(`SIGKILL at random points during secret set and rekey (${ITERATIONS} times): the vault always opens with the old or the new content`, async () => {
  const h = initHome();
  assert.equal(kw(['secret', 'set', 'big', '--raw'], { env: h.env, input: value(0) }).code, 0);
  const first = kw(['read', 'big'], { env: h.env });
  assert.equal(digest(first.stdoutBytes), digest(value(0)));
  let currentKey = keyId(h);
  // How long a whole write takes here, so kill points spread over start-up, KDF, encrypt, write.
  const setMs = await timeOf(h, ['secret', 'set', 'big', '--raw'], value(1));
  let current = digest(value(1));
  // Counted for each operation: a claim about rekey needs kills that landed in rekeys.
  const seen = {
    set: { killed: 0, old: 0, new: 0 },
    rekey: { killed: 0, old: 0, new: 0 },
  };
  // Kill points are drawn over `span`, which follows how long a write takes now: longer after a
  // kill that landed mid-run, shorter after a writer that finished first. Load (which slows the
  // writers, not the first measurement) then can't put every kill before the commit. Each
  // operation has its own span: a rekey and a set take different times.
  const span = { set: setMs * 1.1, rekey: setMs * 1.1 };
  for (let i = 2; i < ITERATIONS + 2; i++) {
    const rekey = i % 2 === 0;
    const op = rekey ? 'rekey' : 'set';
    const v = value(i);
    const delay = Math.floor(Math.random() * span[op]);
    const killed = await killAfter(
      h,
      rekey ? ['rekey'] : ['secret', 'set', 'big', '--raw'],
      rekey ? undefined : v,
      delay,
    );
    if (killed) seen[op].killed++;
    span[op] = killed ? span[op] * 1.25 : Math.max(20, span[op] * 0.8);

    const r = kw(['read', 'big'], { env: h.env });
    assert.equal(
      r.code,
      0,
      `iteration ${i} (${rekey ? 'rekey' : 'set'}, killed after ${delay} ms): ${r.stderr}`,
    );
    const got = digest(r.stdoutBytes);
    if (rekey) {
      assert.equal(got, current, `iteration ${i}: rekey must never change a value`);
      const k = keyId(h);
      if (k === currentKey) seen.rekey.old++;
      else seen.rekey.new++;
      currentKey = k;
    } else {
      assert.ok(
        got === current || got === digest(v),
        `iteration ${i}: neither the old nor the new value`,
      );
      if (got === current) seen.set.old++;
      else seen.set.new++;
      current = got;
      currentKey = keyId(h);
    }
    assert.equal(fs.statSync(h.vaultFile).mode & 0o777, 0o600);
  }
  // The test means something only if kills landed while writers of each kind ran, and both
  // outcomes occurred for each: a kill before the commit (old) and a write that completed (new).
  const killed = seen.set.killed + seen.rekey.killed;
  assert.ok(
    killed >= ITERATIONS / 4,
    `only ${killed} kills landed mid-run: ${JSON.stringify(seen)}`,
  );
  for (const op of ['set', 'rekey'] as const) {
    const s = seen[op];
    assert.ok(s.killed > 0 && s.old > 0 && s.new > 0, `${op}: ${JSON.stringify(s)}`);
  }

  // A killed writer's temp file is swept by the next writer, under the lock.
  assert.equal(kw(['secret', 'set', 'small'], { env: h.env, input: 'after-the-storm' }).code, 0);
  assert.deepEqual(
    fs.readdirSync(h.home).filter((n) => n.includes('.tmp-')),
    [],
  );
});

test('concurrent writers are serialised by the lock: no update is lost', async () => {
  const h = initHome();
  const names = Array.from({ length: 8 }, (_, i) => `parallel/n${i}`);
  await Promise.all(
    names.map(
      (n) =>
        new Promise<void>((resolve, reject) => {
          const c = kwSpawn(['secret', 'set', n], h.env);
          c.stdout.resume();
          c.stderr.resume();
          c.stdin.end(`value-of-${n}`);
          c.on('exit', (code) =>
            code === 0 ? resolve() : reject(new Error(`${n} exited ${code}`)),
          );
        }),
    ),
  );
  const list = JSON.parse(kw(['secret', 'list', '--json'], { env: h.env }).stdout) as Array<{
    name: string;
  }>;
  assert.deepEqual(
    list.map((e) => e.name),
    names,
  );
});

test(
  'a save the disk refuses (no space, an I/O error) says so, exit 5 with VAULT_UNWRITABLE, and the vault is as it was',
  {
    skip: !fs.existsSync('/usr/bin/strace') && 'needs strace',
  },
  () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'a/b'], { env: h.env, input: 'value-one' }).code, 0);
    // strace makes the one system call that writes vault.kw fail: an append's pwrite, a
    // replace's rename.
    const failing = (inject: string, args: string[], input = '') =>
      spawnSync(
        '/usr/bin/strace',
        ['-qq', '-o', '/dev/null', '-e', `inject=${inject}:when=1`, process.execPath, BIN, ...args],
        { env: h.env, input, encoding: 'utf8' },
      );
    for (const [inject, args, errno] of [
      ['pwrite64:error=ENOSPC', ['secret', 'set', 'a/c'], 'ENOSPC'],
      ['rename:error=EIO', ['rekey'], 'EIO'],
    ] as const) {
      const r = failing(inject, [...args], 'value-two');
      assert.equal(r.status, 5, `${args.join(' ')}: ${r.stderr}`);
      assert.match(
        r.stderr,
        new RegExp(
          `keyward: error: vault.kw could not be written safely \\(${errno}: [^)]+\\); the change may not have been saved`,
        ),
      );
      assert.doesNotMatch(r.stderr, /internal error|a bug in keyward/);
    }
    const list = kw(['secret', 'list'], { env: h.env });
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^a\/b /m);
    assert.doesNotMatch(list.stdout, /a\/c/, 'the set that failed saved nothing');
    assert.equal(kw(['read', 'a/b'], { env: h.env }).stdout, 'value-one');
  },
);
