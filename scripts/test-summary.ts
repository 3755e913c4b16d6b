/**
 * A node:test reporter that prints, after the TAP, a short summary: how many tests passed,
 * which failed (with their file), which were skipped and why, and the ten slowest files (the
 * suite must stay under 15 minutes on a loaded 2-core machine). `npm test` uses it beside the TAP
 * reporter, so a failure is never buried in thousands of lines.
 */
interface TestEvent {
  type: string;
  data: {
    name?: string;
    file?: string;
    skip?: boolean | string;
    todo?: boolean | string;
    nesting?: number;
    details?: {
      type?: string;
      duration_ms?: number;
      error?: { message?: string; cause?: { message?: string } };
    };
  };
}

export default async function* summary(source: AsyncIterable<TestEvent>): AsyncGenerator<string> {
  let passed = 0;
  const failed: string[] = [];
  const skipped: string[] = [];
  // Each file's time, from its top-level tests and suites: where the suite's minutes go.
  const fileMs = new Map<string, number>();
  for await (const event of source) {
    const d = event.data;
    if ((event.type === 'test:pass' || event.type === 'test:fail') && d.nesting === 0 && d.file)
      fileMs.set(d.file, (fileMs.get(d.file) ?? 0) + (d.details?.duration_ms ?? 0));
    const where = `${d.name ?? '?'}${d.file ? ` (${d.file.replace(/.*\/dist\//, '')})` : ''}`;
    // Suites report too: only tests are counted, but a suite skipped whole is a skip to show.
    if (d.details?.type === 'suite') {
      if (event.type === 'test:pass' && d.skip !== undefined && d.skip !== false)
        skipped.push(`${where}: ${typeof d.skip === 'string' ? d.skip : 'skipped'}`);
      continue;
    }
    if (event.type === 'test:pass') {
      if (d.skip !== undefined && d.skip !== false)
        skipped.push(`${where}: ${typeof d.skip === 'string' ? d.skip : 'skipped'}`);
      else passed += 1;
    } else if (event.type === 'test:fail') {
      const e = d.details?.error;
      const why = (e?.cause?.message ?? e?.message ?? '').split('\n')[0] ?? '';
      failed.push(`${where}${why ? `: ${why.slice(0, 200)}` : ''}`);
    }
  }
  let out = `\n# summary: ${passed} passed, ${failed.length} failed, ${skipped.length} skipped\n`;
  for (const f of failed) out += `#   FAILED  ${f}\n`;
  for (const s of skipped) out += `#   skipped ${s}\n`;
  const slowest = [...fileMs].sort((x, y) => y[1] - x[1]).slice(0, 10);
  if (slowest.length > 0) out += "# slowest files (their tests' time, run two at a time):\n";
  for (const [file, ms] of slowest)
    out += `#   ${(ms / 1000).toFixed(1).padStart(6)} s  ${file.replace(/.*\/dist\//, '')}\n`;
  yield out;
}
