/**
 * An independent verifier of audit log segments, written from docs/AUDIT.md alone, as an auditor
 * would: libsodium (sodium-native) and node:crypto are called directly, nothing is shared with
 * src/. Each step names the part of AUDIT.md it follows. It checks the committed vectors in
 * test/vectors/audit/ against the document, not against keyward's code.
 */
import crypto from 'node:crypto';
import { createRequire } from 'node:module';

/** The libsodium calls AUDIT.md names, typed here so no declaration is shared with src/. */
interface Sodium {
  crypto_kdf_derive_from_key(out: Buffer, id: number, ctx: Buffer, key: Buffer): void;
  /** HMAC-SHA-512-256. */
  crypto_auth(out: Buffer, input: Buffer, key: Buffer): void;
  crypto_auth_verify(mac: Buffer, input: Buffer, key: Buffer): boolean;
  crypto_scalarmult(q: Buffer, n: Buffer, p: Buffer): void;
  crypto_scalarmult_base(q: Buffer, n: Buffer): void;
  crypto_generichash(out: Buffer, input: Buffer): void;
  crypto_aead_xchacha20poly1305_ietf_decrypt(
    m: Buffer,
    nsec: null,
    c: Buffer,
    ad: null,
    npub: Buffer,
    k: Buffer,
  ): number;
}
const sodium = createRequire(import.meta.url)('sodium-native') as Sodium;

/** "Keys": K(0) = kdf(32, id 1, ctx "kwaudit1", S); K(n+1) = kdf(32, id 2, ctx "kwaudit1", K(n)). */
export function epochKey(seed: Buffer, epoch: number): Buffer {
  const ctx = Buffer.from('kwaudit1', 'latin1');
  let k = Buffer.alloc(32);
  sodium.crypto_kdf_derive_from_key(k, 1, ctx, seed);
  for (let n = 0; n < epoch; n++) {
    const next = Buffer.alloc(32);
    sodium.crypto_kdf_derive_from_key(next, 2, ctx, k);
    k.fill(0); // the old key is wiped, as the writer does
    k = next;
  }
  return k;
}

/** "Entry line": the fields, in exactly this order. */
const FIELDS = ['v', 'seq', 'time', 'type', 'epoch', 'prev', 'body', 'mac'] as const;

interface Entry {
  v: number;
  seq: number;
  time: string;
  type: string;
  epoch: number;
  prev: string;
  body: string;
  mac: string;
}

export type AuditResult =
  | { ok: true; entries: number; head: { seq: number; hash: string } | null }
  /** `segment` indexes `segments`; `line` counts from 1 within it (verify reports both). */
  | { ok: false; segment: number; line: number; seq: number | null; reason: string };

/** The entry's hash: "SHA-256 of the whole line without the newline" (hex, as `prev` holds it). */
export const lineHash = (line: Buffer): string =>
  crypto.createHash('sha256').update(line).digest('hex');

/**
 * Parses a line "with the fields in order", no whitespace; null if it is not one.
 * Checked by shape: JSON, the keys in order with the documented types, and the text equal to the
 * canonical serialization of what it parses to (no whitespace, no escapes beyond JSON's own).
 */
function parseLine(text: string): Entry | null {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return null;
  const rec = o as Record<string, unknown>;
  if (Object.keys(rec).join() !== FIELDS.join()) return null;
  const e = rec as unknown as Entry;
  const hex64 = /^[0-9a-f]{64}$/;
  if (
    e.v !== 1 ||
    !Number.isSafeInteger(e.seq) ||
    !Number.isSafeInteger(e.epoch) ||
    e.epoch < 0 ||
    typeof e.time !== 'string' ||
    !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(e.time) ||
    typeof e.type !== 'string' ||
    typeof e.body !== 'string' ||
    !/^[A-Za-z0-9+/]*={0,2}$/.test(e.body) ||
    typeof e.prev !== 'string' ||
    !hex64.test(e.prev) ||
    typeof e.mac !== 'string' ||
    !hex64.test(e.mac)
  ) {
    return null;
  }
  if (JSON.stringify(Object.fromEntries(FIELDS.map((f) => [f, e[f]]))) !== text) return null;
  return e;
}

/**
 * "Verification, and what each failure means", for the segments of one log in order (each a
 * file's bytes): for each line, it parses with the fields in order; `seq` is the previous plus 1
 * (1 for the first); `prev` equals the previous line's hash (64 zeros for the first); `epoch` did
 * not decrease; the MAC verifies under K(epoch). The first failure is reported with its line.
 * Without a seed only the chain is checked ("chain only").
 */
