import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/**
 * A CA, a server certificate for these IPv4 addresses signed by it, and a self-signed one for the
 * same addresses, made by openssl in dir: an upstream HTTPS server's credentials, for the
 * credential proxy's tests and its benchmark.
 */
export function upstreamCertificates(dir: string, ips: readonly string[]) {
  const o = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  o([
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
    '-days',
    '2',
    '-subj',
    '/CN=upstream test CA',
  ]);
  o(['req', ...ec, '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=upstream']);
  const sans = ips.map((ip) => `IP:${ip}`).join(',');
  fs.writeFileSync(
    path.join(dir, 'ext.cnf'),
    `subjectAltName=${sans}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`,
  );
  o([
    'x509',
    '-req',
    '-in',
    'srv.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'srv.pem',
    '-days',
    '2',
    '-extfile',
    'ext.cnf',
  ]);
  // Valid for the same names, but signed by nobody the proxy trusts.
  o([
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'self.key',
    '-out',
    'self.pem',
    '-days',
    '2',
    '-subj',
    '/CN=impostor',
    '-addext',
    `subjectAltName=${sans}`,
  ]);
  const r = (f: string) => fs.readFileSync(path.join(dir, f));
  return {
    ca: path.join(dir, 'ca.pem'),
    good: { key: r('srv.key'), cert: r('srv.pem') },
    self: { key: r('self.key'), cert: r('self.pem') },
  };
}
