#!/usr/bin/env node
// Node opens its inspector on SIGUSR1 unless the process listens for it: any local user could
// then attach a debugger to a process holding secrets. Listening first closes that door.
process.on('SIGUSR1', () => {});
const { main } = await import('../dist/src/cli/main.js');

process.exitCode = await main(process.argv.slice(2));
