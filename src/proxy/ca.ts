/**
 * The credential proxy's certificate authority for one run (issue 22, in progress: see
 * docs/THREAT-MODEL.md, "The credential proxy"). The run's child trusts it (through
 * NODE_EXTRA_CA_CERTS, SSL_CERT_FILE and the like) so the proxy can end TLS for the hosts the
 * policy binds to a secret, put the real credential into the request, and forward it.
 *
 * - Made in memory for the run, never written: only its certificate (public) is given to the
 *   child, as a file.
 * - Name-constrained to the run's bound hosts (a critical nameConstraints extension), so even a
 *   leaked CA key mints no certificate a client accepts for any other name.
 * - Valid for at most a day, and only for as long as the run: the child is its only relying party.
 *
 * The keys are WebCrypto keys (ECDSA P-256), as @peculiar/x509 signs with them, and node:tls
 * takes the leaf's key as PEM: both are in the agent's ordinary heap for the run's life. They are
 * not the user's secrets: they open nothing but this run's own TLS sessions with its child.
 */
// @peculiar/x509 resolves its parts through tsyringe, which needs the Reflect metadata API (as
// @simplewebauthn/server, which uses the same library, loads it).
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  GeneralName,
  GeneralSubtree,
  GeneralSubtrees,
  id_ce_nameConstraints,
  NameConstraints,
} from '@peculiar/asn1-x509';
import * as x509 from '@peculiar/x509';

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY_MS = 24 * 3600 * 1000;
/** A host name the CA may certify: DNS labels, or an IPv4 address. */
const HOST_RE =
  /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;
const IPV4_RE = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

function checkHost(host: string): string {
  const h = host.toLowerCase();
  if (!HOST_RE.test(h) && !IPV4_RE.test(h))
    throw new Error(`${JSON.stringify(host.slice(0, 80))} is not a host name or IPv4 address`);
  return h;
}

const isIp = (h: string) => IPV4_RE.test(h);

/** The nameConstraints extension that permits exactly these hosts (and no subdomain). */
function nameConstraints(hosts: readonly string[]): x509.Extension {
  const subtrees = hosts.map(
    (h) =>
      new GeneralSubtree({
        base: new GeneralName(
          isIp(h)
            ? // An address and its mask (RFC 5280, 4.2.1.10): this one address.
              { iPAddress: `${h}/32` }
            : { dNSName: h },
        ),
      }),
  );
  const value = AsnConvert.serialize(
    new NameConstraints({ permittedSubtrees: new GeneralSubtrees(subtrees) }),
  );
  return new x509.Extension(id_ce_nameConstraints, true, value);
}

/** The PEM of a PKCS #8 private key. */
async function keyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  const b64 = der.toString('base64').replace(/.{64}/g, '$&\n');
  der.fill(0);
  return `-----BEGIN PRIVATE KEY-----\n${b64.trimEnd()}\n-----END PRIVATE KEY-----\n`;
}

export interface Leaf {
  /** The leaf's certificate and the CA's, PEM: what the TLS server presents. */
  cert: string;
  /** The leaf's private key, PEM (node:tls takes nothing else). */
  key: string;
}

/** One run's CA: its certificate for the child, and a leaf per bound host, made on first use. */
export class RunCa {
  private readonly leaves = new Map<string, Promise<Leaf>>();

  private constructor(
    private readonly keys: CryptoKeyPair,
    private readonly cert: x509.X509Certificate,
    private readonly hosts: ReadonlySet<string>,
    private readonly notAfter: Date,
  ) {}

  /** A new CA, constrained to `hosts` (names or IPv4 addresses), valid from now for `ttlMs`. */
  static async create(hosts: readonly string[], ttlMs = DAY_MS): Promise<RunCa> {
    const names = [...new Set(hosts.map(checkHost))];
    if (names.length === 0) throw new Error('a run CA needs at least one host');
    const keys = await webcrypto.subtle.generateKey(EC, false, ['sign', 'verify']);
    const now = Date.now();
    const notAfter = new Date(now + Math.min(ttlMs, DAY_MS));
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString('hex'),
      name: `CN=keyward run CA ${Buffer.from(webcrypto.getRandomValues(new Uint8Array(6))).toString('hex')}`,
      // A minute back: a child whose clock is a little behind still accepts it.
      notBefore: new Date(now - 60_000),
      notAfter,
      keys: keys as CryptoKeyPair,
      signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
        nameConstraints(names),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return new RunCa(keys as CryptoKeyPair, cert, new Set(names), notAfter);
  }

  /** The CA's certificate, PEM: the one thing of it the child gets. */
  get certPem(): string {
    return this.cert.toString('pem');
  }

  /** The certificate and key for `host`, one of the CA's hosts; made once, then reused. */
  leaf(host: string): Promise<Leaf> {
    const h = checkHost(host);
    if (!this.hosts.has(h)) return Promise.reject(new Error(`${h} is not one of this run's hosts`));
    let l = this.leaves.get(h);
    if (!l) {
      l = this.makeLeaf(h);
      this.leaves.set(h, l);
    }
    return l;
  }

  private async makeLeaf(host: string): Promise<Leaf> {
    const keys = (await webcrypto.subtle.generateKey(EC, true, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString('hex'),
      // The name is in subjectAltName; a CN that looks like a host name would be checked against
      // the DNS constraints too (an address would fail them), so it says what the certificate is.
      subject: `CN=keyward run leaf for ${host}`,
      issuer: this.cert.subject,
      notBefore: new Date(Date.now() - 60_000),
      notAfter: this.notAfter,
      publicKey: keys.publicKey,
      signingKey: this.keys.privateKey,
      signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension([
          isIp(host) ? { type: 'ip', value: host } : { type: 'dns', value: host },
        ]),
        await x509.AuthorityKeyIdentifierExtension.create(this.keys.publicKey),
      ],
    });
    return {
      cert: `${cert.toString('pem')}\n${this.certPem}\n`,
      key: await keyPem(keys.privateKey),
    };
  }
}
