/**
 * What a bound host sends back, watched for the values the proxy put in (docs/PROXY.md, "A bound
 * host that echoes"). A server that reflects a request header (CORS's Origin, a request id, a
 * debugging endpoint) would hand the child the value; the proxy ends the connection instead.
 *
 * The value is looked for as it is and in the encoded forms masking knows (hex, base64...). The
 * last bytes of each piece are held back until the next piece, or until the answer they belong to
 * has come whole (by its HTTP framing, the first answer of a connection only: answers.ts), or the
 * connection ends, so a value split across two reads is seen whole however far apart they come.
 * What went on is still looked through, so one whose first bytes went on (in an earlier answer)
 * is stopped before the rest does. The content is looked through too, without its framing (chunk
 * lines, WebSocket frame heads), so a value the host splits with its own framing is seen. This is
 * defence in depth: the first defence is that placeholders are replaced only in the headers the
 * policy names, and never in a request that echoes itself (TRACE).
 */
import type tls from 'node:tls';
import { AnswerFramer } from './answers.js';
import { securePooled, secureRelease, zero, type SecureBuffer } from '../lib/secure.js';

/**
 * The most bytes a watch holds back: an answer whose framing puts more than this among the last
 * bytes of a value's length of its content ends the connection (no honest host frames so).
 */
export const MAX_HOLD = 16 * 1024;

export class EchoWatch {
  /**
   * The last bytes seen (at least the longest form's length less one, and all those held),
   * whether sent on or not, in secure memory: a value's first bytes may be among them.
   */
  private tail: SecureBuffer;
  /** How many bytes of tail are in use. */
  private seen = 0;
  /** How many of them, at its end, are not sent on yet. */
  private held = 0;
  /** How many bytes came in all. */
  private total = 0;
  /** The longest form's length less one: a value may begin in that many last bytes. */
  readonly keep: number;
  private closed = false;
  /** push found it would have to hold more than maxHold bytes, and ended the watch. */
  overflowed = false;

  /** forms: the values and their encodings (owned by the caller, read only while it lives). */
  constructor(
    private readonly forms: readonly SecureBuffer[],
    private readonly maxHold = MAX_HOLD,
  ) {
    this.keep = Math.max(0, ...forms.map((f) => f.length - 1));
    this.tail = securePooled(Math.max(1, this.keep));
  }

  /**
   * What may go on now (a copy, for the caller to zero once written), or undefined: a value is
   * in what came, with what came before it (or overflowed: more than maxHold bytes to hold).
   * Held back: the last bytes, fewer than a value's longest form, and all from holdFrom (an
   * offset in the stream: where the last of the content that a value could be split in starts,
   * framing between its pieces). The bytes sent on already are still looked through: a value
   * whose first bytes went on (a flush, below) is found when the rest comes, and the
   * connection ends before the rest goes on. The chunk is zeroed either way (found in review:
   * the answer that held a value stayed in the agent's heap, after lock too).
   */
  push(chunk: Buffer, holdFrom = Infinity): Buffer | undefined {
    if (this.closed) {
      zero(chunk);
      return undefined;
    }
    const all = this.seen === 0 ? chunk : Buffer.concat([this.tail.subarray(0, this.seen), chunk]);
    try {
      for (const f of this.forms)
        if (f.length > 0 && all.includes(f)) {
          this.wipe();
          return undefined;
        }
      // Where all starts in the stream.
      const base = this.total - this.seen;
      this.total += chunk.length;
      const from = all.length - chunk.length - this.held;
      const cut = Math.max(from, Math.min(all.length - this.keep, holdFrom - base));
      if (all.length - cut > this.maxHold) {
        this.overflowed = true;
        this.wipe();
        return undefined;
      }
      this.keepFrom(all, Math.max(0, Math.min(cut, all.length - this.keep)));
      this.held = all.length - cut;
      return Buffer.from(all.subarray(from, cut));
    } finally {
      zero(all);
      zero(chunk);
    }
  }

  /** Keeps all from start in tail, grown (and the old one given back) if it is too small. */
  private keepFrom(all: Buffer, start: number): void {
    const n = all.length - start;
    if (n > this.tail.length) {
      const bigger = securePooled(
        Math.min(Math.max(n, 2 * this.tail.length), this.maxHold + this.keep),
      );
      secureRelease(this.tail);
      this.tail = bigger;
    }
    this.seen = all.copy(this.tail, 0, start);
  }

  /**
   * Whether a value is in piece with what came before it; nothing goes on from here (this watch
   * reads an answer's content without its framing, beside the one that passes the bytes). piece
   * is read, not kept or zeroed: it is part of a chunk the other watch has yet to read.
   */
  scan(piece: Buffer): boolean {
    if (this.closed) return false;
    const all = Buffer.concat([this.tail.subarray(0, this.seen), piece]);
    try {
      if (this.forms.some((f) => f.length > 0 && all.includes(f))) {
        this.wipe();
        return true;
      }
      this.seen = all.copy(this.tail, 0, Math.max(0, all.length - this.keep));
      return false;
    } finally {
      zero(all);
    }
  }

  /**
   * The bytes held back (none of them a whole value) that came before the offset upTo of the
   * stream (all of them without it), to go on now: a copy, as push's.
   */
  flush(upTo = this.total): Buffer {
    if (this.closed) return Buffer.alloc(0);
    const n = Math.max(0, Math.min(this.held, upTo - (this.total - this.held)));
    const from = this.seen - this.held;
    const out = Buffer.from(this.tail.subarray(from, from + n));
    this.held -= n;
    return out;
  }

  /** How many bytes it holds back, not sent on yet. */
  get holding(): number {
    return this.closed ? 0 : this.held;
  }

