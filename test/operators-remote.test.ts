/**
 * The operator page and API beyond this machine: an HTTPS listener with the user's certificate,
 * at the address, port and origin the policy names, serving operators only, while unlocked
 * (docs/OPERATORS.md, "Reaching it from elsewhere"). Certificates are made by Debian's openssl.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parsePolicy } from '../src/policy/index.js';
import { stopAgent, unlockedAgent, type AgentHome } from './agent-helpers.js';
import { PROD_OPERATOR_RULE, waitingCommand } from './console-helpers.js';
import { BIN, eventually, kw } from './helpers.js';

/** A CA, and a server certificate for 127.0.0.1 it signed; the server key 0600. */
function makeCertificates(dir: string): { ca: Buffer; cert: string; key: string } {
  const f = (n: string) => path.join(dir, n);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  ssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
    '-subj',
    '/CN=test CA',
    '-days',
    '2',
  );
  ssl('req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(f('ext'), 'subjectAltName=IP:127.0.0.1\n');
  ssl(
    'x509',
    '-req',
    '-in',
    f('server.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-out',
    f('server.pem'),
    '-days',
    '2',
    '-extfile',
    f('ext'),
  );
  fs.chmodSync(f('server.key'), 0o600);
  return { ca: fs.readFileSync(f('ca.pem')), cert: f('server.pem'), key: f('server.key') };
}

/** Whether another process could listen on host:port now: undefined if it could, else why not. */
async function takes(host: string, port: number, ipv6Only = false): Promise<string | undefined> {
  const s = net.createServer();
  const e = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err));
    s.listen({ host, port, ipv6Only, exclusive: true }, () => resolve(undefined));
  });
  if (e === undefined) await new Promise<void>((r) => s.close(() => r()));
  return e?.code ?? (e ? 'error' : undefined);
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

interface Answer {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

/** One HTTPS request that trusts only the test's CA; a refused connection resolves as status 0. */
function request(
  port: number,
  ca: Buffer,
  o: {
    method?: string;
    path: string;
    headers?: Record<string, string>;
    body?: string;
    /** The certificate is still the CA's, but its name is not checked against a forged Host. */
    anyName?: boolean;
  },
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        method: o.method ?? 'GET',
        path: o.path,
        headers: o.headers,
        ca,
        // A new connection each time: a lock closes the listener's, and refuses new ones.
        agent: false,
        ...(o.anyName ? { checkServerIdentity: () => undefined } : {}),
      },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      },
    );
    req.on('error', (e: NodeJS.ErrnoException) =>
      e.code === 'ECONNREFUSED' ? resolve({ status: 0, body: '', headers: {} }) : reject(e),
    );
    req.end(o.body);
  });
}

