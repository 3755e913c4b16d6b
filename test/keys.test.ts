/**
 * Unit tests of the keys domain's building blocks (src/keys): the big-number reduction behind
 * the RSA CRT exponents, the DER and SSH wire codecs, SigningKey, the base64 decoder of key files
 * and bcrypt_pbkdf. Pure and fast: no ssh-keygen, no agent, no vault (test/ssh-keys.test.ts does
 * the end-to-end part). Every value here is test data, so comparing hex is fine.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { test } from 'node:test';
import bcrypt from 'bcrypt-pbkdf';
import { KeywardError } from '../src/errors.js';
import { secureAlloc, secureFree, secureTake, type SecureBuffer } from '../src/lib/secure.js';
import { bcryptPbkdf } from '../src/keys/bcrypt.js';
import { koffi } from '../src/lib/koffi.js';
import {
  ASYNC_SIGNERS,
  OpensslKey,
  SECURE_HEAP_HOLD_BUDGET,
  rsaHoldable,
  secureHeapReady,
  secureHeapUsed,
} from '../src/lib/openssl.js';
import { compareMagnitudes, modInto, mulInto, oddMinusOneInto } from '../src/keys/bignum.js';
import {
  encodedLength,
  encodeInto,
  int,
  readInteger,
  readSequence,
  readTlv,
  seq,
  type Der,
} from '../src/keys/der.js';
import {
  blobType,
  fingerprint,
  publicKeyLine,
  SIGN_FLAG_RSA_SHA2_256,
  SIGN_FLAG_RSA_SHA2_512,
  SigningKey,
  typeLabel,
  type KeyType,
} from '../src/keys/key.js';
import { base64ToSecure } from '../src/keys/openssh.js';
import {
  SshParseError,
  SshReader,
  SshWriter,
  sshMpint,
  sshString,
  stripZeros,
  u32,
} from '../src/keys/wire.js';

// ---------------------------------------------------------------------------------------------
// helpers

/** A seeded PRNG (mulberry32), so a failure reproduces. */
function prng(seed: number): { bytes(n: number): Buffer; int(max: number): number } {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
  return {
    bytes(n: number): Buffer {
      const b = Buffer.alloc(n);
      for (let i = 0; i < n; i++) b[i] = next() & 0xff;
      return b;
    },
    int(max: number): number {
      return next() % max;
    },
  };
}

const hex = (b: Uint8Array): string =>
  Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
const unhex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const toBig = (b: Uint8Array): bigint => (b.length === 0 ? 0n : BigInt(`0x${hex(b)}`));

/** v as a big-endian magnitude of exactly len bytes. */
function fromBig(v: bigint, len: number): Buffer {
  assert.ok(v >= 0n);
  const h = v.toString(16).padStart(len * 2, '0');
  assert.equal(h.length, len * 2, `${v} does not fit in ${len} bytes`);
  return Buffer.from(h, 'hex');
}

/** v as a minimal big-endian magnitude (empty for 0). */
function minimal(v: bigint): Buffer {
  if (v === 0n) return Buffer.alloc(0);
  const h = v.toString(16);
  return Buffer.from(h.length % 2 ? `0${h}` : h, 'hex');
}

/** Asserts fn throws a KeywardError with this code (not a RangeError, not a crash). */
function throwsCode(fn: () => unknown, code: string, message?: RegExp, what = ''): void {
  const label = what === '' ? '' : ` (${what})`;
  assert.throws(
    fn,
    (e: unknown) => {
      assert.ok(e instanceof KeywardError, `expected a KeywardError${label}, got ${String(e)}`);
      assert.equal(e.code, code, `the code${label}`);
      if (message) assert.match(e.message, message, `the message${label}`);
      return true;
    },
    `no error${label}`,
  );
}

/** A secure copy of test bytes (the source is a throwaway copy). */
const secure = (b: Uint8Array): SecureBuffer => secureTake(Buffer.from(b));

// ---------------------------------------------------------------------------------------------
// bignum.ts

/** x mod m through modInto, checking the scratch contract on the way. */
function modOf(x: Uint8Array, m: Uint8Array, extraScratch = 0): Buffer {
  const out = Buffer.alloc(m.length, 0xee);
  const scratch = Buffer.alloc(2 * (m.length + 1) + extraScratch, 0xcc);
  modInto(x, m, out, scratch);
  assert.ok(
    scratch.every((v) => v === 0),
    'scratch is left zeroed',
  );
  return out;
}

function checkMod(x: Uint8Array, m: Uint8Array, what: string): void {
  const want = toBig(x) % toBig(m);
  const got = modOf(x, m);
  assert.equal(got.length, m.length);
  assert.equal(toBig(got), want, `${what}: x=${hex(x)} m=${hex(m)}`);
}

test('bignum modInto agrees with BigInt on random inputs, 8 to 3072 bits', () => {
  const rnd = prng(0x6b657931);
  // [modulus bytes, random cases]: fewer for the big ones (the reduction is bit-serial).
  const sizes: [number, number][] = [
    [1, 60],
    [2, 40],
    [3, 40],
    [8, 30],
    [31, 20],
    [32, 20], // 256-bit
    [33, 10],
    [64, 8],
    [128, 6], // RSA-2048 primes
    [192, 4], // 1536-bit
    [384, 3], // 3072-bit
  ];
  let cases = 0;
  for (const [len, count] of sizes) {
    for (let c = 0; c < count; c++) {
      const m = rnd.bytes(len);
      if (c % 2 === 0) m[0] = (m[0] ?? 0) | 0x80; // high bit set
      if (toBig(m) === 0n) m[len - 1] = 1;
      const xLens = [0, 1, Math.max(len - 1, 0), len, len + 1, 2 * len, rnd.int(2 * len + 3)];
      const xLen = xLens[c % xLens.length] ?? len;
      checkMod(rnd.bytes(xLen), m, `random ${len}-byte modulus`);
      cases++;
    }
  }
  assert.ok(cases > 200);
});

test('bignum modInto edge cases: x < m, x = m, x = m +- 1, x = 0, x = k*m + r, m = 1, m all ones', () => {
  const rnd = prng(7);
  for (const len of [1, 2, 32, 129, 192, 384]) {
    for (const highBit of [true, false]) {
      const m = rnd.bytes(len);
      m[0] = highBit ? (m[0] ?? 0) | 0x80 : ((m[0] ?? 0) & 0x7f) | 0x01;
      const M = toBig(m);
      const cases: [string, Uint8Array][] = [
        ['empty x', new Uint8Array(0)],
        ['x = 0 (one byte)', Uint8Array.of(0)],
        ['x = 0 (as long as m)', new Uint8Array(len)],
        ['x = 1', Uint8Array.of(1)],
        ['x = m', m],
        ['x = m with leading zero bytes', Buffer.concat([Buffer.alloc(3), m])],
        ['x = m - 1', fromBig(M - 1n, len)],
        ['x = m + 1', minimal(M + 1n)],
        ['x = 2m', minimal(2n * M)],
        ['x = 2m - 1', minimal(2n * M - 1n)],
        ['x = 1000003 m + 17', minimal(1000003n * M + 17n)],
        ['x all ones, twice as long', Buffer.alloc(2 * len, 0xff)],
        ['x < m', fromBig(M / 3n, len)],
      ];
      for (const [what, x] of cases) checkMod(x, m, `${what}, ${len} bytes`);
      // exact values, not only BigInt agreement
      assert.equal(toBig(modOf(m, m)), 0n);
      assert.equal(toBig(modOf(fromBig(M - 1n, len), m)), M - 1n);
      assert.equal(toBig(modOf(minimal(M + 1n), m)), M === 1n ? 0n : 1n);
    }
  }
  // m = 1: everything is 0
  assert.equal(hex(modOf(Uint8Array.of(0xff, 0xff, 0xff), Uint8Array.of(1))), '00');
  // a modulus with leading zero bytes is still a modulus (out keeps its width)
  const m = Uint8Array.of(0, 0, 0x01, 0x00); // 256
  assert.equal(hex(modOf(Uint8Array.of(0x12, 0x34, 0x56), m)), '00000056');
  checkMod(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff), Uint8Array.of(0, 0xff, 0xfb), 'padded m');
  // all-ones moduli (no slack for the conditional subtraction)
  for (const len of [1, 4, 48]) {
    const ones = Buffer.alloc(len, 0xff);
    checkMod(Buffer.alloc(3 * len, 0xff), ones, 'all-ones m');
    checkMod(Buffer.concat([Buffer.alloc(len, 0xff), Buffer.alloc(len, 0xfe)]), ones, 'all-ones');
  }
  // a hand-checked one: 1000 mod 7 = 6
  assert.equal(hex(modOf(Uint8Array.of(0x03, 0xe8), Uint8Array.of(7))), '06');
  // a bigger scratch is allowed
  assert.equal(hex(modOf(Uint8Array.of(0x03, 0xe8), Uint8Array.of(7), 10)), '06');
});

