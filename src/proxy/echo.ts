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

export class EchoWatch {
  /**
   * The last bytes seen (fewer than the longest form), whether sent on or not, in secure
   * memory: a value's first bytes may be among them.
   */
  private readonly tail: SecureBuffer;
  /** How many bytes of tail are in use. */
  private seen = 0;
  /** How many of them, at its end, are not sent on yet. */
  private held = 0;
  /** How many bytes came in all. */
  private total = 0;
  private readonly keep: number;
  private closed = false;

  /**
   * forms: the values and their encodings (owned by the caller, read only while it lives).
   * slack: bytes held back beyond a form's length (framing that may fall inside a value).
   */
  constructor(
    private readonly forms: readonly SecureBuffer[],
    slack = 0,
  ) {
    this.keep = Math.max(0, ...forms.map((f) => f.length - 1)) + slack;
    this.tail = securePooled(Math.max(1, this.keep));
  }

  /**
   * What may go on now (a copy, for the caller to zero once written), or undefined: a value is
   * in what came, with what came before it. The bytes sent on already are still looked through:
   * a value whose first bytes went on (a flush, below) is found when the rest comes, and the
   * connection ends before the rest goes on. The chunk is zeroed either way (found in review:
   * the answer that held a value stayed in the agent's heap, after lock too).
   */
  push(chunk: Buffer): Buffer | undefined {
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
      this.total += chunk.length;
      const from = all.length - chunk.length - this.held;
      const cut = Math.max(from, all.length - this.keep);
      const start = Math.max(0, all.length - this.keep);
      this.seen = all.copy(this.tail, 0, start);
      this.held = all.length - cut;
      return Buffer.from(all.subarray(from, cut));
    } finally {
      zero(all);
      zero(chunk);
    }
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
 * How much longer than a value the bytes are held: a few chunk lines (up to 8 hex digits, 12
 * bytes each with their line ends) or WebSocket frame heads (up to 10 bytes) inside one.
 */
const FRAMING_SLACK = 64;

/** Writes bytes the watch let through, and zeroes them once the socket took them. */
function pass(child: tls.TLSSocket, bytes: Buffer): boolean {
  return child.write(bytes, () => zero(bytes));
}

/**
 * Passes a bound host's answers (up) to the child, watched: one that holds a value destroys both
 * connections and calls echoed. What was held back goes on when the next read comes; or, once
 * nothing more is there to read (the upstream is not paused and has nothing buffered: the next
 * turn of the event loop after its last read) or the connection ends: all of it if the answer's
 * framing ends exactly where the bytes do, else up to where an interim answer or a WebSocket frame
 * ended (answers.ts). Never sooner: a child that had a host echo a value straddling two TLS
 * records, the second still on the network, got all but its last byte from a watch that let held
 * bytes go whenever the upstream was idle; one whose relay cut the connection after the first
 * record got them from a watch that let them go when it ended (a FIN with no TLS close_notify ends
 * a Node TLS socket as cleanly as one with it); and one whose host counted its Content-Length short
 * (characters for the UTF-8 bytes the child sent) got them at that length's end, the rest already
 * come (all found in review, 2026-12-07). A connection that ends with bytes held that its framing
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
  cut: (held: number) => void,
): AnswerFramer {
  // Held back a little longer than a value: a chunk's line or a WebSocket frame's head may fall
  // inside one, which the content's own watch finds.
  const watch = new EchoWatch(forms, FRAMING_SLACK);
  const content = new EchoWatch(forms);
  const framer = new AnswerFramer();
  let flush: NodeJS.Immediate | undefined;
  const later = () => {
    clearImmediate(flush);
    flush = setImmediate(() => {
      if (up.isPaused() || up.readableLength > 0) return;
      const rest = watch.flush(framer.releasable);
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
    framer.push(chunk, (piece) => {
      inContent ||= content.scan(piece);
    });
    if (inContent) {
      zero(chunk);
      watch.wipe();
    }
    const out = inContent ? undefined : watch.push(chunk);
    if (out === undefined) {
      echoed();
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
  up.on('end', () => {
    clearImmediate(flush);
    const rest = watch.flush(framer.releasable);
    const held = watch.holding;
    if (held === 0) return void child.end(rest, () => zero(rest));
    zero(rest);
    watch.wipe();
    cut(held);
  });
  up.on('close', () => {
    clearImmediate(flush);
    watch.close();
    content.close();
  });
  return framer;
}