describe('the operators beyond this machine, over TLS', () => {
  let h: AgentHome;
  let ca: Buffer;
  let key: string;
  let certFile: string;
  let port: number;
  /** A command of this home, ended if it hangs (a FIFO that held the agent would hold it). */
  const bounded = (args: string[]) =>
    spawnSync(process.execPath, [BIN, ...args], {
      env: h.env,
      input: '',
      timeout: 120_000,
      killSignal: 'SIGKILL',
    }).status;
  const homes: AgentHome[] = [];
  const status = () =>
    JSON.parse(kw(['status', '--json'], { env: h.env }).stdout) as Record<string, unknown>;

  before(async () => {
    port = await freePort();
    const dir = fs.mkdtempSync(path.join(fs.realpathSync(os.tmpdir()), 'keyward-tls-'));
    const made = makeCertificates(dir);
    ca = made.ca;
    key = made.key;
    certFile = made.cert;
    h = await unlockedAgent(
      `version: 1
operators:
  listen:
    address: 127.0.0.1
    port: ${port}
    cert: ${made.cert}
    key: ${made.key}
    origin: "https://127.0.0.1:${port}"
${PROD_OPERATOR_RULE}`,
      homes,
    );
    assert.equal(kw(['secret', 'set', 'prod/db'], { env: h.env, input: 'over-tls' }).code, 0);
    // The listener starts with the policy's load at unlock: its own word, in status.
    await eventually(() => status()['operatorListen'] === `https://127.0.0.1:${port}`, 'TLS');
  });
  after(async () => {
    for (const x of homes) await stopAgent(x);
  });

  test('an operator signs in with a key over TLS and approves a waiting request', async () => {
    const made = kw(['operator', 'key', 'create', 'bob', '--groups', 'sre-team'], { env: h.env });
    const w = waitingCommand(['read', 'prod/db'], h.env);
    const id = await w.id;
    const login = await request(port, ca, {
      method: 'POST',
      path: '/api/operator/login/key',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: made.stdout,
    });
    assert.equal(login.status, 200, login.body);
    assert.equal(login.headers['strict-transport-security'], 'max-age=31536000');
    const token = (JSON.parse(login.body) as { token: string }).token;
    const ok = await request(port, ca, {
      method: 'POST',
      path: `/api/operator/approvals/${id}/approve`,
      headers: { Authorization: `Bearer ${token}` },
    });
    assert.equal(ok.status, 200, ok.body);
    const done = await w.done;
    assert.equal(done.stdout, 'over-tls', done.stderr);
  });

  test("only operators are served there: the console's own page, logins and log are not", async () => {
    assert.equal((await request(port, ca, { path: '/operator' })).status, 200);
    for (const [method, p] of [
      ['GET', '/'],
      ['GET', '/app.js'],
      ['POST', '/api/login/passphrase'],
      ['GET', '/api/audit'],
      ['GET', '/api/approvals'],
    ] as const)
      assert.equal((await request(port, ca, { method, path: p })).status, 404, `${method} ${p}`);
    // A name other than the origin's (a rebound DNS name, another interface) is refused.
    const rebound = await request(port, ca, {
      path: '/operator',
      headers: { Host: `evil.example:${port}` },
      anyName: true,
    });
    assert.equal(rebound.status, 403);
    const cross = await request(port, ca, {
      method: 'POST',
      path: '/api/operator/login/key',
      headers: { Origin: 'https://evil.example', 'Content-Type': 'application/octet-stream' },
      body: 'x',
    });
    assert.equal(cross.status, 403);
  });

  test('at lock it serves nothing but keeps its port, so no other process can stand there with the certificate; at unlock it serves again', async () => {
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    const locked = await request(port, ca, { path: '/operator' });
    assert.equal(locked.status, 503);
    assert.match(locked.body, /the agent is locked/);
    assert.equal(status()['operatorListen'], null);
    // Another process of the user, with the user's certificate and key, tries to take the port.
    assert.equal(await takes('127.0.0.1', port), 'EADDRINUSE', 'the port was free while locked');
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    await eventually(
      async () => (await request(port, ca, { path: '/operator' })).status === 200,
      'the listener again',
    );
  });

  test('0.0.0.0 is listened on for both families: the IPv6 side of the port is not left for another process to take', async () => {
    const dir = fs.mkdtempSync(path.join(fs.realpathSync(os.tmpdir()), 'keyward-tls-'));
    const made = makeCertificates(dir);
    const wide = await freePort();
    const w = await unlockedAgent(
      `version: 1
operators:
  listen: { address: 0.0.0.0, port: ${wide}, cert: ${made.cert}, key: ${made.key}, origin: "https://127.0.0.1:${wide}" }
rules:
  - { name: prod, targets: ["prod/**"], decision: approve, approve: { mode: operator, groups: [sre-team] } }
`,
      homes,
    );
    const st = () =>
      JSON.parse(kw(['status', '--json'], { env: w.env }).stdout) as Record<string, unknown>;
    await eventually(() => st()['operatorListen'] === `https://127.0.0.1:${wide}`, 'TLS');
    assert.equal((await request(wide, made.ca, { path: '/operator' })).status, 200);
    const taken = await takes('::', wide, true);
    // A machine without IPv6 has no such side.
    if (taken !== 'EAFNOSUPPORT' && taken !== 'EADDRNOTAVAIL')
      assert.equal(taken, 'EADDRINUSE', '[::]:PORT was free to take');
    await stopAgent(w);
  });

  test('a private key others can read is refused: nothing is served, it says why, and the port is kept (a chmod is no way to have it let go)', async () => {
    fs.chmodSync(key, 0o644);
    try {
      assert.equal(kw(['lock'], { env: h.env }).code, 0);
      assert.equal(kw(['unlock'], { env: h.env }).code, 0);
      await eventually(() => typeof status()['operatorListenError'] === 'string', 'the error');
      assert.match(String(status()['operatorListenError']), /mode 644, so others can read it/);
      assert.equal((await request(port, ca, { path: '/operator' })).status, 503);
      assert.equal(await takes('127.0.0.1', port), 'EADDRINUSE');
    } finally {
      fs.chmodSync(key, 0o600);
    }
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    await eventually(
      async () => (await request(port, ca, { path: '/operator' })).status === 200,
      'served again',
    );
  });

  test("one address (127.0.0.1): the port's IPv6 side is held too, so localhost taken to ::1 finds no one else", async () => {
    const code = await takes('::', port, true);
    // A machine without IPv6 has no such side.
    if (code !== 'EAFNOSUPPORT' && code !== 'EADDRNOTAVAIL') assert.equal(code, 'EADDRINUSE');
  });

  test('a FIFO in place of the certificate holds nothing: the unlock ends, says why, and the port is kept', async () => {
    const saved = fs.readFileSync(certFile);
    fs.rmSync(certFile);
    assert.equal(spawnSync('mkfifo', ['-m', '600', certFile]).status, 0);
    try {
      assert.equal(bounded(['lock']), 0);
      // Opening a FIFO waits for a writer: none comes. The unlock must end all the same.
      assert.equal(bounded(['unlock']), 0);
      await eventually(() => typeof status()['operatorListenError'] === 'string', 'the error');
      assert.match(String(status()['operatorListenError']), /not a regular file \(it is a FIFO\)/);
      assert.equal((await request(port, ca, { path: '/operator' })).status, 503);
    } finally {
      fs.rmSync(certFile);
      fs.writeFileSync(certFile, saved);
    }
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    await eventually(
      async () => (await request(port, ca, { path: '/operator' })).status === 200,
      'served again',
    );
  });

  test('the policy takes TLS only: an https origin, an IP address, a certificate and a key', () => {
    const listen = (l: string) =>
      parsePolicy(`version: 1\noperators:\n  listen: ${l}\n`).ok
        ? []
        : (
            parsePolicy(`version: 1\noperators:\n  listen: ${l}\n`) as {
              problems: Array<{ path: string; message: string }>;
            }
          ).problems.map((p) => `${p.path}: ${p.message}`);
    const good =
      '{ address: 0.0.0.0, port: 8443, cert: /c.pem, key: /k.pem, origin: "https://devbox.example.com:8443" }';
    assert.deepEqual(listen(good), []);
    assert.match(
      listen(good.replace('https://', 'http://')).join(),
      /listen\.origin: the https origin/,
    );
    assert.match(listen(good.replace(':8443"', ':8443/path"')).join(), /listen\.origin/);
    assert.match(
      listen(good.replace('0.0.0.0', 'devbox')).join(),
      /listen\.address: an IP address/,
    );
    assert.match(listen(good.replace(', key: /k.pem', '')).join(), /listen\.key/);
  });
});