test('bignum modInto refuses a wrong-sized out or a short scratch', () => {
  const m = Uint8Array.of(1, 2, 3);
  assert.throws(
    () => modInto(Uint8Array.of(9), m, new Uint8Array(2), new Uint8Array(8)),
    RangeError,
  );
  assert.throws(
    () => modInto(Uint8Array.of(9), m, new Uint8Array(4), new Uint8Array(8)),
    RangeError,
  );
  assert.throws(
    () => modInto(Uint8Array.of(9), m, new Uint8Array(3), new Uint8Array(7)),
    RangeError,
  );
});

test('bignum oddMinusOneInto is a - 1 for odd a of any length, and leaves a alone', () => {
  const rnd = prng(99);
  for (let c = 0; c < 300; c++) {
    const len = 1 + rnd.int(c < 250 ? 64 : 400);
    const a = rnd.bytes(len);
    a[len - 1] = (a[len - 1] ?? 0) | 1;
    const before = hex(a);
    const out = Buffer.alloc(len, 0xaa);
    oddMinusOneInto(a, out);
    assert.equal(toBig(out), toBig(a) - 1n, `a=${before}`);
    assert.equal(hex(a), before, 'the input is not modified');
  }
  const one = Buffer.alloc(1);
  oddMinusOneInto(Uint8Array.of(1), one);
  assert.equal(hex(one), '00');
  const b = Buffer.alloc(3);
  oddMinusOneInto(Uint8Array.of(0x80, 0x00, 0xff), b);
  assert.equal(hex(b), '8000fe');
});

// One RSA key from OpenSSL, shared by the tests below (2048 bits: fast to make).
const rsaDer = crypto.generateKeyPairSync('rsa', {
  modulusLength: 2048,
  publicExponent: 65537,
  privateKeyEncoding: { format: 'der', type: 'pkcs1' },
  publicKeyEncoding: { format: 'der', type: 'pkcs1' },
}).privateKey;

test("bignum: d mod (p - 1) and d mod (q - 1) equal OpenSSL's CRT exponents", () => {
  const [, , , d, p, q, dp, dq] = readSequence(rsaDer).map(readInteger);
  assert.ok(d && p && q && dp && dq);
  for (const [prime, want] of [
    [p, dp],
    [q, dq],
  ] as const) {
    const pm1 = Buffer.alloc(prime.length);
    oddMinusOneInto(prime, pm1);
    const got = modOf(d, pm1);
    assert.equal(hex(stripZeros(got)), hex(stripZeros(want)));
    assert.equal(toBig(got), toBig(d) % (toBig(prime) - 1n));
  }
});

test('bignum mulInto and compareMagnitudes agree with BigInt on random inputs', () => {
  for (let i = 0; i < 200; i++) {
    const a = stripZeros(crypto.randomBytes(1 + (i % 97)));
    const b = stripZeros(crypto.randomBytes(1 + ((i * 7) % 131)));
    const out = Buffer.alloc(a.length + b.length, 0xee);
    mulInto(a, b, out);
    assert.equal(toBig(out), toBig(a) * toBig(b));
    const want = toBig(a) < toBig(b) ? -1 : toBig(a) > toBig(b) ? 1 : 0;
    assert.equal(compareMagnitudes(a, b), want);
    assert.equal(compareMagnitudes(a, a), 0);
  }
});

test('an RSA key added over the agent protocol is refused before OpenSSL sees it when its shape is wrong (d >= n, primes not of n, iqmp >= p): such a key made OpenSSL exponentiate by all of d', () => {
  const [, n, e, d, p, q, , , iqmp] = readSequence(rsaDer).map(readInteger);
  assert.ok(n && e && d && p && q && iqmp);
  const agentKey = (o: Partial<Record<'n' | 'e' | 'd' | 'p' | 'q' | 'iqmp', Uint8Array>>) => {
    const parts = [o.n ?? n, o.e ?? e, o.d ?? d, o.iqmp ?? iqmp, o.p ?? p, o.q ?? q].map((x) =>
      stripZeros(x),
    );
    const size =
      SshWriter.sizeOf(['ssh-rsa']) + parts.reduce((t, x) => t + SshWriter.mpintSize(x), 0);
    const buf = secureAlloc(size);
    const w = new SshWriter(buf).string('ssh-rsa');
    for (const x of parts) w.mpint(x);
    return () => SigningKey.read(new SshReader(buf));
  };
  const key = agentKey({})();
  assert.equal(key.type, 'ssh-rsa');
  key.selfTest();
  key.wipe();
  const odd = (len: number) => {
    const b = crypto.randomBytes(len);
    b[0] = (b[0] ?? 0) | 0x40;
    b[len - 1] = (b[len - 1] ?? 0) | 1;
    return b;
  };
  // A d of 16 KB (OpenSSL's fallback took 6.4 s over it, 250 KB 90 s), and d = n.
  throwsCode(agentKey({ d: odd(16_384) }), 'PROTOCOL_ERROR', /bad RSA parameters/, 'a huge d');
  throwsCode(agentKey({ d: n }), 'PROTOCOL_ERROR', /bad RSA parameters/, 'd = n');
  throwsCode(agentKey({ iqmp: p }), 'PROTOCOL_ERROR', /bad RSA parameters/, 'iqmp = p');
  // Primes of the right size that are not n's, and one far too large.
  throwsCode(
    agentKey({ p: Buffer.concat([Buffer.of(0xff), odd(p.length - 1)]) }),
    'PROTOCOL_ERROR',
    /not its modulus's/,
    'another p',
  );
  throwsCode(agentKey({ q: odd(512) }), 'PROTOCOL_ERROR', /bad RSA primes/, 'a huge q');
  // Found in review: e = 1 with d = 1 passed every check and the self-test, and its
  // "signature" is the padded message itself, which anyone can make. e must be odd and at least 3.
  for (const [what, pub] of [
    ['e = 1', Uint8Array.of(1)],
    ['e = 2', Uint8Array.of(2)],
    ['e = 65536', Uint8Array.of(1, 0, 0)],
  ] as const)
    throwsCode(
      agentKey({ e: pub, d: Uint8Array.of(1) }),
      'PROTOCOL_ERROR',
      /public exponent/,
      what,
    );
});

// ---------------------------------------------------------------------------------------------
// der.ts

function encode(d: Der): Buffer {
  const out = Buffer.alloc(encodedLength(d), 0xee);
  assert.equal(encodeInto(d, out), out.length, 'encodeInto ends where encodedLength said');
  return out;
}

test('der: small encodings, checked byte for byte', () => {
  const cases: [Der, string][] = [
    [int(new Uint8Array(0)), '020100'],
    [int(Uint8Array.of(0)), '020100'],
    [int(Uint8Array.of(0, 0, 0)), '020100'],
    [int(Uint8Array.of(0, 0, 5)), '020105'],
    [int(Uint8Array.of(0x7f)), '02017f'],
    [int(Uint8Array.of(0x80)), '02020080'],
    [int(Uint8Array.of(0, 0x80)), '02020080'],
    [int(Uint8Array.of(0xff, 0xff)), '020300ffff'],
    [int(Uint8Array.of(1, 0)), '02020100'],
    [int(Uint8Array.of(0x01, 0x00, 0x01)), '0203010001'], // 65537
    [seq(), '3000'],
    [
      seq(int(Uint8Array.of(1)), { tag: 0x04, content: Buffer.from('abc') }),
      '30080201010403616263',
    ],
    [
      seq(int(Uint8Array.of(0)), seq(int(Uint8Array.of(0x80))), { tag: 0xa0, children: [] }),
      '300b' + '020100' + '3004' + '02020080' + 'a000',
    ],
    [{ tag: 0x03, content: Uint8Array.of(0, 4, 1) }, '0303000401'],
  ];
  for (const [d, want] of cases) assert.equal(hex(encode(d)), want, JSON.stringify(d));

  // encodeInto at an offset leaves the bytes around it alone
  const out = Buffer.alloc(8, 0xaa);
  assert.equal(encodeInto(int(Uint8Array.of(0x80)), out, 2), 6);
  assert.equal(hex(out), 'aaaa02020080aaaa');
});

