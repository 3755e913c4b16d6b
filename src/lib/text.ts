/**
 * Shows untrusted text (a name, a path, a command line) safely in a message or prompt: anything
 * outside printable ASCII becomes a \u{...} escape, so control characters, right-to-left marks
 * and look-alike letters can't change what a person reads.
 */
export function printable(s: string, max = 200): string {
  let out = '';
  for (const ch of s) {
    const cp = ch.codePointAt(0) ?? 0;
    out +=
      cp >= 0x20 && cp < 0x7f && ch !== '\\'
        ? ch
        : ch === '\\'
          ? '\\\\'
          : `\\u{${cp.toString(16)}}`;
    if (out.length > max) return `${out.slice(0, max)}...`;
  }
  return out;
}
