/**
 * A private key as the SSH agent protocol encodes it (draft-miller-ssh-agent, section 4.2.x),
 * read into secure memory in the two forms a SigningKey holds (key.ts): the record, and the form
 * that signs (libsodium's 64 bytes, SEC 1 or PKCS #1 DER). Every number is checked before
 * OpenSSL sees it.
 */
import { KeywardError } from '../errors.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import { compareMagnitudes, modInto, mulInto, oddMinusOneInto } from './bignum.js';
import { encodeInto, encodedLength, int, seq, type Der } from './der.js';
import type { SshReader } from './wire.js';
import { samePublic, SshWriter, sshMpint, sshString, stripZeros } from './wire.js';

export type KeyType =
  'ssh-ed25519' | 'ecdsa-sha2-nistp256' | 'ecdsa-sha2-nistp384' | 'ecdsa-sha2-nistp521' | 'ssh-rsa';
export const KEY_TYPES: readonly KeyType[] = [
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'ssh-rsa',
];

/** Below this, RSA keys are refused (OpenSSH's own floor is 1024; 2048 is the modern one). */
export const RSA_MIN_BITS = 2048;
export const RSA_MAX_BITS = 16384;

/** What a SigningKey is made of: its type, public blob and size, and its secure halves. */
export interface PrivateParts {
  type: KeyType;
  blob: Buffer;
  bits: number;
  rec: SecureBuffer;
  signing: SecureBuffer;
}

export interface Curve {
  id: 'nistp256' | 'nistp384' | 'nistp521';
  jwk: 'P-256' | 'P-384' | 'P-521';
  /** The named-curve OID, DER-encoded. */
  oid: Uint8Array;
  /** RFC 5656 section 6.2.1: the hash follows the curve's size. */
  hash: 'sha256' | 'sha384' | 'sha512';
  /** Bytes of a coordinate or scalar. */
  size: number;
  /** The curve's bits, which `ssh-keygen -l` shows (521, not 66 x 8). */
  bits: number;
}

