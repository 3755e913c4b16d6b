/**
 * At rest the vault reveals nothing but sizes: no value, no name, in the file or anything left
 * next to it.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { initHome, kw } from './helpers.js';

function everyByteUnder(dir: string): Buffer {
  const parts: Buffer[] = [];
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    if (fs.statSync(p).isFile()) parts.push(Buffer.from(name), fs.readFileSync(p));
  }
  return Buffer.concat(parts);
}

test('the vault file holds no secret value and no secret name in plaintext, in any common encoding', () => {
  const h = initHome();
  const secrets: Record<string, string> = {
    'payments/stripe-live-key': 'sk_live_51HxQwErTyUiOpAsDfGh',
    DATABASE_URL: 'postgres://admin:pa55w0rd-xyz@db.internal/prod',
  };
  for (const [name, value] of Object.entries(secrets)) {
    assert.equal(kw(['secret', 'set', name], { env: h.env, input: value }).code, 0);
  }
  kw(['rekey'], { env: h.env });
  const disk = everyByteUnder(h.home);
  for (const [name, value] of Object.entries(secrets)) {
    for (const s of [name, value, value.slice(0, 12), value.slice(-12)]) {
      for (const encoded of [
        Buffer.from(s),
        Buffer.from(s, 'utf16le'),
        Buffer.from(Buffer.from(s).toString('hex')),
        Buffer.from(Buffer.from(s).toString('base64').slice(0, 12)),
      ]) {
        assert.equal(disk.indexOf(encoded), -1, `found ${s} on disk`);
      }
    }
  }
});

test('the vault file size reveals sizes only: two vaults with equal-length values have equal-length files', () => {
  const a = initHome();
  const b = initHome();
  assert.equal(kw(['secret', 'set', 'aaaa'], { env: a.env, input: 'value-one-1' }).code, 0);
  assert.equal(kw(['secret', 'set', 'bbbb'], { env: b.env, input: 'other-two-2' }).code, 0);
  assert.equal(fs.statSync(a.vaultFile).size, fs.statSync(b.vaultFile).size);
});
