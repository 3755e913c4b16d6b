/**
 * The credential proxy's HTTP/1.1 request framing (src/proxy/framer.ts): requests found one after
 * another however the bytes arrive, and the request smuggling family refused.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { FramingError, RequestFramer, type FrameEvent } from '../src/proxy/index.js';

const CRLF = '\r\n';
const pipelined = [
  `GET /a HTTP/1.1${CRLF}Host: h${CRLF}Authorization: Bearer X${CRLF}${CRLF}`,
  `POST /b HTTP/1.1${CRLF}Host: h${CRLF}Content-Length: 5${CRLF}${CRLF}hello`,
  `POST /c HTTP/1.1${CRLF}Host: h${CRLF}Transfer-Encoding: chunked${CRLF}${CRLF}` +
    `3${CRLF}abc${CRLF}4;ext=1${CRLF}defg${CRLF}0${CRLF}X-Sum: 1${CRLF}${CRLF}`,
  `GET /d HTTP/1.1${CRLF}Host: h${CRLF}${CRLF}`,
].join('');

/** Events with adjacent body pieces joined, as text: what a reader of the stream sees. */
function summary(events: FrameEvent[]): string[] {
  const out: string[] = [];
  for (const e of events) {
    const prev = out.at(-1);
    if (e.type === 'head') out.push(`head ${e.method} ${e.target}`);
    else if (e.type === 'end') out.push('end');
    else if (prev?.startsWith(`${e.type} `))
      out[out.length - 1] = prev + e.bytes.toString('latin1');
    else out.push(`${e.type} ${e.bytes.toString('latin1')}`);
  }
  return out;
}

const expected = [
  'head GET /a',
  'end',
  'head POST /b',
  'body hello',
  'end',
  'head POST /c',
  `body 3${CRLF}abc${CRLF}4;ext=1${CRLF}defg${CRLF}0${CRLF}X-Sum: 1${CRLF}${CRLF}`,
  'end',
  'head GET /d',
  'end',
];

