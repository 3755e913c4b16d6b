/**
 * The proxy's watch on what a bound host sends back (src/proxy/echo.ts), given the pieces in the
 * order an attack review had them arrive: a child that reads slowly pauses the upstream, and the
 * watch flushed what it held while paused; the rest of the value came in the next TLS record,
 * looked at alone, and the child got the whole token.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { secureTake } from '../src/lib/secure.js';
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