test('der: long lengths (> 127, > 255, > 65535 bytes) use 0x81, 0x82, 0x83 forms', () => {
  const body = (n: number, first: number) => {
    const b = Buffer.alloc(n, 0x5a);
    b[0] = first;
    return b;
  };
  // 127-byte content: still the short form
  assert.equal(hex(encode(int(body(127, 0x01)))).slice(0, 6), '027f01');
  // 128 bytes, no pad: 02 81 80
  assert.equal(hex(encode(int(body(128, 0x01)))).slice(0, 8), '02818001');
  // 127 bytes with the top bit set: pad makes it 128
  assert.equal(hex(encode(int(body(127, 0x80)))).slice(0, 10), '0281800080');
  // 200 bytes with the top bit set: 201 = 0xc9
  assert.equal(hex(encode(int(body(200, 0xc0)))).slice(0, 10), '0281c900c0');
  // 255 + pad = 256: the two-byte form
  assert.equal(hex(encode(int(body(255, 0xff)))).slice(0, 12), '0282010000ff');
  // 300 bytes: 02 82 01 2c
  assert.equal(hex(encode(int(body(300, 0x12)))).slice(0, 10), '0282012c12');
  // 70000-byte OCTET STRING: 04 83 01 11 70
  const big = encode({ tag: 0x04, content: Buffer.alloc(70000, 7) });
  assert.equal(hex(big.subarray(0, 5)), '0483011170');
  assert.equal(big.length, 5 + 70000);
  assert.equal(readTlv(big).content.length, 70000);
  // a sequence whose content passes 255 bytes
  const s = encode(seq(int(body(150, 0x90)), int(body(150, 0x10))));
  assert.equal(hex(s.subarray(0, 4)), '30820133'); // (3 + 151) + (3 + 150) = 307 = 0x133
});

test('der: integers round-trip through encodeInto / readInteger (random, 0 to 600 bytes)', () => {
  const rnd = prng(0xde5);
  for (let c = 0; c < 400; c++) {
    const len = c < 300 ? rnd.int(40) : rnd.int(600);
    const m = rnd.bytes(len);
    if (c % 3 === 0 && len > 0) m[0] = (m[0] ?? 0) | 0x80;
    if (c % 7 === 0 && len > 1) m[0] = 0; // leading zeros are dropped
    const enc = encode(int(m));
    const t = readTlv(enc);
    assert.equal(t.tag, 0x02);
    assert.equal(t.rest.length, 0);
    // minimal: no 00 unless the next byte has its top bit set
    if (t.content.length > 1 && t.content[0] === 0) assert.ok(((t.content[1] ?? 0) & 0x80) !== 0);
    assert.equal(((t.content[0] ?? 0) & 0x80) === 0, true, 'never negative');
    const back = readInteger(enc);
    assert.equal(toBig(back), toBig(m), hex(m));
    assert.equal(hex(back), hex(stripZeros(m)), 'the magnitude without leading zeros');
  }
});

test('der: sequences round-trip through readSequence, which returns whole TLVs in order', () => {
  const rnd = prng(0x5e9);
  for (let c = 0; c < 50; c++) {
    const ints = Array.from({ length: 1 + rnd.int(10) }, () => rnd.bytes(rnd.int(300)));
    const inner = { tag: 0x04, content: rnd.bytes(rnd.int(200)) };
    const d = seq(...ints.map(int), inner, seq(int(Uint8Array.of(c))));
    const enc = encode(d);
    const items = readSequence(enc);
    assert.equal(items.length, ints.length + 2);
    ints.forEach((m, i) =>
      assert.equal(toBig(readInteger(items[i] ?? new Uint8Array())), toBig(m)),
    );
    const oct = readTlv(items[ints.length] ?? new Uint8Array());
    assert.equal(oct.tag, 0x04);
    assert.equal(hex(oct.content), hex(inner.content));
    const nested = readSequence(items[ints.length + 1] ?? new Uint8Array());
    assert.equal(toBig(readInteger(nested[0] ?? new Uint8Array())), BigInt(c));
    // each item is a complete TLV, views into enc
    assert.equal(
      items.reduce((n, it) => n + it.length, 0),
      readTlv(enc).content.length,
    );
  }
  // context tags can be asked for
  const ctx = encode({ tag: 0xa1, children: [int(Uint8Array.of(5))] });
  assert.equal(readSequence(ctx, 0xa1).length, 1);
  throwsCode(() => readSequence(ctx), 'PROTOCOL_ERROR', /expected tag 48/);
});

test("der: OpenSSL's own PKCS #1 and SEC 1 keys decode and re-encode to the same bytes", () => {
  const ints = readSequence(rsaDer).map(readInteger);
  assert.equal(ints.length, 9);
  assert.equal(toBig(ints[0] ?? new Uint8Array(1)), 0n);
  assert.equal(toBig(ints[2] ?? new Uint8Array()), 65537n);
  assert.equal(hex(encode(seq(...ints.map(int)))), hex(rsaDer));

  for (const namedCurve of ['P-256', 'P-384']) {
    const sec1 = crypto.generateKeyPairSync('ec', {
      namedCurve,
      privateKeyEncoding: { format: 'der', type: 'sec1' },
      publicKeyEncoding: { format: 'der', type: 'spki' },
    }).privateKey;
    const [v, dTlv, params, pub] = readSequence(sec1);
    assert.ok(v && dTlv && params && pub);
    const again = encode(
      seq(
        int(readInteger(v)),
        { tag: 0x04, content: readTlv(dTlv).content },
        { tag: 0xa0, content: readTlv(params).content },
        { tag: 0xa1, content: readTlv(pub).content },
      ),
    );
    assert.equal(hex(again), hex(sec1));
  }
});

test('der: malformed input is refused with a PROTOCOL_ERROR, never read past the buffer', () => {
  const bad: [string, string][] = [
    ['', 'empty'],
    ['02', 'one byte'],
    ['0201', 'length 1, no content'],
    ['020501020304', 'length beyond the buffer'],
    ['028101', 'long form, content missing'],
    ['0282', 'truncated length bytes'],
    ['028201', 'truncated length bytes'],
    ['02830100', 'truncated length bytes'],
    ['0280', 'indefinite length'],
    ['02800000', 'indefinite length'],
    ['028400000001' + '00', 'four length bytes'],
    ['0282ffff00', 'huge length'],
  ];
  for (const [h, what] of bad) {
    throwsCode(() => readTlv(unhex(h)), 'PROTOCOL_ERROR', /malformed DER/, what);
    throwsCode(() => readInteger(unhex(h)), 'PROTOCOL_ERROR', /malformed DER/, what);
    throwsCode(
      () => readSequence(unhex(h.replace(/^02/, '30'))),
      'PROTOCOL_ERROR',
      undefined,
      what,
    );
  }
  // INTEGER-specific
  throwsCode(() => readInteger(unhex('0200')), 'PROTOCOL_ERROR', /INTEGER/);
  throwsCode(() => readInteger(unhex('040100')), 'PROTOCOL_ERROR', /INTEGER/);
  throwsCode(() => readInteger(unhex('020180')), 'PROTOCOL_ERROR', /negative/);
  throwsCode(() => readInteger(unhex('0202ff00')), 'PROTOCOL_ERROR', /negative/);
  // a sequence whose inner TLV runs past the outer length
  throwsCode(() => readSequence(unhex('3003020500')), 'PROTOCOL_ERROR');
  throwsCode(() => readSequence(unhex('30050201000201')), 'PROTOCOL_ERROR');
  // a sequence whose outer length runs past the buffer
  throwsCode(() => readSequence(unhex('3006020100')), 'PROTOCOL_ERROR');
  // the view never extends past the TLV, even when more bytes follow
  const t = readTlv(unhex('0201050201ff'));
  assert.equal(hex(t.content), '05');
  assert.equal(hex(t.rest), '0201ff');
});

// ---------------------------------------------------------------------------------------------
// wire.ts

