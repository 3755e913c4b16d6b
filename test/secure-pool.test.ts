/**
 * The secure-buffer pool (lib/secure.ts): hot paths (a frame's bytes, a leak scan's views, SSH
 * messages) reuse sodium_malloc'd buffers by size class instead of mapping and unmapping memory
 * per request. What must hold: a buffer handed out is zeroed and exactly as long as asked; one
 * given back is zeroed whole (outside the view too) before anyone can have it again; freeing
 * a view frees its class buffer; and requests of varying lengths do not add memory mappings.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { test } from 'node:test';
import {
  secureAlloc,
  secureFootprint,
  secureFree,
  securePooled,
  secureRelease,
  type SecureBuffer,
} from '../src/lib/secure.js';
import { ROOT } from './helpers.js';

const secureModule = pathToFileURL(path.join(ROOT, 'dist/src/lib/secure.js')).href;

/** The whole allocation behind a buffer (a take is a view of a class buffer's end). */
const whole = (b: Buffer) => new Uint8Array(b.buffer);
const mappings = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').length;

test('a pooled buffer is zeroed and exactly as long as asked, at every length up to the pool limit', () => {
  for (const n of [1, 31, 64, 65, 100, 600, 1023, 1024, 1025, 40_000, 65_536]) {
    const b = securePooled(n);
    assert.equal(b.length, n);
    assert.ok(b.every((x) => x === 0));
    b.fill(0xaa);
    secureRelease(b);
  }
  // Past the pool's limit: an allocation of its own, freed when given back.
  const big = securePooled(65_537);
  assert.equal(big.length, 65_537);
  secureRelease(big);
  assert.equal(big.length, 0);
});

test('a buffer given back is zeroed whole, outside the view it was too, before it is handed out again', () => {
  const a = securePooled(100); // a view of a 128-byte class buffer
  whole(a).fill(0x5a); // secret bytes in the view and in the rest of its class buffer
  const memory = a.buffer;
  secureRelease(a);
  assert.ok(
    whole(Buffer.from(memory)).every((x) => x === 0),
    'zeroed at release',
  );
  // Another length of the same class gets the same memory, zeroed.
  const b = securePooled(120);
  assert.equal(b.buffer, memory, 'the class buffer is reused');
  assert.ok(whole(b).every((x) => x === 0));
  secureRelease(b);
});

test('a native write one byte past a take faults on the guard page, as on a buffer of its own', () => {
  // In a child (no core file): libc's memset through koffi, over a take of a length that is no
  // class size, and then over one byte more.
  const child = (size: number, extra: number) =>
    spawnSync(
      '/bin/sh',
      [
        '-c',
        'ulimit -c 0; exec "$0" --input-type=module -e "$1"',
        process.execPath,
        `const { securePooled } = await import(${JSON.stringify(secureModule)});
         const { default: koffi } = await import('koffi');
         const memset = koffi.load('libc.so.6').func('void *memset(void *s, int c, size_t n)');
         const b = securePooled(${size});
         memset(b, 0x41, ${size + extra});
         if (!b.every((x) => x === 0x41)) process.exit(3);`,
      ],
      { cwd: ROOT, encoding: 'utf8' },
    );
  for (const size of [100, 3000]) {
    const inside = child(size, 0);
    assert.equal(inside.status, 0, inside.stderr);
    const past = child(size, 1);
    assert.equal(past.signal, 'SIGSEGV', `${size}: exit ${past.status}, ${past.signal}`);
  }
});

test('freeing a view frees the class buffer behind it; freeing or giving back twice does nothing', () => {
  const a = securePooled(300);
  a.fill(1);
  secureFree(a);
  assert.equal(a.length, 0);
  assert.equal(a.buffer.byteLength, 0, 'the whole class buffer is released');
  secureFree(a);
  secureRelease(a);
  // A buffer from secureAlloc of a class size is pooled when given back; of another size, freed.
  const odd = secureAlloc(100) as SecureBuffer;
  secureRelease(odd);
  assert.equal(odd.length, 0);
});

test("a take given back and then freed (an error path after a release), or given back twice, never unmaps a pooled buffer or touches the next holder's", () => {
  for (const n of [64, 100, 128, 4096]) {
    const a = securePooled(n);
    secureRelease(a);
    secureFree(a);
    secureRelease(a);
    // The class buffer is still in the pool, whole and usable, and goes to one holder only.
    const b = securePooled(n);
    const c = securePooled(n);
    assert.equal(b.length, n);
    assert.notEqual(b.buffer, c.buffer, 'two holders never share a buffer');
    b.fill(0x77);
    // The first holder's late free names its own take: the new holder's bytes stay.
    secureFree(a);
    secureRelease(a);
    assert.ok(b.every((x) => x === 0x77));
    secureRelease(b);
    secureRelease(c);
  }
});

test('ten thousand takes and gives back, at lengths that vary, add no memory mappings', () => {
  // Warm every class first: the pool keeps one buffer of each.
  for (let n = 1; n <= 8192; n *= 2) secureRelease(securePooled(n));
  const before = mappings();
  for (let i = 0; i < 10_000; i++) {
    const b = securePooled(1 + ((i * 7919) % 8000));
    b[0] = 1;
    secureRelease(b);
  }
  // sodium_malloc maps each allocation with guard pages, unmapped only at GC: ten thousand
  // allocations would add thousands of mappings.
  assert.ok(mappings() - before < 50, `${mappings() - before} new mappings`);
});

test('empty secure buffers (an empty value, an empty age payload) add no memory mappings', () => {
  const before = mappings();
  // Four thousand of each: enough mappings to see, well short of the kernel's limit (65,530),
  // which ten thousand of each reached (the process then aborts).
  for (let i = 0; i < 4_000; i++) {
    const a = secureAlloc(0);
    const b = securePooled(0);
    assert.equal(a.length + b.length, 0);
    secureFree(a);
    secureRelease(b);
  }
  // sodium_malloc(0) maps a page between guard pages, and secureFree passed over an empty
  // buffer: each one stayed mapped until a collection.
  assert.ok(mappings() - before < 50, `${mappings() - before} new mappings`);
});

test("a take's footprint is the secure memory behind it (its class buffer), what the agent's budget counts", () => {
  for (const [size, held] of [
    [1, 64],
    [64, 64],
    [65, 128],
    [32 * 1024 + 1, 64 * 1024],
    [64 * 1024, 64 * 1024],
    [64 * 1024 + 1, 64 * 1024 + 1], // past the pool: a buffer of its own
  ] as const) {
    const b = securePooled(size);
    assert.equal(b.length, size);
    assert.equal(secureFootprint(b), held, `a take of ${size}`);
    secureRelease(b);
  }
  const own = secureAlloc(100);
  assert.equal(secureFootprint(own), 100);
  secureFree(own);
});
