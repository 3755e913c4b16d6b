/**
 * HTTP/1.1 request framing for the credential proxy (issue 22, in progress). The proxy reads what
 * a child sends through it request by request: each request's head is handed over whole (so the
 * placeholders in it can be replaced in secure memory and the head written upstream as bytes,
 * never through node:http, which would make the token a string), and its body is passed through
 * as it comes, counted by Content-Length or by its chunks, so the next request's head is found
 * where it begins. After an upgrade (a WebSocket, say) the rest of the stream is passed as it is.
 *
 * What a child sends is untrusted. Anything a front end and a back end could read two ways (the
 * request smuggling family) is refused: Content-Length with Transfer-Encoding, two different
 * Content-Lengths, a Transfer-Encoding other than `chunked`, obs-fold, a bare LF, a malformed
 * chunk size, a head over 64 KiB.
 */

export const MAX_HEAD = 64 * 1024;
const MAX_CHUNK_LINE = 4096;
const MAX_TRAILERS = 16 * 1024;

export type FrameEvent =
  | {
      type: 'head';
      /** The head, request line through the blank line, as received. */
      bytes: Buffer;
      method: string;
      target: string;
      headers: Array<[string, string]>;
    }
  | { type: 'body'; bytes: Buffer }
  | { type: 'end' }
  | { type: 'raw'; bytes: Buffer };

/** A request the proxy refuses, with the status to answer it with. */
export class FramingError extends Error {
  constructor(
    readonly status: 400 | 431 | 501,
    message: string,
  ) {
    super(message);
  }
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const bad = (m: string) => new FramingError(400, m);

type State =
  | { s: 'head' }
  | { s: 'length'; left: number }
  | { s: 'chunk-size' }
  | { s: 'chunk-data'; left: number }
  | { s: 'chunk-crlf' }
  | { s: 'trailers'; seen: number }
  | { s: 'raw' };

export class RequestFramer {
  private state: State = { s: 'head' };
  private buf: Buffer = Buffer.alloc(0);

  /** What made the stream unreadable: every later push throws it again and keeps nothing. */
  private failed: FramingError | undefined;

  /**
   * The events a chunk completes, in order. Throws FramingError; the stream is then done: what
   * was held is let go, and what comes later is not kept (found in review: a child that sent on
   * after its request grew the buffer without end, each chunk refused and kept).
   */
  push(chunk: Buffer): FrameEvent[] {
    if (this.failed) throw this.failed;
    try {
      return this.frame(chunk);
    } catch (e) {
      this.buf = Buffer.alloc(0);
      if (e instanceof FramingError) this.failed = e;
      throw e;
    }
  }

  /** Bytes held, waiting for more to complete a head, a chunk line or trailers. */
  get holding(): number {
    return this.buf.length;
  }

  private frame(chunk: Buffer): FrameEvent[] {
    const events: FrameEvent[] = [];
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      const st = this.state;
      if (st.s === 'raw') {
        if (this.buf.length > 0) events.push({ type: 'raw', bytes: this.take(this.buf.length) });
        return events;
      }
      if (st.s === 'head') {
        const end = this.buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (this.buf.length > MAX_HEAD)
            throw new FramingError(431, 'the request head is too large');
          return events;
        }
        if (end + 4 > MAX_HEAD) throw new FramingError(431, 'the request head is too large');
        const head = this.take(end + 4);
        const parsed = parseHead(head);
        events.push({ type: 'head', bytes: head, ...parsed.info });
        this.state = parsed.next;
        if (parsed.next.s === 'head') events.push({ type: 'end' });
        continue;
      }
      if (st.s === 'length' || st.s === 'chunk-data') {
        // A counted run of body bytes: the body by its Content-Length, or one chunk's data.
        if (this.buf.length === 0) return events;
        const n = Math.min(st.left, this.buf.length);
        events.push({ type: 'body', bytes: this.take(n) });
        st.left -= n;
        if (st.left > 0) continue;
        this.state = st.s === 'length' ? { s: 'head' } : { s: 'chunk-crlf' };
        if (st.s === 'length') events.push({ type: 'end' });
        continue;
      }
      if (st.s === 'chunk-crlf') {
        if (this.buf.length < 2) return events;
        if (this.buf[0] !== 0x0d || this.buf[1] !== 0x0a) throw bad('a chunk does not end in CRLF');
        events.push({ type: 'body', bytes: this.take(2) });
        this.state = { s: 'chunk-size' };
        continue;
      }
      // chunk-size and trailers are lines.
      const eol = this.buf.indexOf('\r\n');
      if (eol < 0) {
        if (this.buf.includes(0x0a)) throw bad('a bare LF in chunked framing');
        if (this.buf.length > MAX_CHUNK_LINE) throw bad('a chunk line is too long');
        return events;
      }
      const line = this.take(eol + 2);
      events.push({ type: 'body', bytes: line });
      const text = line.subarray(0, eol).toString('latin1');
      if (text.includes('\n') || text.includes('\r'))
        throw bad('a bare CR or LF in chunked framing');
      if (st.s === 'chunk-size') {
        const m = /^([0-9A-Fa-f]{1,8})(;[\t !-~]*)?$/.exec(text);
        if (!m) throw bad('a malformed chunk size');
        const size = parseInt(m[1] ?? '', 16);
        this.state = size === 0 ? { s: 'trailers', seen: 0 } : { s: 'chunk-data', left: size };
      } else {
        if (text === '') {
          this.state = { s: 'head' };
          events.push({ type: 'end' });
        } else {
          st.seen += line.length;
          if (st.seen > MAX_TRAILERS) throw bad('the trailers are too large');
          if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+:/.test(text)) throw bad('a malformed trailer');
        }
      }
    }
  }

  /** The first n buffered bytes, taken off the buffer. */
  private take(n: number): Buffer {
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
}

