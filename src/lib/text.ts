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

/**
 * Text keyward writes in another process (the agent's refusals and hints), shown as it came but
 * for anything outside printable ASCII, which becomes a \u{...} escape: a process posing as the
 * agent can't reach the terminal with an escape sequence. Backslashes stay as they are: the
 * agent's messages quote caller-controlled values with quote(), whose escapes must read the same.
 */
export function asciiShown(s: string, max = 2000): string {
  let out = '';
  for (const ch of s) {
    const cp = ch.codePointAt(0) ?? 0;
    out += cp >= 0x20 && cp < 0x7f ? ch : `\\u{${cp.toString(16)}}`;
    if (out.length > max) return `${out.slice(0, max)}...`;
  }
  return out;
}

/**
 * A value a caller controls (an argument, a path, a name, an ssh-add comment), as a person reads
 * it in a prompt: in double quotes, with `"` and `\` escaped and anything outside printable ASCII
 * as a \u{...} escape, so it can never end its quotes and write a sentence of its own. A value
 * longer than `max` is cut, and the cut says so: `"abc" ... +123 more characters`.
 */
export function quote(s: string, max = 200): string {
  const chars = [...s];
  let out = '';
  for (let i = 0; i < chars.length; i++) {
    const ch = chars[i] as string;
    const cp = ch.codePointAt(0) ?? 0;
    const shown =
      ch === '"'
        ? '\\"'
        : ch === '\\'
          ? '\\\\'
          : cp >= 0x20 && cp < 0x7f
            ? ch
            : `\\u{${cp.toString(16)}}`;
    if (out.length + shown.length > max)
      return `"${out}" ... +${chars.length - i} more character${chars.length - i === 1 ? '' : 's'}`;
    out += shown;
  }
  return `"${out}"`;
}

/**
 * A list of caller-controlled values (a command line), each quoted, within about `budget`
 * characters: what does not fit is counted, never dropped silently.
 */
export function quoteAll(values: readonly string[], budget = 600, each = 200): string {
  const parts: string[] = [];
  let used = 0;
  for (let i = 0; i < values.length; i++) {
    const q = quote(values[i] as string, each);
    if (parts.length > 0 && used + q.length + 1 > budget) {
      const left = values.length - i;
      parts.push(`... +${left} more argument${left === 1 ? '' : 's'}`);
      break;
    }
    parts.push(q);
    used += q.length + 1;
  }
  return parts.join(' ');
}