test('wire: sshMpint encodes the RFC 4251 section 5 examples', () => {
  assert.equal(hex(sshMpint(new Uint8Array(0))), '00000000');
  assert.equal(hex(sshMpint(Uint8Array.of(0))), '00000000');
  assert.equal(hex(sshMpint(Uint8Array.of(0, 0, 0))), '00000000');
  assert.equal(hex(sshMpint(unhex('09a378f9b2e332a7'))), '0000000809a378f9b2e332a7');
  assert.equal(hex(sshMpint(unhex('0009a378f9b2e332a7'))), '0000000809a378f9b2e332a7');
  assert.equal(hex(sshMpint(Uint8Array.of(0x80))), '000000020080');
  assert.equal(hex(sshMpint(Uint8Array.of(0, 0x80))), '000000020080');
  assert.equal(hex(sshMpint(Uint8Array.of(0x7f))), '000000017f');
  assert.equal(hex(sshMpint(Uint8Array.of(1, 0))), '000000020100');
  // SshWriter.mpint and mpintSize agree with sshMpint
  const rnd = prng(0x3b);
  const values = [
    new Uint8Array(0),
    Uint8Array.of(0),
    unhex('09a378f9b2e332a7'),
    Uint8Array.of(0x80),
    ...Array.from({ length: 60 }, (_, i) => {
      const b = rnd.bytes(rnd.int(70));
      if (i % 2 && b.length) b[0] = (b[0] ?? 0) | 0x80;
      if (i % 5 === 0 && b.length > 1) b[0] = 0;
      return b;
    }),
  ];
  for (const v of values) {
    const want = sshMpint(v);
    assert.equal(SshWriter.mpintSize(v), want.length);
    const out = Buffer.alloc(want.length);
    const w = new SshWriter(out).mpint(v);
    assert.equal(w.written, want.length);
    assert.equal(hex(out), hex(want));
    // and what it encodes is the value
    const r = new SshReader(out);
    assert.equal(toBig(r.mpint()), toBig(v));
    assert.equal(r.remaining, 0);
  }
});

test('wire: SshWriter / SshReader round trips (string, text, mpint, u32, byte)', () => {
  const rnd = prng(0x77);
  const magnitudes = [Uint8Array.of(0x80), Uint8Array.of(0x7f), rnd.bytes(300), new Uint8Array(0)];
  const strings: (Uint8Array | string)[] = [
    '',
    'ssh-ed25519',
    'h\u00e9llo \u{1f511}',
    new Uint8Array(0),
    rnd.bytes(1),
    rnd.bytes(255),
    rnd.bytes(70000),
  ];
  const size =
    SshWriter.sizeOf(strings) + magnitudes.reduce((n, m) => n + SshWriter.mpintSize(m), 0);
  // secure memory, as for a private key record
  const out = secureAlloc(size);
  try {
    const w = new SshWriter(out);
    for (const s of strings) w.string(s);
    for (const m of magnitudes) w.mpint(m);
    assert.equal(w.written, size);
    assert.throws(() => w.string('x'), RangeError, 'overflow is refused');
    assert.throws(() => w.mpint(Uint8Array.of(1)), RangeError);

    const r = new SshReader(out);
    for (const s of strings) {
      if (typeof s === 'string') assert.equal(r.text(), s);
      else assert.equal(hex(r.string()), hex(s));
    }
    for (const m of magnitudes) {
      const got = r.mpint();
      assert.equal(hex(got), hex(sshMpint(m).subarray(4)));
      assert.equal(toBig(got), toBig(m));
    }
    assert.equal(r.remaining, 0);
    assert.equal(r.rest().length, 0);
  } finally {
    secureFree(out);
  }

  // u32 and byte, including the values that trip signed arithmetic
  for (const v of [0, 1, 0x7f, 0xff, 0x100, 0x7fffffff, 0x80000000, 0xdeadbeef, 0xffffffff]) {
    const b = Buffer.concat([Buffer.of(0xab), u32(v), Buffer.of(0xcd)]);
    assert.equal(hex(u32(v)), v.toString(16).padStart(8, '0'));
    const r = new SshReader(b);
    assert.equal(r.byte(), 0xab);
    assert.equal(r.u32(), v);
    assert.equal(r.remaining, 1);
    assert.equal(r.byte(), 0xcd);
    assert.equal(r.remaining, 0);
  }
  // sshString
  assert.equal(hex(sshString('abc')), '00000003616263');
  assert.equal(hex(sshString(Uint8Array.of(0, 1))), '000000020001');
});

test('wire: SshReader reads views of the bytes it was given (also at a non-zero offset)', () => {
  const backing = Buffer.alloc(64, 0x11);
  const msg = Buffer.concat([sshString('type'), sshString(Uint8Array.of(1, 2, 3)), Buffer.of(9)]);
  msg.copy(backing, 7);
  const view = new Uint8Array(backing.buffer, backing.byteOffset + 7, msg.length);
  const r = new SshReader(view);
  assert.equal(r.text(), 'type');
  const s = r.string();
  assert.equal(hex(s), '010203');
  assert.equal(hex(r.rest()), '09');
  // no copy: the string is a view of the message
  backing[7 + 8 + 4] = 0x42;
  assert.equal(hex(s), '420203');
});

test('wire: truncated or negative input raises SshParseError (PROTOCOL_ERROR)', () => {
  const bad: [string, (r: SshReader) => unknown][] = [
    ['', (r) => r.byte()],
    ['', (r) => r.u32()],
    ['000000', (r) => r.u32()],
    ['00000005616263', (r) => r.string()],
    ['ffffffff00', (r) => r.string()],
    ['00000001', (r) => r.text()],
    ['000001', (r) => r.mpint()],
    ['0000000180', (r) => r.mpint()], // negative
    ['00000002ff00', (r) => r.mpint()], // negative
  ];
  for (const [h, read] of bad) {
    assert.throws(
      () => read(new SshReader(unhex(h))),
      (e: unknown) =>
        e instanceof SshParseError &&
        e instanceof KeywardError &&
        e.code === 'PROTOCOL_ERROR' &&
        /malformed SSH data/.test(e.message),
      h,
    );
  }
  // a failed read of a second field after a good first one
  const r = new SshReader(Buffer.concat([sshString('ok'), unhex('0000000a01')]));
  assert.equal(r.text(), 'ok');
  assert.throws(() => r.string(), SshParseError);
  // stripZeros
  assert.equal(hex(stripZeros(Uint8Array.of(0, 0, 1, 0))), '0100');
  assert.equal(stripZeros(Uint8Array.of(0, 0)).length, 0);
});

// ---------------------------------------------------------------------------------------------
// key.ts

const RFC8032_SK = '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60';
const RFC8032_PK = 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a';
const RFC8032_SIG =
  'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b';
/** From `ssh-keygen -lf` on the public key line, run once by hand. */
const RFC8032_FP = 'SHA256:bbXpuKG6zhzdmnxq256TlqzFBzRl2f6OOg722cYNbU8';

function agentRecord(parts: (Uint8Array | string | { mpint: Uint8Array })[]): SecureBuffer {
  const size = parts.reduce<number>(
    (n, p) =>
      n + (typeof p === 'object' && 'mpint' in p ? SshWriter.mpintSize(p.mpint) : 4 + p.length),
    0,
  );
  const rec = secureAlloc(size);
  const w = new SshWriter(rec);
  for (const p of parts) {
    if (typeof p === 'object' && 'mpint' in p) w.mpint(p.mpint);
    else w.string(p);
  }
  assert.equal(w.written, size);
  return rec;
}

function withKey<T>(record: SecureBuffer, fn: (k: SigningKey) => T): T {
  try {
    const k = SigningKey.fromRecord(record);
    try {
      return fn(k);
    } finally {
      k.wipe();
    }
  } finally {
    secureFree(record);
  }
}

function sigParts(blob: Uint8Array): { alg: string; sig: Buffer } {
  const r = new SshReader(blob);
  const alg = r.text();
  const sig = Buffer.from(r.string());
  assert.equal(r.remaining, 0, 'nothing after the signature');
  return { alg, sig };
}

/** A copy of blob with one bit flipped at byte i. */
function flipped(blob: Uint8Array, i: number, bit = 1): Buffer {
  const b = Buffer.from(blob);
  b[i] = (b[i] ?? 0) ^ bit;
  return b;
}

