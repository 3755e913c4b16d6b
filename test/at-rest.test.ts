/**
 * At rest the vault reveals nothing but sizes: no value, no name, in the file or anything left
 * next to it.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { everyByteUnder, initHome, kw } from './helpers.js';

test('nothing under the home holds a secret value or a secret name in plaintext, in any common encoding, after any write', () => {
  const h = initHome();
  const secrets: Record<string, string> = {
    'payments/stripe-live-key': 'sk_live_51HxQwErTyUiOpAsDfGh',
    DATABASE_URL: 'postgres://admin:pa55w0rd-xyz@db.internal/prod',
  };
  const removed = { 'old/deploy-token': 'ghp_R3m0v3dT0k3nW1thL0ngT41l' };
  const check = (after: string) => {
    const disk = everyByteUnder(h.home);
    // Positive control: the audit log's clear fields are in what was read.
    assert.ok(disk.includes('"type":"secret.set"'), 'the audit log was not read');
    for (const [name, value] of Object.entries({ ...secrets, ...removed })) {
      for (const s of [name, value, value.slice(0, 12), value.slice(-12)]) {
        for (const encoded of [
          Buffer.from(s),
          Buffer.from(s, 'utf16le'),
          Buffer.from(Buffer.from(s).toString('hex')),
          Buffer.from(Buffer.from(s).toString('base64').slice(0, 12)),
        ]) {
          assert.equal(disk.indexOf(encoded), -1, `found ${s} on disk after ${after}`);
        }
      }
    }
  };
  const ok = (args: string[], input = '') =>
    assert.equal(kw(args, { env: h.env, input }).code, 0, args.join(' '));
  for (const [name, value] of Object.entries({ ...secrets, ...removed })) {
    ok(['secret', 'set', name], value);
    check(`secret set ${name}`);
  }
  // Appended saves: the old value's frame stays in the file until compaction.
  ok(['secret', 'set', 'DATABASE_URL'], 'postgres://admin:an0ther-pa55@db.internal/prod');
  check('a value replaced');
  ok(['secret', 'rm', 'old/deploy-token']);
  check('secret rm');
  ok(['read', 'payments/stripe-live-key']);
  ok(['secret', 'list']);
  check('reads and lists (their audit entries)');
  ok(['rekey']);
  check('rekey');
});

test('the vault file size reveals sizes only: two vaults with equal-length values have equal-length files', () => {
  const a = initHome();
  const b = initHome();
  assert.equal(kw(['secret', 'set', 'aaaa'], { env: a.env, input: 'value-one-1' }).code, 0);
  assert.equal(kw(['secret', 'set', 'bbbb'], { env: b.env, input: 'other-two-2' }).code, 0);
  assert.equal(fs.statSync(a.vaultFile).size, fs.statSync(b.vaultFile).size);
});
