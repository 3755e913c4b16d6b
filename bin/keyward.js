#!/usr/bin/env node
// Node opens its inspector on SIGUSR1 unless the process listens for it: any local user could
// then attach a debugger to a process holding secrets. Listening first closes that door.
process.on('SIGUSR1', () => {});

// keyward's first files are CommonJS, loaded with require: Node 20's ES module loader costs a
// few milliseconds a file on the way to `keyward read` (scripts/bundle.ts, CJS_ENTRIES).
const require =
  process.getBuiltinModule?.('node:module').createRequire(import.meta.url) ??
  (await import('node:module')).createRequire(import.meta.url);

// Before anything else of keyward's loads: a process with an inspector open, or started with an
// option that loads code into it (NODE_OPTIONS=--inspect, --require, --import, --loader), is one
// another process can read or steer. keyward refuses to run so, unless the user passed
// --allow-debugger (docs/THREAT-MODEL.md, "A debuggable keyward process"; docs/ARCHITECTURE.md
// says why this is a check in place and not a re-exec).
const guard = require('../dist/src/bundle/runtime-guard.cjs');
const argv = process.argv.slice(2);
guard.runtimeState.exposure = guard.debugExposure(guard.currentRuntime());
guard.runtimeState.allowed = guard.allowsDebugger(argv);
if (guard.runtimeState.exposure.length > 0 && !guard.runtimeState.allowed) {
  guard.closeInspector();
  const { refuseExposure } = await import('../dist/src/bundle/report.js');
  process.exit(refuseExposure(guard.runtimeState.exposure));
}

// `keyward read NAME`, `lock` and `agent stop` need no command-line parser (src/cli/quick.ts).
// Its module is loaded only for those shapes (quick() checks them again): every other command
// would pay for loading the agent client and libsodium before it even parsed its arguments.
const quickShape =
  (argv.length === 2 && argv[0] === 'read' && !argv[1].startsWith('-')) ||
  (argv.length === 1 && argv[0] === 'lock') ||
  (argv.length === 2 && argv[0] === 'agent' && argv[1] === 'stop');
const quick = quickShape ? await require('../dist/src/bundle/quick.cjs').quick(argv) : undefined;
if (quick !== undefined) process.exitCode = quick;
else {
  const { main } = await import('../dist/src/bundle/main.js');
  process.exitCode = await main(argv);
}