/** What node:crypto says of an SSH signature, without SigningKey.verify. */
function nodeVerifies(publicBlob: Buffer, data: Uint8Array, signature: Uint8Array): boolean {
  const pub = new SshReader(publicBlob);
  const type = pub.text();
  const { alg, sig } = sigParts(signature);
  if (type === 'ssh-ed25519') {
    const key = crypto.createPublicKey({
      key: { kty: 'OKP', crv: 'Ed25519', x: pub.string().toString('base64url') },
      format: 'jwk',
    });
    return alg === type && crypto.verify(null, data, key, sig);
  }
  if (type.startsWith('ecdsa-sha2-')) {
    const id = pub.text();
    const { size, crv, hash } = (
      {
        nistp256: { size: 32, crv: 'P-256', hash: 'sha256' },
        nistp384: { size: 48, crv: 'P-384', hash: 'sha384' },
        nistp521: { size: 66, crv: 'P-521', hash: 'sha512' },
      } as const
    )[id as 'nistp256'];
    const q = pub.string();
    const key = crypto.createPublicKey({
      key: {
        kty: 'EC',
        crv,
        x: q.subarray(1, 1 + size).toString('base64url'),
        y: q.subarray(1 + size).toString('base64url'),
      },
      format: 'jwk',
    });
    const s = new SshReader(sig);
    const rBytes = s.mpint();
    const sBytes = s.mpint();
    assert.equal(s.remaining, 0);
    // minimal mpints, as OpenSSH writes them
    assert.equal(hex(sshMpint(rBytes).subarray(4)), hex(rBytes));
    assert.equal(hex(sshMpint(sBytes).subarray(4)), hex(sBytes));
    const rs = Buffer.concat([fromBig(toBig(rBytes), size), fromBig(toBig(sBytes), size)]);
    return alg === type && crypto.verify(hash, data, { key, dsaEncoding: 'ieee-p1363' }, rs);
  }
  const e = pub.mpint();
  const n = pub.mpint();
  const key = crypto.createPublicKey({
    key: {
      kty: 'RSA',
      n: Buffer.from(stripZeros(n)).toString('base64url'),
      e: Buffer.from(stripZeros(e)).toString('base64url'),
    },
    format: 'jwk',
  });
  const hash = alg === 'rsa-sha2-512' ? 'sha512' : alg === 'rsa-sha2-256' ? 'sha256' : undefined;
  return hash !== undefined && crypto.verify(hash, data, key, sig);
}

/** The private signing form (SEC 1 / PKCS #1 DER) a key hands OpenSSL: read for tests only. */
const signingForm = (k: SigningKey): Uint8Array => Reflect.get(k, 'signing') as Uint8Array;

test('key: RFC 8032 section 7.1 TEST 1 (ed25519) from the legacy 64-byte record', () => {
  const sk = secure(unhex(RFC8032_SK + RFC8032_PK)); // libsodium: seed || public
  withKey(sk, (k) => {
    assert.equal(k.type, 'ssh-ed25519');
    assert.equal(k.bits, 256);
    assert.equal(
      hex(k.publicBlob),
      hex(Buffer.concat([sshString('ssh-ed25519'), sshString(unhex(RFC8032_PK))])),
    );
    assert.equal(k.fingerprint, RFC8032_FP);
    assert.equal(fingerprint(k.publicBlob), RFC8032_FP);
    assert.equal(blobType(k.publicBlob), 'ssh-ed25519');
    assert.equal(
      publicKeyLine(k.publicBlob, 'rfc8032'),
      'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea rfc8032',
    );
    // the record is the agent encoding
    assert.equal(
      hex(k.record),
      hex(
        Buffer.concat([
          sshString('ssh-ed25519'),
          sshString(unhex(RFC8032_PK)),
          sshString(unhex(RFC8032_SK + RFC8032_PK)),
        ]),
      ),
    );

    const blob = k.sign(new Uint8Array(0));
    const { alg, sig } = sigParts(blob);
    assert.equal(alg, 'ssh-ed25519');
    assert.equal(hex(sig), RFC8032_SIG);
    assert.equal(
      hex(blob),
      hex(Buffer.concat([sshString('ssh-ed25519'), sshString(unhex(RFC8032_SIG))])),
    );
    assert.equal(k.verify(new Uint8Array(0), blob), true);
    assert.equal(nodeVerifies(k.publicBlob, new Uint8Array(0), blob), true);
    // a flipped bit anywhere in the 64 signature bytes is refused
    for (const i of [19, 20, 40, 50, 51, 60, 82]) {
      for (const bit of [1, 0x80]) {
        assert.equal(k.verify(new Uint8Array(0), flipped(blob, i, bit)), false, `byte ${i}`);
      }
    }
    assert.equal(k.verify(Uint8Array.of(0), blob), false, 'another message');
    // ed25519 is deterministic
    assert.equal(hex(k.sign(new Uint8Array(0))), hex(blob));
  });
});

test('key: the same RFC 8032 key from the agent-protocol record signs the same bytes', () => {
  const rec = agentRecord(['ssh-ed25519', unhex(RFC8032_PK), unhex(RFC8032_SK + RFC8032_PK)]);
  const recHex = hex(rec);
  withKey(rec, (k) => {
    assert.equal(hex(k.record), recHex);
    assert.equal(k.fingerprint, RFC8032_FP);
    assert.equal(hex(sigParts(k.sign(new Uint8Array(0))).sig), RFC8032_SIG);
    // a message too, checked by node:crypto's own ed25519
    const msg = Buffer.from('keyward unit test');
    assert.equal(nodeVerifies(k.publicBlob, msg, k.sign(msg)), true);
    // the key's record makes the same key again
    withKey(secure(k.record), (k2) => {
      assert.equal(hex(k2.publicBlob), hex(k.publicBlob));
      assert.equal(hex(k2.sign(msg)), hex(k.sign(msg)));
    });
  });
});

test('key: records that do not hold one usable key are refused', () => {
  const pk = unhex(RFC8032_PK);
  const sk = unhex(RFC8032_SK + RFC8032_PK);
  const otherPk = flipped(pk, 0);
  const refused: [string, SecureBuffer, string][] = [
    ['mismatched halves', agentRecord(['ssh-ed25519', otherPk, sk]), 'PROTOCOL_ERROR'],
    ['short public key', agentRecord(['ssh-ed25519', pk.subarray(1), sk]), 'PROTOCOL_ERROR'],
    ['short private key', agentRecord(['ssh-ed25519', pk, sk.subarray(0, 32)]), 'PROTOCOL_ERROR'],
    ['trailing bytes', agentRecord(['ssh-ed25519', pk, sk, 'comment']), 'PROTOCOL_ERROR'],
    [
      'truncated',
      secure(Buffer.concat([sshString('ssh-ed25519'), sshString(pk), u32(64), sk.subarray(0, 10)])),
      'PROTOCOL_ERROR',
    ],
    ['unknown type', agentRecord(['ssh-dss', pk, sk]), 'USAGE'],
    ['empty', secure(Buffer.alloc(0)), 'PROTOCOL_ERROR'],
    [
      'ECDSA curve mismatch',
      agentRecord([
        'ecdsa-sha2-nistp256',
        'nistp384',
        Buffer.concat([Buffer.of(4), Buffer.alloc(64, 1)]),
        { mpint: Uint8Array.of(1) },
      ]),
      'PROTOCOL_ERROR',
    ],
    [
      'ECDSA bad point',
      agentRecord([
        'ecdsa-sha2-nistp256',
        'nistp256',
        Buffer.concat([Buffer.of(2), Buffer.alloc(32, 1)]),
        { mpint: Uint8Array.of(1) },
      ]),
      'PROTOCOL_ERROR',
    ],
    [
      'ECDSA zero scalar',
      agentRecord([
        'ecdsa-sha2-nistp256',
        'nistp256',
        Buffer.concat([Buffer.of(4), Buffer.alloc(64, 1)]),
        { mpint: Uint8Array.of(0) },
      ]),
      'PROTOCOL_ERROR',
    ],
  ];
  for (const [what, rec, code] of refused) {
    try {
      throwsCode(() => SigningKey.fromRecord(rec), code);
    } catch (e) {
      assert.fail(`${what}: ${String(e)}`);
    } finally {
      secureFree(rec);
    }
  }

  // RSA: too small, and even "primes"
  const small = crypto.generateKeyPairSync('rsa', {
    modulusLength: 1024,
    privateKeyEncoding: { format: 'der', type: 'pkcs1' },
    publicKeyEncoding: { format: 'der', type: 'pkcs1' },
  }).privateKey;
  const [, n1, e1, d1, p1, q1, , , i1] = readSequence(small).map(readInteger);
  assert.ok(n1 && e1 && d1 && p1 && q1 && i1);
  const smallRec = agentRecord([
    'ssh-rsa',
    ...[n1, e1, d1, i1, p1, q1].map((mpint) => ({ mpint })),
  ]);
  try {
    throwsCode(() => SigningKey.fromRecord(smallRec), 'PROTOCOL_ERROR', /1024/);
  } finally {
    secureFree(smallRec);
  }
  const [, n, e, d, p, q, , , iqmp] = readSequence(rsaDer).map(readInteger);
  assert.ok(n && e && d && p && q && iqmp);
  const even = Buffer.from(p);
  even[even.length - 1] = (even[even.length - 1] ?? 0) & 0xfe;
  const evenRec = agentRecord(['ssh-rsa', ...[n, e, d, iqmp, even, q].map((mpint) => ({ mpint }))]);
  try {
    throwsCode(() => SigningKey.fromRecord(evenRec), 'PROTOCOL_ERROR', /primes/);
  } finally {
    secureFree(evenRec);
  }
});

