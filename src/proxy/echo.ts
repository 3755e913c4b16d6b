/**
 * What a bound host sends back, watched for the values the proxy put in (docs/PROXY.md, "A bound
 * host that echoes"). A server that reflects a request header (CORS's Origin, a request id, a
 * debugging endpoint) would hand the child the value; the proxy ends the connection instead.
 *
 * The value is looked for as it is and in the encoded forms masking knows (hex, base64...). The
 * last bytes of each piece are held back until the next piece (or the next turn of the event
 * loop), so a value split across two reads is still seen whole when both come at once. This is
 * defence in depth: the first defence is that placeholders are replaced only in the headers the
 * policy names, and never in a request that echoes itself (TRACE).
 */
import type tls from 'node:tls';
import type { SecureBuffer } from '../lib/secure.js';

export class EchoWatch {
  private held: Buffer = Buffer.alloc(0);
  private readonly keep: number;

  /** forms: the values and their encodings (owned by the caller, read only while it lives). */
  constructor(private readonly forms: readonly SecureBuffer[]) {
    this.keep = Math.max(0, ...forms.map((f) => f.length - 1));
  }

  /** What may go on now, or undefined: a value is in what came. */
  push(chunk: Buffer): Buffer | undefined {
    const all = this.held.length === 0 ? chunk : Buffer.concat([this.held, chunk]);
    for (const f of this.forms) if (f.length > 0 && all.includes(f)) return undefined;
    const cut = Math.max(0, all.length - this.keep);
    this.held = Buffer.from(all.subarray(cut));
    return all.subarray(0, cut);
  }

  /** The bytes held back (none of them a whole value). */
  flush(): Buffer {
    const out = this.held;
    this.held = Buffer.alloc(0);
    return out;
  }
}

/**
 * Passes a bound host's answers (up) to the child, watched: one that holds a value destroys both
 * connections and calls echoed. What was held back goes on at the next turn of the event loop,
 * or when the answer ends.
 */
export function watchAnswers(
  up: tls.TLSSocket,
  child: tls.TLSSocket,
  forms: readonly SecureBuffer[],
  echoed: () => void,
): void {
  const watch = new EchoWatch(forms);
  let flush: NodeJS.Immediate | undefined;
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
      child.once('drain', () => up.resume());
    }
    flush = setImmediate(() => {
      const rest = watch.flush();
      if (rest.length > 0) child.write(rest);
    });
  });
  up.on('end', () => {
    clearImmediate(flush);
    child.end(watch.flush());
  });
}
