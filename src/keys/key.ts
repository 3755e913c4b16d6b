/**
 * A signing key in memory: the private half in secure memory, in two forms, both wiped together.
 *
 * - `record`: the private key as the SSH agent protocol encodes it (draft-miller-ssh-agent,
 *   section 4.2.x, without the comment). This is what the vault stores (docs/FORMAT.md) and what
 *   `ssh-add` sends, so one parser serves the vault, the agent socket and key files.
 * - the signing form: libsodium's 64-byte ed25519 secret key, or the SEC 1 / PKCS #1 DER that
 *   OpenSSL (through node:crypto) reads for ECDSA and RSA.
 *
 * ed25519 signs with libsodium from secure memory. ECDSA and RSA sign with OpenSSL called
 * directly (lib/openssl.ts), handed the DER from secure memory: parsed for one signature and freed
 * (cleared) right after it, or, for a key the agent keeps (holdParsed), parsed once into
 * OpenSSL's secure heap and freed by wipe() (an RSA key only where OpenSSL caches no Montgomery
 * forms of its primes: rsaHoldable). No KeyObject is made and nothing reaches the JS heap.
 * docs/THREAT-MODEL.md says what each leaves and the test that checks it.
 */
import crypto from 'node:crypto';
import { sodium } from '../lib/sodium.js';
import { KeywardError } from '../errors.js';
import {
  OpensslKey,
  SECURE_HEAP_HOLD_BUDGET,
  rsaHoldable,
  secureHeapActive,
  secureHeapUsed,
  withSigningPlace,
} from '../lib/openssl.js';
import { secureAlloc, secureFree, zero, type SecureBuffer } from '../lib/secure.js';
import { compareMagnitudes, modInto, mulInto, oddMinusOneInto } from './bignum.js';
import {
  encodeInto,
  encodedLength,
  int,
  readInteger,
  readSequence,
  readTlv,
  seq,
  type Der,
} from './der.js';
import {
  samePublic,
  SshParseError,
  SshReader,
  SshWriter,
  sshMpint,
  sshString,
  stripZeros,
} from './wire.js';

export type KeyType =
  'ssh-ed25519' | 'ecdsa-sha2-nistp256' | 'ecdsa-sha2-nistp384' | 'ecdsa-sha2-nistp521' | 'ssh-rsa';
export const KEY_TYPES: readonly KeyType[] = [
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'ssh-rsa',
];

/** SSH_AGENT_RSA_SHA2_256 and _512 (draft-miller-ssh-agent, section 4.5.1). */
export const SIGN_FLAG_RSA_SHA2_256 = 2;
export const SIGN_FLAG_RSA_SHA2_512 = 4;

/** Below this, RSA keys are refused (OpenSSH's own floor is 1024; 2048 is the modern one). */
export const RSA_MIN_BITS = 2048;
export const RSA_MAX_BITS = 16384;

interface Curve {
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

const CURVES: Record<string, Curve> = {
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

function badKey(what: string): KeywardError {
  return new KeywardError('PROTOCOL_ERROR', `not a usable key: ${what}`);
}

export class SigningKey {
  private constructor(
    readonly type: KeyType,
    /** The public key blob (RFC 4253 section 6.6): what ssh-add -L prints, base64-encoded. */
    readonly publicBlob: Buffer,
    readonly bits: number,
    private readonly recordBytes: SecureBuffer,
    private readonly signing: SecureBuffer,
  ) {}

  /** An ECDSA or RSA key parsed once into OpenSSL's secure heap (holdParsed), freed by wipe(). */
  private held: OpensslKey | undefined;
  /** The public blob's fingerprint, once asked for (public). */
  private fp: string | undefined;

  /**
   * For a key the agent keeps (a vault key while unlocked, one added by ssh-add): an ECDSA or RSA
   * key is parsed once into OpenSSL's secure heap instead of at every signature (lib/openssl.ts),
   * when the process has one, and for RSA when OpenSSL caches nothing of the primes with the key
   * (rsaHoldable). ed25519 keys are unchanged (libsodium signs from secure memory).
   */
  holdParsed(): void {
    // Held only where OpenSSL has a secure heap to hold it in; else parsed at each signature.
    if (this.held || this.signing.length === 0 || !secureHeapActive()) return;
    const kind = CURVES[this.type] ? 'ec' : this.type === 'ssh-rsa' && rsaHoldable() ? 'rsa' : '';
    if (!kind) return;
    const k = OpensslKey.parse(this.signing, kind);
    if (!k) return;
    // Not held past the budget (the heap is fixed, and full it fails every parse), nor an RSA
    // key outside the default provider (another provider's method caches p and q's forms).
    if (secureHeapUsed() > SECURE_HEAP_HOLD_BUDGET || (kind === 'rsa' && !k.inDefaultProvider())) {
      k.free();
      return;
    }
    this.held = k;
  }

  /** Whether the key is held parsed by OpenSSL (holdParsed), for tests and the docs' claims. */
  get holdsParsed(): boolean {
    return this.held !== undefined;
  }

  /**
   * Reads one private key in the agent protocol's encoding from r (a view of secure memory) and
   * copies what it needs into secure memory of its own. Checks that the halves belong together.
   */
  static read(r: SshReader): SigningKey {
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
      return new SigningKey(
        type,
        Buffer.concat([sshString(type), sshString(pk)]),
        256,
        rec,
        signing,
      );
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
        return new SigningKey(type as KeyType, blob, curve.bits, rec, signing);
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
        return new SigningKey(type, blob, bits, rec, signing);
      } finally {
        secureFree(work);
      }
    }
    throw new KeywardError('USAGE', `unsupported key type ${JSON.stringify(type)}`, {
      hint: `keyward signs with ${KEY_TYPES.join(', ')}`,
    });
  }