test("key: an RSA record from OpenSSL's key gives OpenSSL's exact PKCS #1 DER (CRT exponents)", () => {
  // OpenSSL checks each CRT signature and silently falls back to d when dP or dQ is wrong, so a
  // bad reduction would not show in signatures: compare the DER handed to OpenSSL instead.
  const [, n, e, d, p, q, , , iqmp] = readSequence(rsaDer).map(readInteger);
  assert.ok(n && e && d && p && q && iqmp);
  const rec = agentRecord(['ssh-rsa', ...[n, e, d, iqmp, p, q].map((mpint) => ({ mpint }))]);
  withKey(rec, (k) => {
    assert.equal(k.type, 'ssh-rsa');
    assert.equal(k.bits, 2048);
    assert.equal(hex(signingForm(k)), hex(rsaDer));
    assert.equal(
      hex(k.publicBlob),
      hex(Buffer.concat([sshString('ssh-rsa'), sshMpint(e), sshMpint(n)])),
    );
    const msg = Buffer.from('rsa');
    const pub = crypto.createPublicKey({ key: rsaDer, format: 'der', type: 'pkcs1' });
    for (const [flags, alg, hash] of [
      [SIGN_FLAG_RSA_SHA2_256, 'rsa-sha2-256', 'sha256'],
      [SIGN_FLAG_RSA_SHA2_512, 'rsa-sha2-512', 'sha512'],
      [SIGN_FLAG_RSA_SHA2_256 | SIGN_FLAG_RSA_SHA2_512, 'rsa-sha2-512', 'sha512'],
    ] as const) {
      const blob = k.sign(msg, flags);
      const s = sigParts(blob);
      assert.equal(s.alg, alg);
      assert.equal(s.sig.length, 256);
      assert.equal(crypto.verify(hash, msg, pub, s.sig), true);
      assert.equal(k.verify(msg, blob), true);
    }
  });
});

test("key: RSA signatures on the thread pool (signAsync) are sign()'s, parse at most ASYNC_SIGNERS keys at once, say when the queue is full, and none once the key is wiped", async () => {
  const [, n, e, d, p, q, , , iqmp] = readSequence(rsaDer).map(readInteger);
  assert.ok(n && e && d && p && q && iqmp);
  const rec = agentRecord(['ssh-rsa', ...[n, e, d, iqmp, p, q].map((mpint) => ({ mpint }))]);
  // Parsed copies alive at once, counted around OpenSSL's own parse and free.
  const parse = OpensslKey.parse.bind(OpensslKey);
  let alive = 0;
  let most = 0;
  let parsed = 0;
  OpensslKey.parse = (der, kind) => {
    const k = parse(der, kind);
    if (k) {
      parsed += 1;
      most = Math.max(most, (alive += 1));
      const free = k.free.bind(k);
      k.free = () => {
        alive -= 1;
        free();
      };
    }
    return k;
  };
  // koffi keeps no stack of an asynchronous call for the next (lib/koffi.ts): what a signature
  // left there is unmapped with it.
  assert.equal(koffi.config().resident_async_pools, 0);
  const k = SigningKey.fromRecord(rec);
  try {
    const msgs = Array.from({ length: 20 }, (_, i) => Buffer.from(`rsa ${i}`));
    const flags = [SIGN_FLAG_RSA_SHA2_256, SIGN_FLAG_RSA_SHA2_512] as const;
    const expected = msgs.flatMap((m) => flags.map((f) => hex(k.sign(m, f))));
    parsed = 0;
    most = 0;
    // Forty at once: each is the signature sign() makes (PKCS #1 v1.5 is deterministic), and
    // those that wait for a place hold no parsed copy of the key meanwhile.
    const signed = await Promise.all(msgs.flatMap((m) => flags.map((f) => k.signAsync(m, f))));
    assert.deepEqual(signed.map(hex), expected);
    assert.equal(parsed, 40);
    assert.ok(most <= ASYNC_SIGNERS, `${most} parsed copies at once`);
    assert.equal(alive, 0);
    // A full queue: ASYNC_SIGNERS places and 256 waiting. signingQueueFull, which the agent asks
    // before it takes a use, says so exactly when the next signature would be refused.
    const queued: Promise<Buffer>[] = [];
    while (!k.signingQueueFull) queued.push(k.signAsync(msgs[0]!, SIGN_FLAG_RSA_SHA2_256));
    assert.equal(queued.length, ASYNC_SIGNERS + 256);
    await assert.rejects(
      k.signAsync(msgs[1]!, SIGN_FLAG_RSA_SHA2_256),
      /too many signatures are waiting/,
    );
    await Promise.all(queued);
    assert.equal(k.signingQueueFull, false);
    // Wiped (the agent locking, ssh-add -D) while they wait: those that had their places (and
    // their copies) finish; none that waited is parsed or signed.
    parsed = 0;
    const pending = msgs.map((m) => k.signAsync(m, SIGN_FLAG_RSA_SHA2_256));
    k.wipe();
    const settled = await Promise.allSettled(pending);
    const done = settled.filter((r) => r.status === 'fulfilled').length;
    assert.ok(done <= ASYNC_SIGNERS, `${done} signed after the wipe`);
    assert.equal(parsed, done);
    for (const r of settled.slice(done)) {
      assert.equal(r.status, 'rejected');
      assert.equal((r as PromiseRejectedResult).reason.code, 'AGENT_LOCKED');
    }
    // SHA-1 RSA stays refused on this path too.
    const again = SigningKey.fromRecord(rec);
    try {
      await assert.rejects(again.signAsync(Buffer.from('x'), 0), /SHA-1 RSA/);
    } finally {
      again.wipe();
    }
  } finally {
    OpensslKey.parse = parse;
    k.wipe();
    secureFree(rec);
  }
});

test('key: an RSA key held between signatures (as the agent holds one) signs on the thread pool without a parse, and a wipe while signatures run frees it only after the last', async () => {
  // As the agent starts: OpenSSL's secure heap, then RSA keys that cache nothing of p and q.
  assert.equal(secureHeapReady(), true);
  assert.equal(rsaHoldable(), true);
  const [, n, e, d, p, q, , , iqmp] = readSequence(rsaDer).map(readInteger);
  assert.ok(n && e && d && p && q && iqmp);
  const rec = agentRecord(['ssh-rsa', ...[n, e, d, iqmp, p, q].map((mpint) => ({ mpint }))]);
  const pub = crypto.createPublicKey({ key: rsaDer, format: 'der', type: 'pkcs1' });
  const parse = OpensslKey.parse.bind(OpensslKey);
  let parsed = 0;
  let held: OpensslKey | undefined;
  OpensslKey.parse = (der, kind) => {
    parsed += 1;
    return (held = parse(der, kind));
  };
  const k = SigningKey.fromRecord(rec);
  try {
    parsed = 0;
    k.holdParsed();
    assert.equal(parsed, 1);
    const msgs = Array.from({ length: 12 }, (_, i) => Buffer.from(`held ${i}`));
    const sigs = await Promise.all(msgs.map((m) => k.signAsync(m, SIGN_FLAG_RSA_SHA2_256)));
    assert.equal(parsed, 1, 'no parse per signature');
    msgs.forEach((m, i) => {
      const s = sigParts(sigs[i] as Buffer);
      assert.equal(crypto.verify('sha256', m, pub, s.sig), true);
    });
    // Wiped (a lock) while signatures run on the pool's threads with the held key: they end
    // with good signatures (the key was not freed under them), those that waited are refused,
    // and the key is freed once the last running one ends.
    const pending = msgs.map((m) => k.signAsync(m, SIGN_FLAG_RSA_SHA2_512));
    k.wipe();
    const running = held as unknown as { pkey: unknown };
    assert.notEqual(running.pkey, undefined, 'freed under running signatures');
    const settled = await Promise.allSettled(pending);
    const done = settled.filter((r) => r.status === 'fulfilled');
    assert.equal(done.length, ASYNC_SIGNERS);
    done.forEach((r, i) => {
      const s = sigParts((r as PromiseFulfilledResult<Buffer>).value);
      assert.equal(crypto.verify('sha512', msgs[i] as Buffer, pub, s.sig), true);
    });
    for (const r of settled.slice(done.length))
      assert.equal((r as PromiseRejectedResult).reason.code, 'AGENT_LOCKED');
    assert.equal(running.pkey, undefined, 'freed after the last');
    assert.equal(parsed, 1);
  } finally {
    OpensslKey.parse = parse;
    k.wipe();
    secureFree(rec);
  }
});

