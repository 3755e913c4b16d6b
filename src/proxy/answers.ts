/**
 * Where a bound host's answer ends, read off its HTTP/1.1 framing (RFC 9112, 6.3), so the echo
 * watch (echo.ts) lets the bytes it holds back go on only where an answer ends: never in the
 * middle of one, however long the rest of it takes to come. A watch that let them go "once
 * nothing more is there to read" gave a child all but the last byte of a value it had a host
 * echo, straddling two TLS records with the second still on the network (found in review,
 * 2026-12-07). Where an answer ends depends on the framing alone, never on whether the bytes
 * could begin a value (a hold that did was an oracle for the value, and was taken back).
 *
 * Only the first exchange of a connection is read: its interim (1xx) answers, its final answer,
 * and after a switch to a WebSocket, each frame. Every request the proxy sends a bound host says
 * `Connection: close` (request.ts), so that answer is the last. Which answer belongs to which
 * request is for the server to say, and the child can make it read them otherwise than the
 * proxy (a body the server leaves unread and takes as the next request, a method spelled in
 * another case): a framer that followed the answers after the first put an answer's end inside
 * the next, at a place the child chose (found in review of this framer, with Python's
 * http.server and Go's net/http). So what comes after the first answer is a stream, with no end
 * but its connection's.
 *
 * The bytes are read one by one where they are framing (the status line, the headers, chunk
 * lines) and skipped by count where they are body; nothing is kept but numbers, so an answer
 * that holds a value leaves no copy here. What can't be read as an answer (a malformed status
 * line or length, a coding other than chunked, no length at all, a switch to anything but a
 * WebSocket) is a stream too: held back until the next read or the connection's end, never let
 * go early.
 */
/** The longest answer head read before the rest is taken as a stream. */
const MAX_HEAD = 256 * 1024;
const CONTENT_LENGTH = 'content-length';
const TRANSFER_ENCODING = 'transfer-encoding';
const CHUNKED = 'chunked';
const UPGRADE = 'upgrade';
const WEBSOCKET = 'websocket';
const LF = 0x0a;
const CR = 0x0d;
const isOws = (c: number) => c === 0x20 || c === 0x09;
const lower = (c: number) => (c >= 0x41 && c <= 0x5a ? c + 0x20 : c);

type State =
  | 'status'
  | 'header'
  | 'length'
  | 'chunk-size'
  | 'chunk-ext'
  | 'chunk-data'
  | 'chunk-cr'
  | 'chunk-lf'
  | 'trailers'
  | 'ws-head'
  | 'ws-data'
  | 'stream';

export class AnswerFramer {
  private state: State = 'status';
  /**
   * Bytes read in all; where the last whole message ended; and where the last one the host
   * can't have miscounted on the child's say ended: an interim answer or a WebSocket frame
   * (offsets in the stream).
   */
  private total = 0;
  private ended = 0;
  private settled = 0;
  /** The method of the connection's first request, as sent: a HEAD's answer has no body. */
  private method: string | undefined;
  /** Whether that request asked to switch to a WebSocket (a 101 is read as one only then). */
  private askedWebSocket = false;

  // The message being read.
  private headBytes = 0;
  private status = 0;
  /** Where in the current line: its length so far. */
  private col = 0;
  /**
   * The current header's name still matches these (bit 1: Content-Length, 2: Transfer-Encoding,
   * 4: Upgrade).
   */
  private names = 0;
  /**
   * What the current header line is being read for: -1 its name; its value, 0 skipped,
   * 1 Content-Length, 2 Transfer-Encoding, 4 Upgrade.
   */
  private field = 0;
  private length = -1;
  private badLength = false;
  private lineLength = -1;
  private coded = false;
  private chunked = false;
  /** In a Transfer-Encoding value: how much of "chunked" the current coding matches, -1 none. */
  private coding = 0;
  private left = 0;
  private digits = 0;
  /** An Upgrade header says websocket (how much of it matches, -1 none). */
  private websocket = -1;
  /** In a WebSocket frame's head: bytes read of it, and how many it has. */
  private wsAt = 0;
  private wsHead = 2;
  private wsLength = 0;
  /** The frame being read is a message's data (not a ping, pong or close), and ends it (FIN). */
  private wsData = false;
  private wsFin = false;
  /** A message sent in fragments is open: a frame's end is no message's end until its last. */
  private wsOpen = false;

