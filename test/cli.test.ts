/**
 * The CLI as a user runs it: real processes, real files.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { spawn } from 'node:child_process';
import { loginOverHttp, rawRequest } from './console-helpers.js';
import { BIN, FAST_KDF, initHome, kw, makeHome } from './helpers.js';

/** What a person does in the console: log in with the passphrase, press Approve. */
async function approveAsAPerson(url: string, id: string, passphrase: string): Promise<number> {
  const auth = await loginOverHttp(url, passphrase);
  const r = await rawRequest(url, {
    method: 'POST',
    path: `/api/approvals/${id}/approve`,
    headers: { ...auth, 'Content-Type': 'application/json' },
    body: '{}',
  });
  return r.status;
}

const sha = (p: string) => createHash('sha256').update(fs.readFileSync(p)).digest('hex');

describe('init', () => {
  test('creates a private home (0700) and vault (0600), and says where', () => {
    const h = makeHome();
    const r = kw(['init', ...FAST_KDF], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Initialized keyward vault [0-9a-f]{32} at .*vault\.kw\n$/);
    assert.equal(fs.statSync(h.home).mode & 0o777, 0o700);
    assert.equal(fs.statSync(h.vaultFile).mode & 0o777, 0o600);
  });

  test('with a vault present, says Already initialized, exits 0 and changes nothing', () => {
    const h = initHome();
    const before = sha(h.vaultFile);
    const r = kw(['init', ...FAST_KDF], { env: h.env });
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^Already initialized: /);
    assert.equal(sha(h.vaultFile), before);
  });

  test('--force without a terminal and without --yes refuses (exit 2) and changes nothing', () => {
    const h = initHome();
    const before = sha(h.vaultFile);
    const r = kw(['init', '--force', ...FAST_KDF], { env: h.env });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /needs a confirmation/);
    assert.match(r.stderr, /hint: add --yes/);
    assert.equal(sha(h.vaultFile), before);
  });

  test('--force --yes moves the old vault aside (nothing lost) and creates a new empty one', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'kept'], { env: h.env, input: 'old-value-123' }).code, 0);
    const before = sha(h.vaultFile);
    const r = kw(['init', '--force', '--yes', ...FAST_KDF], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    const backup = /Moved the previous vault to (\S+)/.exec(r.stdout)?.[1];
    assert.ok(backup, r.stdout);
    assert.equal(sha(backup), before);
    assert.equal(fs.statSync(backup).mode & 0o777, 0o600);
    assert.equal(kw(['read', 'kept'], { env: h.env }).code, 3);
  });

  test('refuses a new passphrase shorter than 8 bytes (exit 2) and creates nothing', () => {
    const h = makeHome('short');
    const r = kw(['init', ...FAST_KDF], { env: h.env });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /shorter than 8 bytes/);
    assert.equal(fs.existsSync(h.vaultFile), false);
  });

  test('refuses KDF parameters out of range with a usage error', () => {
    const h = makeHome();
    const r = kw(['init', '--kdf-mem-mib', '1'], { env: h.env });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^keyward: error: .*kdf-mem-mib.*8 to 4096/);
  });
});