test("key: held keys take at most half of OpenSSL's secure heap; past it keys are parsed for each signature, which still has room", () => {
  // ssh-add may add 256 keys of up to 16,384 bits, and a vault any number: held, they would
  // fill the fixed 1 MiB heap, and OpenSSL 3 then fails every parse (every RSA signature).
  assert.equal(secureHeapReady(), true);
  assert.equal(rsaHoldable(), true);
  const [, n, e, d, p, q, , , iqmp] = readSequence(rsaDer).map(readInteger);
  assert.ok(n && e && d && p && q && iqmp);
  const rec = agentRecord(['ssh-rsa', ...[n, e, d, iqmp, p, q].map((mpint) => ({ mpint }))]);
  const keys: SigningKey[] = [];
  try {
    const start = secureHeapUsed();
    let held = 0;
    for (let i = 0; i < 2000; i++) {
      const k = SigningKey.fromRecord(rec);
      keys.push(k);
      k.holdParsed();
      if (!k.holdsParsed) break;
      held += 1;
    }
    assert.ok(held > 100, `${held} RSA-2048 keys held from ${start} bytes in use`);
    assert.ok(held < 2000, 'holding stopped');
    assert.ok(secureHeapUsed() <= SECURE_HEAP_HOLD_BUDGET, `${secureHeapUsed()} bytes in use`);
    // The key that was not held signs, parsed for its signature.
    const last = keys.at(-1) as SigningKey;
    assert.equal(last.holdsParsed, false);
    const pub = crypto.createPublicKey({ key: rsaDer, format: 'der', type: 'pkcs1' });
    const msg = Buffer.from('past the budget');
    const s = sigParts(last.sign(msg, SIGN_FLAG_RSA_SHA2_256));
    assert.equal(crypto.verify('sha256', msg, pub, s.sig), true);
  } finally {
    for (const k of keys) k.wipe();
    secureFree(rec);
  }
});

/** An OpenSSL EC key (SEC 1 DER) whose scalar's first byte passes `keep`. */
function ecKey(
  namedCurve: 'P-256' | 'P-384' | 'P-521',
  keep: (firstByte: number) => boolean,
): Buffer {
  for (let i = 0; i < 20000; i++) {
    const sec1 = crypto.generateKeyPairSync('ec', {
      namedCurve,
      privateKeyEncoding: { format: 'der', type: 'sec1' },
      publicKeyEncoding: { format: 'der', type: 'spki' },
    }).privateKey;
    if (keep(readTlv(readSequence(sec1)[1] ?? new Uint8Array()).content[0] ?? 0)) return sec1;
  }
  assert.fail('no such key in 20000 tries');
}

/** The agent record of an OpenSSL SEC 1 key. */
function ecRecord(type: KeyType, id: string, sec1: Buffer): SecureBuffer {
  const [, dTlv, , pubTlv] = readSequence(sec1);
  const dScalar = readTlv(dTlv ?? new Uint8Array()).content;
  const point = readTlv(readTlv(pubTlv ?? new Uint8Array()).content).content.subarray(1);
  return agentRecord([type, id, point, { mpint: dScalar }]);
}

test("key: an ECDSA record from OpenSSL's key gives OpenSSL's exact SEC 1 DER", () => {
  for (const [type, id, crv] of [
    ['ecdsa-sha2-nistp256', 'nistp256', 'P-256'],
    ['ecdsa-sha2-nistp384', 'nistp384', 'P-384'],
    ['ecdsa-sha2-nistp521', 'nistp521', 'P-521'],
  ] as const) {
    // a scalar with a non-zero first byte (the other 1 in 256: the next test)
    const sec1 = ecKey(crv, (b) => b !== 0);
    withKey(ecRecord(type, id, sec1), (k) => {
      assert.equal(k.type, type);
      assert.equal(hex(signingForm(k)), hex(sec1));
      const point = readTlv(readTlv(readSequence(sec1)[3] ?? new Uint8Array()).content).content;
      assert.equal(
        hex(k.publicBlob),
        hex(Buffer.concat([sshString(type), sshString(id), sshString(point.subarray(1))])),
      );
      const msg = Buffer.from('ecdsa');
      assert.equal(nodeVerifies(k.publicBlob, msg, k.sign(msg)), true);
    });
  }
});

// Found by this file: secure memory starts as 0xdb, so a short scalar was padded with 0xdb and
// 1 ECDSA key in 256 signed with the wrong key. secureAlloc now zeroes.
test('key: an ECDSA scalar with a leading zero byte (a short mpint) is padded back to full width', () => {
  for (const [type, id, crv] of [
    ['ecdsa-sha2-nistp256', 'nistp256', 'P-256'],
    ['ecdsa-sha2-nistp384', 'nistp384', 'P-384'],
    ['ecdsa-sha2-nistp521', 'nistp521', 'P-521'],
  ] as const) {
    // 1 key in 256 has a scalar below 2^(8 * (size - 1)): the agent encoding drops the zero
    // byte, SEC 1 wants the full width.
    const sec1 = ecKey(crv, (b) => b === 0);
    withKey(ecRecord(type, id, sec1), (k) => {
      const msg = Buffer.from('short scalar');
      assert.equal(nodeVerifies(k.publicBlob, msg, k.sign(msg)), true, `${type} signs`);
      assert.equal(hex(signingForm(k)), hex(sec1));
    });
  }
});