describe('request framing', () => {
  test('pipelined requests come out one by one, whether they arrive at once or byte by byte', () => {
    const whole = new RequestFramer().push(Buffer.from(pipelined));
    assert.deepEqual(summary(whole), expected);
    const head = whole[0];
    assert.ok(head?.type === 'head');
    assert.deepEqual(head.headers, [
      ['Host', 'h'],
      ['Authorization', 'Bearer X'],
    ]);
    const f = new RequestFramer();
    const bytes = Buffer.from(pipelined);
    const slow: FrameEvent[] = [];
    for (let i = 0; i < bytes.length; i++) slow.push(...f.push(bytes.subarray(i, i + 1)));
    assert.deepEqual(summary(slow), expected);
    // Each head is handed over whole, exactly as received.
    const heads = slow.filter((e) => e.type === 'head').map((e) => e.bytes.toString('latin1'));
    assert.equal(
      heads[0],
      `GET /a HTTP/1.1${CRLF}Host: h${CRLF}Authorization: Bearer X${CRLF}${CRLF}`,
    );
  });

  test('after an upgrade the rest of the stream passes as it is', () => {
    const f = new RequestFramer();
    const ev = f.push(
      Buffer.from(
        `GET /ws HTTP/1.1${CRLF}Host: h${CRLF}Upgrade: websocket${CRLF}Connection: Upgrade${CRLF}${CRLF}\x81\x05hello`,
        'latin1',
      ),
    );
    assert.deepEqual(summary(ev), ['head GET /ws', 'raw \x81\x05hello']);
    assert.deepEqual(summary(f.push(Buffer.from(`GET /x HTTP/1.1${CRLF}${CRLF}`))), [
      `raw GET /x HTTP/1.1${CRLF}${CRLF}`,
    ]);
  });

  test('an upgrade by any method stops the framing: what follows is never read as a request', () => {
    const f = new RequestFramer();
    assert.deepEqual(
      summary(
        f.push(
          Buffer.from(
            `OPTIONS /ws HTTP/1.1${CRLF}Upgrade: x${CRLF}${CRLF}GET /next HTTP/1.1${CRLF}${CRLF}`,
          ),
        ),
      ),
      ['head OPTIONS /ws', `raw GET /next HTTP/1.1${CRLF}${CRLF}`],
    );
  });

  test('a CONNECT (HTTP/1.1, or 1.0 as Python asks) turns the stream into a tunnel', () => {
    for (const v of ['1.1', '1.0']) {
      const f = new RequestFramer();
      assert.deepEqual(
        summary(f.push(Buffer.from(`CONNECT h:443 HTTP/${v}${CRLF}${CRLF}\x16\x03\x01 hello`))),
        [`head CONNECT h:443`, 'raw \x16\x03\x01 hello'],
      );
    }
  });

  test('found in review: once refused, a stream keeps nothing of what comes after', () => {
    const f = new RequestFramer();
    assert.equal(f.push(Buffer.from(`GET / HTTP/1.1${CRLF}Host: h${CRLF}${CRLF}`)).length, 2);
    const piece = Buffer.alloc(64 * 1024, 'A');
    let refused = 0;
    for (let i = 0; i < 50; i++)
      try {
        f.push(Buffer.from(piece));
      } catch (e) {
        assert.ok(e instanceof FramingError && e.status === 431);
        refused++;
      }
    // The head grew past its cap once; from then on every push is refused and nothing kept.
    assert.equal(refused, 49);
    assert.equal(f.holding, 0);
  });

  test('what two servers could read two ways is refused, with the status to answer', () => {
    const cases: Array<[string, string, number]> = [
      [
        'Content-Length with Transfer-Encoding',
        `POST / HTTP/1.1${CRLF}Content-Length: 3${CRLF}Transfer-Encoding: chunked${CRLF}${CRLF}`,
        400,
      ],
      [
        'two Content-Lengths',
        `POST / HTTP/1.1${CRLF}Content-Length: 3${CRLF}Content-Length: 4${CRLF}${CRLF}`,
        400,
      ],
      [
        'a list of Content-Lengths',
        `POST / HTTP/1.1${CRLF}Content-Length: 3, 4${CRLF}${CRLF}`,
        400,
      ],
      [
        'a Transfer-Encoding other than chunked',
        `POST / HTTP/1.1${CRLF}Transfer-Encoding: gzip, chunked${CRLF}${CRLF}`,
        501,
      ],
      ['obs-fold', `GET / HTTP/1.1${CRLF}X-A: 1${CRLF} folded${CRLF}${CRLF}`, 400],
      ['a bare LF in the head', `GET / HTTP/1.1\nHost: h${CRLF}${CRLF}`, 400],
      ['a space before the colon', `GET / HTTP/1.1${CRLF}Host : h${CRLF}${CRLF}`, 400],
      ['HTTP/2 in a request line', `GET / HTTP/2.0${CRLF}${CRLF}`, 400],
      [
        'Transfer-Encoding in HTTP/1.0',
        `POST / HTTP/1.0${CRLF}Transfer-Encoding: chunked${CRLF}${CRLF}`,
        400,
      ],
      [
        'an upgrade with a body',
        `POST /ws HTTP/1.1${CRLF}Upgrade: x${CRLF}Content-Length: 2${CRLF}${CRLF}hi`,
        400,
      ],
      [
        'a chunked upgrade',
        `POST /ws HTTP/1.1${CRLF}Upgrade: x${CRLF}Transfer-Encoding: chunked${CRLF}${CRLF}`,
        400,
      ],
      [
        'a CONNECT with a body',
        `CONNECT h:443 HTTP/1.1${CRLF}Content-Length: 2${CRLF}${CRLF}`,
        400,
      ],
      [
        'a bare CR in a trailer (a server that takes CR alone for a line end reads a request there)',
        `POST / HTTP/1.1${CRLF}Transfer-Encoding: chunked${CRLF}${CRLF}0${CRLF}X: a\rGET /smuggled HTTP/1.1${CRLF}${CRLF}`,
        400,
      ],
      [
        'a bare CR in a chunk size line',
        `POST / HTTP/1.1${CRLF}Transfer-Encoding: chunked${CRLF}${CRLF}1;a\rb${CRLF}x${CRLF}0${CRLF}${CRLF}`,
        400,
      ],
      [
        'a malformed chunk size',
        `POST / HTTP/1.1${CRLF}Transfer-Encoding: chunked${CRLF}${CRLF}zz${CRLF}`,
        400,
      ],
      [
        'a chunk without its CRLF',
        `POST / HTTP/1.1${CRLF}Transfer-Encoding: chunked${CRLF}${CRLF}1${CRLF}aXX`,
        400,
      ],
      ['a head over 64 KiB', `GET / HTTP/1.1${CRLF}X: ${'a'.repeat(70_000)}`, 431],
    ];
    for (const [what, text, status] of cases) {
      assert.throws(
        () => new RequestFramer().push(Buffer.from(text)),
        (e: unknown) => e instanceof FramingError && e.status === status,
        what,
      );
    }
  });
});
