/**
 * Entry bodies, sealed to the audit box key (docs/AUDIT.md, "Bodies"): a writer can seal but
 * never open them; only the vault's box secret opens them.
 *
 * Two forms. The first, `crypto_box_seal`, spends an X25519 key pair and exchange on every
 * entry (~100 us here, the largest per-entry cost of a durable append). The second, the batch
 * form, spends them once per *batch key* and then encrypts each body with XChaCha20-Poly1305:
 *
 *   body = 0x01 || epk (32) || nonce (24) || XChaCha20-Poly1305(key, nonce, ad = "", JSON body)
 *   key  = BLAKE2b-256(X25519(esk, pk) || epk || pk)
 *
 * (esk, epk) is an ephemeral key pair, pk the box public key; the nonce counts the bodies sealed
 * under this key (its first 8 bytes, little-endian; the rest zero): the key is new with every
 * batch, so a nonce never repeats under one key, and no random draw is paid per body. A writer keeps a
 * batch key in secure memory for at most BATCH_KEY_MS (and BATCH_KEY_USES bodies), then frees
 * it: at any moment, what the agent's memory could open is the bodies it wrote in the last
 * second, which it wrote itself. The form is told by trial: a batch body opens under the key its
 * epk gives, anything else is tried as a sealed box (a sealed body that happens to start with
 * 0x01 fails the batch form's tag, 2^-128, and opens as sealed).
 */
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import { sodium } from '../lib/sodium.js';

const TAG = 0x01;
const PK = 32;
const NONCE = 24;
const ABYTES = 16;
const HEAD = 1 + PK + NONCE;
/** How long, and for how many bodies, one batch key serves. */
export const BATCH_KEY_MS = 1000;
export const BATCH_KEY_USES = 100_000;

function batchKey(shared: SecureBuffer, epk: Uint8Array, pk: Uint8Array): SecureBuffer {
  const input = secureAlloc(3 * PK);
  shared.copy(input, 0);
  input.set(epk, PK);
  input.set(pk, 2 * PK);
  const key = secureAlloc(32);
  sodium.crypto_generichash(key, input);
  secureFree(input);
  return key;
}

function allZero(b: Uint8Array): boolean {
  let acc = 0;
  for (const x of b) acc |= x;
  return acc === 0;
}

/** The key an ephemeral public key and a box secret key share; undefined for a low-order epk. */
function openingKey(epk: Uint8Array, pk: Uint8Array, sk: SecureBuffer): SecureBuffer | undefined {
  const shared = secureAlloc(PK);
  try {
    sodium.crypto_scalarmult(shared, sk, epk);
    return allZero(shared) ? undefined : batchKey(shared, epk, pk);
  } catch {
    return undefined;
  } finally {
    secureFree(shared);
  }
}

/** Seals bodies to one box public key in the batch form, renewing its key as it ages. */
export class BodySealer {
  private key: SecureBuffer | undefined;
  private readonly epk = Buffer.alloc(PK);
  private readonly pk = Buffer.alloc(PK);
  private born = 0;
  private uses = 0;
  /** Frees the key when it ages out with no body to seal (an idle agent keeps none). */
  private expiry: NodeJS.Timeout | undefined;

  /**
   * `entropy` fills the ephemeral key's seed: randombytes, except for the
   * committed test vectors (scripts/make-vectors.ts), which need them fixed.
   */
  constructor(
    private readonly now: () => number = Date.now,
    private readonly entropy: (b: Uint8Array) => void = (b) => sodium.randombytes_buf(b),
  ) {}

