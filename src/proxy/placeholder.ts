/**
 * Placeholders and their substitution for the credential proxy (issue 22, in progress). The child
 * of `keyward run --proxy` gets a random placeholder where it would have had a token; the proxy
 * puts the real value in its place in a request to a host the policy binds the token to.
 *
 * - A placeholder has the value's length and, when the value begins with a well-known token
 *   prefix (`ghp_`, `sk-`, `xoxb-`...), that prefix: clients that check a token's shape accept
 *   it. Nothing else of the value goes into it: the prefix is matched against a fixed list, byte
 *   by byte, so no part of a value that is not a known token's prefix ever becomes a string.
 * - The rest is random base62, at least 24 characters (143 bits): it can't be guessed, and it
 *   can't be mistaken for text that happens to be in a request.
 * - Substitution builds the new bytes in secure memory; the value never becomes a string.
 */
import { randomBytes, secureAlloc, type SecureBuffer } from '../lib/secure.js';

/** Prefixes of well-known tokens, longest first: kept in a placeholder so its shape passes. */
const PREFIXES = [
  'github_pat_',
  'sk-proj-',
  'sk-ant-',
  'sk_live_',
  'sk_test_',
  'rk_live_',
  'pk_live_',
  'glpat-',
  'xoxb-',
  'xoxp-',
  'xapp-',
  'ghp_',
  'gho_',
  'ghu_',
  'ghs_',
  'ghr_',
  'npm_',
  'hf_',
  'sk-',
].map((p) => Buffer.from(p, 'ascii'));

const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const MIN_RANDOM = 24;

/** n random base62 characters (rejection sampling: every character equally likely). */
export function randomBase62(n: number): string {
  let out = '';
  while (out.length < n) {
    for (const b of randomBytes(n * 2)) {
      if (b < 248) out += BASE62[b % 62];
      if (out.length === n) break;
    }
  }
  return out;
}

/** A placeholder for `value` (read, not freed): a known prefix kept, the rest random. */
export function makePlaceholder(value: SecureBuffer): string {
  const prefix = PREFIXES.find(
    (p) =>
      value.length > p.length &&
      // eslint-disable-next-line no-restricted-syntax -- which known prefix a token has, the placeholder shows anyway
      value.subarray(0, p.length).equals(p),
  );
  const head = prefix ? prefix.toString('ascii') : '';
  return head + randomBase62(Math.max(MIN_RANDOM, value.length - head.length));
}

/**
 * Each placeholder in `data` replaced by its value, in a new secure buffer (the caller frees
 * it), with the names of the placeholders found; undefined when `data` holds none. `data` is
 * what a child sent: it holds placeholders, never values.
 */
export function substitute(
  data: Uint8Array,
  pairs: ReadonlyArray<{ placeholder: Buffer; value: SecureBuffer; name: string }>,
): { out: SecureBuffer; found: string[] } | undefined {
  const src = Buffer.from(data.buffer, data.byteOffset, data.length);
  const hits: Array<{ at: number; pair: (typeof pairs)[number] }> = [];
  for (const pair of pairs) {
    for (let at = src.indexOf(pair.placeholder); at >= 0;) {
      hits.push({ at, pair });
      at = src.indexOf(pair.placeholder, at + pair.placeholder.length);
    }
  }
  if (hits.length === 0) return undefined;
  hits.sort((a, b) => a.at - b.at);
  // Random placeholders can't overlap; a hit inside the one before would be dropped anyway.
  const kept: typeof hits = [];
  for (const h of hits) {
    const last = kept.at(-1);
    if (!last || h.at >= last.at + last.pair.placeholder.length) kept.push(h);
  }
  let size = src.length;
  for (const h of kept) size += h.pair.value.length - h.pair.placeholder.length;
  const out = secureAlloc(size);
  let from = 0;
  let to = 0;
  for (const h of kept) {
    to += src.copy(out, to, from, h.at);
    to += h.pair.value.copy(out, to);
    from = h.at + h.pair.placeholder.length;
  }
  src.copy(out, to, from);
  return { out, found: [...new Set(kept.map((h) => h.pair.name))] };
}