/** The request line and headers, checked, and what follows the head. */
function parseHead(head: Buffer): {
  info: { method: string; target: string; headers: Array<[string, string]> };
  next: State;
} {
  const text = head.subarray(0, head.length - 4).toString('latin1');
  const lines = text.split('\r\n');
  if (lines.some((l) => l.includes('\n') || l.includes('\r')))
    throw bad('a bare CR or LF in the head');
  // HTTP/1.0 too: Python's http.client asks for its tunnels with it. A 1.0 body is counted by
  // Content-Length only (chunked is 1.1).
  const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP\/1\.([01])$/.exec(lines[0] ?? '');
  if (!m) throw bad('a malformed request line (only HTTP/1.1 and 1.0 are taken)');
  const headers: Array<[string, string]> = [];
  for (const l of lines.slice(1)) {
    if (l.startsWith(' ') || l.startsWith('\t')) throw bad('a folded header line (obs-fold)');
    const colon = l.indexOf(':');
    const name = colon > 0 ? l.slice(0, colon) : '';
    if (!TOKEN.test(name)) throw bad('a malformed header line');
    for (let i = 0; i < l.length; i++) {
      const c = l.charCodeAt(i);
      // Tab is the one control character a field value may hold.
      if ((c < 0x20 && c !== 0x09) || c === 0x7f) throw bad('a control character in a header');
    }
    headers.push([name, l.slice(colon + 1).trim()]);
  }
  const all = (n: string) => headers.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v);
  const te = all('transfer-encoding');
  const cl = all('content-length');
  const method = m[1] ?? '';
  const info = { method, target: m[2] ?? '', headers };
  if (te.length > 0 && cl.length > 0) throw bad('both Content-Length and Transfer-Encoding');
  // CONNECT: once answered, the connection is a tunnel (RFC 9110, 9.3.6); the proxy stops framing.
  if (method === 'CONNECT') {
    if (te.length > 0 || cl.some((v) => v !== '0')) throw bad('a CONNECT with a body');
    return { info, next: { s: 'raw' } };
  }
  if (te.length > 0) {
    if (m[3] === '0') throw bad('Transfer-Encoding in an HTTP/1.0 request');
    if (te.length !== 1 || te[0]?.toLowerCase() !== 'chunked')
      throw new FramingError(501, 'a Transfer-Encoding other than chunked');
    if (all('upgrade').length > 0) throw bad('an upgrade with a body');
    return { info, next: { s: 'chunk-size' } };
  }
  // An upgrade asked for, by any method: a server that answers 101 makes the rest a stream of
  // its own, which must never be read as requests (or have values put into it).
  const upgrade = all('upgrade').length > 0;
  if (cl.length > 0) {
    const values = new Set(cl.flatMap((v) => v.split(',').map((x) => x.trim())));
    const only = [...values][0] ?? '';
    if (values.size !== 1 || !/^\d{1,15}$/.test(only))
      throw bad('a malformed or repeated Content-Length');
    const n = Number(only);
    if (n > 0 && upgrade) throw bad('an upgrade with a body');
    if (n > 0) return { info, next: { s: 'length', left: n } };
  }
  // An upgrade asked for: from here on, the stream is passed as it is (the upstream says 101 or
  // not; either way the proxy no longer frames it).
  if (upgrade) return { info, next: { s: 'raw' } };
  return { info, next: { s: 'head' } };
}