  /** A key from its vault record (the agent encoding; a bare 64-byte ed25519 key from 0.1). */
  static fromRecord(record: SecureBuffer): SigningKey {
    if (record.length === 64) {
      const pk = Buffer.from(record.subarray(32));
      const rec = secureAlloc(SshWriter.sizeOf(['ssh-ed25519', pk, record]));
      try {
        new SshWriter(rec).string('ssh-ed25519').string(pk).string(record);
        return SigningKey.fromRecord(rec);
      } finally {
        secureFree(rec);
      }
    }
    const r = new SshReader(record);
    const key = SigningKey.read(r);
    if (r.remaining !== 0) {
      key.wipe();
      throw new SshParseError('trailing bytes after the key');
    }
    return key;
  }

  /** A new key: ed25519 from libsodium; ECDSA and RSA from OpenSSL, copied out and wiped. */
  static generate(type: KeyType, rsaBits = 3072): SigningKey {
    if (type === 'ssh-ed25519') {
      const pk = Buffer.alloc(32);
      const sk = secureAlloc(64);
      const rec = secureAlloc(SshWriter.sizeOf([type, pk, sk]));
      try {
        sodium.crypto_sign_keypair(pk, sk);
        new SshWriter(rec).string(type).string(pk).string(sk);
        return SigningKey.fromRecord(rec);
      } finally {
        secureFree(sk);
        secureFree(rec);
      }
    }
    const curve = CURVES[type];
    if (curve) {
      const { privateKey } = crypto.generateKeyPairSync('ec', {
        namedCurve: curve.jwk,
        // Both halves as DER: a public KeyObject would keep OpenSSL's private key alive until GC.
        privateKeyEncoding: { format: 'der', type: 'sec1' },
        publicKeyEncoding: { format: 'der', type: 'spki' },
      });
      try {
        const [, dTlv, , pubTlv] = readSequence(privateKey);
        const d = readTlv(dTlv ?? new Uint8Array()).content;
        const bits = readTlv(readTlv(pubTlv ?? new Uint8Array()).content).content;
        const q = bits.subarray(1);
        const rec = secureAlloc(SshWriter.sizeOf([type, curve.id, q]) + SshWriter.mpintSize(d));
        try {
          new SshWriter(rec).string(type).string(curve.id).string(q).mpint(d);
          return SigningKey.fromRecord(rec);
        } finally {
          secureFree(rec);
        }
      } finally {
        zero(privateKey);
      }
    }
    if (type === 'ssh-rsa') {
      if (!Number.isInteger(rsaBits) || rsaBits < RSA_MIN_BITS || rsaBits > 8192)
        throw new KeywardError('USAGE', `RSA keys are made with ${RSA_MIN_BITS} to 8192 bits`);
      const { privateKey } = crypto.generateKeyPairSync('rsa', {
        modulusLength: rsaBits,
        publicExponent: 65537,
        privateKeyEncoding: { format: 'der', type: 'pkcs1' },
        publicKeyEncoding: { format: 'der', type: 'pkcs1' },
      });
      try {
        const f = readSequence(privateKey).map(readInteger);
        const [, n, e, d, p, q, , , qinv] = f;
        if (!n || !e || !d || !p || !q || !qinv) throw badKey('OpenSSL returned a short RSA key');
        const rec = secureAlloc(
          SshWriter.sizeOf([type]) +
            [n, e, d, qinv, p, q].reduce((s, m) => s + SshWriter.mpintSize(m), 0),
        );
        try {
          new SshWriter(rec).string(type).mpint(n).mpint(e).mpint(d).mpint(qinv).mpint(p).mpint(q);
          return SigningKey.fromRecord(rec);
        } finally {
          secureFree(rec);
        }
      } finally {
        zero(privateKey);
      }
    }
    throw new KeywardError('USAGE', `unsupported key type ${type}`);
  }

