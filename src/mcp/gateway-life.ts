/**
 * The gateway's life after it has met its server (gateway.ts): the client's lines read until
 * its input ends or a signal comes, then the server stopped the way the MCP spec says, what is
 * still queued either way delivered, and the process ended as the signal would have ended it.
 */
import { readLines, type Json, type Upstream } from './upstream.js';

export interface Ends {
  server: Upstream;
  /** Each line the client wrote, handled in order; drained(): all of them handled. */
  fromClient: ((line: string) => void) & { drained: () => Promise<void> };
  /** All the server's messages received so far handled. */
  serverDrained: () => Promise<void>;
  toClient: (m: Json) => void;
  /** The agent link's end. */
  close: () => void;
}

/** Resolves with the exit code once the gateway has ended (a signal re-raised first). */
export function untilEnded(e: Ends): Promise<number> {
  const server = e.server;
  return new Promise<number>((resolve) => {
    let ending = false;
    let exitSignal: NodeJS.Signals | undefined;
    const end = (how: 'input' | 'signal', signal?: NodeJS.Signals) => {
      exitSignal ??= signal;
      if (ending) {
        // A signal during a gentle stop: the server's group goes now, and so does the gateway.
        if (signal) void server.stop('signal');
        return;
      }
      ending = true;
      // What the client sent before its input ended still reaches the server, and what the server
      // answers before it exits still reaches the client; a signal doesn't wait for either.
      const sent = how === 'input' ? e.fromClient.drained() : Promise.resolve();
      void sent
        .then(() => server.stop(how))
        .then(() => (how === 'input' ? e.serverDrained() : undefined))
        .finally(() => {
          e.close();
          if (exitSignal) {
            // Exit as the signal would have: whoever waits for the gateway sees it.
            process.removeAllListeners(exitSignal);
            process.kill(process.pid, exitSignal);
          }
          resolve(0);
        });
    };
    for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const)
      process.on(sig, () => end('signal', sig));
    readLines(
      process.stdin,
      e.fromClient,
      () =>
        e.toClient({
          jsonrpc: '2.0',
          id: null,
          error: { code: -32600, message: 'keyward: message too large' },
        }),
      // The client closed its end, or died: the server is stopped the way the MCP spec says.
      () => end('input'),
    );
    process.stdout.on('error', () => end('input'));
  });
}
