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
  signingQueueFull,
  withSigningPlace,
} from '../lib/openssl.js';
import { secureAlloc, secureFree, zero, type SecureBuffer } from '../lib/secure.js';
import { readInteger, readSequence, readTlv } from './der.js';
import { SshParseError, SshReader, SshWriter, sshMpint, sshString, stripZeros } from './wire.js';
import { badKey, CURVES, readPrivate, RSA_MIN_BITS, type KeyType } from './private.js';

export { KEY_TYPES, RSA_MAX_BITS, RSA_MIN_BITS, type KeyType } from './private.js';

/** SSH_AGENT_RSA_SHA2_256 and _512 (draft-miller-ssh-agent, section 4.5.1). */
export const SIGN_FLAG_RSA_SHA2_256 = 2;
export const SIGN_FLAG_RSA_SHA2_512 = 4;

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
    const k = readPrivate(r);
    return new SigningKey(k.type, k.blob, k.bits, k.rec, k.signing);
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
   * Whether signAsync, called now, would be refused for too many signatures waiting for a place
   * (only RSA signatures wait for one). Asked in the synchronous step that then calls signAsync,
   * it is signAsync's own answer.
   */
  get signingQueueFull(): boolean {
    return this.type === 'ssh-rsa' && signingQueueFull();
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
    return verifySshSignature(this.publicBlob, data, signature);
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

/**
 * Checks an SSH signature blob (string algorithm, string signature) over data against a public
 * key blob: ed25519, ECDSA P-256/P-384/P-521 or RSA (rsa-sha2-256/512 only). Public data only,
 * so node:crypto may hold the key. False for a key or signature it can't read.
 */
export function verifySshSignature(
  publicBlob: Uint8Array,
  data: Uint8Array,
  signature: Uint8Array,
): boolean {
  try {
    return verifyOrThrow(publicBlob, data, signature);
  } catch {
    return false;
  }
}

function verifyOrThrow(publicBlob: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  const type = blobType(publicBlob);
  const r = new SshReader(signature);
  const alg = r.text();
  const sig = r.string();
  if (type === 'ssh-ed25519') {
    return (
      sig.length === 64 && sodium.crypto_sign_verify_detached(sig, data, publicBlob.subarray(19))
    );
  }
  const pub = new SshReader(publicBlob);
  pub.text();
  const curve = CURVES[type as KeyType];
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
  if (type !== 'ssh-rsa') return false;
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
