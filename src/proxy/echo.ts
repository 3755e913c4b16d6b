/**
 * What a bound host sends back, watched for the values the proxy put in (docs/PROXY.md, "A bound
 * host that echoes"). A server that reflects a request header (CORS's Origin, a request id, a
 * debugging endpoint) would hand the child the value; the proxy ends the connection instead.
 *
 * The value is looked for as it is and in the encoded forms masking knows (hex, base64...). The
 * last bytes of each piece are held back until the next piece (or until nothing more is there to
 * read), so a value split across two reads is still seen whole when both come at once; and what
 * went on is still looked through, so one whose first bytes went on is stopped before the rest
 * does (the child then has fewer than all its bytes). This is
 * defence in depth: the first defence is that placeholders are replaced only in the headers the
 * policy names, and never in a request that echoes itself (TRACE).
 */
import type tls from 'node:tls';
import type { SecureBuffer } from '../lib/secure.js';

export class EchoWatch {
  /** The last bytes seen (fewer than the longest form), whether sent on or not. */
  private seen: Buffer = Buffer.alloc(0);
  /** How many of them, at its end, are not sent on yet. */
  private held = 0;
  private readonly keep: number;

  /** forms: the values and their encodings (owned by the caller, read only while it lives). */
  constructor(private readonly forms: readonly SecureBuffer[]) {
    this.keep = Math.max(0, ...forms.map((f) => f.length - 1));
  }

  /**
   * What may go on now, or undefined: a value is in what came, with what came before it. The
   * bytes sent on already are still looked through: a value whose first bytes went on (a flush,
   * below) is found when the rest comes, and the connection ends before the rest goes on.
   */
  push(chunk: Buffer): Buffer | undefined {
    const all = this.seen.length === 0 ? chunk : Buffer.concat([this.seen, chunk]);
    for (const f of this.forms) if (f.length > 0 && all.includes(f)) return undefined;
    const from = all.length - chunk.length - this.held;
    const cut = Math.max(from, all.length - this.keep);
    this.seen = Buffer.from(all.subarray(Math.max(0, all.length - this.keep)));
    this.held = all.length - cut;
    return all.subarray(from, cut);
  }

  /** The bytes held back (none of them a whole value), to go on now. */
  flush(): Buffer {
    const out = Buffer.from(this.seen.subarray(this.seen.length - this.held));
    this.held = 0;
    return out;
  }
}

/**
 * Passes a bound host's answers (up) to the child, watched: one that holds a value destroys both
 * connections and calls echoed. What was held back goes on once nothing more is there to read
 * (the upstream is not paused and has nothing buffered: the next turn of the event loop after
 * its last read), or when the answer ends. A child that reads slowly pauses the upstream; while
 * paused, nothing held goes on, so the next read is looked at with it (an attack review had the
 * whole value pass a watch that flushed while paused, straddling two TLS records).
 */
export function watchAnswers(
  up: tls.TLSSocket,
  child: tls.TLSSocket,
  forms: readonly SecureBuffer[],
  echoed: () => void,
): void {
  const watch = new EchoWatch(forms);
  let flush: NodeJS.Immediate | undefined;
  const later = () => {
    clearImmediate(flush);
    flush = setImmediate(() => {
      if (up.isPaused() || up.readableLength > 0) return;
      const rest = watch.flush();
      if (rest.length > 0) child.write(rest);
    });
  };
  up.on('data', (chunk: Buffer) => {
    clearImmediate(flush);
    const out = watch.push(chunk);
    if (out === undefined) {
      echoed();
      up.destroy();
      child.destroy();
      return;
    }
    if (out.length > 0 && !child.write(out)) {
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
    child.end(watch.flush());
  });
}
