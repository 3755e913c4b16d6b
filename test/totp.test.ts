/**
 * TOTP as an approval factor: RFC 4226 vectors, single use, and a real authenticator (oathtool).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, test } from 'node:test';
import { hotp, verifyTotp } from '../src/approval/index.js';
import { secureTake } from '../src/lib/secure.js';
import {
  agentHome,
  kwAsync,
  pendingId,
  startAgent,
  stopAgent,
  type AgentHome,
} from './agent-helpers.js';
import path from 'node:path';
import { BIN, kw, ROOT } from './helpers.js';

const RFC_SECRET = () => secureTake(Buffer.from('12345678901234567890'));

test('HOTP matches the RFC 4226 appendix D vectors', () => {
  const expected = [
    '755224',
    '287082',
    '359152',
    '969429',
    '338314',
    '254676',
    '287922',
    '162583',
    '399871',
    '520489',
  ];
  assert.deepEqual(
    expected.map((_, i) => hotp(RFC_SECRET(), i)),
    expected,
  );
});

test('a TOTP code is accepted within one step of drift, and only once', () => {
  const s = RFC_SECRET();
  const now = 59_000; // step 1
  assert.equal(verifyTotp(s, hotp(s, 1), now, -1), 1);
  assert.equal(verifyTotp(s, hotp(s, 2), now, -1), 2, 'one step ahead (clock drift)');
  assert.equal(verifyTotp(s, hotp(s, 1), now, 1), undefined, 'single-use: the same step again');
  assert.equal(verifyTotp(s, hotp(s, 5), now, -1), undefined, 'too far');
  assert.equal(verifyTotp(s, '12345', now, -1), undefined);
});

const hasOathtool = spawnSync('sh', ['-c', 'command -v oathtool']).status === 0;
const skip =
  !hasOathtool && process.env['CI'] !== 'true'
    ? 'needs oathtool (apt-get install oathtool)'
    : false;
const homes: AgentHome[] = [];
after(async () => {
  for (const h of homes) await stopAgent(h);
});

const TOTP_RULE = `version: 1
rules:
  - name: prod
    targets: ["prod/**"]
    decision: approve
    high_value: true
    approve: { mode: totp, timeout: 30s }
`;

test(
  'a high-value read waits for a TOTP code from an authenticator (oathtool); a used code is refused',
  { skip },
  async () => {
    const h = agentHome(TOTP_RULE);
    homes.push(h);
    const e = kw(['totp', 'enroll', '--no-qr'], { env: h.env });
    assert.equal(e.code, 0, e.stderr);
    const secret = /[?&]secret=([A-Z2-7]+)&/.exec(e.stdout)?.[1];
    assert.ok(secret, e.stdout);
    assert.match(
      e.stdout,
      /^otpauth:\/\/totp\/keyward:vault-[0-9a-f]{8}\?secret=[A-Z2-7]{32}&issuer=keyward&algorithm=SHA1&digits=6&period=30\n$/,
    );
    assert.equal(
      kw(['secret', 'set', 'prod/db'], { env: h.env, input: 'prod-db-password' }).code,
      0,
    );
    await startAgent(h);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    const code = () =>
      spawnSync('oathtool', ['--totp', '-b', secret], { encoding: 'utf8' }).stdout.trim();

    const reader = kwAsync(['read', 'prod/db'], h.env);
    const id = await pendingId(h);
    const approve = (reqId: string, c: string) =>
      kw(['approve', reqId, '--code', '-'], { env: h.env, input: `${c}\n` });
    assert.equal(approve(id, '000000').code, 4, 'a wrong code');
    const c = code();
    // On the command line the code is refused before it is sent: any process of the user can
    // read a command line (/proc/PID/cmdline) and spend the code on its own request first.
    const onArgv = kw(['approve', id, '--code', c], { env: h.env });
    assert.equal(onArgv.code, 2, onArgv.stderr);
    assert.match(onArgv.stderr, /a TOTP code on the command line can be read by any process/);
    assert.equal(await pendingId(h), id, 'still pending, the code unspent');
    // On a terminal, --code alone asks for it.
    const typed = spawnSync(
      'python3',
      [
        path.join(ROOT, 'test/pty-driver.py'),
        JSON.stringify({
          argv: [process.execPath, BIN, 'approve', id, '--code'],
          env: h.env,
          steps: [[`TOTP code to approve ${id}: `, `${c}\r`]],
        }),
      ],
      { encoding: 'utf8' },
    );
    assert.match(typed.stdout, /approved [0-9a-f]+\s+EXIT=0\s*$/, typed.stdout + typed.stderr);
    const ok = { code: 0, stderr: '' };
    assert.equal(ok.code, 0, ok.stderr);
    const r = await reader;
    assert.equal(r.stdout, 'prod-db-password');

    // high_value: never remembered, so the next read asks again; the same code is spent.
    const reader2 = kwAsync(['read', 'prod/db'], h.env);
    const id2 = await pendingId(h);
    const again = approve(id2, c);
    assert.equal(again.code, 4);
    assert.match(again.stderr, /already used/);
    assert.equal(kw(['deny', id2], { env: h.env }).code, 0);
    assert.equal((await reader2).code, 6);
  },
);

test('a rule asking for TOTP with nothing enrolled is denied at once', async () => {
  const h = agentHome(TOTP_RULE);
  homes.push(h);
  assert.equal(kw(['secret', 'set', 'prod/db'], { env: h.env, input: 'prod-db-password' }).code, 0);
  await startAgent(h);
  kw(['unlock'], { env: h.env });
  const r = kw(['read', 'prod/db'], { env: h.env });
  assert.equal(r.code, 6);
  assert.match(r.stderr, /no approval channel can give totp approval/);
});
