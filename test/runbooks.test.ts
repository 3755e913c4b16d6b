/**
 * The operations runbooks (docs/operations/*.md) are run, block by block, as a person would type
 * them: every `sh` block in order with bash (-e: every command must succeed), `keyward` on the
 * PATH, in throwaway homes. An HTML comment before a block says where it runs
 * (`<!-- runbook: home=fresh|main|scratch passphrase=new damage=vault|audit -->`):
 * fresh is a new, empty home (another machine) that later blocks keep using; main is the home the
 * runbook began with; scratch is a home with a vault of its own, for that block only;
 * passphrase=new switches to the passphrase `keyward passwd` set; damage breaks the home first.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { BIN, FAST_KDF, initHome, kw, ROOT, type Home } from './helpers.js';

interface Block {
  line: number;
  code: string;
  home?: 'fresh' | 'main' | 'scratch';
  passphrase?: 'new';
  damage?: 'vault' | 'audit';
}

function blocks(doc: string): Block[] {
  const lines = fs.readFileSync(path.join(ROOT, doc), 'utf8').split('\n');
  const out: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] !== '```sh') continue;
    const end = lines.indexOf('```', i + 1);
    const b: Block = { line: i + 1, code: lines.slice(i + 1, end).join('\n') };
    const note = /^<!-- runbook: (.*) -->$/.exec(lines[i - 1] ?? '');
    for (const [k, v] of (note?.[1] ?? '')
      .split(' ')
      .filter(Boolean)
      .map((kv) => kv.split('=')))
      Object.assign(b, { [k ?? '']: v });
    out.push(b);
    i = end;
  }
  return out;
}

const stops: Array<() => void> = [];
after(() => {
  for (const s of stops) s();
});

/** Runs a runbook's blocks from `start` (a home with a vault), with $BACKUPS given. */
function runBook(doc: string, start: Home, backups: string): string[] {
  const bin = path.join(start.dir, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(
    path.join(bin, 'keyward'),
    `#!/bin/sh\nexec '${process.execPath}' '${BIN}' "$@"\n`,
    {
      mode: 0o755,
    },
  );
  // One day for the whole run, so $(date +%F) names the same file in every block.
  const now = Math.floor(Date.now() / 1000);
  fs.writeFileSync(path.join(bin, 'date'), `#!/bin/sh\nexec /bin/date -d @${now} "$@"\n`, {
    mode: 0o755,
  });
  const newPass = path.join(start.dir, 'new-pass');
  fs.writeFileSync(newPass, 'a new passphrase, also long enough\n', { mode: 0o600 });
  const envFor = (home: string, pass: string): NodeJS.ProcessEnv => ({
    ...start.env,
    PATH: `${bin}:${process.env['PATH'] ?? ''}`,
    KEYWARD_HOME: home,
    KEYWARD_SOCKET_DIR: `${home}.run`,
    KEYWARD_PASSPHRASE_FILE: pass,
    NEW_PASSPHRASE_FILE: newPass,
    BACKUPS: backups,
  });
  let home = start.home;
  let pass = start.passFile;
  const homes = new Set<string>([home]);
  stops.push(() => {
    for (const h of homes) kw(['agent', 'stop'], { env: envFor(h, pass) });
  });
  const ran: string[] = [];
  let n = 0;
  for (const b of blocks(doc)) {
    let here = home;
    if (b.home === 'fresh') here = home = path.join(start.dir, `machine-${++n}`, 'keyward');
    if (b.home === 'main') here = home = start.home;
    if (b.passphrase === 'new') pass = newPass;
    if (b.home === 'scratch') {
      here = path.join(start.dir, `scratch-${++n}`);
      const r = kw(['init', ...FAST_KDF], { env: envFor(here, pass) });
      assert.equal(r.code, 0, r.stderr);
    }
    homes.add(here);
    if (b.damage === 'vault') {
      const f = path.join(here, 'vault.kw');
      const bytes = fs.readFileSync(f);
      bytes[bytes.length - 3] = (bytes[bytes.length - 3] ?? 0) ^ 0x10;
      fs.writeFileSync(f, bytes);
    }
    if (b.damage === 'audit') {
      const f = path.join(here, 'audit', 'log-000001.jsonl');
      const lines = fs.readFileSync(f, 'utf8').split('\n');
      lines[2] = (lines[2] ?? '').replace('"type":"', '"type":"x');
      fs.writeFileSync(f, lines.join('\n'));
    }
    const r = spawnSync('bash', ['-e', '-o', 'pipefail', '-c', b.code], {
      env: envFor(here, pass),
      cwd: start.dir,
      encoding: 'utf8',
      timeout: 300_000,
    });
    assert.equal(
      r.status,
      0,
      `${doc}:${b.line}\n${b.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`,
    );
    ran.push(r.stdout);
  }
  return ran;
}

function startingHome(): { h: Home; backups: string } {
  const h = initHome();
  const secrets: Array<[string, string]> = [
    ['app/api-token', 'tok_original'],
    ['app/db', 'db-password'],
  ];
  for (const [name, value] of secrets)
    assert.equal(kw(['secret', 'set', name], { env: h.env, input: value }).code, 0);
  const backups = path.join(h.dir, 'backups');
  fs.mkdirSync(backups, { mode: 0o700 });
  return { h, backups };
}

const noAge =
  spawnSync('age', ['--version']).status !== 0 && 'needs the age command (apt-get install age)';

test('docs/operations/backup-restore.md: every block runs as written', { skip: noAge }, () => {
  const { h, backups } = startingHome();
  const out = runBook('docs/operations/backup-restore.md', h, backups);
  assert.ok(out.length >= 8, `${out.length} blocks`);
  assert.match(out.join('\n'), /audit\.restored/, 'the restored log shows the restore');
  // The forced restore moved the home in use aside, whole.
  assert.equal(fs.readdirSync(h.dir).filter((n) => n.startsWith('home.before-restore-')).length, 1);
  assert.equal(kw(['read', 'app/db'], { env: h.env }).stdout, 'db-password');
});

test('docs/operations/disaster-recovery.md: every block runs as written', () => {
  const { h, backups } = startingHome();
  const day = new Date().toISOString().slice(0, 10);
  const b = kw(['backup', '--output', path.join(backups, `keyward-${day}.kwbackup`)], {
    env: h.env,
  });
  assert.equal(b.code, 0, b.stderr);
  const out = runBook('docs/operations/disaster-recovery.md', h, backups);
  assert.ok(out.length >= 7, `${out.length} blocks`);
  assert.match(out.join('\n'), /audit verify failed: keep the evidence/, 'the tampering was seen');
  assert.equal(fs.existsSync(path.join(backups, `keyward-${day}.kwbackup`)), false);
});
