/**
 * Output masking: a stream filter that replaces every occurrence of a secret's forms (encode.ts)
 * with a marker, including occurrences split across chunks.
 *
 * Each chunk is copied into secure memory and zeroed at once (the child may have printed a
 * secret). Bytes that could be the start of a form are held back until the next chunk says
 * whether they are; everything else goes out at once, so interactive programs don't stall. What
 * push() returns holds no form of any value, so it can be written anywhere.
 */
import {
  secureAlloc,
  securePooled,
  secureRelease,
  zero,
  type SecureBuffer,
} from '../lib/secure.js';

import { MASK_FORMS_LONGEST } from './encode.js';

/** What push() takes of a chunk at once (the work buffer's first size). */
const SLICE = 64 * 1024;

export const MASK_MARKER = Buffer.from('<concealed by keyward>');

export class Masker {
  /**
   * One secure work buffer, reused: held-back bytes at its start, the new chunk after them. It
   * only grows (a secure allocation costs guard pages and a mapping, released at GC), so a
   * chatty child costs no allocation per chunk. The first is the pool's (lib/secure.ts): a
   * masker per scan (the MCP gateway's) would otherwise leave a mapping each until a GC, and
   * thousands of them run a process into the kernel's limit on mappings.
   */
  private work: SecureBuffer = securePooled(64 * 1024);
  private heldLen = 0;
  /**
   * How many of the held bytes a marker already stands for: the end of a masked range that a
   * form beginning inside it may run on past (into the next chunk). The next scan masks such a
   * form as part of that marker, as it would have had the chunk not been cut there.
   */
  private heldMasked = 0;
  private readonly forms: SecureBuffer[];
  private readonly maxLen: number;

  /** The forms stay the caller's (one set can serve stdout and stderr); free them after destroy(). */
  constructor(forms: readonly SecureBuffer[]) {
    // Longest first: at one position, the longest form wins (base64 with its padding, say).
    this.forms = [...forms].sort((a, b) => b.length - a.length);
    this.maxLen = this.forms.reduce((m, f) => Math.max(m, f.length), 0);
  }

  get active(): boolean {
    return this.forms.length > 0;
  }

  /**
   * Masks a chunk (zeroing it); returns what can be written now. A chunk is taken SLICE bytes at
   * a time, so the work buffer holds at most a form's length and a slice, whatever the chunk's
   * size (a gateway's message of megabytes): locked, when it holds a small value's forms.
   */
  push(chunk: Buffer): Buffer {
    if (chunk.length <= SLICE) return this.pushSlice(chunk);
    const outs: Buffer[] = [];
    for (let at = 0; at < chunk.length; at += SLICE)
      outs.push(this.pushSlice(chunk.subarray(at, Math.min(chunk.length, at + SLICE))));
    const out = Buffer.concat(outs);
    // Each slice's output may hold part of a value (a prefix that turned out no form): zeroed
    // once copied, as the caller zeroes what it is given back once written.
    for (const o of outs) zero(o);
    return out;
  }

  private pushSlice(chunk: Buffer): Buffer {
    const total = this.heldLen + chunk.length;
    if (total > this.work.length) {
      // Holding a prefix of a form of a small value, the work is locked whatever its size.
      const bigger = secureAlloc(Math.max(total, this.work.length * 2), {
        mustLock: this.maxLen <= MASK_FORMS_LONGEST,
      });
      this.work.copy(bigger, 0, 0, this.heldLen);
      secureRelease(this.work);
      this.work = bigger;
    }
    chunk.copy(this.work, this.heldLen);
    zero(chunk);
    const data = this.work.subarray(0, total) as SecureBuffer;
    const { out, consumed, masked } = this.scan(data, false, this.heldMasked);
    this.work.copy(this.work, 0, consumed, total);
    this.heldLen = total - consumed;
    this.heldMasked = masked;
    this.work.fill(0, this.heldLen, total);
    return out;
  }