describe('secrets', () => {
  test('set, list, read and rm round-trip, and read prints the exact bytes', () => {
    const h = initHome();
    let r = kw(['secret', 'set', 'github/token'], { env: h.env, input: 'ghp_abc123\n' });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /stored github\/token \(10 bytes\)/);
    r = kw(['read', 'github/token'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      r.stdout,
      'ghp_abc123',
      'one trailing newline stripped; none added off a terminal',
    );
    r = kw(['secret', 'list', '--json'], { env: h.env });
    const list = JSON.parse(r.stdout) as Array<{ name: string; size: number }>;
    assert.deepEqual(
      list.map((e) => [e.name, e.size]),
      [['github/token', 10]],
    );
    assert.doesNotMatch(r.stdout, /ghp_abc123/);
    r = kw(['secret', 'rm', 'github/token'], { env: h.env });
    assert.equal(r.code, 0);
    assert.equal(kw(['read', 'github/token'], { env: h.env }).code, 3);
  });

  test('set again updates the value and keeps the creation time', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'k'], { env: h.env, input: 'first-value' }).code, 0);
    const created = (
      JSON.parse(kw(['secret', 'list', '--json'], { env: h.env }).stdout) as Array<{
        created: string;
      }>
    )[0]?.created;
    const r = kw(['secret', 'set', 'k'], { env: h.env, input: 'second-value' });
    assert.match(r.stderr, /updated k/);
    assert.equal(kw(['read', 'k'], { env: h.env }).stdout, 'second-value');
    const after = JSON.parse(kw(['secret', 'list', '--json'], { env: h.env }).stdout) as Array<{
      created: string;
    }>;
    assert.equal(after[0]?.created, created);
  });

  test('--raw keeps trailing newlines; binary values round-trip byte for byte', () => {
    const h = initHome();
    const bin = Buffer.from([0, 1, 2, 255, 10, 13, 10]);
    assert.equal(kw(['secret', 'set', 'bin', '--raw'], { env: h.env, input: bin }).code, 0);
    assert.deepEqual(kw(['read', 'bin'], { env: h.env }).stdoutBytes, bin);
  });

  test('a 1 MB value round-trips', () => {
    const h = initHome();
    const big = Buffer.alloc(1024 * 1024, 'x');
    big.write('head', 0);
    big.write('tail', big.length - 4);
    assert.equal(kw(['secret', 'set', 'big', '--raw'], { env: h.env, input: big }).code, 0);
    assert.deepEqual(kw(['read', 'big'], { env: h.env }).stdoutBytes, big);
  });

  test('a value over 16 MiB is refused (exit 2) and the vault is unchanged', () => {
    const h = initHome();
    const before = sha(h.vaultFile);
    const r = kw(['secret', 'set', 'huge'], {
      env: h.env,
      input: Buffer.alloc(16 * 1024 * 1024 + 10, 'x'),
    });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /larger than 16777216 bytes/);
    assert.equal(sha(h.vaultFile), before);
  });

  for (const [label, input] of [
    ['empty', ''],
    ['only a newline', '\n'],
  ] as const) {
    test(`an ${label} value is refused (exit 2) with a hint`, () => {
      const h = initHome();
      const r = kw(['secret', 'set', 'x'], { env: h.env, input });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /keyward: error: the secret value is empty\nkeyward: hint: /);
    });
  }

  const badNames: Array<[string, string]> = [
    ['a space', 'has space'],
    ['a leading slash', '/abs'],
    ['a trailing slash', 'dir/'],
    ['an empty part', 'a//b'],
    ['a dot-dot part', 'a/../b'],
    ['unicode', 'tökén'],
    ['a right-to-left mark', 'evil\u202egnp.exe'],
    ['a leading dash', '-rf'],
    ['10 KB', 'a'.repeat(10 * 1024)],
    ['129 bytes', 'a'.repeat(129)],
  ];
  for (const [label, name] of badNames) {
    test(`a name with ${label} is refused before any input is read (exit 2)`, () => {
      const h = initHome();
      const r = kw(['secret', 'set', '--', name], { env: h.env, input: 'value-123' });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /keyward: error: (invalid secret name|a secret name is)/);
      assert.match(r.stderr, /keyward: hint: names are 1-128 ASCII/);
      assert.doesNotMatch(r.stderr, /[\u0080-\uffff]/, 'the name is shown escaped');
    });
  }

  test('an empty name is refused', () => {
    const h = initHome();
    const r = kw(['secret', 'set', ''], { env: h.env, input: 'value-123' });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /a secret name is empty/);
  });

  test('names at the limits are accepted: 128 bytes, dots, dashes, slashes', () => {
    const h = initHome();
    for (const name of ['a'.repeat(128), 'AWS_SECRET_ACCESS_KEY', 'org/team/app.prod-1', '0']) {
      assert.equal(kw(['secret', 'set', name], { env: h.env, input: 'value-123' }).code, 0, name);
    }
  });

  test('reading or removing a missing secret exits 3 with a hint', () => {
    const h = initHome();
    for (const args of [
      ['read', 'nope'],
      ['secret', 'rm', 'nope'],
    ]) {
      const r = kw(args, { env: h.env });
      assert.equal(r.code, 3);
      assert.match(
        r.stderr,
        /no secret named nope\nkeyward: hint: see the names with: keyward secret list/,
      );
    }
  });

  test('without a vault, commands exit 3 and point at keyward init', () => {
    const h = makeHome();
    const r = kw(['secret', 'list'], { env: h.env });
    assert.equal(r.code, 3);
    assert.match(r.stderr, /hint: create one with: keyward init/);
  });
});