test('key: generate, sign, verify and wipe every supported type', () => {
  const types: [KeyType, number, number][] = [
    ['ssh-ed25519', 0, 256],
    ['ecdsa-sha2-nistp256', 0, 256],
    ['ecdsa-sha2-nistp384', 0, 384],
    ['ecdsa-sha2-nistp521', 0, 521],
    ['ssh-rsa', SIGN_FLAG_RSA_SHA2_256, 2048],
  ];
  const msg = crypto.randomBytes(100);
  for (const [type, flags, bits] of types) {
    const k = SigningKey.generate(type, 2048);
    try {
      assert.equal(k.type, type);
      assert.equal(k.bits, bits);
      assert.equal(blobType(k.publicBlob), type);
      assert.equal(k.wiped, false);
      assert.match(k.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
      assert.equal(
        typeLabel(type),
        { 'ssh-ed25519': 'ED25519', 'ssh-rsa': 'RSA' }[type as string] ?? 'ECDSA',
      );

      const blob = k.sign(msg, flags);
      const { alg, sig } = sigParts(blob);
      assert.equal(alg, type === 'ssh-rsa' ? 'rsa-sha2-256' : type);
      assert.equal(k.verify(msg, blob), true, type);
      assert.equal(nodeVerifies(k.publicBlob, msg, blob), true, `${type}: node:crypto agrees`);
      assert.equal(k.verify(flipped(msg, 0), blob), false, `${type}: another message`);
      // a flipped bit in the raw signature (not its length fields)
      const sigStart = blob.length - sig.length;
      const at = type.startsWith('ecdsa') ? blob.length - 1 : sigStart + (sig.length >> 1);
      assert.equal(k.verify(msg, flipped(blob, at)), false, `${type}: flipped signature bit`);
      k.selfTest();

      // the record makes the same key
      withKey(secure(k.record), (k2) => {
        assert.equal(hex(k2.publicBlob), hex(k.publicBlob));
        assert.equal(k.verify(msg, k2.sign(msg, flags)), true);
      });

      if (type === 'ssh-rsa') {
        throwsCode(() => k.sign(msg, 0), 'USAGE', /SHA-1/);
        assert.equal(k.algorithm(0), undefined);
        // a signature labelled with another algorithm is refused
        const as512 = Buffer.concat([sshString('rsa-sha2-512'), sshString(sig)]);
        assert.equal(k.verify(msg, as512), false);
        const asSha1 = Buffer.concat([sshString('ssh-rsa'), sshString(sig)]);
        assert.equal(k.verify(msg, asSha1), false);
      }
    } finally {
      k.wipe();
    }
    assert.equal(k.wiped, true);
    assert.equal(k.record.length, 0, 'the record is freed');
    throwsCode(() => k.sign(msg, flags), 'AGENT_LOCKED');
    k.wipe(); // twice is harmless
    assert.equal(k.wiped, true);
  }
  throwsCode(() => SigningKey.generate('ssh-rsa', 1024), 'USAGE');
  throwsCode(() => SigningKey.generate('ssh-dss' as KeyType), 'USAGE');
});

// ---------------------------------------------------------------------------------------------
// openssh.ts: base64ToSecure

function b64(text: string | Uint8Array): string {
  const src = typeof text === 'string' ? Buffer.from(text, 'latin1') : Buffer.from(text);
  const out = base64ToSecure(src);
  try {
    return hex(out);
  } finally {
    secureFree(out);
  }
}

test('openssh base64ToSecure agrees with Buffer base64 on random data, 0 to 4096 bytes', () => {
  const rnd = prng(0xb64);
  const lengths = [...Array.from({ length: 100 }, (_, i) => i), 255, 256, 257, 1000, 4095, 4096];
  for (const len of lengths) {
    const data = rnd.bytes(len);
    const want = hex(data);
    const text = data.toString('base64');
    assert.equal(b64(text), want, `padded, ${len} bytes`);
    assert.equal(b64(text.replace(/=+$/, '')), want, `unpadded, ${len} bytes`);
    // wrapped as ssh-keygen writes files (70 columns), and with CRLF, tabs and spaces
    const lines = text.match(/.{1,70}/g) ?? [];
    assert.equal(b64(`\n${lines.join('\n')}\n`), want, `wrapped, ${len} bytes`);
    assert.equal(b64(`\r\n${lines.join('\r\n')}\r\n`), want, `CRLF, ${len} bytes`);
    assert.equal(b64(` \t${text.split('').join(len % 2 ? ' ' : '\t')}\t `), want);
  }
  assert.equal(b64(''), '');
  assert.equal(b64(' \n\t\r'), '');
  assert.equal(b64('TWFu'), hex(Buffer.from('Man')));
  assert.equal(b64('TWE='), hex(Buffer.from('Ma')));
  assert.equal(b64('TQ=='), hex(Buffer.from('M')));
  assert.equal(b64('+/+/'), 'fbffbf');
});

test('openssh base64ToSecure refuses characters outside the alphabet and data after padding', () => {
  const good = Buffer.from('keyward test data!').toString('base64');
  for (const c of ['-', '_', '.', '*', '@', '!', '\0', '\v', '\f', '\u00e9', '\u00ff', ':', '"']) {
    for (const at of [0, 5, good.length - 1]) {
      const text = good.slice(0, at) + c + good.slice(at);
      throwsCode(() => b64(text), 'USAGE', /bad base64/);
    }
  }
  // URL-safe base64 is not OpenSSH's
  throwsCode(() => b64(Buffer.from([0xfb, 0xff]).toString('base64url')), 'USAGE', /bad base64/);
  // more data after '='
  throwsCode(() => b64('TQ==TWFu'), 'USAGE', /bad base64/);
  throwsCode(() => b64('TWFu=TWFu'), 'USAGE', /bad base64/);
});

// ---------------------------------------------------------------------------------------------
// bcrypt.ts

function ours(pass: Uint8Array, salt: Uint8Array, rounds: number, keylen: number): string {
  const out = secureAlloc(keylen);
  try {
    bcryptPbkdf(pass, salt, rounds, out);
    return hex(out);
  } finally {
    secureFree(out);
  }
}

function library(pass: Uint8Array, salt: Uint8Array, rounds: number, keylen: number): string {
  const out = new Uint8Array(keylen);
  assert.equal(bcrypt.pbkdf(pass, pass.length, salt, salt.length, out, keylen, rounds), 0);
  return hex(out);
}

test('bcrypt_pbkdf agrees with the bcrypt-pbkdf package (rounds 1, 2, 16; 1 to 100 bytes)', () => {
  const rnd = prng(0xbc);
  const cases: [Uint8Array, Uint8Array, number, number][] = [
    [Buffer.from('password'), Buffer.from('salt'), 1, 16],
    [Buffer.from('pw'), rnd.bytes(16), 2, 48], // aes256-ctr key + iv
    [rnd.bytes(20), rnd.bytes(16), 16, 48], // what ssh-keygen -a 16 asks for
    [Buffer.from('x'), rnd.bytes(16), 1, 1],
    [Buffer.from('passphrase'), rnd.bytes(16), 2, 32],
    [Buffer.from('passphrase'), rnd.bytes(16), 2, 33], // stride 2, uneven
    [rnd.bytes(100), rnd.bytes(1), 1, 64],
    [Buffer.from('\u00e9t\u00e9 \u{1f511}'), rnd.bytes(24), 1, 100], // stride 4
    [Buffer.from('k'), rnd.bytes(16), 2, 44], // aes256-gcm key + iv
  ];
  for (const [pass, salt, rounds, keylen] of cases) {
    const got = ours(pass, salt, rounds, keylen);
    assert.equal(got.length, 2 * keylen);
    assert.equal(got, library(pass, salt, rounds, keylen), `${keylen} bytes, ${rounds} rounds`);
  }
  // and the output depends on every input
  const base = ours(Buffer.from('a'), Buffer.from('salt'), 2, 32);
  assert.notEqual(ours(Buffer.from('b'), Buffer.from('salt'), 2, 32), base);
  assert.notEqual(ours(Buffer.from('a'), Buffer.from('salu'), 2, 32), base);
  assert.notEqual(ours(Buffer.from('a'), Buffer.from('salt'), 3, 32), base);
});

test("bcrypt_pbkdf matches OpenBSD's bcrypt_pbkdf regress vectors", () => {
  // OpenBSD regress/lib/libutil/bcrypt_pbkdf (as RustCrypto's bcrypt-pbkdf tests carry them).
  const vectors: [string, string, number, string][] = [
    ['password', 'salt', 4, '5bbf0cc293587f1c3635555c27796598d47e579071bf427e9d8fbe842aba34d9'],
    ['password', '\0', 4, 'c12b566235eee04c212598970a579a67'],
    ['\0', 'salt', 4, '6051be18c2f4f82cbf0efee5471b4bb9'],
    ['password\0', 'salt\0', 4, '7410e44cf4fa07bfaac8a928b1727fac001375e7bf7384370f48efd121743050'],
    ['pass\0wor', 'sa\0l', 4, 'c2bffd9db38f6569efef4372f4de83c0'],
    [
      'password',
      'salt',
      8,
      'e1367ec5151a33faac4cc1c144cd23fa15d5548493ecc99b9b5d9c0d3b27bec76227ea66088b849b20ab' +
        '7aa478010246e74bba51723fefa9f9474d6508845e8d',
    ],
    ['password', 'salt', 42, '833cf0dcf56db65608e8f0dc0ce882bd'],
  ];
  for (const [pass, salt, rounds, want] of vectors) {
    const p = Buffer.from(pass, 'latin1');
    const s = Buffer.from(salt, 'latin1');
    assert.equal(ours(p, s, rounds, want.length / 2), want, JSON.stringify([pass, salt, rounds]));
  }
});

test('key: a held EC key signs on one context of its own, valid for each curve and digest, and freeing it returns every byte of the secure heap', () => {
  // OpensslKey keeps an EVP_PKEY_CTX with the key (src/lib/openssl.ts, signEc): the digest set
  // on it changes with the hash asked for, and free() frees it before the key. The keys come
  // from the openssl command: node:crypto's own keys hold secure heap until a collection.
  assert.equal(secureHeapReady(), true);
  const curves = { 'P-256': 'prime256v1', 'P-384': 'secp384r1', 'P-521': 'secp521r1' } as const;
  const keyOf = (name: string) => {
    const der = execFileSync('openssl', [
      'ecparam',
      '-name',
      name,
      '-genkey',
      '-noout',
      '-outform',
      'DER',
    ]);
    const pub = execFileSync('openssl', ['ec', '-inform', 'DER', '-pubout', '-outform', 'DER'], {
      input: der,
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    return { der, publicKey: { key: pub, format: 'der', type: 'spki' } as const };
  };
  // OpenSSL's first signature in a process keeps a block of the heap for its random generator.
  const first = OpensslKey.parse(keyOf('prime256v1').der, 'ec');
  first?.sign('sha256', Buffer.from('first'));
  first?.free();
  for (const [curve, name] of Object.entries(curves)) {
    const { der, publicKey } = keyOf(name);
    const start = secureHeapUsed();
    const k = OpensslKey.parse(der, 'ec');
    assert.ok(k, curve);
    for (const hash of ['sha256', 'sha512', 'sha384', 'sha256'] as const)
      for (const data of [Buffer.alloc(0), Buffer.from(`${curve} ${hash}`)]) {
        const sig = k.sign(hash, data);
        assert.equal(crypto.verify(hash, data, publicKey, sig), true, `${curve} ${hash}`);
      }
    assert.ok(secureHeapUsed() > start, `${curve}: held in the secure heap`);
    k.free();
    assert.equal(secureHeapUsed(), start, `${curve}: the key and its context freed`);
    assert.throws(() => k.sign('sha256', Buffer.from('after free')), /the key was freed/);
  }
});
