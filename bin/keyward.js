#!/usr/bin/env node
// CommonJS (bin/package.json): an ES module as the main entry costs Node 20 its module loader's
// start, ~5 ms of every command (docs/PERFORMANCE.md, "keyward read").
'use strict';

// Node opens its inspector on SIGUSR1 unless the process listens for it: any local user could
// then attach a debugger to a process holding secrets. Listening first closes that door.
process.on('SIGUSR1', () => {});

// Before anything else of keyward's loads: a process with an inspector open, or started with an
// option that loads code into it (NODE_OPTIONS=--inspect, --require, --import, --loader), is one
// another process can read or steer. keyward refuses to run so, unless the user passed
// --allow-debugger (docs/THREAT-MODEL.md, "A debuggable keyward process"; docs/ARCHITECTURE.md
// says why this is a check in place and not a re-exec). The guard and the quick commands are
// CommonJS files, loaded with require (scripts/bundle.ts, CJS_ENTRIES).
const guard = require('../dist/src/bundle/runtime-guard.cjs');
const argv = process.argv.slice(2);
guard.runtimeState.exposure = guard.debugExposure(guard.currentRuntime());
guard.runtimeState.allowed = guard.allowsDebugger(argv);

// `keyward read NAME`, `lock` and `agent stop` need no command-line parser (src/cli/quick.ts).
// Its module is loaded only for those shapes (quick() checks them again): every other command
// would pay for loading the agent client and libsodium before it even parsed its arguments.
const quickShape =
  (argv.length === 2 && argv[0] === 'read' && !argv[1].startsWith('-')) ||
  (argv.length === 1 && argv[0] === 'lock') ||
  (argv.length === 2 && argv[0] === 'agent' && argv[1] === 'stop');
// `agent start` likewise, from a file of its own (src/cli/quick-start.ts).
const startShape = argv.length === 2 && argv[0] === 'agent' && argv[1] === 'start';
// The agent itself, as `agent start` runs it: without the parser, whose code would stay in its
// memory for as long as it runs (agentRun() checks the shape again).
const agentRunShape = (() => {
  let i = argv[0] === '--allow-debugger' ? 1 : 0;
  if (argv[i] !== 'agent' || argv[i + 1] !== 'run') return false;
  i += 2;
  if (argv[i] === '--ready-fd') {
    const fd = argv[i + 1] ?? '';
    if (!/^\d{1,4}$/.test(fd) || Number(fd) < 3) return false;
    i += 2;
  }
  if (argv[i] === '--no-console') i += 1;
  return i === argv.length;
})();

async function run() {
  if (guard.runtimeState.exposure.length > 0 && !guard.runtimeState.allowed) {
    guard.closeInspector();
    const { refuseExposure } = await import('../dist/src/bundle/report.js');
    process.exit(refuseExposure(guard.runtimeState.exposure));
  }
  const quick = quickShape
    ? await require('../dist/src/bundle/quick.cjs').quick(argv)
    : startShape
      ? await require('../dist/src/bundle/quick-start.cjs').quickStart(argv)
      : undefined;
  // A quick command has finished all its work, and what it wrote is out (the value written to
  // descriptor 1 itself; its other output waited for in runQuick): exit now, without Node
  // tearing down its environment first (1-2 ms of a ~34 ms read; docs/PERFORMANCE.md).
  if (quick !== undefined) process.exit(quick);
  const agent = agentRunShape
    ? await (await import('../dist/src/bundle/agent-run.js')).agentRun(argv)
    : undefined;
  if (agent !== undefined) process.exitCode = agent;
  else {
    const { main } = await import('../dist/src/bundle/main.js');
    process.exitCode = await main(argv);
  }
}

// An error that escapes is a bug: Node prints it and exits 1, as an uncaught error at the top
// of a module would.
run().catch((e) => {
  process.nextTick(() => {
    throw e;
  });
});
