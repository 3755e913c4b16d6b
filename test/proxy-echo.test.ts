/**
 * The proxy's watch on what a bound host sends back (src/proxy/echo.ts), given the pieces in the
 * order an attack review had them arrive: a child that reads slowly pauses the upstream, and the
 * watch flushed what it held while paused; the rest of the value came in the next TLS record,
 * looked at alone, and the child got the whole token.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { secureTake } from '../src/lib/secure.js';
import { AnswerFramer } from '../src/proxy/answers.js';
import { EchoWatch } from '../src/proxy/echo.js';

const TOKEN = 'ghp_RealTokenValue0123456789abcdefghijklmn';

test('a value whose first bytes went on with a flush is found when the rest comes, and the rest does not go on', () => {
  const w = new EchoWatch([secureTake(Buffer.from(TOKEN))]);
  const sent: Buffer[] = [];
  const first = w.push(Buffer.from(`${'A'.repeat(100)}AUTH=token ${TOKEN.slice(0, 20)}`));
  assert.ok(first);
  sent.push(first);
  sent.push(w.flush());
  assert.equal(w.push(Buffer.from(`${TOKEN.slice(20)} and more`)), undefined);
  // What went on holds no whole value.
  assert.ok(!Buffer.concat(sent).includes(TOKEN));
});

test('without a flush, pieces go on whole and in order, the last bytes held until the next', () => {
  const w = new EchoWatch([secureTake(Buffer.from(TOKEN))]);
  const text = 'x'.repeat(500);
  const out: Buffer[] = [];
  for (let i = 0; i < text.length; i += 37) {
    const o = w.push(Buffer.from(text.slice(i, i + 37)));
    assert.ok(o);
    out.push(o);
    if (i % 3 === 0) out.push(w.flush());
  }
  out.push(w.flush());
  assert.equal(Buffer.concat(out).toString(), text);
});

/** Where each message ends, by AnswerFramer, for answers fed in pieces of every size. */
function boundaries(methods: string[], answer: string, piece: number, webSocket = false): number[] {
  const f = new AnswerFramer();
  for (const m of methods) f.expect(m, webSocket);
  const seen: number[] = [];
  const bytes = Buffer.from(answer, 'latin1');
  for (let i = 0; i < bytes.length; i += piece) {
    f.push(Buffer.from(bytes.subarray(i, i + piece)));
    if (seen.at(-1) !== f.boundary && f.boundary > 0) seen.push(f.boundary);
  }
  return seen;
}

test("an answer's end is read off its framing, whatever the pieces it comes in", () => {
  const cl = 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Echo: a\r\n\r\nhello';
  const chunked =
    'HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n5;x=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n';
  const head = 'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n';
  const cont = 'HTTP/1.1 100 Continue\r\n\r\n';
  const none = 'HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n';
  const lf = 'HTTP/1.0 304 Not Modified\n\n';
  for (const piece of [1, 2, 3, 7, 1000]) {
    const one = (method: string, answer: string) => boundaries([method], answer, piece);
    assert.deepEqual(one('GET', cl), [cl.length], `${piece}`);
    assert.deepEqual(one('POST', chunked), [chunked.length], `${piece}`);
    assert.deepEqual(one('GET', none), [none.length], `${piece}`);
    assert.deepEqual(one('GET', lf), [lf.length], `${piece}`);
    // A HEAD's answer has no body, whatever its Content-Length says; a method is case-sensitive.
    assert.deepEqual(one('HEAD', head), [head.length], `${piece}`);
    assert.deepEqual(one('head', head + 'x'.repeat(500)), [head.length + 500], `${piece}`);
    // An interim answer, then the final one.
    const both = one('POST', cont + cl);
    assert.deepEqual(piece === 1 ? both : [], piece === 1 ? [cont.length, (cont + cl).length] : []);
    assert.equal(both.at(-1), (cont + cl).length);
  }
});

test('found in review: only the first answer of a connection is read; what follows has no end but its connection', () => {
  // A server that took the body of the first request (left unread) as a second request, a HEAD,
  // answers it with a length and no body: read as the proxy's next answer, its length put an
  // end inside the echo that followed, wherever the child chose.
  const first = 'HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n';
  const smuggled = 'HTTP/1.1 200 OK\r\nContent-Length: 2100\r\n\r\n';
  const echo = `HTTP/1.1 200 OK\r\nContent-Length: 2060\r\n\r\n${'p'.repeat(2000)} echo token ${TOKEN}`;
  for (const piece of [1, 13, 5000]) {
    assert.deepEqual(boundaries(['GET', 'HEAD', 'GET'], first + smuggled + echo, piece), [
      first.length,
    ]);
    // The same with no first answer to tell: the interim one is read, nothing after the final.
    assert.deepEqual(boundaries(['GET'], smuggled + 'x'.repeat(2100) + first, piece), [
      smuggled.length + 2100,
    ]);
  }
  // No request sent: nothing to read an answer by.
  assert.deepEqual(boundaries([], first, 1), []);
});

test('an answer the framer cannot read whole, or read at all, ends only with its connection', () => {
  for (const answer of [
    // No length: until the connection closes.
    'HTTP/1.1 200 OK\r\n\r\nbody',
    // A coding other than chunked last, a malformed or doubled length, not HTTP/1.
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n',
    'HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx',
    'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx',
    'HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n',
    'HTTP/2 200\r\nContent-Length: 0\r\n\r\n',
    'SSH-2.0-OpenSSH\r\n\r\n',
    // A chunk with no size, or its data not ended by a line end.
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n0\r\n\r\n',
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n',
    // A switch to another protocol than a WebSocket, or a tunnel: a stream from there on.
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocketx\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n',
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n\x81\x00',
  ])
    for (const piece of [1, 5, 1000])
      assert.deepEqual(boundaries(['GET'], answer, piece), [], JSON.stringify(answer));
  assert.deepEqual(
    boundaries(
      ['CONNECT'],
      'HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n',
      3,
    ),
    [],
  );
});

