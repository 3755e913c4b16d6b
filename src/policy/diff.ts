/**
 * What changes between two policies: the short summary `policy apply` records, and every change,
 * section by section and field by field, that `policy apply` shows before it asks and
 * `policy diff` prints. A policy is only as reviewed as its whole text: a change to the proxy's
 * hosts or the operators' issuer is as much a change as a rule's.
 */
import { printable } from '../lib/text.js';
import type { Policy } from './schema.js';

export interface PolicyDiff {
  added: string[];
  removed: string[];
  modified: string[];
  reordered: boolean;
  unlockChanged: boolean;
  /** The sections besides rules that changed (operators, proxy, mcp, ...). */
  sections: string[];
  /** Every change, one line each, values shown printable. */
  changes: string[];
  summary: string;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const asJson = (v: unknown): Json | undefined =>
  v === undefined ? undefined : (JSON.parse(JSON.stringify(v)) as Json);

// Never cut: what a person approves is all of it (a policy is at most 1 MiB).
const shown = (v: Json | undefined): string =>
  v === undefined ? '(none)' : printable(JSON.stringify(v), Number.MAX_SAFE_INTEGER);

const isObject = (v: Json | undefined): v is { [k: string]: Json } =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** Field by field: a line for each leaf (or list) that differs. */
function walk(at: string, a: Json | undefined, b: Json | undefined, out: string[]): void {
  // A section or entry added or removed whole is walked too: one short line a field.
  if ((isObject(a) || a === undefined) && (isObject(b) || b === undefined) && a !== b) {
    const x = a ?? {};
    const y = b ?? {};
    const keys = [...Object.keys(x), ...Object.keys(y).filter((k) => !Object.hasOwn(x, k))];
    for (const k of keys) walk(`${at}.${printable(k, 200)}`, x[k], y[k], out);
    return;
  }
  if (JSON.stringify(a) === JSON.stringify(b)) return;
  out.push(`~ ${at}: ${shown(a)} -> ${shown(b)}`);
}

export function diffPolicies(a: Policy, b: Policy): PolicyDiff {
  const byName = (p: Policy) => new Map(p.rules.map((r) => [r.name, asJson(r)]));
  const A = byName(a);
  const B = byName(b);
  const added = [...B.keys()].filter((n) => !A.has(n));
  const removed = [...A.keys()].filter((n) => !B.has(n));
  const modified = [...B.keys()].filter(
    (n) => A.has(n) && JSON.stringify(A.get(n)) !== JSON.stringify(B.get(n)),
  );
  const common = (p: Policy) => p.rules.map((r) => r.name).filter((n) => A.has(n) && B.has(n));
  const reordered = common(a).join('\n') !== common(b).join('\n');
  const unlockChanged = JSON.stringify(a.unlock) !== JSON.stringify(b.unlock);
  const changes: string[] = [];
  for (const n of removed) changes.push(`- rule ${n}`);
  // Where a rule lands decides what it shadows (the first match decides): each added rule says
  // its place, and the whole order follows any change to it.
  const names = b.rules.map((r) => r.name);
  const at = new Map(names.map((n, i) => [n, i]));
  for (const n of added) {
    const i = at.get(n) ?? 0;
    const next = names[i + 1];
    const place = `${i + 1} of ${names.length}, ${next === undefined ? 'last' : `before ${next}`}`;
    changes.push(`+ rule ${n} (${place}): ${shown(B.get(n))}`);
  }
  for (const n of modified) walk(`rule ${n}`, A.get(n), B.get(n), changes);
  if (reordered || added.length > 0 || removed.length > 0)
    changes.push(`~ the order of rules (first match decides): ${names.join(', ')}`);
  const ja = asJson(a) as { [k: string]: Json };
  const jb = asJson(b) as { [k: string]: Json };
  const sections = [
    ...Object.keys(ja),
    ...Object.keys(jb).filter((k) => !Object.hasOwn(ja, k)),
  ].filter((k) => k !== 'rules' && JSON.stringify(ja[k]) !== JSON.stringify(jb[k]));
  for (const k of sections) walk(printable(k, 80), ja[k], jb[k], changes);
  const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? '' : 's'}`;
  const parts = [
    `+${plural(added.length, 'rule')}`,
    `-${plural(removed.length, 'rule')}`,
    `~${modified.length} modified`,
  ];
  if (reordered) parts.push('order changed (first match decides)');
  if (unlockChanged) parts.push('unlock window changed');
  const others = sections.filter((k) => k !== 'unlock');
  if (others.length > 0) parts.push(`${others.map((k) => printable(k, 80)).join(', ')} changed`);
  return {
    added,
    removed,
    modified,
    reordered,
    unlockChanged,
    sections,
    changes,
    summary: parts.join(', '),
  };
}