describe('passphrases', () => {
  test('a wrong passphrase exits 4 and leaves the vault byte for byte as it was', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaa' }).code, 0);
    const before = sha(h.vaultFile);
    const wrong = path.join(h.dir, 'wrong');
    fs.writeFileSync(wrong, 'wrong passphrase here\n', { mode: 0o600 });
    for (const args of [
      ['read', 'a'],
      ['secret', 'set', 'b'],
      ['secret', 'rm', 'a'],
      ['rekey'],
      ['passwd'],
    ]) {
      const r = kw(['--passphrase-file', wrong, ...args], { env: h.env, input: 'value-bbb' });
      assert.equal(r.code, 4, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /keyward: error: wrong passphrase/);
    }
    assert.equal(sha(h.vaultFile), before);
  });

  test('with no terminal and no passphrase file, keyward says how to give one (exit 2)', () => {
    const h = initHome();
    const env = { ...h.env };
    delete env['KEYWARD_PASSPHRASE_FILE'];
    const r = kw(['secret', 'list'], { env });
    assert.equal(r.code, 2);
    assert.match(
      r.stderr,
      /no terminal to ask the passphrase on\nkeyward: hint: give a passphrase file/,
    );
  });

  test('a passphrase file others can read is refused (exit 8) before it is read', () => {
    const h = initHome();
    fs.chmodSync(h.passFile, 0o644);
    const r = kw(['secret', 'list'], { env: h.env });
    assert.equal(r.code, 8);
    assert.match(
      r.stderr,
      /refusing the passphrase file .*others can read it\nkeyward: hint: chmod 600/,
    );
  });

  test('passwd changes the passphrase: the old one stops working, values stay', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaa' }).code, 0);
    const next = path.join(h.dir, 'next');
    fs.writeFileSync(next, 'a brand new passphrase\n', { mode: 0o600 });
    const r = kw(['passwd', '--new-passphrase-file', next, ...FAST_KDF], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(kw(['read', 'a'], { env: h.env }).code, 4);
    const env = { ...h.env, KEYWARD_PASSPHRASE_FILE: next };
    assert.equal(kw(['read', 'a'], { env }).stdout, 'value-aaa');
  });

  test('rekey changes the key id, keeps every value and the passphrase', () => {
    const h = initHome();
    assert.equal(kw(['secret', 'set', 'a'], { env: h.env, input: 'value-aaa' }).code, 0);
    assert.equal(kw(['secret', 'set', 'b'], { env: h.env, input: 'value-bbb' }).code, 0);
    const keyId = () =>
      (JSON.parse(kw(['whoami', '--json'], { env: h.env }).stdout) as { keyId: string }).keyId;
    const before = keyId();
    const r = kw(['rekey'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    assert.notEqual(keyId(), before);
    assert.match(r.stdout, new RegExp(`New key id: ${keyId()}`));
    assert.equal(kw(['read', 'a'], { env: h.env }).stdout, 'value-aaa');
    assert.equal(kw(['read', 'b'], { env: h.env }).stdout, 'value-bbb');
  });
});

describe('whoami, usage', () => {
  test('whoami needs no passphrase and prints no secret', () => {
    const h = initHome();
    assert.equal(
      kw(['secret', 'set', 'a/name'], { env: h.env, input: 'value-visible-nowhere' }).code,
      0,
    );
    const env = { ...h.env };
    delete env['KEYWARD_PASSPHRASE_FILE'];
    const r = kw(['whoami', '--json'], { env });
    assert.equal(r.code, 0, r.stderr);
    const w = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(w['initialized'], true);
    assert.match(String(w['vaultId']), /^[0-9a-f]{32}$/);
    assert.equal(w['agent'], 'not running');
    assert.doesNotMatch(r.stdout, /value-visible-nowhere|a\/name/);
    assert.equal(kw(['whoami'], { env }).code, 0);
  });

  test('init without KDF options uses argon2id, 3 passes, 256 MiB: read from the header bytes and by whoami', () => {
    const h = makeHome();
    const r = kw(['init'], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
    // docs/FORMAT.md: slot_count at 48, then the first slot: type (1), length (2), alg (1),
    // opslimit (u32), memlimit in KiB (u32).
    const b = fs.readFileSync(path.join(h.home, 'vault.kw'));
    assert.equal(b.readUInt8(48), 1, 'one key slot');
    assert.deepEqual(
      [
        b.readUInt8(49),
        b.readUInt16BE(50),
        b.readUInt8(52),
        b.readUInt32BE(53),
        b.readUInt32BE(57),
      ],
      [1, 97, 1, 3, 256 * 1024],
      'a passphrase slot: argon2id v1.3, opslimit 3, memlimit 262144 KiB',
    );
    const w = JSON.parse(kw(['whoami', '--json'], { env: h.env }).stdout) as { unlock: string[] };
    assert.deepEqual(w.unlock, ['passphrase (argon2id, 3 passes, 256 MiB)']);
  });

  test('whoami without a vault says how to make one', () => {
    const h = makeHome();
    const r = kw(['whoami'], { env: h.env });
    assert.equal(r.code, 0);
    assert.match(r.stdout, /vault: +none \(create one with: keyward init\)/);
  });

  test('unknown commands and options are usage errors (exit 2) in keyward shape, without a stack', () => {
    const h = makeHome();
    for (const args of [['frobnicate'], ['init', '--bogus'], ['read'], ['secret', 'set']]) {
      const r = kw(args, { env: h.env });
      assert.equal(r.code, 2, args.join(' '));
      assert.match(r.stderr, /keyward: error: /);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    }
  });

  test('a secret value is never accepted as an argument: the refusal says why, shows the stdin form, and never echoes it', () => {
    const h = initHome();
    const r = kw(['secret', 'set', 'x', 'the-value-typed'], { env: h.env, input: 'from-stdin' });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /never goes on the command line: it lands in your shell history/);
    assert.match(r.stderr, /rotate it/);
    assert.match(r.stderr, /\| keyward secret set x/);
    assert.doesNotMatch(r.stderr, /the-value-typed|too many arguments/);
    assert.equal(kw(['secret', 'list'], { env: h.env }).stdout.includes('x'), false);
  });

  test('before init, audit and policy commands say there is no vault yet (exit 3), passphrase file or not', () => {
    const h = makeHome();
    for (const args of [
      ['audit', 'tail'],
      ['audit', 'verify'],
      ['policy', 'explain', '--target', 'a/b'],
      ['policy', 'show'],
    ]) {
      const r = kw(args, { env: h.env });
      assert.equal(r.code, 3, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /no vault yet/);
      assert.match(r.stderr, /keyward init/);
      assert.doesNotMatch(r.stderr, /no passphrase source|audit init/);
    }
  });

  test('--help and --version exit 0', () => {
    const h = makeHome();
    assert.equal(kw(['--help'], { env: h.env }).code, 0);
    assert.match(kw(['--version'], { env: h.env }).stdout, /^\d+\.\d+\.\d+\n$/);
  });

  test('the demo runs to the end on a throwaway home, a person approving in the console', async () => {
    const h = makeHome();
    // The person: reads the address and passphrase the demo shows, logs in, presses Approve.
    const c = spawn(process.execPath, [BIN, 'demo'], {
      env: h.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let approved: Promise<number> | undefined;
    c.stderr.on('data', (d: Buffer) => (out += d.toString()));
    c.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m =
        /waiting for approval of request ([0-9a-f]{8})[^]*approve it in the console, (http:\/\/localhost:\d+\/)[^]*passphrase:\n>>>\s+(\S+)/.exec(
          out,
        );
      if (m && !approved) approved = approveAsAPerson(m[2] ?? '', m[1] ?? '', m[3] ?? '');
    });
    const code = await new Promise<number | null>((r) => c.on('exit', r));
    assert.equal(code, 0, out);
    assert.equal(await approved, 200);
    assert.match(out, /ghp_demo_token_123456/);
    assert.match(out, /\(exit 4\)/);
    assert.match(out, /console: http:\/\/localhost:\d+\//);
    assert.match(out, /\(a person approved: the value was released/);
    assert.match(out, /the agent is locked[^]*\(exit 5\)/);
    assert.match(out, /^Done\./m);
  });
});

describe('start-up', () => {
  test('each top-level command loads from the one module the table in main.ts names', async () => {
    const { buildProgram, COMMAND_GROUPS } = await import('../src/cli/main.js');
    const quiet = { stdout: () => undefined, stderr: () => undefined } as never;
    const all = (await buildProgram(quiet, [])).commands.map((c) => c.name());
    const listed = COMMAND_GROUPS.flatMap((g) => [...g.commands]);
    assert.deepEqual(
      [...listed].sort(),
      [...all].sort().filter((n) => n !== 'help'),
    );
    for (const g of COMMAND_GROUPS)
      for (const name of g.commands) {
        const one = (await buildProgram(quiet, ['--passphrase-file', 'x', name])).commands.map(
          (c) => c.name(),
        );
        assert.ok(one.includes(name), `${name} is registered by its group`);
        assert.ok(one.length < all.length, `${name} loads only its own group`);
      }
  });
});

describe('agent run without the parser', () => {
  test('only the exact shapes `agent start` spawns skip the parser; every other spelling goes through it', async () => {
    const { agentRunShape } = await import('../src/cli/agent-run.js');
    assert.deepEqual(agentRunShape(['agent', 'run']), { readyFd: undefined, console: true });
    assert.deepEqual(agentRunShape(['agent', 'run', '--ready-fd', '3']), {
      readyFd: 3,
      console: true,
    });
    assert.deepEqual(
      agentRunShape(['--allow-debugger', 'agent', 'run', '--ready-fd', '3', '--no-console']),
      { readyFd: 3, console: false },
    );
    for (const argv of [
      ['agent', 'run', '--ready-fd', 'x'],
      ['agent', 'run', '--ready-fd'],
      ['agent', 'run', '--ready-fd', '12345'],
      ['agent', 'run', '--ready-fd', '2'],
      ['agent', 'run', '--ready-fd', '0'],
      ['agent', 'run', '--no-console', '--ready-fd', '3'],
      ['agent', 'run', '--help'],
      ['agent', 'run', 'extra'],
      ['agent', 'run', '--no-console', '--no-console'],
      ['--passphrase-file', 'p', 'agent', 'run'],
      ['run', 'agent'],
      ['agent', 'start'],
    ])
      assert.equal(agentRunShape(argv), undefined, argv.join(' '));
  });

  test('a shape it does not take is the parser’s: a bad descriptor is a usage error, --help is help', () => {
    const h = makeHome();
    for (const fd of ['x', '2']) {
      const bad = kw(['agent', 'run', '--ready-fd', fd], { env: h.env });
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /keyward: error: .*a descriptor number of 3 or more/);
      assert.doesNotMatch(bad.stderr, /\n\s+at /);
    }
    const help = kw(['agent', 'run', '--help'], { env: h.env });
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--no-console/);
  });
});
