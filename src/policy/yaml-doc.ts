/**
 * The yaml library, loaded on first use (about 30 ms: most commands never read a policy), and
 * where in a parsed document a field path is (for problems with a line and a column).
 */
import { createRequire } from 'node:module';
import type * as YamlModule from 'yaml';
import type { Document, LineCounter as LineCounterT } from 'yaml';

const require = createRequire(import.meta.url);
export const yaml = (): typeof YamlModule => require('yaml') as typeof YamlModule;

export function pathText(path: ReadonlyArray<PropertyKey>): string {
  return path
    .map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i === 0 ? '' : '.'}${String(p)}`))
    .join('');
}

/** The position of the deepest node that exists along path (a missing field points at its parent). */
export function positionOf(
  doc: Document,
  lc: LineCounterT,
  path: ReadonlyArray<PropertyKey>,
): { line: number; column: number } {
  for (let n = path.length; n >= 0; n--) {
    const node = doc.getIn(path.slice(0, n) as unknown[], true) as
      { range?: [number, number, number] } | undefined;
    if (node && typeof node === 'object' && node.range) {
      const p = lc.linePos(node.range[0]);
      return { line: p.line, column: p.col };
    }
    if (
      n === 0 &&
      doc.contents &&
      (yaml().isMap(doc.contents) || yaml().isSeq(doc.contents)) &&
      doc.contents.range
    ) {
      const p = lc.linePos(doc.contents.range[0]);
      return { line: p.line, column: p.col };
    }
  }
  return { line: 1, column: 1 };
}