  /** The vault record (secure memory owned by this key: store it, don't keep it). */
  get record(): SecureBuffer {
    return this.recordBytes;
  }

  /** SHA256:... of the public blob: asked at every signature (its record), taken once. */
  get fingerprint(): string {
    return (this.fp ??= fingerprint(this.publicBlob));
  }

  /** The algorithm a signature with these flags uses, or undefined when keyward refuses it. */
  algorithm(flags: number): string | undefined {
    if (this.type !== 'ssh-rsa') return this.type;
    if (flags & SIGN_FLAG_RSA_SHA2_512) return 'rsa-sha2-512';
    if (flags & SIGN_FLAG_RSA_SHA2_256) return 'rsa-sha2-256';
    return undefined; // ssh-rsa (SHA-1) signatures are refused
  }

  /** An SSH signature blob: string algorithm, string signature. */
  sign(data: Uint8Array, flags = 0): Buffer {
    if (this.signing.length === 0) throw new KeywardError('AGENT_LOCKED', 'the key was wiped');
    const alg = this.algorithm(flags);
    if (alg === undefined)
      throw new KeywardError('USAGE', 'SHA-1 RSA signatures (ssh-rsa) are refused', {
        hint: 'clients since OpenSSH 7.2 ask for rsa-sha2-256 or rsa-sha2-512',
      });
    if (this.type === 'ssh-ed25519') {
      const sig = Buffer.alloc(64);
      sodium.crypto_sign_detached(sig, data, this.signing);
      return Buffer.concat([sshString(alg), sshString(sig)]);
    }
    const curve = CURVES[this.type];
    if (curve) {
      const der = this.withOpenssl('ec', (k) => k.sign(curve.hash, data));
      const [r, sv] = readSequence(der);
      if (!r || !sv) throw badKey('OpenSSL returned a malformed ECDSA signature');
      const inner = Buffer.concat([sshMpint(readInteger(r)), sshMpint(readInteger(sv))]);
      return Buffer.concat([sshString(alg), sshString(inner)]);
    }
    const sig = this.withOpenssl('rsa', (k) =>
      k.sign(alg === 'rsa-sha2-512' ? 'sha512' : 'sha256', data),
    );
    return Buffer.concat([sshString(alg), sshString(sig)]);
  }

  /**
   * sign(), with an RSA signature (~1.4 ms of CPU) computed off the event loop, on libuv's thread
   * pool, three at most at once (withSigningPlace). A held key (holdParsed) signs there and is
   * freed by a wipe once its running signatures end; otherwise the key is parsed from secure
   * memory once this signature has its place, for it alone, and freed once it is made, whatever
   * happens to this key meanwhile (a wipe at lock). Other keys sign in place (tens of
   * microseconds: a trip to the pool would cost more).
   */
  async signAsync(data: Uint8Array, flags = 0): Promise<Buffer> {
    if (this.type !== 'ssh-rsa') return this.sign(data, flags);
    if (this.signing.length === 0) throw new KeywardError('AGENT_LOCKED', 'the key was wiped');
    const alg = this.algorithm(flags);
    if (alg === undefined) return this.sign(data, flags); // the refusal, as sign() words it
    const hash = alg === 'rsa-sha2-512' ? 'sha512' : 'sha256';
    return withSigningPlace(async () => {
      // Wiped while this waited (a lock, ssh-add -D): nothing is parsed or signed.
      if (this.signing.length === 0) throw new KeywardError('AGENT_LOCKED', 'the key was wiped');
      // A held key is freed by a wipe once the signatures running with it end (OpensslKey.free).
      const held = this.held;
      const k = held ?? OpensslKey.parse(this.signing, 'rsa');
      if (!k) throw badKey('OpenSSL could not read it');
      try {
        const sig = await k.signAsync(hash, data);
        return Buffer.concat([sshString(alg), sshString(sig)]);
      } finally {
        if (!held) k.free();
      }
    });
  }

