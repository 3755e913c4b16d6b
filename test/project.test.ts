/**
 * Sealed project files (issue 21, in progress): the age layer that wraps a file's data key to its
 * recipients, written and read by keyward in secure memory and checked both ways against Debian's
 * `age` and `age-keygen`, the reference implementation.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { secureFree, secureTake, type SecureBuffer } from '../src/lib/secure.js';
import {
  ageDecrypt,
  ageEncrypt,
  decodeRecipient,
  encodeRecipient,
  publicKeyOf,
} from '../src/project/index.js';
import { readAgeIdentities } from '../src/vault/index.js';

const AGE = ['/usr/bin/age', '/usr/local/bin/age'].find((p) => fs.existsSync(p));
const skip = AGE || process.env['CI'] ? false : 'age is not installed (CI installs it: .ci/run)';

/** A key pair made by age-keygen: its file, its recipient line, and its identity (secure). */
function keygen(dir: string, name: string): { file: string; recipient: string; id: SecureBuffer } {
  const file = path.join(dir, name);
  execFileSync('age-keygen', ['-o', file], { stdio: 'pipe' });
  fs.chmodSync(file, 0o600);
  const recipient = /# public key: (age1\S+)/.exec(fs.readFileSync(file, 'utf8'))?.[1] ?? '';
  const [id] = readAgeIdentities(file);
  assert.ok(id);
  return { file, recipient, id };
}

describe('the age layer of project files', { skip }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-age-'));
  const alice = keygen(dir, 'alice.key');
  const bob = keygen(dir, 'bob.key');
  const eve = keygen(dir, 'eve.key');
  const payload = () => secureTake(Buffer.from('0123456789abcdef0123456789abcdef'));

  test("recipients are age's own: keyward's encoding of a public key is age-keygen's", () => {
    for (const k of [alice, bob]) {
      assert.equal(encodeRecipient(publicKeyOf(k.id)), k.recipient);
      assert.deepEqual(decodeRecipient(k.recipient), publicKeyOf(k.id));
    }
    // A changed character breaks the checksum; another prefix is not a recipient.
    const last = alice.recipient.at(-1) === 'q' ? 'p' : 'q';
    assert.equal(decodeRecipient(alice.recipient.slice(0, -1) + last), undefined);
    assert.equal(decodeRecipient(alice.recipient.toUpperCase()), undefined);
    assert.equal(decodeRecipient(`age2${alice.recipient.slice(4)}`), undefined);
  });

  test('what age encrypts to a recipient, keyward opens with its identity', () => {
    const plain = path.join(dir, 'plain');
    fs.writeFileSync(plain, '0123456789abcdef0123456789abcdef');
    const enc = execFileSync(AGE ?? 'age', ['-r', bob.recipient, '-r', alice.recipient, plain]);
    const got = ageDecrypt(enc, alice.id);
    assert.ok(got);
    assert.equal(got.toString(), '0123456789abcdef0123456789abcdef');
    secureFree(got);
    assert.equal(ageDecrypt(enc, eve.id), undefined, 'eve is no recipient');
  });

  test('what keyward encrypts to several recipients, age opens with each identity', () => {
    const enc = ageEncrypt(payload(), [publicKeyOf(alice.id), publicKeyOf(bob.id)]);
    for (const k of [alice, bob]) {
      const out = execFileSync(AGE ?? 'age', ['-d', '-i', k.file], { input: enc });
      assert.equal(out.toString(), '0123456789abcdef0123456789abcdef');
    }
    const refused = (() => {
      try {
        execFileSync(AGE ?? 'age', ['-d', '-i', eve.file], { input: enc, stdio: 'pipe' });
        return false;
      } catch {
        return true;
      }
    })();
    assert.ok(refused, 'age refuses eve');
  });

  test('a changed byte, a dropped recipient or a cut payload is refused, never misread', () => {
    const enc = ageEncrypt(payload(), [publicKeyOf(alice.id), publicKeyOf(bob.id)]);
    const text = enc.toString('latin1');
    const header = text.indexOf('\n---');
    // Flip a bit in every byte of the header and the payload, one at a time.
    for (let i = 0; i < enc.length; i++) {
      const bad = Buffer.from(enc);
      bad[i] = (bad[i] ?? 0) ^ 0x01;
      let outcome: string;
      try {
        const got = ageDecrypt(bad, alice.id);
        outcome = got === undefined ? 'not a recipient' : `opened: ${got.toString('hex')}`;
        secureFree(got);
      } catch (e) {
        outcome = (e as { code?: string }).code ?? 'error';
      }
      // A flip in bob's stanza leaves alice's, and the header MAC refuses it; a flip in alice's
      // stanza makes it someone else's (or malformed); anything else fails its check.
      assert.ok(
        outcome === 'PROJECT_TAMPERED' || outcome === 'not a recipient',
        `byte ${i} (header ends at ${header}): ${outcome}`,
      );
    }
    // bob's stanza removed (the header edited to drop a recipient): the MAC refuses it.
    const lines = text.slice(0, header).split('\n');
    const dropped = Buffer.concat([
      Buffer.from(lines.slice(0, 3).join('\n'), 'latin1'),
      enc.subarray(header),
    ]);
    assert.throws(() => ageDecrypt(dropped, alice.id), /header MAC does not verify/);
    assert.throws(
      () => ageDecrypt(enc.subarray(0, enc.length - 1), alice.id),
      /PROJECT_TAMPERED|damaged/,
    );
  });
});
