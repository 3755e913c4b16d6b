/**
 * The MCP server behind `keyward mcp wrap` (docs/MCP.md, "The gateway"): a child speaking
 * JSON-RPC on stdio, one message per line. The child leads its own process group, so stopping
 * it stops everything it started: the end of the client's input first closes the server's (as
 * the MCP spec's stdio shutdown says), then SIGTERM to the group, then SIGKILL; a signal to the
 * gateway skips the first step.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import type { Readable } from 'node:stream';

export type Json = Record<string, unknown>;

export interface Upstream {
  /** Sends one message to the server; dropped once the server is gone. */
  send(m: Json): void;
  /** Stops the server: 'input' (the client is done: close its stdin first) or 'signal'. */
  stop(how: 'input' | 'signal'): Promise<void>;
}

export interface UpstreamEvents {
  message(m: Json): void;
  /** The server is gone (exited, could not start, or its connection closed), with why. */
  gone(why: string): void;
  log(line: string): void;
}

export const MAX_LINE = 16 * 1024 * 1024;
/**
 * How long a server has to act on each step of a stop before the next, harder one. Two steps
 * fit inside the 2 s an MCP client gives the gateway itself before its own SIGTERM.
 */
export const GRACE_MS = 800;

/**
 * Splits a stream into lines of at most MAX_LINE bytes, never holding more: a longer line is
 * dropped as it comes (oversize is told once for it), so no peer can make the gateway buffer
 * without bound.
 */
export function readLines(
  input: Readable,
  line: (text: string) => void,
  oversize: () => void,
  end: () => void,
): void {
  let parts: Buffer[] = [];
  let size = 0;
  let dropping = false;
  input.on('data', (chunk: Buffer) => {
    let from = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, from);
      const piece = chunk.subarray(from, nl < 0 ? chunk.length : nl);
      if (!dropping) {
        if (size + piece.length > MAX_LINE) {
          dropping = true;
          parts = [];
          size = 0;
          oversize();
        } else {
          parts.push(piece);
          size += piece.length;
        }
      }
      if (nl < 0) break;
      if (!dropping) {
        let text = Buffer.concat(parts, size).toString('utf8');
        if (text.endsWith('\r')) text = text.slice(0, -1);
        line(text);
      }
      parts = [];
      size = 0;
      dropping = false;
      from = nl + 1;
    }
    // What stays is a copy: the chunk's memory is not kept alive by a slice of it.
    if (parts.length > 0) {
      const rest = Buffer.concat(parts, size);
      parts = [rest];
    }
  });
  input.on('end', end);
  input.on('close', end);
}

/** Parses one line from the server: a JSON-RPC object, or undefined (logged). */
export function parseServerLine(line: string, name: string, ev: UpstreamEvents): Json | undefined {
  if (line.trim() === '') return undefined;
  let m: unknown;
  try {
    m = JSON.parse(line);
  } catch {
    ev.log(`keyward mcp wrap: ${name} sent a line that is not JSON-RPC (ignored)`);
    return undefined;
  }
  if (m === null || typeof m !== 'object' || Array.isArray(m)) {
    ev.log(`keyward mcp wrap: ${name} sent a message that is not one JSON-RPC object (ignored)`);
    return undefined;
  }
  return m as Json;
}

export function stdioUpstream(name: string, command: string[], ev: UpstreamEvents): Upstream {
  const [cmd, ...args] = command;
  // detached: a new session, so the server and whatever it starts share a process group that
  // is not the gateway's, and one kill reaches them all.
  const child: ChildProcessWithoutNullStreams = spawn(cmd ?? '', args, {
    stdio: ['pipe', 'pipe', 'inherit'],
    detached: true,
  }) as unknown as ChildProcessWithoutNullStreams;
  let exited = false;
  let reported = false;
  const exit = new Promise<void>((resolve) => {
    const ended = (why: string) => {
      exited = true;
      resolve();
      if (!reported) {
        reported = true;
        ev.gone(why);
      }
    };
    child.on('error', (e) => ended(`could not start (${e.message})`));
    child.on('exit', (code, signal) => ended(`exited (${signal ?? `code ${code}`})`));
  });
  child.stdin.on('error', () => undefined);
  readLines(
    child.stdout,
    (line) => {
      const m = parseServerLine(line, name, ev);
      if (m) ev.message(m);
    },
    () => ev.log(`keyward mcp wrap: ${name} sent an oversized line (ignored)`),
    () => undefined,
  );
  // Whatever ends the gateway (an uncaught error included), the server's group does not
  // outlive it.
  const onExit = () => {
    if (!stopped) group('SIGKILL');
  };
  process.on('exit', onExit);
  let stopped = false;

  /** Sends a signal to the server's process group; false when nothing is left in it. */
  const group = (signal: NodeJS.Signals | 0): boolean => {
    if (child.pid === undefined) return false;
    try {
      process.kill(-child.pid, signal);
      return true;
    } catch {
      return false;
    }
  };
  /** A signal to the gateway while a gentle stop is under way: the waits end now. */
  let hurried = false;
  let hurry: () => void = () => undefined;
  const hurry_ = new Promise<void>((resolve) => (hurry = resolve));
  /** Waits until the leader has exited (and, with wholeGroup, the group is empty), or ms. */
  const settled = async (ms: number, wholeGroup: boolean): Promise<boolean> => {
    const until = Date.now() + ms;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      void Promise.race([exit, hurry_]).then(() => {
        clearTimeout(t);
        resolve();
      });
    });
    if (!wholeGroup) return exited;
    while (!hurried && group(0) && Date.now() < until) await new Promise((r) => setTimeout(r, 25));
    return !group(0);
  };
  let stopping: Promise<void> | undefined;
  return {
    send(m) {
      if (!exited && child.stdin.writable) child.stdin.write(`${JSON.stringify(m)}\n`);
    },
    stop(how) {
      if (stopping && how === 'signal' && !hurried) {
        // Asked again, harder: what was waiting to end gently ends now.
        hurried = true;
        group('SIGTERM');
        hurry();
      }
      stopping ??= (async () => {
        if (how === 'input') {
          child.stdin.end();
          if (await settled(GRACE_MS, false)) {
            // The server left as asked; what it started and left behind goes with a SIGTERM.
            if (!group('SIGTERM')) return;
          } else group('SIGTERM');
        } else group('SIGTERM');
        // What the server started may outlive it in the group: each step goes to the group.
        if (!(await settled(GRACE_MS, true))) {
          group('SIGKILL');
          await settled(GRACE_MS, true);
        }
      })().finally(() => {
        stopped = true;
        process.off('exit', onExit);
      });
      return stopping;
    },
  };
}