  /** Runs fn with the key held in OpenSSL, or with one parsed for this call and freed after it. */
  private withOpenssl<T>(kind: 'ec' | 'rsa', fn: (k: OpensslKey) => T): T {
    if (this.held) return fn(this.held);
    const k = OpensslKey.parse(this.signing, kind);
    if (!k) throw badKey('OpenSSL could not read it');
    try {
      return fn(k);
    } finally {
      k.free();
    }
  }

  /** Checks an SSH signature blob against this key's public half (public data only). */
  verify(data: Uint8Array, signature: Uint8Array): boolean {
    const r = new SshReader(signature);
    const alg = r.text();
    const sig = r.string();
    if (this.type === 'ssh-ed25519') {
      return (
        sig.length === 64 &&
        sodium.crypto_sign_verify_detached(sig, data, this.publicBlob.subarray(19))
      );
    }
    const pub = new SshReader(this.publicBlob);
    pub.text();
    const curve = CURVES[this.type];
    if (curve) {
      pub.text();
      const q = pub.string();
      const key = crypto.createPublicKey({
        key: {
          kty: 'EC',
          crv: curve.jwk,
          x: q.subarray(1, 1 + curve.size).toString('base64url'),
          y: q.subarray(1 + curve.size).toString('base64url'),
        },
        format: 'jwk',
      });
      const s = new SshReader(sig);
      const pad = (m: Uint8Array) => {
        const out = Buffer.alloc(curve.size);
        const v = stripZeros(m);
        if (v.length > curve.size) throw new SshParseError('bad ECDSA signature');
        out.set(v, curve.size - v.length);
        return out;
      };
      const rs = Buffer.concat([pad(s.mpint()), pad(s.mpint())]);
      return crypto.verify(curve.hash, data, { key, dsaEncoding: 'ieee-p1363' }, rs);
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

  /** Signs a random message and verifies it: a key whose halves disagree is refused. */
  /** selfTest(), with an RSA signature on the thread pool (Key.signAsync): a large key's
   * signature never holds the agent's thread. */
  async selfTestAsync(): Promise<void> {
    if (this.type !== 'ssh-rsa') return this.selfTest();
    const msg = crypto.randomBytes(32);
    const sig = await this.signAsync(msg, SIGN_FLAG_RSA_SHA2_256);
    if (!this.verify(msg, sig)) {
      this.wipe();
      throw badKey('its public and private halves do not belong together');
    }
  }

  selfTest(): void {
    const msg = crypto.randomBytes(32);
    const flags = this.type === 'ssh-rsa' ? SIGN_FLAG_RSA_SHA2_256 : 0;
    if (!this.verify(msg, this.sign(msg, flags))) {
      this.wipe();
      throw badKey('its public and private halves do not belong together');
    }
  }

  /** Zeroes and frees the private key; the key can't sign afterwards. */
  wipe(): void {
    this.held?.free();
    this.held = undefined;
    secureFree(this.recordBytes);
    secureFree(this.signing);
  }

  get wiped(): boolean {
    return this.signing.length === 0;
  }
}

/** As `ssh-keygen -l` prints it. */
export function fingerprint(blob: Uint8Array): string {
  return `SHA256:${crypto.createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** The key type named in a public key blob. */
export function blobType(blob: Uint8Array): string {
  return new SshReader(blob).text();
}

/** As ssh-keygen -l names the type: ED25519, ECDSA, RSA. */
export function typeLabel(type: string): string {
  return type === 'ssh-ed25519'
    ? 'ED25519'
    : type.startsWith('ecdsa-')
      ? 'ECDSA'
      : type === 'ssh-rsa'
        ? 'RSA'
        : type;
}

/** An OpenSSH public key line: `TYPE BASE64 COMMENT`. */
export function publicKeyLine(blob: Uint8Array, comment: string): string {
  return `${blobType(blob)} ${Buffer.from(blob).toString('base64')}${comment ? ` ${comment}` : ''}`;
}
