/**
 * Output masking (src/run/mask.ts) against a child that chooses where its writes split: what
 * reaches the terminal must not depend on where the pipe cut the stream. Chunks are the
 * attacker's to place (a child writes, pauses, writes), so every split point is tried.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { securePooled, secureRelease, type SecureBuffer } from '../src/lib/secure.js';
import { MASK_MARKER, Masker } from '../src/run/mask.js';

const MARK = MASK_MARKER.toString();

/** The stream masked as the pieces arrive, then flushed. */
function masked(forms: readonly SecureBuffer[], pieces: readonly string[]): string {
  const m = new Masker(forms);
  const out = pieces.map((p) => m.push(Buffer.from(p)).toString());
  out.push(m.flush().toString());
  m.destroy();
  return out.join('');
}

/**
 * The values' forms in secure memory from the pool: thousands of cases each with buffers of
 * their own would leave a mapping each until a GC, past the kernel's limit on mappings.
 */
function withForms<T>(values: readonly string[], fn: (forms: SecureBuffer[]) => T): T {
  const forms = values.map((v) => {
    const f = securePooled(Buffer.byteLength(v));
    f.write(v);
    return f;
  });
  try {
    return fn(forms);
  } finally {
    for (const f of forms) secureRelease(f);
  }
}

/** A small deterministic generator (the same cases on every run). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('masking: where the stream splits changes nothing', () => {
  test('a secret that begins where another ends is masked whole when the write splits inside their overlap', () => {
    // The child prints the first value, whose end ("def456") is the second's start, and the
    // second's tail after a pause: the tail must not show.
    withForms(['abc123def456', 'def456ghi789'], (forms) => {
      const text = 'abc123def456ghi789\n';
      const whole = masked(forms, [text]);
      assert.equal(whole, `${MARK}\n`);
      for (let cut = 1; cut < text.length; cut++) {
        const out = masked(forms, [text.slice(0, cut), text.slice(cut)]);
        assert.equal(out, whole, `split at ${cut}: ${out}`);
        assert.ok(!out.includes('ghi'), `split at ${cut}: the second value's tail showed`);
      }
    });
  });

  test('a run of one repeated secret, however long and however split, is one marker, and nothing is held back past its end', () => {
    withForms(['aa'], (forms) => {
      const m = new Masker(forms);
      let out = '';
      for (let i = 0; i < 1000; i++) out += m.push(Buffer.from('a')).toString();
      out += m.push(Buffer.from('b')).toString();
      // Once a byte that is no form's start arrives, everything before it is out.
      assert.equal(out, `${MARK}b`);
      assert.equal(m.flush().toString(), '');
      m.destroy();
    });
  });

  test('a value that holds another and ends with its start: no split of three copies shows any of the shorter one', () => {
    const S = 'Q7vK29xE';
    withForms([S, `${S}${S}Q7`], (forms) => {
      const text = `${S}${S}${S}`;
      const whole = masked(forms, [text]);
      assert.equal(whole, MARK);
      for (let i = 1; i < text.length; i++)
        for (let j = i + 1; j < text.length; j++) {
          const out = masked(forms, [text.slice(0, i), text.slice(i, j), text.slice(j)]);
          assert.equal(out, whole, `split at ${i},${j}: ${out}`);
        }
    });
    withForms(['ba', 'babab'], (forms) => {
      const pieces = ['aaba', 'bbab', 'a', 'ba', 'b', 'a', 'aaa'];
      assert.equal(masked(forms, pieces), masked(forms, [pieces.join('')]));
    });
  });

  test('random values, random writes of one to four bytes: the unsplit output, and nothing held past the longest value', () => {
    const r = rng(41);
    const word = (min: number, max: number) =>
      Array.from({ length: min + Math.floor(r() * (max - min + 1)) }, () =>
        r() < 0.5 ? 'a' : 'b',
      ).join('');
    for (let c = 0; c < 3000; c++) {
      const values = Array.from({ length: 1 + Math.floor(r() * 4) }, () => word(2, 7));
      const text = word(5, 40);
      const pieces: string[] = [];
      for (let i = 0; i < text.length;) {
        const n = 1 + Math.floor(r() * 4);
        pieces.push(text.slice(i, i + n));
        i += n;
      }
      withForms(values, (forms) =>
        assert.equal(masked(forms, pieces), masked(forms, [text]), `${values} ${pieces.join('|')}`),
      );
    }
  });

  test('random values over a two-letter alphabet: every split into two or three writes gives the unsplit output', () => {
    const r = rng(17);
    const word = (min: number, max: number) =>
      Array.from({ length: min + Math.floor(r() * (max - min + 1)) }, () =>
        r() < 0.5 ? 'a' : 'b',
      ).join('');
    for (let c = 0; c < 150; c++) {
      const values = Array.from({ length: 1 + Math.floor(r() * 3) }, () => word(3, 6));
      const text = word(8, 18);
      withForms(values, (forms) => {
        const whole = masked(forms, [text]);
        for (let i = 1; i < text.length; i++) {
          assert.equal(
            masked(forms, [text.slice(0, i), text.slice(i)]),
            whole,
            `${values} ${text} @${i}`,
          );
          for (let j = i + 1; j < text.length; j++)
            assert.equal(
              masked(forms, [text.slice(0, i), text.slice(i, j), text.slice(j)]),
              whole,
              `${values} ${text} @${i},${j}`,
            );
        }
      });
    }
  });
});
