/**
 * Who is on the other end of a proxy connection (src/proxy/tree.ts), and which host a request
 * names (canonicalHost in src/proxy/host.ts): real processes and sockets, no mocks.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { holderAmong, holderInTree, socketOf, startTime, treeOf } from '../src/proxy/tree.js';
import { canonicalHost } from '../src/proxy/host.js';

describe('the process tree a proxy serves', () => {
  test('a connection is traced to the process of the tree that holds it, and a reused pid is not the root', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as net.AddressInfo).port;
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    // A shell whose child (python) connects and waits: the tree is shell -> python.
    const shell = spawn(
      'sh',
      [
        '-c',
        `python3 -c 'import socket, sys; s = socket.create_connection(("127.0.0.1", ${port})); sys.stdin.read()'`,
      ],
      { stdio: ['pipe', 'ignore', 'inherit'] },
    );
    const s = await accepted;
    const other = spawn('sleep', ['600'], { stdio: 'ignore' });
    try {
      const sock = socketOf(
        { ip: s.remoteAddress ?? '', port: s.remotePort ?? 0 },
        { ip: s.localAddress ?? '', port: s.localPort ?? 0 },
      );
      assert.ok(sock, 'the client socket is in /proc/net/tcp');
      assert.equal(sock.uid, process.geteuid?.());
      const pid = shell.pid ?? 0;
      const root = { pid, start: startTime(pid) ?? '' };
      const holder = await holderInTree(root, sock.inode);
      assert.ok(holder !== undefined && holder !== pid, 'the python child holds it');
      assert.ok((await treeOf(root)).includes(holder));
      // The same pid with another start time is another process: its tree is empty.
      assert.deepEqual(await treeOf({ pid, start: `${root.start}0` }), []);
      assert.equal(await holderInTree({ pid, start: `${root.start}0` }, sock.inode), undefined);
      // Another tree, which doesn't hold it, is refused.
      const otherPid = other.pid ?? 0;
      const otherRoot = { pid: otherPid, start: startTime(otherPid) ?? '' };
      assert.equal(await holderInTree(otherRoot, sock.inode), undefined);
    } finally {
      other.kill();
      shell.stdin?.end();
      await new Promise((r) => shell.once('exit', r));
      s.destroy();
      server.close();
    }
  });

  test('every spelling of a host is one host', () => {
    const same: Array<[string, string]> = [
      ['127.0.0.1', '127.0.0.1'],
      ['127.1', '127.0.0.1'],
      ['2130706433', '127.0.0.1'],
      ['0x7f000001', '127.0.0.1'],
      ['0177.0.0.1', '127.0.0.1'],
      ['[::ffff:127.0.0.1]', '127.0.0.1'],
      ['::ffff:7f00:1', '127.0.0.1'],
      ['API.GitHub.com.', 'api.github.com'],
      ['0', '0.0.0.0'],
      ['[::1]', '::1'],
    ];
    for (const [raw, want] of same) assert.equal(canonicalHost(raw), want, raw);
    for (const bad of ['a b', 'a%00b', '[::1', 'x:y', ''])
      assert.equal(canonicalHost(bad), undefined, bad);
  });
});

describe('a pid the walk listed, taken since by a process outside the tree', () => {
  // An attack review won this race: a process of the user outside the run's tree connected,
  // killed a process of the tree and forked until its own child got the dead one's pid, between
  // the walk (which listed that pid) and the read of the pid's descriptors; the child, holding
  // the connection, passed for the tree's, and the proxy put the real token in its request. The
  // walk is given here with the outsider's pid in it, as that race leaves it.
  test('a process outside the tree holding the connection is not the tree, even when the walk listed its pid', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    after(() => server.close());
    const port = (server.address() as net.AddressInfo).port;
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-tests-'));
    after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const hold = path.join(dir, 'hold.cjs');
    fs.writeFileSync(
      hold,
      'require("net").connect(Number(process.argv[2]), "127.0.0.1"); setInterval(() => {}, 1e9);\n',
    );
    // The run: a shell whose child holds nothing. The outsider: holds the connection.
    const tree = spawn('sh', ['-c', 'sleep 600 & wait'], { stdio: 'ignore', detached: true });
    const outsider = spawn(process.execPath, [hold, String(port)], { stdio: 'ignore' });
    after(() => {
      outsider.kill('SIGKILL');
      if (tree.pid) process.kill(-tree.pid, 'SIGKILL');
    });
    const s = await accepted;
    const sock = socketOf(
      { ip: s.remoteAddress ?? '', port: s.remotePort ?? 0 },
      { ip: '127.0.0.1', port },
    );
    assert.ok(sock, 'the client socket is in /proc/net/tcp');
    const pid = tree.pid ?? 0;
    const root = { pid, start: startTime(pid) ?? '' };
    assert.equal(await holderAmong([pid, outsider.pid ?? 0], root, sock.inode), undefined);
    // The same connection, its holder listed as the tree's root itself: not the root either.
    assert.equal(await holderAmong([outsider.pid ?? 0], root, sock.inode), undefined);
  });
});
