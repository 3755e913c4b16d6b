/**
 * Passphrases typed on a real terminal (a pseudo-terminal driven like a person): hidden, editable,
 * confirmed, cancellable, and the terminal is left as it was found.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { auditEntries } from './agent-helpers.js';
import { BIN, FAST_KDF, kw, makeHome, PASSPHRASE, ROOT, type Home } from './helpers.js';
import { DEFAULT_POLICY } from '../src/policy/index.js';
import { TerminalChannel } from '../src/approval/index.js';
import { PassThrough } from 'node:stream';

const DRIVER = path.join(ROOT, 'test/pty-driver.py');

function onTerminal(
  h: Home,
  shell: string,
  steps: Array<[string, string]>,
  extra: Record<string, string> = {},
): { out: string; exit: number } {
  const env: Record<string, string> = {
    PATH: process.env['PATH'] ?? '',
    HOME: h.dir,
    KEYWARD_HOME: h.home,
    TERM: 'dumb',
    ...extra,
  };
  const argv = ['bash', '-c', `kw() { '${process.execPath}' '${BIN}' "$@"; }\n${shell}`];
  const r = spawnSync('python3', [DRIVER, JSON.stringify({ argv, env, steps })], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  const m = /\nEXIT=(\d+)\n$/.exec(r.stdout);
  assert.ok(m, `driver failed: ${r.stdout}${r.stderr}`);
  return { out: r.stdout, exit: Number(m[1]) };
}

test('init on a terminal asks the passphrase twice without echo; read asks it once; backspace edits', () => {
  const h = makeHome();
  const t = onTerminal(
    h,
    `kw init ${FAST_KDF.join(' ')} && printf 'typed-value-42' | kw secret set t/v && kw read t/v`,
    [
      ['new vault passphrase: ', 'tty passphrase 1x\x7f2\r'], // typo, backspace, fixed
      ['new vault passphrase again: ', 'tty passphrase 12\r'],
      ['keyward passphrase: ', 'tty passphrase 12\r'],
      ['keyward passphrase: ', 'tty passphrase 12\r'],
    ],
  );
  assert.equal(t.exit, 0, t.out);
  assert.match(t.out, /Initialized keyward vault/);
  assert.match(t.out, /typed-value-42/);
  assert.doesNotMatch(t.out, /tty passphrase/, 'the passphrase is never echoed');
  // The same passphrase works from a file afterwards: the terminal path read the same bytes.
  const r = kw(['read', 't/v'], {
    env: { ...h.env, KEYWARD_PASSPHRASE_FILE: writePass(h, 'tty passphrase 12') },
  });
  assert.equal(r.stdout, 'typed-value-42');
});

test('two different passphrases at init are refused and nothing is created', () => {
  const h = makeHome();
  const t = onTerminal(
    h,
    `kw init ${FAST_KDF.join(' ')}; echo "RC=$?"; ls '${h.home}' 2>/dev/null | grep -c vault.kw`,
    [
      ['new vault passphrase: ', 'first passphrase\r'],
      ['again: ', 'second passphrase\r'],
    ],
  );
  assert.match(t.out, /the two passphrases differ/);
  assert.match(t.out, /RC=2/);
  assert.match(t.out, /\n0\r?\n/);
});

test('Ctrl-C at the passphrase prompt cancels (exit 6) and the terminal echoes again afterwards', () => {
  const h = makeHome();
  kw(['init', ...FAST_KDF], { env: h.env });
  const t = onTerminal(
    h,
    `kw secret list; echo "RC=$?"; stty -a | tr ' ' '\\n' | grep -x -e echo -e -echo`,
    [['keyward passphrase: ', 'half typed\x03']],
  );
  assert.match(t.out, /cancelled at the prompt/);
  assert.match(t.out, /RC=6/);
  assert.match(t.out, /\necho\r?\n/, 'echo is back on');
});

test('a secret value typed on a terminal is hidden', () => {
  const h = makeHome();
  kw(['init', ...FAST_KDF], { env: h.env });
  const t = onTerminal(h, `kw secret set typed/v --passphrase-file '${h.passFile}'`, [
    ['value of typed/v (hidden): ', 'invisible-value\r'],
  ]);
  assert.equal(t.exit, 0, t.out);
  assert.doesNotMatch(t.out, /invisible-value/);
  assert.equal(kw(['read', 'typed/v'], { env: h.env }).stdout, 'invisible-value');
});

test('init --force on a terminal asks for "yes"; anything else changes nothing', () => {
  const h = makeHome();
  kw(['init', ...FAST_KDF], { env: h.env });
  const t = onTerminal(
    h,
    `kw init --force --passphrase-file '${h.passFile}' ${FAST_KDF.join(' ')}; echo "RC=$?"`,
    [['Type "yes": ', 'no\r']],
  );
  assert.match(t.out, /not confirmed; nothing was changed/);
  assert.match(t.out, /RC=2/);
});

function writePass(h: Home, p: string): string {
  const f = path.join(h.dir, 'typed-pass');
  fs.writeFileSync(f, `${p}\n`, { mode: 0o600 });
  return f;
}

test('a background job that needs a passphrase is told there is no terminal for it, not an internal error', () => {
  const h = makeHome();
  // Job control on, so the job gets a process group of its own that is not the terminal's
  // foreground; SIGTTOU and SIGTTIN ignored, as many shells leave them for such jobs (a
  // terminal change then fails with EIO instead of stopping the job).
  const t = onTerminal(
    h,
    `set -m; trap '' TTOU TTIN; kw init ${FAST_KDF.join(' ')} & wait $!; echo "JOB=$?"`,
    [],
  );
  assert.match(t.out, /no terminal to ask the passphrase on/);
  assert.match(t.out, /JOB=2/);
  assert.doesNotMatch(t.out, /internal error|tcsetattr|a bug in keyward/);
});

test('a wrong passphrase typed on a terminal gets three tries, each failure recorded; a file gets one', () => {
  const h = makeHome();
  assert.equal(kw(['init', ...FAST_KDF], { env: h.env }).code, 0);
  const good = `${PASSPHRASE}\r`;
  let t = onTerminal(h, `kw secret list; echo "RC=$?"`, [
    ['keyward passphrase: ', 'wrong one\r'],
    ['keyward passphrase: ', 'wrong two\r'],
    ['keyward passphrase: ', good],
  ]);
  assert.match(t.out, /try again \(2 of 3\)/);
  assert.match(t.out, /try again \(3 of 3\)/);
  assert.match(t.out, /RC=0/);
  t = onTerminal(h, `kw secret list; echo "RC=$?"`, [
    ['keyward passphrase: ', 'wrong one\r'],
    ['keyward passphrase: ', 'wrong two\r'],
    ['keyward passphrase: ', 'wrong three\r'],
  ]);
  assert.match(t.out, /RC=4/);
  const failures = auditEntries(h).filter((e) => e.type === 'vault.unlock_failed');
  assert.equal(failures.length, 5);
  // From a file: one try, no second prompt.
  const r = kw(['secret', 'list'], {
    env: { ...h.env, KEYWARD_PASSPHRASE_FILE: writePass(h, 'wrong from a file') },
  });
  assert.equal(r.code, 4);
  assert.doesNotMatch(r.stderr, /try again \(\d of/);
});

test('keyward unlock on a terminal gives the agent three tries too, each failure recorded by the agent', () => {
  const h = makeHome();
  assert.equal(kw(['init', ...FAST_KDF], { env: h.env }).code, 0);
  const sockets = { KEYWARD_SOCKET_DIR: path.join(h.dir, 'run') };
  const env: NodeJS.ProcessEnv = { ...h.env, ...sockets };
  delete env['KEYWARD_PASSPHRASE_FILE'];
  assert.equal(kw(['agent', 'start'], { env }).code, 0);
  try {
    const t = onTerminal(
      h,
      `kw unlock; echo "RC=$?"`,
      [
        ['keyward passphrase: ', 'wrong one\r'],
        ['keyward passphrase: ', 'wrong two\r'],
        ['keyward passphrase: ', `${PASSPHRASE}\r`],
      ],
      sockets,
    );
    assert.match(t.out, /try again \(2 of 3\)/);
    assert.match(t.out, /try again \(3 of 3\)/);
    assert.match(t.out, /RC=0/);
    const st = JSON.parse(kw(['status', '--json'], { env }).stdout) as { locked: boolean };
    assert.equal(st.locked, false, 'the third try unlocked the agent');
  } finally {
    kw(['agent', 'stop'], { env });
  }
  const failed = auditEntries(h).filter((e) => e.type === 'vault.unlock_failed');
  assert.equal(failed.length, 2, 'each wrong try recorded');
});

test('on a terminal, argon2id above the interactive cost shows "deriving key…" while it runs, then erases it; a cheap one shows nothing', () => {
  const slow = makeHome();
  const t = onTerminal(slow, `kw init --kdf-ops 3 --kdf-mem-mib 16 && kw secret list`, [
    ['new vault passphrase: ', 'tty passphrase 12\r'],
    ['new vault passphrase again: ', 'tty passphrase 12\r'],
    ['keyward passphrase: ', 'tty passphrase 12\r'],
  ]);
  assert.equal(t.exit, 0, t.out);
  assert.ok(t.out.includes('keyward: deriving key…\r\x1b[K'), `shown, then erased: ${t.out}`);
  const quick = makeHome();
  const q = onTerminal(quick, `kw init ${FAST_KDF.join(' ')} && kw secret list`, [
    ['new vault passphrase: ', 'tty passphrase 12\r'],
    ['new vault passphrase again: ', 'tty passphrase 12\r'],
    ['keyward passphrase: ', 'tty passphrase 12\r'],
  ]);
  assert.equal(q.exit, 0, q.out);
  assert.doesNotMatch(q.out, /deriving key/);
});

test('policy apply on a terminal shows every change against the policy in force, the proxy and operators too, before it asks; no applies nothing, yes applies', () => {
  const h = makeHome();
  assert.equal(kw(['init', ...FAST_KDF], { env: h.env }).code, 0);
  // What a process of the user appended to the person's own edit: a proxy binding that sends
  // github/token to its host, and its own sign-in provider for operators.
  const edited = path.join(h.dir, 'policy.yaml');
  fs.writeFileSync(
    edited,
    `${DEFAULT_POLICY}\nproxy:\n  hosts:\n    attacker.example: { secret: github/token }\noperators:\n  oidc:\n    issuer: https://evil.example/\n    client_id: keyward\n    allowed_groups: [sre]\n`,
  );
  const before = kw(['policy', 'history', '--json'], { env: h.env }).stdout;
  const no = onTerminal(h, `kw policy apply '${edited}'; echo "RC=$?"`, [
    ['keyward passphrase: ', `${PASSPHRASE}\r`],
    ['operators, proxy changed)? [y/N] ', 'n\r'],
  ]);
  // Shown before the question, in full.
  const asked = no.out.indexOf('Apply these changes (');
  const proxy = no.out.indexOf('~ proxy.hosts.attacker.example.secret: (none) -> "github/token"');
  const issuer = no.out.indexOf('~ operators.oidc.issuer: (none) -> "https://evil.example/"');
  assert.ok(proxy > 0 && proxy < asked, no.out);
  assert.ok(issuer > 0 && issuer < asked, no.out);
  assert.match(no.out, /not applied: the answer was no/);
  assert.match(no.out, /RC=6/);
  assert.equal(
    kw(['policy', 'history', '--json'], { env: h.env }).stdout,
    before,
    'nothing applied',
  );
  // Input from the terminal, but no terminal of its own to ask on (a new session): refused.
  const away = onTerminal(
    h,
    `KEYWARD_PASSPHRASE_FILE='${writePass(h, PASSPHRASE)}' setsid -w '${process.execPath}' '${BIN}' policy apply '${edited}'; echo "RC=$?"`,
    [],
  );
  assert.match(away.out, /can not ask on this terminal/);
  assert.match(away.out, /RC=2/);
  assert.equal(
    kw(['policy', 'history', '--json'], { env: h.env }).stdout,
    before,
    'nothing applied',
  );
  const yes = onTerminal(h, `kw policy apply '${edited}'; echo "RC=$?"`, [
    ['keyward passphrase: ', `${PASSPHRASE}\r`],
    ['operators, proxy changed)? [y/N] ', 'y\r'],
  ]);
  assert.match(
    yes.out,
    /Applied policy version 2 .*: \+0 rules, -0 rules, ~0 modified, operators, proxy changed/,
  );
  assert.match(yes.out, /RC=0/);
});

test('--sha256 binds policy apply to the text reviewed', () => {
  const h = makeHome();
  assert.equal(kw(['init', ...FAST_KDF], { env: h.env }).code, 0);
  const f = path.join(h.dir, 'p.yaml');
  fs.writeFileSync(f, `${DEFAULT_POLICY}# reviewed\n`);
  const wrong = kw(['policy', 'apply', f, '--sha256', 'a'.repeat(64)], { env: h.env });
  assert.equal(wrong.code, 2, wrong.stderr);
  assert.match(wrong.stderr, /is not the text --sha256 names/);
  const sha = createHash('sha256').update(fs.readFileSync(f)).digest('hex');
  const ok = kw(['policy', 'apply', f, '--sha256', sha], { env: h.env });
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stderr, /Changes to the policy in force/);
});

test("the agent's terminal takes back a prompt whose request ended, and never shows one that ended while it waited its turn", async () => {
  const input = new PassThrough();
  const out: string[] = [];
  const t = new TerminalChannel({ input, write: (x) => out.push(x) });
  const first = new AbortController();
  const second = new AbortController();
  const a = t.ask('keyward: first request. Allow?', 600_000, first.signal);
  const b = t.ask('keyward: second request. Allow?', 600_000, second.signal);
  const c = t.ask('keyward: third request. Allow?', 600_000);
  // The second ends while the first is on screen; then the first ends.
  while (!out.join('').includes('first request')) await new Promise((r) => setImmediate(r));
  second.abort();
  first.abort();
  assert.equal(await a, false);
  assert.equal(await b, false);
  const shown = out.join('');
  assert.match(shown, /first request\. Allow\?[^]*that request has ended[^]*no longer asked/);
  assert.doesNotMatch(shown, /second request/);
  // The third is asked, and its own challenge still allows it.
  while (!out.join('').includes('third request')) await new Promise((r) => setImmediate(r));
  const challenge = /type (\w{4}) and Enter/.exec(
    out.join('').split('third request')[1] ?? '',
  )?.[1];
  assert.ok(challenge, shown);
  input.write(`${challenge}\n`);
  assert.equal(await c, true);
  assert.match(out.join(''), /allowed\.\n$/);
});