  /** Forgets what it kept. */
  wipe(): void {
    if (this.closed) return;
    zero(this.tail);
    this.seen = 0;
    this.held = 0;
  }

  /** Frees what it kept: the connection is over. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    secureRelease(this.tail);
  }
}

/**
 * Where the last bytes of an answer's content start in the stream, as few as a value's longest
 * form less one, as its pieces (a chunk's data, a WebSocket frame's payload) come.
 */
class ContentTail {
  private readonly pieces: Array<{ at: number; length: number }> = [];
  private bytes = 0;

  constructor(private readonly keep: number) {}

  add(at: number, length: number): void {
    this.pieces.push({ at, length });
    this.bytes += length;
    while (this.pieces.length > 1 && this.bytes - (this.pieces[0]?.length ?? 0) >= this.keep)
      this.bytes -= this.pieces.shift()?.length ?? 0;
  }

  /** Where in the stream they start (Infinity: no content came). */
  get from(): number {
    const first = this.pieces[0];
    return first === undefined ? Infinity : first.at + Math.max(0, this.bytes - this.keep);
  }
}

/** Writes bytes the watch let through, and zeroes them once the socket took them. */
function pass(child: tls.TLSSocket, bytes: Buffer): boolean {
  return child.write(bytes, () => zero(bytes));
}

/**
 * Passes a bound host's answers (up) to the child, watched: one that holds a value destroys both
 * connections and calls echoed. What was held back goes on when the next read comes; once
 * nothing more is there to read (the upstream is not paused and has nothing buffered: the next
 * turn of the event loop after its last read), up to where an interim answer or a WebSocket frame
 * ended (answers.ts); when the connection ends (or is reset), all of it if the answer's framing
 * ends exactly where the bytes do. While content comes in pieces (chunks, frames), everything from
 * where its last bytes began is held, the framing among them with it, up to MAX_HOLD (beyond it,
 * cut, with overflowed). Never sooner: a child that had a host echo a value straddling two TLS
 * records, the second still on the network, got all but its last byte from a watch that let held
 * bytes go whenever the upstream was idle; one whose relay cut the connection after the first
 * record got them from a watch that let them go when it ended (a FIN with no TLS close_notify ends
 * a Node TLS socket as cleanly as one with it); and one whose host counted its Content-Length short
 * (characters for the UTF-8 bytes the child sent) got them at that length's end, the rest already
 * come, and from one that let them go at that end once the bytes ended exactly there (all found
 * in review, 2026-12-07 and 08). A connection that ends with bytes held that its framing
 * doesn't account for (cut short, an answer with no length, more than its length) passes none of
 * what it holds and calls cut with their count, to end the child's connection with a reset (a
 * clean end would tell the child's client an answer with no length was whole). A child that
 * reads slowly pauses the upstream; while paused, nothing held goes on, so the next read is looked
 * at with it (an attack review had the whole value pass a watch that flushed while paused).
 * Returns what the caller tells it of each request sent upstream.
 */
export function watchAnswers(
  up: tls.TLSSocket,
  child: tls.TLSSocket,
  forms: readonly SecureBuffer[],
  echoed: () => void,
  cut: (held: number, overflowed: boolean) => void,
): AnswerFramer {
  const watch = new EchoWatch(forms);
  const content = new EchoWatch(forms);
  const tail = new ContentTail(watch.keep);
  const framer = new AnswerFramer();
  let flush: NodeJS.Immediate | undefined;
  const later = () => {
    clearImmediate(flush);
    flush = setImmediate(() => {
      if (up.isPaused() || up.readableLength > 0) return;
      // Not at a final answer's end, even where the bytes end exactly there: that end is the
      // host's count, and a host that counts it short on the child's bytes puts it inside a value
      // whose rest is still on its way (found in review: a read that ended right there gave the
      // child all but one byte). Its last bytes go when the connection ends (Connection: close).
      const rest = watch.flush(framer.safe);
      if (rest.length > 0) pass(child, rest);
    });
  };
  up.on('data', (chunk: Buffer) => {
    clearImmediate(flush);
    // The content without its framing: a host that sends its answer in chunks (Go's net/http,
    // 2,048 bytes each, with no length set) or a WebSocket message in frames can split a value
    // with a chunk's line or a frame's head, which the bytes as they come would not show (found
    // in review).
    let inContent = false;
    framer.push(chunk, (piece, at) => {
      inContent ||= content.scan(piece);
      tail.add(at, piece.length);
    });
    if (inContent) {
      zero(chunk);
      watch.wipe();
    }
    // While the content comes in pieces, what came since its last bytes (a value's length less
    // one) is held with them: a host that sends its answer a few bytes a chunk (or with long
    // chunk extensions) puts more framing than that inside a value (found in review).
    const out = inContent ? undefined : watch.push(chunk, framer.framed ? tail.from : Infinity);
    if (out === undefined) {
      if (watch.overflowed) cut(MAX_HOLD, true);
      else echoed();
      up.destroy();
      child.destroy();
      return;
    }
    if (out.length > 0 && !pass(child, out)) {
      up.pause();
      child.once('drain', () => {
        up.resume();
        later();
      });
    }
    later();
  });
  // The connection's end, or a reset (a server that closes with a request's body unread resets
  // it, its answer already sent: found flaky in the suite, the answer lost).
  let over = false;
  const ended = () => {
    clearImmediate(flush);
    if (over) return;
    over = true;
    const rest = watch.flush(framer.releasable);
    const held = watch.holding;
    if (held === 0) return void child.end(rest, () => zero(rest));
    zero(rest);
    watch.wipe();
    cut(held, false);
  };
  up.on('end', ended);
  up.on('error', ended);
  up.on('close', () => {
    clearImmediate(flush);
    watch.close();
    content.close();
  });
  return framer;
}
