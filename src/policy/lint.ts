/**
 * What a valid policy holds that does not do what it reads as (docs/POLICY.md, "Refused at
 * apply"), and keys a map repeats: found in the parsed document, with a line and a column.
 */
import type { Document, LineCounter as LineCounterT } from 'yaml';
import { printable, UNSHOWN_IN_TEXT, UNSHOWN_IN_VALUE } from '../lib/text.js';
import { isGlob, type Policy, type PolicyProblem } from './schema.js';
import { pathText, positionOf, yaml } from './yaml-doc.js';

/** Every string in a parsed policy (keys too), with its path. */
function* stringsOf(v: unknown, path: PropertyKey[] = []): Generator<[PropertyKey[], string]> {
  if (typeof v === 'string') yield [path, v];
  else if (Array.isArray(v)) for (const [i, x] of v.entries()) yield* stringsOf(x, [...path, i]);
  else if (v !== null && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) {
      yield [[...path, k], k];
      yield* stringsOf(x, [...path, k]);
    }
}

/** A `**` that is not a whole part of a glob (deploy**, **x): picomatch reads it as `*`. */
const PARTIAL_GLOBSTAR = /[^/]\*\*|\*\*[^/]/;

export function lintPolicy(
  text: string,
  doc: Document,
  lc: LineCounterT,
  policy: Policy,
): PolicyProblem[] {
  const out: PolicyProblem[] = [];
  // UNSHOWN_IN_TEXT (lib/text.ts): what lets a person read otherwise than is enforced (a rule
  // erased from the screen).
  for (const m of text.matchAll(UNSHOWN_IN_TEXT)) {
    if (m.index === 0 && m[0] === '\ufeff') continue;
    const p = lc.linePos(m.index);
    const cp = (m[0].codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0');
    out.push({
      line: p.line,
      column: p.col,
      path: '',
      message: `a control or formatting character (U+${cp}): a terminal acts on it instead of showing it, so what a person reads is not what is enforced`,
    });
    if (out.length >= 5) break;
  }
  const d = doc.directives;
  if (d?.yaml.explicit || Object.keys(d?.tags ?? {}).some((t) => t !== '!!'))
    out.push({
      line: 1,
      column: 1,
      path: '',
      message:
        'a %YAML or %TAG directive: it changes how the rest is read (YAML 1.1 merge keys and yes/no booleans); policies are YAML 1.2 without directives',
    });
  const at = (path: PropertyKey[], message: string) =>
    out.push({ ...positionOf(doc, lc, path), path: printable(pathText(path)), message });
  if (out.length === 0)
    for (const [path, str] of stringsOf(policy)) {
      // However it was written (a double-quoted "\\e[2K" is plain ASCII in the file).
      const m = UNSHOWN_IN_VALUE.exec(str);
      if (!m) continue;
      const cp = (m[0].codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0');
      at(
        path,
        `a control or formatting character (U+${cp}) in a value (an escape in quotes makes one): what a person reads of it is not what it is`,
      );
      if (out.length >= 5) break;
    }
  policy.rules.forEach((r, i) => {
    r.targets.forEach((t, j) => {
      const path = ['rules', i, 'targets', j];
      // ssh-add:COMMENT targets take any printable ASCII; names are narrower still.
      if (/[^\x20-\x7e]/u.test(t))
        at(path, 'a target outside printable ASCII matches nothing: names are ASCII');
      else if (PARTIAL_GLOBSTAR.test(t))
        at(
          path,
          '** crosses / only as a whole part (a/**, a/**/b, **/b); here it matches as * does, within one part',
        );
      else if (!t.startsWith('ssh-add:') && /^\/|\/$|\/\/|\s/.test(t))
        at(
          path,
          'a target with a space, a leading or trailing / or an empty part matches nothing: names have none',
        );
    });
    for (const k of ['exe', 'ancestor'] as const) {
      const g = r.callers[k];
      if (g !== undefined && PARTIAL_GLOBSTAR.test(g))
        at(
          ['rules', i, 'callers', k],
          '** crosses / only as a whole part (**/claude, /opt/**); here it matches as * does, within one part',
        );
    }
  });
  return out;
}

/** Interpreters by their file's name: a rule that allows one allows every script it runs. */
const INTERPRETER =
  /^(node|nodejs|deno|bun|python[0-9.]*|pypy[0-9.]*|ruby[0-9.]*|perl[0-9.]*|php[0-9.]*|bash|sh|dash|zsh|fish|ksh|busybox|java|osascript|pwsh|lua[0-9.]*|tclsh[0-9.]*|env)$/;

/**
 * Notes on a valid policy, said at check and apply: allow rules that name no caller they can
 * trust (docs/POLICY.md, "Callers"), approvals remembered for every process of an interpreter
 * (or of any program: keyward's own commands run as node), and caller paths with characters
 * outside ASCII (a look-alike letter names no program). A `cwd` is the caller's to choose, an `ancestor` can be gained (a
 * process forks its child, then execs the named program; the named program runs your commands),
 * and an interpreter is every script it runs.
 */
export function weakAllows(policy: Policy): string[] {
  const out: string[] = [];
  // A rule before that denies or asks for every caller with loader variables: all targets, no
  // other condition on the caller.
  let loadersRuledOut = false;
  for (const r of policy.rules) {
    // A path with a look-alike letter (a Cyrillic с for a Latin c) names no program: a deny rule
    // so written denies nothing. Not refused (a path may be named in any script), but said.
    for (const field of ['exe', 'ancestor', 'cwd'] as const) {
      const v = r.callers[field];
      const odd = v === undefined ? [] : [...v].filter((ch) => !/^[\x20-\x7e]$/.test(ch));
      if (odd.length > 0)
        out.push(
          `rule ${printable(r.name)}'s ${field} holds characters outside ASCII (${[...new Set(odd)].map((ch) => `U+${(ch.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}`).join(', ')}): a look-alike letter makes it name no program, and a ${r.decision} rule so written ${r.decision === 'deny' ? 'denies' : r.decision === 'allow' ? 'allows' : 'asks for'} nothing. Check it is the path you meant`,
        );
    }
    // A yes remembered for a program's every process: an interpreter's is every script of yours.
    const remembered = r.approve?.remember;
    if (typeof remembered === 'object' && remembered.scope === 'executable') {
      const exe = r.callers.exe?.split('/').at(-1);
      if (exe === undefined && r.callers.exe_sha256 === undefined)
        out.push(
          `rule ${printable(r.name)} remembers a yes for every process of the program that asked (scope: executable), and names no program: keyward's own commands run as node, so a yes to one covers every Node program of yours, and a yes to a script covers every script of its interpreter. Use scope: process, or name a program that is not an interpreter (exe)`,
        );
      else if (exe !== undefined && (INTERPRETER.test(exe) || /[*?[]/.test(exe)))
        out.push(
          `rule ${printable(r.name)} remembers a yes for every process of ${INTERPRETER.test(exe) ? 'the interpreter' : 'what the glob'} ${printable(r.callers.exe ?? '')}${INTERPRETER.test(exe) ? '' : ' names, which may be an interpreter,'} (scope: executable): every script it runs, any process's, is covered by one yes. Use scope: process`,
        );
    }
    if (r.decision !== 'allow') {
      const c = r.callers;
      const only = Object.entries(c).every(([k, v]) => k === 'loader_vars' || v === undefined);
      if (c.loader_vars === 'present' && only && r.kind === 'any' && r.targets.includes('**'))
        loadersRuledOut = true;
      continue;
    }
    const c = r.callers;
    if ((c.exe ?? c.exe_sha256) !== undefined && c.loader_vars !== 'absent' && !loadersRuledOut)
      out.push(
        `rule ${printable(r.name)} allows a program by ${c.exe_sha256 === undefined ? 'exe' : 'exe_sha256'} whatever loader variables it carries: the same program started with LD_PRELOAD or NODE_OPTIONS runs code of the caller's choosing. Add loader_vars: absent to it, or a rule before it that denies (or asks for) loader_vars: present`,
      );
    const exe = c.exe?.split('/').at(-1);
    if (c.exe === undefined && c.exe_sha256 === undefined && (c.cwd ?? c.ancestor) !== undefined) {
      const why = [
        c.cwd === undefined ? '' : 'any process of yours can change to that directory first',
        c.ancestor === undefined
          ? ''
          : 'an ancestor can be gained (a process forks a child, then execs the program named; that program runs commands of yours as its children)',
      ].filter(Boolean);
      out.push(
        `rule ${printable(r.name)} allows by ${c.cwd === undefined ? 'ancestor' : c.ancestor === undefined ? 'cwd' : 'cwd and ancestor'} alone: ${why.join('; ')}. Name the program (exe_sha256) or ask (approve)`,
      );
    } else if (exe !== undefined && INTERPRETER.test(exe) && c.exe_sha256 === undefined)
      out.push(
        `rule ${printable(r.name)} allows the interpreter ${printable(c.exe ?? '')}: every script it runs, any process's, is that caller; name the program (exe_sha256 of one that is not an interpreter) or ask (approve)`,
      );
    // ssh relays the agent for its far side: found in review (ssh -R, with a bind of its own).
    if (r.kind !== 'secret' && exe === 'ssh')
      out.push(
        `rule ${printable(r.name)} lets ssh sign without asking: ssh relays the agent for whatever is on its far side (ssh -A, ssh -R PATH:$SSH_AUTH_SOCK). keyward asks for what it can tell is relayed, but a relay's far side that names a login session of its own gets that login signed; ask (approve) for keys that reach other hosts`,
      );
    if (
      c.exe !== undefined &&
      isGlob(c.exe) &&
      c.exe_sha256 === undefined &&
      !(exe !== undefined && INTERPRETER.test(exe))
    )
      // A glob may name an interpreter ("/usr/bin/python3*", "/usr/bin/{git,perl}"): found in
      // review, where the note above looked only at names without one.
      out.push(
        `rule ${printable(r.name)} allows whatever the glob ${printable(c.exe)} names, which may be an interpreter: every script it runs, any process's, is that caller; name each program (exe, or exe_sha256) or ask (approve)`,
      );
  }
  return out;
}

/**
 * Where the first key that repeats one before it in the same map begins. Keys are compared as the
 * object they become (`1` and `"1"` are one key there), so none silently replaces another.
 */
export function firstDuplicateKey(doc: Document): number | undefined {
  const { isAlias, isMap, isScalar, visit } = yaml();
  let found: number | undefined;
  visit(doc, {
    Map(_, map) {
      if (!isMap(map)) return undefined;
      const seen = new Set<string>();
      for (const pair of map.items) {
        const k = pair.key as { range?: [number, number, number] } | null;
        // An alias stands for its anchor's key; a null key (~) becomes "" as toJS makes it.
        const key = isAlias(k) ? k.resolve(doc) : k;
        const name = isScalar(key)
          ? key.value === null
            ? ''
            : String(key.value)
          : JSON.stringify((key as { toJSON?: () => unknown } | null)?.toJSON?.() ?? key);
        if (seen.has(name)) {
          found = k?.range?.[0] ?? map.range?.[0] ?? 0;
          return yaml().visit.BREAK;
        }
        seen.add(name);
      }
      return undefined;
    },
  });
  return found;
}