  /** The held-back bytes at the end of the stream (they are no form: the stream ended). */
  flush(): Buffer {
    const data = this.work.subarray(0, this.heldLen) as SecureBuffer;
    const { out } = this.scan(data, true, this.heldMasked);
    this.work.fill(0, 0, this.heldLen);
    this.heldLen = 0;
    this.heldMasked = 0;
    return out;
  }

  /** Wipes the work buffer; the forms are the caller's to free. */
  destroy(): void {
    this.forms.length = 0;
    secureRelease(this.work);
    this.heldLen = 0;
    this.heldMasked = 0;
  }

  /**
   * Replaces whole forms in data; overlapping or touching matches become one marker. Unless
   * final, stops before the earliest position from which a form could still begin (a suffix of
   * data that is a proper prefix of a form). Each form is searched once per position it falls
   * behind, so the work is about (forms x data), not (matches x forms x data).
   *
   * masked: how many of data's first bytes the last marker written already stands for; a form
   * that begins in them is part of that marker. Returned: where the bytes to hold begin
   * (consumed), and how many of those the markers written stand for (masked): the end of a
   * masked range that a form begun inside it may still run past, once more data comes.
   */
  private scan(
    data: SecureBuffer,
    final: boolean,
    masked: number,
  ): { out: Buffer; consumed: number; masked: number } {
    const keep = final ? data.length : data.length - this.partialTail(data);
    const next = this.forms.map((f) => data.indexOf(f));
    const parts: Buffer[] = [];
    // What the last marker stands for (held from the chunk before) goes on over every form that
    // begins in it, as the range it ended would have grown had the chunk not been cut there.
    let pos = masked > 0 ? this.grow(data, next, 0, masked) : 0;
    for (;;) {
      let best = -1;
      for (let i = 0; i < this.forms.length; i++) {
        const at = next[i] ?? -1;
        if (at >= 0 && (best < 0 || at < best)) best = at;
      }
      // A whole form that starts before `keep` is replaced even if it runs past it.
      if (best < 0 || best >= keep) break;
      const end = this.grow(data, next, best, best);
      parts.push(Buffer.from(data.subarray(pos, best)), MASK_MARKER);
      pos = end;
      for (let i = 0; i < this.forms.length; i++) {
        const f = this.forms[i];
        const at = next[i] ?? -1;
        if (f && at >= 0 && at < pos) next[i] = data.indexOf(f, pos);
      }
    }
    const end = Math.max(pos, keep);
    if (end > pos) parts.push(Buffer.from(data.subarray(pos, end)));
    const out = Buffer.concat(parts);
    // The pieces are copies of what passed (a prefix of a value, say): zeroed, not left to GC.
    for (const p of parts) if (p !== MASK_MARKER) zero(p);
    // A form may begin inside the last masked range and go on past data's end (one value's end
    // is another's start): partialTail found its start (keep) before the range's end. Those
    // bytes are held, as masked, so the next chunk's part of that form is masked too.
    if (keep < pos) return { out, consumed: keep, masked: pos - keep };
    return { out, consumed: end, masked: 0 };
  }

  /**
   * Grows the masked range [start, end) over every form occurrence that begins in it (or at
   * start), and over those that begin in what that adds, until none does; returns its end.
   * next[i] moves past the occurrences taken.
   */
  private grow(data: SecureBuffer, next: number[], start: number, end: number): number {
    for (let grown = true; grown;) {
      grown = false;
      for (let i = 0; i < this.forms.length; i++) {
        const f = this.forms[i];
        let at = next[i] ?? -1;
        if (!f || at < 0) continue;
        while (at >= 0 && (at < end || at === start) && at >= start) {
          if (at + f.length > end) {
            end = at + f.length;
            grown = true;
          }
          at = data.indexOf(f, at + 1);
        }
        next[i] = at;
      }
    }
    return end;
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