export function verifyLog(segments: Buffer[], seed: Buffer | null): AuditResult {
  let count = 0;
  let lastSeq = 0;
  let lastHash = '0'.repeat(64); // "the first carries 64 zeros"
  let lastEpoch = 0;
  const keys = new Map<number, Buffer>();
  for (const [segNo, segment] of segments.entries()) {
    // "One line of UTF-8 JSON ... then `\n`": split on the newline; every line ends with one.
    const lines: Buffer[] = [];
    let start = 0;
    for (let i = 0; i < segment.length; i++) {
      if (segment[i] === 0x0a) {
        lines.push(segment.subarray(start, i));
        start = i + 1;
      }
    }
    const torn = start < segment.length;
    for (const [i, line] of lines.entries()) {
      const lineNo = i + 1;
      const fail = (reason: string, seq: number | null = null): AuditResult => ({
        ok: false,
        segment: segNo,
        line: lineNo,
        seq,
        reason,
      });
      // 1. "it parses with the fields in order".
      const e = parseLine(line.toString('utf8'));
      if (e === null) return fail('does not parse with the fields in order');
      // 2. "`seq` starts at 1 and increases by 1 across segments".
      if (count === 0 && e.seq !== 1) return fail(`the log starts at seq ${e.seq}`, e.seq);
      if (count > 0 && e.seq !== lastSeq + 1) {
        return fail(`seq ${e.seq} follows seq ${lastSeq}`, e.seq);
      }
      // 3. "`prev` equals the previous line's hash" (the first carries 64 zeros).
      if (e.prev !== lastHash) return fail('prev is not the previous line hash', e.seq);
      // 4. "`epoch` did not decrease and rose by at most 10,000 (from 0 at the log's first
      //    entry ...)".
      if (e.epoch < lastEpoch) return fail(`epoch ${e.epoch} after ${lastEpoch}`, e.seq);
      if (e.epoch - lastEpoch > 10_000) {
        return fail(`epoch ${e.epoch} after epoch ${lastEpoch}: a rise of more than 10,000`, e.seq);
      }
      // 5. "mac = hex(crypto_auth(K(epoch), P)) where P is the line's bytes from `{` up to but
      //    not including `,"mac":`" (the last field, so its last occurrence).
      if (seed !== null) {
        const p = line.subarray(0, line.lastIndexOf(',"mac":'));
        let k = keys.get(e.epoch);
        if (!k) keys.set(e.epoch, (k = epochKey(seed, e.epoch)));
        if (!sodium.crypto_auth_verify(Buffer.from(e.mac, 'hex'), p, k)) {
          return fail(`MAC does not verify under K(${e.epoch})`, e.seq);
        }
      }
      count++;
      lastSeq = e.seq;
      lastHash = lineHash(line); // "the whole line without the newline"
      lastEpoch = e.epoch;
    }
    // A line without its newline is a torn write (the next writer cuts it): not an entry.
    if (torn) {
      return { ok: false, segment: segNo, line: lines.length + 1, seq: null, reason: 'torn line' };
    }
  }
  return { ok: true, entries: count, head: count ? { seq: lastSeq, hash: lastHash } : null };
}

/**
 * "Bodies", the batch form: 0x01 || epk (32) || nonce (24) || XChaCha20-Poly1305 ciphertext, under
 * key = BLAKE2b-256(X25519(sk, epk) || epk || pk), no associated data. The JSON body, or null when
 * the body is not in that form or does not open.
 */
export function openBatchBody(body: Buffer, sk: Buffer, pk: Buffer): string | null {
  if (body.length < 1 + 32 + 24 + 16 || body[0] !== 0x01) return null;
  const epk = body.subarray(1, 33);
  const nonce = body.subarray(33, 57);
  const shared = Buffer.alloc(32);
  sodium.crypto_scalarmult(shared, sk, epk);
  const key = Buffer.alloc(32);
  sodium.crypto_generichash(key, Buffer.concat([shared, epk, pk]));
  const plain = Buffer.alloc(body.length - 57 - 16);
  try {
    sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
      plain,
      null,
      body.subarray(57),
      null,
      nonce,
      key,
    );
  } catch {
    return null;
  }
  return plain.toString('utf8');
}

/** A box key pair's public half: X25519 of the secret key and the base point. */
export function boxPublicKey(sk: Buffer): Buffer {
  const pk = Buffer.alloc(32);
  sodium.crypto_scalarmult_base(pk, sk);
  return pk;
}
