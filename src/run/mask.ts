/**
 * Output masking: a stream filter that replaces every occurrence of a secret's forms (encode.ts)
 * with a marker, including occurrences split across chunks.
 *
 * Each chunk is copied into secure memory and zeroed at once (the child may have printed a
 * secret). Bytes that could be the start of a form are held back until the next chunk says
 * whether they are; everything else goes out at once, so interactive programs don't stall. What
 * push() returns holds no form of any value, so it can be written anywhere.
 */
import { secureAlloc, secureFree, zero, type SecureBuffer } from '../lib/secure.js';

export const MASK_MARKER = Buffer.from('<concealed by keyward>');

export class Masker {
  private held: SecureBuffer = secureAlloc(0);
  private readonly maxLen: number;

  private readonly forms: SecureBuffer[];

  /** The forms stay the caller's (one set can serve stdout and stderr); free them after destroy(). */
  constructor(forms: readonly SecureBuffer[]) {
    // Longest first: at one position, the longest form wins (base64 with its padding, say).
    this.forms = [...forms].sort((a, b) => b.length - a.length);
    this.maxLen = this.forms.reduce((m, f) => Math.max(m, f.length), 0);
  }

  get active(): boolean {
    return this.forms.length > 0;
  }

  /** Masks a chunk (zeroing it); returns what can be written now. */
  push(chunk: Buffer): Buffer {
    const data = secureAlloc(this.held.length + chunk.length);
    data.set(this.held);
    data.set(chunk, this.held.length);
    zero(chunk);
    secureFree(this.held);
    try {
      const { out, consumed } = this.scan(data, false);
      this.held = secureAlloc(data.length - consumed);
      data.copy(this.held, 0, consumed);
      return out;
    } finally {
      secureFree(data);
    }
  }

  /** The held-back bytes at the end of the stream (they are no form: the stream ended). */
  flush(): Buffer {
    const data = this.held;
    this.held = secureAlloc(0);
    try {
      return this.scan(data, true).out;
    } finally {
      secureFree(data);
    }
  }

  /** Wipes what is held back; the forms are the caller's to free. */
  destroy(): void {
    this.forms.length = 0;
    secureFree(this.held);
    this.held = secureAlloc(0);
  }

  /**
   * Replaces whole forms in data. Unless final, stops before the earliest position from which a
   * form could still begin (a suffix of data that is a proper prefix of a form).
   */
  private scan(data: SecureBuffer, final: boolean): { out: Buffer; consumed: number } {
    const keep = final ? data.length : data.length - this.partialTail(data);
    const parts: Buffer[] = [];
    let pos = 0;
    for (;;) {
      let best = -1;
      let bestLen = 0;
      for (const f of this.forms) {
        const at = data.indexOf(f, pos);
        if (at >= 0 && at + f.length <= data.length && (best < 0 || at < best)) {
          best = at;
          bestLen = f.length;
        }
      }
      // A whole form that starts before `keep` is replaced even if it runs past it.
      if (best < 0 || best >= keep) break;
      parts.push(Buffer.from(data.subarray(pos, best)), MASK_MARKER);
      pos = best + bestLen;
    }
    const end = Math.max(pos, keep);
    if (end > pos) parts.push(Buffer.from(data.subarray(pos, end)));
    return { out: Buffer.concat(parts), consumed: end };
  }

  /** The length of the longest suffix of data that is a proper prefix of some form. */
  private partialTail(data: SecureBuffer): number {
    let hold = 0;
    const from = Math.max(0, data.length - (this.maxLen - 1));
    for (const f of this.forms) {
      const first = f[0];
      if (first === undefined) continue;
      for (let i = data.indexOf(first, Math.max(from, data.length - f.length + 1)); i >= 0;) {
        const n = data.length - i;
        if (n < f.length && n > hold && data.compare(f, 0, n, i, data.length) === 0) hold = n;
        i = data.indexOf(first, i + 1);
      }
    }
    return hold;
  }
}
