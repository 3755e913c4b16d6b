/**
 * The floor of the MCP gateway's design, for `npm run bench` (bench-mcp.ts): a stdio relay that
 * does, per tools/call, only what the design requires of any gateway and nothing of keyward's
 * own, in Node like the gateway: the request parsed, one round trip over a unix socket to
 * another process (the agent's scan), a line of a record's size written and synced (the
 * call's durable record), the call sent on; the answer parsed, a second round trip (the
 * answer's scan), sent back. The other process echoes. What keyward adds above this is its own
 * cost; this is the distance no implementation of the design on this machine can close.
 *
 * Usage: node mcp-floor.js LOGFILE SERVER-COMMAND ARGS...
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { overwriteLog } from './overwrite-log.js';

const [logFile, command, ...args] = process.argv.slice(2);
if (!logFile || !command) {
  process.stderr.write('usage: mcp-floor LOGFILE COMMAND ARGS...\n');
  process.exit(2);
}
const sock = path.join(path.dirname(logFile), `floor-${process.pid}.sock`);
const echoCode = `require('node:net').createServer((s) => s.on('data', (d) => s.write(d))).listen(${JSON.stringify(sock)}, () => process.stdout.write('up'))`;
const echo = spawn(process.execPath, ['-e', echoCode], { stdio: ['ignore', 'pipe', 'ignore'] });
await new Promise((r) => echo.stdout.once('data', r));
const peer = net.connect(sock);
await new Promise((r) => peer.once('connect', r));
const waiting: Array<() => void> = [];
peer.on('data', () => waiting.shift()?.());
const roundTrip = (s: string) =>
  new Promise<void>((r) => {
    waiting.push(r);
    peer.write(s);
  });
// Written over a file of fixed size and fdatasynced, as the agent's journal (docs/AUDIT.md, "The
// journal"; until 2026-12-07 appended and fsynced, as the agent did then).
const log = overwriteLog(logFile, 4 << 20);
/**
 * The record's line is of the size of keyward's mcp.call entry (935 bytes here: its sealed body
 * names the server, the tool, the arguments' hash and the gateway as identified). (Until
 * 2026-12-05 the floor wrote ~12 bytes a call.)
 */
const LINE_BYTES = Number(process.env['BENCH_MCP_FLOOR_LINE'] ?? 935);
const record = Buffer.alloc(LINE_BYTES, 0x20);
record[LINE_BYTES - 1] = 0x0a;
const server = spawn(command, args, { stdio: ['pipe', 'pipe', 'ignore'] });

// Client messages in order, as the gateway takes them.
let queue = Promise.resolve();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  queue = queue.then(async () => {
    const m = JSON.parse(line) as { method?: string; id?: unknown };
    if (m.method === 'tools/call') {
      await roundTrip(JSON.stringify(m));
      record.write(JSON.stringify({ call: m.id }), 0, 'latin1');
      log.write(record);
      fs.fdatasyncSync(log.fd);
    }
    server.stdin.write(`${JSON.stringify(m)}\n`);
  });
});
readline.createInterface({ input: server.stdout }).on('line', (line) => {
  void (async () => {
    const m = JSON.parse(line) as { result?: unknown; id?: unknown };
    if (m.result !== undefined && m.id !== undefined) await roundTrip(line);
    process.stdout.write(`${JSON.stringify(m)}\n`);
  })();
});
const end = () => {
  echo.kill();
  fs.rmSync(sock, { force: true });
  process.exit(0);
};
server.on('exit', end);
process.stdin.on('end', () => server.kill());