export const CURVES: Record<string, Curve> = {
  'ecdsa-sha2-nistp256': {
    id: 'nistp256',
    jwk: 'P-256',
    oid: Uint8Array.from([0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
    hash: 'sha256',
    size: 32,
    bits: 256,
  },
  'ecdsa-sha2-nistp384': {
    id: 'nistp384',
    jwk: 'P-384',
    oid: Uint8Array.from([0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
    hash: 'sha384',
    size: 48,
    bits: 384,
  },
  'ecdsa-sha2-nistp521': {
    id: 'nistp521',
    jwk: 'P-521',
    oid: Uint8Array.from([0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]),
    hash: 'sha512',
    size: 66,
    bits: 521,
  },
};

function bitLength(m: Uint8Array): number {
  const s = stripZeros(m);
  if (s.length === 0) return 0;
  return (s.length - 1) * 8 + (32 - Math.clz32(s[0] ?? 0));
}

export function badKey(what: string): KeywardError {
  return new KeywardError('PROTOCOL_ERROR', `not a usable key: ${what}`);
}

/**
 * Reads one private key in the agent protocol's encoding from r (a view of secure memory) and
 * copies what it needs into secure memory of its own. Checks that the halves belong together.
 */
export function readPrivate(r: SshReader): PrivateParts {
  const type = r.text();
  if (type === 'ssh-ed25519') {
    const pk = r.string();
    const sk = r.string();
    if (pk.length !== 32 || sk.length !== 64) throw badKey('bad ed25519 key lengths');
    if (!samePublic(sk.subarray(32), pk))
      throw badKey('the ed25519 public key does not match the private key');
    const rec = secureAlloc(SshWriter.sizeOf([type, pk, sk]));
    new SshWriter(rec).string(type).string(pk).string(sk);
    const signing = secureAlloc(64);
    signing.set(sk);
    return { type, blob: Buffer.concat([sshString(type), sshString(pk)]), bits: 256, rec, signing };
  }
  const curve = CURVES[type];
  if (curve) {
    const id = r.text();
    const q = Buffer.from(r.string());
    const d = stripZeros(r.mpint());
    if (id !== curve.id) throw badKey(`curve ${id} does not match ${type}`);
    if (q.length !== 1 + 2 * curve.size || q[0] !== 4) throw badKey('bad ECDSA public point');
    if (d.length === 0 || d.length > curve.size) throw badKey('bad ECDSA private scalar');
    const rec = secureAlloc(SshWriter.sizeOf([type, id, q]) + SshWriter.mpintSize(d));
    new SshWriter(rec).string(type).string(id).string(q).mpint(d);
    // SEC 1 ECPrivateKey: version 1, the scalar at full width, the curve, the public point.
    const dFull = secureAlloc(curve.size);
    try {
      dFull.set(d, curve.size - d.length);
      const der: Der = seq(
        int(Uint8Array.of(1)),
        { tag: 0x04, content: dFull },
        { tag: 0xa0, content: curve.oid },
        { tag: 0xa1, children: [{ tag: 0x03, content: Buffer.concat([Buffer.of(0), q]) }] },
      );
      const signing = secureAlloc(encodedLength(der));
      encodeInto(der, signing);
      const blob = Buffer.concat([sshString(type), sshString(id), sshString(q)]);
      return { type: type as KeyType, blob, bits: curve.bits, rec, signing };
    } finally {
      secureFree(dFull);
    }
  }
  if (type === 'ssh-rsa') {
    const n = stripZeros(r.mpint());
    const e = stripZeros(r.mpint());
    const d = stripZeros(r.mpint());
    const iqmp = stripZeros(r.mpint());
    const p = stripZeros(r.mpint());
    const q = stripZeros(r.mpint());
    const bits = bitLength(n);
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS)
      throw badKey(
        `RSA keys must have ${RSA_MIN_BITS} to ${RSA_MAX_BITS} bits, this one has ${bits}`,
      );
    if (e.length === 0 || e.length > 8 || d.length === 0 || p.length === 0 || q.length === 0)
      throw badKey('bad RSA parameters');
    if (((p[p.length - 1] ?? 0) & 1) === 0 || ((q[q.length - 1] ?? 0) & 1) === 0)
      throw badKey('bad RSA primes');
    // e = 1 (with d = 1) passes every other check and the self-test, and its signature is the
    // padded message itself: anyone could make one.
    if (compareMagnitudes(e, Uint8Array.of(3)) < 0 || ((e[e.length - 1] ?? 0) & 1) === 0)
      throw badKey('bad RSA public exponent: not odd and 3 or more');
    // The key's shape, before OpenSSL sees it: a d as large as it likes, or primes that are
    // not n's, make OpenSSL's check of the CRT result fail and fall back to m^d mod n over
    // all of d (a 250 KB d held the agent's thread for 90 s).
    if (compareMagnitudes(d, n) >= 0 || compareMagnitudes(iqmp, p) >= 0)
      throw badKey('bad RSA parameters');
    const half = Math.ceil(n.length / 2) + 1;
    if (p.length > half || q.length > half) throw badKey('bad RSA primes');
    const pq = secureAlloc(p.length + q.length);
    try {
      mulInto(p, q, pq);
      if (compareMagnitudes(stripZeros(pq), n) !== 0)
        throw badKey("its primes are not its modulus's");
    } finally {
      secureFree(pq);
    }
    const rec = secureAlloc(
      SshWriter.sizeOf([type]) +
        [n, e, d, iqmp, p, q].reduce((s, m) => s + SshWriter.mpintSize(m), 0),
    );
    new SshWriter(rec).string(type).mpint(n).mpint(e).mpint(d).mpint(iqmp).mpint(p).mpint(q);
    // PKCS #1 wants the CRT exponents, which the agent protocol leaves out: compute them here.
    const work = secureAlloc(4 * (Math.max(p.length, q.length) + 1) + p.length + q.length);
    try {
      const dp = work.subarray(0, p.length);
      const dq = work.subarray(p.length, p.length + q.length);
      const m = work.subarray(
        p.length + q.length,
        p.length + q.length + Math.max(p.length, q.length),
      );
      const scratch = work.subarray(p.length + q.length + Math.max(p.length, q.length));
      oddMinusOneInto(p, m.subarray(0, p.length));
      modInto(d, m.subarray(0, p.length), dp, scratch);
      oddMinusOneInto(q, m.subarray(0, q.length));
      modInto(d, m.subarray(0, q.length), dq, scratch);
      const der = seq(
        int(Uint8Array.of(0)),
        int(n),
        int(e),
        int(d),
        int(p),
        int(q),
        int(dp),
        int(dq),
        int(iqmp),
      );
      const signing = secureAlloc(encodedLength(der));
      encodeInto(der, signing);
      const blob = Buffer.concat([sshString(type), sshMpint(e), sshMpint(n)]);
      return { type, blob, bits, rec, signing };
    } finally {
      secureFree(work);
    }
  }
  throw new KeywardError('USAGE', `unsupported key type ${JSON.stringify(type)}`, {
    hint: `keyward signs with ${KEY_TYPES.join(', ')}`,
  });
}