  /**
   * A request went on upstream with this method, asking to switch to a WebSocket or not (the
   * first one is the one that counts).
   */
  expect(method: string, webSocket: boolean): void {
    if (this.method !== undefined) return;
    this.method = method;
    this.askedWebSocket = webSocket;
  }

  /** Whether the first answer switched to a WebSocket, once its head is read. */
  private switchedTo: boolean | undefined;
  private readonly onSwitch: Array<(webSocket: boolean) => void> = [];

  /**
   * Whether the connection's first final answer switched it to a WebSocket (a 101 the framer
   * reads as one), as soon as that answer's head has come: what a child sends after an upgrade
   * request may go on only then (found in review: a host that ignored the upgrade read it as more
   * requests, none of them planned or recorded).
   */
  switched(): Promise<boolean> {
    if (this.switchedTo !== undefined) return Promise.resolve(this.switchedTo);
    return new Promise((resolve) => this.onSwitch.push(resolve));
  }

  private done = false;
  private readonly onDone: Array<() => void> = [];

  /** Once the connection's final answer has ended by its framing (never, if it has none). */
  finished(): Promise<void> {
    if (this.done) return Promise.resolve();
    return new Promise((resolve) => this.onDone.push(resolve));
  }

  private decide(webSocket: boolean): void {
    if (this.switchedTo !== undefined) return;
    this.switchedTo = webSocket;
    for (const f of this.onSwitch.splice(0)) f(webSocket);
  }

  /** Where the last whole message ended, by its framing. */
  get boundary(): number {
    return this.ended;
  }

  /**
   * Where the last interim answer or WebSocket frame ended: what may go on whatever came after it.
   * Not a final answer's end: its length is the host's to count, and a host that counts it wrong
   * on bytes the child sends (characters for UTF-8 bytes, say) puts it inside a value (found in
   * review). A final answer goes on when its end is where the bytes end, no more come after it.
   */
  get safe(): number {
    return this.settled;
  }

  /**
   * Where held bytes may go on up to now: all that came, when the last whole message ends
   * exactly there; else where the last interim answer or WebSocket message ended.
   */
  get releasable(): number {
    return this.ended === this.total ? this.total : this.settled;
  }

  /**
   * Whether an answer's content is coming in pieces with framing between them (chunks, or
   * WebSocket frames), more of it to come.
   */
  get framed(): boolean {
    return this.state.startsWith('chunk-') || this.state.startsWith('ws-');
  }

  /** Bytes read in all. */
  get read(): number {
    return this.total;
  }

  /**
   * Reads a chunk's framing; keeps nothing of it. body is given each run of an answer's content
   * as it comes, without its framing (the data of each chunk, the payload of each WebSocket
   * frame): a subarray of the chunk, to read and not keep, and where it starts in all that came.
   */
  push(chunk: Buffer, body?: (bytes: Buffer, at: number) => void): void {
    let i = 0;
    while (i < chunk.length) {
      const st = this.state;
      if (st === 'stream') break;
      if (st === 'length' || st === 'chunk-data' || st === 'ws-data') {
        const n = Math.min(this.left, chunk.length - i);
        // Content: a chunk's data, a data frame's payload (a ping's between fragments is not).
        if (n > 0 && (st === 'chunk-data' || this.wsData))
          body?.(chunk.subarray(i, i + n), this.total + i);
        i += n;
        this.left -= n;
        if (this.left === 0) {
          if (st === 'length') this.end(i);
          else if (st === 'ws-data') this.wsEnd(i);
          else this.state = 'chunk-cr';
        }
        continue;
      }
      this.byte(chunk[i] ?? 0, i + 1);
      i++;
    }
    this.total += chunk.length;
    // An answer it could not read: no switch it can vouch for.
    if (this.state === 'stream') this.decide(false);
  }

  /** One byte of framing; at is the chunk offset just past it. */
  private byte(c: number, at: number): void {
    switch (this.state) {
      case 'status':
      case 'header':
        return this.headByte(c, at);
      case 'chunk-size':
        return this.chunkSizeByte(c);
      case 'chunk-ext':
        if (c === LF) this.chunkLineEnd();
        return;
      case 'ws-head':
        return this.wsByte(c, at);
      case 'chunk-cr':
        this.state = c === CR ? 'chunk-lf' : c === LF ? 'chunk-size' : 'stream';
        this.digits = 0;
        return;
      case 'chunk-lf':
        this.state = c === LF ? 'chunk-size' : 'stream';
        return;
      case 'trailers':
        if (c === LF) {
          if (this.col === 0) return this.end(at);
          this.col = 0;
        } else if (c !== CR || this.col > 0) this.col++;
        return;
      default:
        return;
    }
  }

