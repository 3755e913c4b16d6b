/**
 * The credential proxy's placeholders and their substitution (src/proxy/placeholder.ts).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { secureFree, secureTake } from '../src/lib/secure.js';
import { makePlaceholder, substitute } from '../src/proxy/index.js';

const secret = (s: string) => secureTake(Buffer.from(s));

describe('placeholders', () => {
  test("a known token's prefix and length are kept; the rest is random and shares nothing with the value", () => {
    const value = 'ghp_' + 'R3alT0kenValue0123456789abcdefABCDEF';
    const v = secret(value);
    const a = makePlaceholder(v);
    const b = makePlaceholder(v);
    secureFree(v);
    assert.ok(a.startsWith('ghp_'), a);
    assert.equal(a.length, value.length);
    assert.notEqual(a, b, 'each placeholder is new');
    assert.match(a, /^ghp_[A-Za-z0-9]+$/);
    // No run of 6 characters of the value's secret part is in it.
    for (let i = 4; i + 6 <= value.length; i++) assert.ok(!a.includes(value.slice(i, i + 6)));
    for (const [v2, prefix] of [
      ['sk-proj-abcdefghijklmnopqrstuvwxyz012345', 'sk-proj-'],
      ['xoxb-1234-5678-abcdefghijklmnop', 'xoxb-'],
      ['github_pat_11ABCDEFG0123456789_abcdefghijklmnop', 'github_pat_'],
    ] as const) {
      const s = secret(v2);
      const p = makePlaceholder(s);
      secureFree(s);
      assert.ok(p.startsWith(prefix) && p.length === v2.length, `${prefix}: ${p}`);
    }
  });

  test('a value of no known shape gives nothing of itself, not even a prefix, and at least 24 random characters', () => {
    for (const value of ['mypassword-123', 'secret_abcdefghijklmnopqrstuvwxyz', 'x']) {
      const v = secret(value);
      const p = makePlaceholder(v);
      secureFree(v);
      assert.ok(p.length >= Math.max(24, value.length), p);
      assert.match(p, /^[A-Za-z0-9]+$/);
      assert.ok(!p.startsWith(value.slice(0, 3)) || value.length < 3, `${value} -> ${p}`);
    }
  });
});

describe('substitution', () => {
  test('every occurrence of each placeholder is replaced by its value, and says which were found', () => {
    const gh = secret('ghp_REALVALUE0000000000000000000000000000');
    const oa = secret('sk-REALOPENAI111111111111111111111111111111');
    const pairs = [
      { name: 'github/token', value: gh, placeholder: Buffer.from(makePlaceholder(gh)) },
      { name: 'openai/key', value: oa, placeholder: Buffer.from(makePlaceholder(oa)) },
    ];
    const [g, o] = pairs.map((p) => p.placeholder.toString());
    const head = Buffer.from(
      `GET /x?k=${o} HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer ${g}\r\nX-Again: ${g}\r\n\r\n`,
    );
    const r = substitute(head, pairs);
    assert.ok(r);
    assert.equal(
      r.out.toString(),
      `GET /x?k=${oa.toString()} HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer ${gh.toString()}\r\nX-Again: ${gh.toString()}\r\n\r\n`,
    );
    assert.deepEqual(r.found.sort(), ['github/token', 'openai/key']);
    secureFree(r.out);
    assert.equal(substitute(Buffer.from('GET / HTTP/1.1\r\n\r\n'), pairs), undefined);
    for (const p of pairs) secureFree(p.value);
  });

  test('any bytes around any placeholders come out as the bytes around the values (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 40 }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.string({ minLength: 1, maxLength: 60 }), { minLength: 1, maxLength: 3 }),
        (gaps, values) => {
          const pairs = values.map((v, i) => {
            const value = secret(v);
            return { name: `n${i}`, value, placeholder: Buffer.from(makePlaceholder(value)) };
          });
          const input: Buffer[] = [];
          const expected: Buffer[] = [];
          gaps.forEach((gap, i) => {
            const p = pairs[i % pairs.length];
            input.push(Buffer.from(gap));
            expected.push(Buffer.from(gap));
            if (i < gaps.length - 1 && p) {
              input.push(p.placeholder);
              expected.push(Buffer.from(p.value));
            }
          });
          const r = substitute(Buffer.concat(input), pairs);
          const want = Buffer.concat(expected);
          try {
            if (gaps.length === 1) return r === undefined;
            return r !== undefined && Buffer.from(r.out).equals(want);
          } finally {
            if (r) secureFree(r.out);
            for (const p of pairs) secureFree(p.value);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