test("after a switch to a WebSocket, each frame's end is read off its length, whatever the pieces", () => {
  const head =
    'HTTP/1.1 101 Switching Protocols\r\nupgrade:  WebSocket \r\nConnection: Upgrade\r\n\r\n';
  const frames = [
    Buffer.from([0x81, 0x05, ...Buffer.from('hello')]),
    Buffer.concat([Buffer.from([0x82, 126, 0x01, 0x2c]), Buffer.alloc(300, 7)]),
    // A 64-bit length.
    Buffer.concat([Buffer.from([0x82, 127, 0, 0, 0, 0, 0, 0, 0, 3]), Buffer.from('xyz')]),
    Buffer.from([0x89, 0x00]),
  ];
  const all = Buffer.concat([Buffer.from(head, 'latin1'), ...frames]).toString('latin1');
  const ends = [head.length];
  for (const f of frames) ends.push((ends.at(-1) ?? 0) + f.length);
  for (const piece of [1, 2, 3, 11, 5000]) {
    const seen = boundaries(['GET'], all, piece, true);
    assert.deepEqual(seen, piece === 1 ? ends : seen.filter((b) => ends.includes(b)), `${piece}`);
    assert.equal(seen.at(-1), ends.at(-1));
    // A 101 to a request that did not ask for a WebSocket: a stream.
    assert.deepEqual(boundaries(['GET'], all, piece), [], `${piece}`);
  }
  // A masked frame (a server's never are), a reserved bit, an unknown opcode: no frames to read.
  for (const bad of [
    [0x81, 0x83, 1, 2, 3, 4, 97, 98, 99],
    [0xc1, 0x01, 97],
    [0x83, 0x01, 97],
  ]) {
    const x = Buffer.concat([
      Buffer.from(head, 'latin1'),
      Buffer.from(bad),
      frames[0] ?? Buffer.alloc(0),
    ]);
    assert.deepEqual(boundaries(['GET'], x.toString('latin1'), 1, true), [head.length]);
  }
  // A frame longer than can be counted: a stream.
  const huge = Buffer.concat([
    Buffer.from(head, 'latin1'),
    Buffer.from([0x82, 127, 0xff, 0, 0, 0, 0, 0, 0, 1]),
  ]);
  assert.deepEqual(boundaries(['GET'], huge.toString('latin1'), 1, true), [head.length]);
});

test('found in review: inside a WebSocket message sent in fragments, no frame ends it but its last, and a ping between them is not its content', () => {
  const head =
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n';
  const frames = [
    Buffer.from([0x01, 0x03, ...Buffer.from('abc')]), // text, not the last fragment
    Buffer.from([0x89, 0x02, ...Buffer.from('PP')]), // a ping between fragments
    Buffer.from([0x80, 0x03, ...Buffer.from('def')]), // the last fragment
    Buffer.from([0x81, 0x02, ...Buffer.from('gh')]), // a whole message
  ];
  const all = Buffer.concat([Buffer.from(head, 'latin1'), ...frames]);
  for (const piece of [1, 4, 1000]) {
    const f = new AnswerFramer();
    f.expect('GET', true);
    const seen: number[] = [];
    const content: Buffer[] = [];
    for (let i = 0; i < all.length; i += piece) {
      f.push(Buffer.from(all.subarray(i, i + piece)), (b) => content.push(Buffer.from(b)));
      if (f.safe > 0 && seen.at(-1) !== f.safe) seen.push(f.safe);
    }
    assert.equal(Buffer.concat(content).toString(), 'abcdefgh', `${piece}`);
    const message = head.length + 14;
    const ends = [head.length, message, all.length];
    assert.deepEqual(seen, piece === 1 ? ends : seen.filter((b) => ends.includes(b)), `${piece}`);
    assert.equal(seen.at(-1), all.length);
  }
});

test("held bytes go on only up to the last answer's end; before it, only when more comes", () => {
  const w = new EchoWatch([secureTake(Buffer.from(TOKEN))]);
  const first = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';
  const second = `HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n${'x'.repeat(50)}`;
  const out = [w.push(Buffer.from(first + second)) ?? Buffer.alloc(0)];
  // Everything of the first answer goes; of the second, all but the last bytes.
  out.push(w.flush(first.length), w.flush(first.length));
  const sent = Buffer.concat(out).toString();
  assert.ok(sent.startsWith(first), sent);
  assert.equal(sent.length, (first + second).length - (TOKEN.length - 1));
});

test('a watch holds every byte from where it is told the last of the content starts, and no more than it may', () => {
  const w = new EchoWatch([secureTake(Buffer.from(TOKEN))], 200);
  const head = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n';
  const first = `${head}1;${'e'.repeat(40)}\r\ng\r\n1;${'e'.repeat(40)}\r\nh\r\n`;
  // The content's last bytes start at the g: all from there is held, more than a value's length.
  const out = w.push(Buffer.from(first), head.length);
  assert.equal(out?.toString(), head);
  assert.equal(w.holding, first.length - head.length);
  // Past that, the watch holds no more: it ends.
  assert.equal(w.push(Buffer.from('x'.repeat(200)), head.length), undefined);
  assert.ok(w.overflowed);
  assert.equal(w.holding, 0);
  w.close();
});
