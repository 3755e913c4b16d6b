/**
 * The one piece of big-number arithmetic keyward needs on secret values: the RSA CRT exponents
 * dP = d mod (p - 1) and dQ = d mod (q - 1), which PKCS #1 (and so OpenSSL) wants and the SSH
 * agent protocol does not send. JS BigInts can't be wiped, so this works on bytes in buffers the
 * caller owns (secure memory): a bit-serial reduction with a branch-free conditional subtraction.
 * It runs once per key and unlock, not per signature.
 */

/**
 * out = x mod m, with x and m big-endian magnitudes, m > 0. out has m.length bytes; scratch must
 * hold 2 * (m.length + 1) bytes and is left zeroed.
 */
export function modInto(x: Uint8Array, m: Uint8Array, out: Uint8Array, scratch: Uint8Array): void {
  const L = m.length + 1;
  if (out.length !== m.length || scratch.length < 2 * L) throw new RangeError('modInto sizes');
  const r = scratch.subarray(0, L);
  const t = scratch.subarray(L, 2 * L);
  r.fill(0);
  for (let byte = 0; byte < x.length; byte++) {
    const xb = x[byte] ?? 0;
    for (let bit = 7; bit >= 0; bit--) {
      // r = 2r + bit (r < m before, so 2r + 1 < 2m fits in L bytes)
      let carry = (xb >>> bit) & 1;
      for (let i = L - 1; i >= 0; i--) {
        const v = ((r[i] ?? 0) << 1) | carry;
        r[i] = v & 0xff;
        carry = v >>> 8;
      }
      // t = r - m; keep t when there was no borrow
      let borrow = 0;
      for (let i = L - 1; i >= 0; i--) {
        const v = (r[i] ?? 0) - (i === 0 ? 0 : (m[i - 1] ?? 0)) - borrow;
        t[i] = v & 0xff;
        borrow = (v >> 8) & 1;
      }
      const keep = (borrow - 1) & 0xff; // 0xff: take t; 0x00: keep r
      for (let i = 0; i < L; i++) r[i] = ((r[i] ?? 0) & ~keep & 0xff) | ((t[i] ?? 0) & keep);
    }
  }
  out.set(r.subarray(1));
  scratch.fill(0);
}

/** out = a - 1 for an odd magnitude a (an RSA prime): only the last byte changes. */
export function oddMinusOneInto(a: Uint8Array, out: Uint8Array): void {
  out.set(a);
  const last = out.length - 1;
  out[last] = (out[last] ?? 1) & 0xfe;
}

/**
 * -1, 0 or 1 as a < b, a = b or a > b, for big-endian magnitudes without leading zero bytes.
 * Used on an RSA key's shape when it is added (once), not per signature.
 */
export function compareMagnitudes(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/** out = a * b, big-endian magnitudes; out has a.length + b.length bytes (schoolbook). */
export function mulInto(a: Uint8Array, b: Uint8Array, out: Uint8Array): void {
  if (out.length !== a.length + b.length) throw new RangeError('mulInto sizes');
  out.fill(0);
  for (let i = a.length - 1; i >= 0; i--) {
    const x = a[i] ?? 0;
    let carry = 0;
    // a[i] * b lands at out[i + 1 .. i + b.length], the carry at out[i].
    for (let j = b.length - 1; j >= 0; j--) {
      const k = i + j + 1;
      const v = (out[k] ?? 0) + x * (b[j] ?? 0) + carry;
      out[k] = v & 0xff;
      carry = v >>> 8;
    }
    out[i] = carry;
  }
}