  seal(plain: Uint8Array, publicKey: Uint8Array): Buffer {
    const t = this.now();
    // eslint-disable-next-line no-restricted-syntax -- a public key, not a secret
    const samePk = this.pk.equals(publicKey);
    if (
      this.key === undefined ||
      !samePk ||
      t - this.born >= BATCH_KEY_MS ||
      t < this.born ||
      this.uses >= BATCH_KEY_USES
    )
      this.renew(publicKey, t);
    const key = this.key as SecureBuffer;
    this.uses += 1;
    // Public bytes, every one written below (the tag, the ephemeral key, the whole nonce, the
    // ciphertext and its tag): a slice of Node's pool will do, unzeroed.
    const out = Buffer.allocUnsafe(HEAD + plain.length + ABYTES);
    out[0] = TAG;
    this.epk.copy(out, 1);
    const nonce = out.subarray(1 + PK, HEAD);
    // The count of bodies sealed under this key before this one (uses was just incremented),
    // 64 bits little-endian (below BATCH_KEY_USES: its high half is 0), then zeros.
    nonce.writeUInt32LE(this.uses - 1, 0);
    nonce.fill(0, 4);
    sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
      out.subarray(HEAD),
      plain,
      null,
      null,
      nonce,
      key,
    );
    return out;
  }

  private renew(publicKey: Uint8Array, t: number): void {
    this.close();
    const seed = secureAlloc(PK);
    const esk = secureAlloc(PK);
    const shared = secureAlloc(PK);
    try {
      this.entropy(seed);
      sodium.crypto_box_seed_keypair(this.epk, esk, seed);
      sodium.crypto_scalarmult(shared, esk, publicKey);
      if (allZero(shared)) throw new Error('the audit box public key is of low order');
      this.pk.set(publicKey);
      this.key = batchKey(shared, this.epk, publicKey);
      this.born = t;
      this.uses = 0;
      this.expiry = setTimeout(() => this.close(), BATCH_KEY_MS);
      this.expiry.unref();
    } finally {
      secureFree(shared);
      secureFree(esk);
      secureFree(seed);
    }
  }

  /** Frees the batch key: the bodies sealed under it open only with the box secret now. */
  close(): void {
    if (this.expiry) clearTimeout(this.expiry);
    this.expiry = undefined;
    secureFree(this.key);
    this.key = undefined;
  }

  /** Whether a batch key is held now (for tests). */
  holdsKey(): boolean {
    return this.key !== undefined;
  }
}

/** A body in the older, one-box-per-entry form (crypto_box_seal). */
export function sealBodyOnce(plain: Uint8Array, publicKey: Uint8Array): Buffer {
  const out = Buffer.alloc(plain.length + sodium.crypto_box_SEALBYTES);
  sodium.crypto_box_seal(out, plain, publicKey);
  return out;
}

export interface BoxKey {
  publicKey: Buffer;
  secretKey: SecureBuffer;
}

/**
 * Opens bodies with a set of box keys, remembering the key of each batch it opened (one X25519
 * exchange per batch, not per body). close() frees what it remembered.
 */
export class BodyOpener {
  private readonly batches = new Map<string, SecureBuffer>();

  constructor(private readonly keys: readonly BoxKey[]) {}

  /** The body's plaintext, or undefined when none of the keys opens it. */
  open(body: Uint8Array): Buffer | undefined {
    if (body.length >= HEAD + ABYTES && body[0] === TAG) {
      const plain = this.openBatch(body);
      if (plain) return plain;
    }
    if (body.length < sodium.crypto_box_SEALBYTES) return undefined;
    const out = Buffer.alloc(body.length - sodium.crypto_box_SEALBYTES);
    for (const k of this.keys) {
      if (sodium.crypto_box_seal_open(out, body, k.publicKey, k.secretKey)) return out;
    }
    return undefined;
  }

  private openBatch(body: Uint8Array): Buffer | undefined {
    const epk = body.subarray(1, 1 + PK);
    const nonce = body.subarray(1 + PK, HEAD);
    const out = Buffer.alloc(body.length - HEAD - ABYTES);
    const tryKey = (key: SecureBuffer): boolean => {
      try {
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
          out,
          null,
          body.subarray(HEAD),
          null,
          nonce,
          key,
        );
        return true;
      } catch {
        return false;
      }
    };
    const id = Buffer.from(epk).toString('hex');
    const known = this.batches.get(id);
    if (known) return tryKey(known) ? out : undefined;
    for (const k of this.keys) {
      const key = openingKey(epk, k.publicKey, k.secretKey);
      if (key === undefined) continue;
      if (tryKey(key)) {
        this.batches.set(id, key);
        return out;
      }
      secureFree(key);
    }
    return undefined;
  }

  close(): void {
    for (const key of this.batches.values()) secureFree(key);
    this.batches.clear();
  }
}