  private headByte(c: number, at: number): void {
    if (++this.headBytes > MAX_HEAD) return void (this.state = 'stream');
    if (this.state === 'status') {
      if (c === LF) {
        if (this.status < 100) return void (this.state = 'stream');
        this.state = 'header';
        this.col = 0;
        return;
      }
      // "HTTP/1.x NNN": anything else is no answer this framer can read.
      const n = this.col++;
      const want = 'HTTP/1.'.charCodeAt(n);
      if (n < 7) {
        if (c !== want) this.state = 'stream';
      } else if (n === 7) {
        if (c !== 0x30 && c !== 0x31) this.state = 'stream';
      } else if (n === 8) {
        if (c !== 0x20) this.state = 'stream';
      } else if (n < 12) {
        if (c < 0x30 || c > 0x39) this.state = 'stream';
        else this.status = this.status * 10 + (c - 0x30);
      } else if (n === 12 && c !== 0x20 && c !== CR) this.state = 'stream';
      return;
    }
    // A header line.
    if (c === LF) {
      if (this.col === 0) return this.headEnd(at);
      this.fieldEnd();
      this.col = 0;
      return;
    }
    if (c === CR) return;
    const n = this.col++;
    if (n === 0) {
      this.names = 7;
      this.field = -1;
    }
    if (this.field === -1) {
      // The name, matched as it comes against the two that frame a message.
      if (c === 0x3a) {
        this.field =
          this.names & 1 && n === CONTENT_LENGTH.length
            ? 1
            : this.names & 2 && n === TRANSFER_ENCODING.length
              ? 2
              : this.names & 4 && n === UPGRADE.length
                ? 4
                : 0;
        if (this.field === 4) this.websocket = 0;
        if (this.field === 1) this.lineLength = -1;
        if (this.field === 2) {
          this.coded = true;
          this.coding = 0;
          this.chunked = false;
        }
        return;
      }
      if (lower(c) !== CONTENT_LENGTH.charCodeAt(n)) this.names &= ~1;
      if (lower(c) !== TRANSFER_ENCODING.charCodeAt(n)) this.names &= ~2;
      if (lower(c) !== UPGRADE.charCodeAt(n)) this.names &= ~4;
      return;
    }
    if (this.field === 4) {
      // "websocket" alone, any case, with space around it.
      if (isOws(c)) {
        if (this.websocket > 0 && this.websocket < WEBSOCKET.length) this.websocket = -1;
      } else if (this.websocket >= 0 && this.websocket < WEBSOCKET.length)
        this.websocket =
          lower(c) === WEBSOCKET.charCodeAt(this.websocket) ? this.websocket + 1 : -1;
      else this.websocket = -1;
      return;
    }
    if (this.field === 1) {
      if (isOws(c)) return;
      if (c < 0x30 || c > 0x39 || this.lineLength > 1e14) this.badLength = true;
      else this.lineLength = Math.max(0, this.lineLength) * 10 + (c - 0x30);
    } else if (this.field === 2) {
      if (c === 0x2c) {
        this.coding = 0;
        this.chunked = false;
      } else if (isOws(c)) {
        if (this.coding > 0 && this.coding < CHUNKED.length) this.coding = -1;
      } else if (this.coding >= 0 && this.coding < CHUNKED.length) {
        this.coding = lower(c) === CHUNKED.charCodeAt(this.coding) ? this.coding + 1 : -1;
        this.chunked = this.coding === CHUNKED.length;
      } else {
        this.coding = -1;
        this.chunked = false;
      }
    }
  }

  /** A header line ended: a Content-Length's value is taken (two that differ are malformed). */
  private fieldEnd(): void {
    if (this.field === 1) {
      if (this.lineLength < 0) this.badLength = true;
      else if (this.length >= 0 && this.length !== this.lineLength) this.badLength = true;
      else this.length = this.lineLength;
    }
    if (this.field === -1) this.field = 0;
  }

