/**
 * The credential proxy's per-run certificate authority (src/proxy/ca.ts), checked by real TLS
 * clients: curl and OpenSSL accept what it certifies for its hosts, and nothing else.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { createRunCa, type RunCa } from '../src/proxy/index.js';

const CURL = ['/usr/bin/curl', '/usr/local/bin/curl'].find((p) => fs.existsSync(p));
const skip = CURL || process.env['CI'] ? false : 'curl is not installed (CI installs it: .ci/run)';

describe('the per-run certificate authority', { skip }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-ca-'));
  const caFile = path.join(dir, 'ca.pem');
  let ca: RunCa;
  const servers: tls.Server[] = [];
  /** A TLS server presenting the leaf for `host` (a client sends no SNI for an address). */
  const serve = async (host: string): Promise<number> => {
    const leaf = await ca.leaf(host);
    const server = tls.createServer({ cert: leaf.cert, key: leaf.key }, (s) => {
      s.once('data', () =>
        s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok'),
      );
      s.on('error', () => undefined);
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return (server.address() as AddressInfo).port;
  };
  let port = 0;
  let ipPort = 0;

  before(async () => {
    ca = await createRunCa(['localhost', '127.0.0.1']);
    fs.writeFileSync(caFile, ca.certPem);
    port = await serve('localhost');
    ipPort = await serve('127.0.0.1');
  });
  after(async () => {
    for (const s of servers) await new Promise<void>((r) => s.close(() => r()));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** curl, run without blocking this process (its TLS server answers from here). */
  const curl = (url: string, extra: string[] = [], env: NodeJS.ProcessEnv = process.env) =>
    new Promise<{ status: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        CURL ?? 'curl',
        ['-sS', '--max-time', '60', ...extra, url],
        { encoding: 'utf8', env },
        (e, stdout, stderr) =>
          resolve({ status: e ? Number((e as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
  const trusting = ['--cacert', caFile];

  test('curl trusts what it certifies for its hosts, by name and by address', async () => {
    const byName = await curl(`https://localhost:${port}/`, trusting);
    assert.equal(byName.status, 0, byName.stderr);
    assert.equal(byName.stdout, 'ok');
    const byAddress = await curl(`https://127.0.0.1:${ipPort}/`, trusting);
    assert.equal(byAddress.status, 0, byAddress.stderr);
  });

  test('a name the run did not bind is refused by the client, and the CA certifies no other', async () => {
    const other = await curl(`https://other.example:${port}/`, [
      ...trusting,
      '--resolve',
      `other.example:${port}:127.0.0.1`,
    ]);
    assert.notEqual(other.status, 0);
    assert.match(other.stderr, /certificate|SSL/i);
    await assert.rejects(ca.leaf('other.example'), /not one of this run's hosts/);
    // And without the run's CA, nothing it made is trusted.
    const bare = await curl(`https://localhost:${port}/`, [], {
      ...process.env,
      CURL_CA_BUNDLE: '/nonexistent',
      SSL_CERT_FILE: '/nonexistent',
    });
    assert.notEqual(bare.status, 0);
  });

  test('the CA is constrained to its hosts, may sign no other CA, and lasts at most a day', () => {
    const text = execFileSync('openssl', ['x509', '-noout', '-text', '-in', caFile], {
      encoding: 'utf8',
    });
    assert.match(
      text,
      /X509v3 Name Constraints: critical\s+Permitted:\s+DNS:localhost\s+IP:127\.0\.0\.1/,
    );
    assert.match(text, /X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    assert.match(text, /X509v3 Key Usage: critical\s+Certificate Sign/);
    const end = execFileSync('openssl', ['x509', '-noout', '-enddate', '-in', caFile], {
      encoding: 'utf8',
    });
    const notAfter = Date.parse(end.replace('notAfter=', '').trim());
    assert.ok(notAfter - Date.now() <= 24 * 3600 * 1000, end);
    // OpenSSL's own chain check, name constraints included.
    const leafFile = path.join(dir, 'leaf.pem');
    return ca.leaf('localhost').then((l) => {
      fs.writeFileSync(leafFile, l.cert.split(/(?<=-----END CERTIFICATE-----\n)/)[0] ?? '');
      const v = spawnSync(
        'openssl',
        ['verify', '-CAfile', caFile, '-verify_hostname', 'localhost', leafFile],
        {
          encoding: 'utf8',
        },
      );
      assert.equal(v.status, 0, v.stdout + v.stderr);
    });
  });
});
