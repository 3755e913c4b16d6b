/**
 * A value made once per process, whichever copy of a module asks. The command line's read path
 * is bundled as a file of its own (scripts/bundle.ts), so a command handed from it to main.ts
 * runs a second copy of some modules; what holds a process-wide resource must not be made twice
 * (koffi refuses a type name defined again).
 */
export function processWide<T>(name: string, make: () => T): T {
  const key = Symbol.for(`keyward.${name}`);
  const g = globalThis as unknown as Record<symbol, T | undefined>;
  return (g[key] ??= make());
}