  /** The blank line: where this message's body ends follows from its status, method and headers. */
  private headEnd(at: number): void {
    const status = this.status;
    if (status >= 100 && status < 200) {
      // 101: the connection is another protocol now, framed as a WebSocket's if it says so.
      // Other 1xx: the final answer still comes.
      if (status === 101) {
        const webSocket = this.websocket === WEBSOCKET.length && this.askedWebSocket;
        this.decide(webSocket);
        if (!webSocket) return void (this.state = 'stream');
        return this.wsEnd(at);
      }
      return this.end(at, true);
    }
    this.decide(false);
    // An answer with no request sent: nothing to read it by. (Methods are case-sensitive: only
    // HEAD is HEAD. A CONNECT never reaches a bound host.)
    if (this.method === undefined || this.method === 'CONNECT') return void (this.state = 'stream');
    if (this.method === 'HEAD' || status === 204 || status === 304) return this.end(at);
    if (this.coded) {
      if (!this.chunked) return void (this.state = 'stream');
      this.state = 'chunk-size';
      this.digits = 0;
      this.left = 0;
      return;
    }
    if (this.badLength || this.length < 0) return void (this.state = 'stream');
    if (this.length === 0) return this.end(at);
    this.left = this.length;
    this.state = 'length';
  }

  private chunkSizeByte(c: number): void {
    const hex =
      c >= 0x30 && c <= 0x39 ? c - 0x30 : lower(c) >= 0x61 && lower(c) <= 0x66 ? lower(c) - 87 : -1;
    if (hex >= 0) {
      if (++this.digits > 8) return void (this.state = 'stream');
      this.left = this.left * 16 + hex;
      return;
    }
    if (this.digits === 0) return void (this.state = 'stream');
    if (c === LF) return this.chunkLineEnd();
    if (c === 0x3b || c === CR || isOws(c)) this.state = 'chunk-ext';
    else this.state = 'stream';
  }

  /** One byte of a WebSocket frame's head: its length, in 7, 16 or 64 bits. */
  private wsByte(c: number, at: number): void {
    const n = this.wsAt++;
    // No extension was agreed (the proxy drops Sec-WebSocket-Extensions), so no RSV bit; a known
    // opcode; and a server's frames are never masked. Anything else is no frame to read.
    if (n === 0 && ((c & 0x70) !== 0 || ![0, 1, 2, 8, 9, 10].includes(c & 0x0f)))
      return void (this.state = 'stream');
    if (n === 0) {
      this.wsData = (c & 0x0f) < 8;
      this.wsFin = (c & 0x80) !== 0;
    }
    if (n === 1 && c & 0x80) return void (this.state = 'stream');
    if (n === 1) {
      const len = c & 0x7f;
      this.wsLength = len === 126 ? 2 : len === 127 ? 8 : 0;
      this.wsHead = 2 + this.wsLength;
      this.left = this.wsLength === 0 ? len : 0;
    } else if (n >= 2 && n < 2 + this.wsLength) {
      // A longer length, most significant byte first (past 2^53 it can't be counted).
      if (this.left >= 2 ** 45) return void (this.state = 'stream');
      this.left = this.left * 256 + c;
    }
    if (this.wsAt < this.wsHead) return;
    if (this.left === 0) return this.wsEnd(at);
    this.state = 'ws-data';
  }

  /**
   * A WebSocket frame (or the 101 before the first) ended at chunk offset at: a message's end
   * when it is the last frame of one, or a control frame between messages. Inside a message sent
   * in fragments, no frame's end is one (found in review: a value split across two fragments, the
   * second held back by the network, went on up to the first's end).
   */
  private wsEnd(at: number): void {
    if (this.wsData) this.wsOpen = !this.wsFin;
    if (!this.wsOpen) {
      this.ended = this.total + at;
      this.settled = this.ended;
    }
    this.wsData = false;
    this.state = 'ws-head';
    this.wsAt = 0;
    this.wsHead = 2;
    this.left = 0;
  }

  private chunkLineEnd(): void {
    if (this.left === 0) {
      this.state = 'trailers';
      this.col = 0;
    } else this.state = 'chunk-data';
  }

  /**
   * An answer ended at chunk offset at (push adds the chunk to total after): an interim one, and
   * the final answer is read next; or the final one, and what follows is a stream.
   */
  private end(at: number, interim = false): void {
    this.ended = this.total + at;
    if (interim) this.settled = this.ended;
    else if (!this.done) {
      this.done = true;
      for (const f of this.onDone.splice(0)) f();
    }
    this.state = interim ? 'status' : 'stream';
    this.headBytes = 0;
    this.status = 0;
    this.col = 0;
    this.field = 0;
    this.length = -1;
    this.badLength = false;
    this.coded = false;
    this.chunked = false;
    this.websocket = -1;
  }
}
