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

/**
 * Characters a terminal or an editor acts on instead of showing: C0 controls but tab and newline,
 * DEL and C1 controls (U+009B is an 8-bit CSI), invisible and bidirectional formatting, line and
 * paragraph separators, a byte order mark, tag characters. One list, for every place that shows
 * or refuses them.
 */
const UNSHOWN_CLASS =
  '\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f\\xad\\u061c\\u180e\\u200b-\\u200f\\u2028\\u2029\\u202a-\\u202e\\u2060-\\u206f\\ufeff\\u{e0000}-\\u{e007f}';
/** In a text of lines: those, and a carriage return but before a newline. */
export const UNSHOWN_IN_TEXT = new RegExp(`[${UNSHOWN_CLASS}]|\\r(?!\\n)`, 'gu');
/** In a value (a name, a path): those, and any line end. */
export const UNSHOWN_IN_VALUE = new RegExp(`[${UNSHOWN_CLASS}\\n\\r]`, 'u');
/** In JSON.stringify's output (which escapes C0 itself). */
const JSON_UNSHOWN = new RegExp(`[${UNSHOWN_CLASS}]`, 'gu');

/**
 * JSON for the terminal: what a caller controlled (an executable's path, a tool's name) can't
 * move the cursor or reorder what a person reads, and the output is the same JSON value.
 */
export function jsonText(value: unknown, indent?: number): string {
  return JSON.stringify(value, null, indent).replace(
    JSON_UNSHOWN,
    // Per UTF-16 unit: a tag character (past U+FFFF) is its two surrogates' escapes in JSON.
    (c) =>
      c
        .split('')
        .map((u) => `\\u${u.charCodeAt(0).toString(16).padStart(4, '0')}`)
        .join(''),
  );
}

/**
 * A prompt for a program that may read markup (ksshaskpass's Qt label takes rich text when it
 * sees a tag; zenity reads Pango): `<`, `>` and `&` become \u{...} escapes, so a value a caller
 * controls can't hide the rest of the sentence in a comment or restyle it.
 */
export function markupFree(s: string): string {
  return s.replace(/[<>&]/g, (c) => `\\u{${(c.codePointAt(0) ?? 0).toString(16)}}`);
}

/**
 * A text file as a person reads it on a terminal (a policy): lines and tabs kept, every control,
 * invisible or direction character (a carriage return but before a newline) as a \u{...} escape,
 * so no line can erase or reorder another.
 */
export function textShown(s: string): string {
  return s.replace(UNSHOWN_IN_TEXT, (c) => `\\u{${(c.codePointAt(0) ?? 0).toString(16)}}`);
}
