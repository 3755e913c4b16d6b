/**
 * OpenSSH certificates added with ssh-add (PROTOCOL.certkeys; draft-miller-ssh-agent,
 * "Adding keys to the agent"): `ssh-add KEY` sends KEY-cert.pub too, as a second identity whose
 * private half is the key's, written after the certificate without the public parts the
 * certificate already holds. The agent lists the certificate and signs with the key. It does
 * not check the CA's signature or the validity period: the server does, as with ssh-agent.
 */
import { KeywardError } from '../errors.js';
import { secureAlloc, secureFree } from '../lib/secure.js';
import { fingerprint, SigningKey, SshReader, SshWriter, u32 } from '../keys/index.js';

const CERT_SUFFIX = '-cert-v01@openssh.com';

/** The key type a certificate type certifies, or undefined when type isn't a certificate's. */
export function certifiedType(type: string): string | undefined {
  return type.endsWith(CERT_SUFFIX) ? type.slice(0, -CERT_SUFFIX.length) : undefined;
}

function badCert(what: string): KeywardError {
  return new KeywardError('PROTOCOL_ERROR', `not a usable certificate: ${what}`);
}

/**
 * Reads `string certificate` and the private fields after it from r (positioned after the key
 * type), and returns the key with the certificate blob it is listed under. The key is rebuilt in
 * the agent encoding of its plain type in secure memory, and checked as any added key is.
 */
export function readCertifiedKey(type: string, r: SshReader): { key: SigningKey; blob: Buffer } {
  const plain = certifiedType(type);
  if (!plain) throw badCert(type);
  const blob = Buffer.from(r.string());
  const c = new SshReader(blob);
  if (c.text() !== type) throw badCert('its type is not the one it was added as');
  c.string(); // nonce
  const parts: Array<{ s: Uint8Array } | { m: Uint8Array }> = [];
  if (plain === 'ssh-ed25519') {
    const pk = r.string();
    // eslint-disable-next-line no-restricted-syntax -- public keys
    if (!Buffer.from(c.string()).equals(Buffer.from(pk))) throw badCert('another key');
    parts.push({ s: pk }, { s: r.string() });
  } else if (plain.startsWith('ecdsa-sha2-')) {
    parts.push({ s: c.string() }, { s: c.string() }, { m: r.mpint() });
  } else if (plain === 'ssh-rsa') {
    const e = c.mpint();
    const n = c.mpint();
    parts.push({ m: n }, { m: e }, { m: r.mpint() }, { m: r.mpint() }, { m: r.mpint() });
    parts.push({ m: r.mpint() });
  } else throw badCert(`unsupported certified key type ${plain}`);
  const size =
    SshWriter.sizeOf([plain]) +
    parts.reduce((n, p) => n + ('s' in p ? 4 + p.s.length : SshWriter.mpintSize(p.m)), 0);
  const rec = secureAlloc(size);
  try {
    const w = new SshWriter(rec).string(plain);
    for (const p of parts) {
      if ('s' in p) w.string(p.s);
      else w.mpint(p.m);
    }
    const key = SigningKey.fromRecord(rec);

    if (!certifiesKey(blob, key.publicBlob)) {
      key.wipe();
      throw badCert('it certifies another key');
    }
    return { key, blob };
  } finally {
    secureFree(rec);
  }
}

/** Whether the certificate's public key fields are the key's (its blob after the type). */
function certifiesKey(cert: Buffer, publicBlob: Buffer): boolean {
  const c = new SshReader(cert);
  c.string();
  c.string();
  const k = new SshReader(publicBlob);
  k.string();
  const rest = publicBlob.subarray(publicBlob.length - k.remaining);
  const at = cert.length - c.remaining;
  // RSA: the certificate holds e then n, the key blob e then n too (RFC 4253 "ssh-rsa").
  // eslint-disable-next-line no-restricted-syntax -- public keys
  return cert.subarray(at, at + rest.length).equals(rest);
}

/** How many public fields each certified key type has after its nonce (PROTOCOL.certkeys). */
function publicFields(plain: string): number | undefined {
  if (plain === 'ssh-ed25519') return 1; // pk
  if (plain.startsWith('ecdsa-sha2-')) return 2; // curve, Q
  if (plain === 'ssh-rsa') return 2; // e, n
  return undefined;
}

/**
 * The plain public key a certificate certifies (its type without the suffix, then the key's
 * public fields as the certificate holds them), or the blob itself when it is not a certificate
 * of a type keyward reads. Public data. A server that presents a host certificate signs with the
 * certified key (session-bind@openssh.com, a hostbound login), and OpenSSH fingerprints a
 * certificate by that key; the CA's signature is ssh's to check against known_hosts, not the
 * agent's (as ssh-agent).
 */
export function certifiedKeyBlob(blob: Uint8Array): Uint8Array {
  try {
    const r = new SshReader(blob);
    const plain = certifiedType(r.text());
    const n = plain === undefined ? undefined : publicFields(plain);
    if (plain === undefined || n === undefined) return blob;
    r.string(); // nonce
    const parts: Buffer[] = [Buffer.from(plain)];
    for (let i = 0; i < n; i++) parts.push(r.string());
    return Buffer.concat(parts.flatMap((p) => [u32(p.length), p]));
  } catch {
    return blob;
  }
}

/** A server's host key as `ssh-keygen -l` names it: a certificate by the key it certifies. */
export function hostKeyFingerprint(blob: Uint8Array): string {
  return fingerprint(certifiedKeyBlob(blob));
}
