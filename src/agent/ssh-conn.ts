/**
 * One connection to the SSH agent socket: its messages framed into secure memory, bounded (16
 * waiting, the agent's in-flight budget, a deadline from each message's first byte, an idle
 * limit), answered in order; a client that hangs up takes its waiting requests with it.
 */
import type net from 'node:net';
import { secureFootprint, secureRelease, type SecureBuffer } from '../lib/secure.js';
import { FrameDeadline, IDLE_CONNECTION_MS, inFlight } from './inflight.js';
import type { Peer } from './peer.js';
import { MAX_QUEUED, message, SSH, SshFrameReader } from './ssh.js';

export function serveSshConnection(
  socket: net.Socket,
  who: Peer,
  handle: (msg: SecureBuffer) => Promise<Buffer>,
  closed: () => void,
): void {
  const reader = new SshFrameReader();
  let busy = Promise.resolve();
  let queued = 0;
  let ended = false;
  // A message's deadline runs from its first byte, as a keyward frame's does (server.ts): a
  // trickle of bytes resets the idle limit, and held the in-flight budget for days (found in
  // review).
  const deadline = new FrameDeadline(() => socket.destroy());
  socket.setTimeout(IDLE_CONNECTION_MS, () => socket.destroy());
  socket.on('error', () => socket.destroy());
  socket.on('close', () => {
    // An ssh client that hangs up takes its pending signature request with it, and the ones
    // queued behind it (below): nobody is asked about a request whose answer would go nowhere.
    ended = true;
    deadline.clear();
    who.gone = true;
    who.abandon?.();
    reader.destroy();
    closed();
  });
  socket.on('data', (chunk: Buffer) => {
    let msgs: SecureBuffer[];
    try {
      msgs = reader.push(chunk);
    } catch {
      socket.destroy();
      return;
    }
    deadline.update(reader.pending, msgs.length);
    queued += msgs.length;
    // Each waiting request holds secure memory (locked pages): a flood is dropped, whether on
    // one connection (more than 16 waiting) or across many (the agent's in-flight budget).
    // Counted as the secure memory they hold: a pooled message holds its whole size class.
    const held = msgs.map(secureFootprint);
    const bytes = held.reduce((n, b) => n + b, 0);
    if (queued > MAX_QUEUED || !inFlight.reserve(bytes)) {
      for (const m of msgs) secureRelease(m);
      socket.destroy();
      return;
    }
    for (const [i, msg] of msgs.entries()) {
      // Requests on one connection are answered in order.
      busy = busy.then(async () => {
        let reply: Buffer;
        try {
          reply = ended ? message(SSH.FAILURE) : await handle(msg);
        } catch {
          reply = message(SSH.FAILURE);
        } finally {
          inFlight.release(held[i] ?? msg.length);
          // Zeroed and kept for the next request of its size (lib/secure.ts); no view of it
          // outlives handle().
          secureRelease(msg);
          queued -= 1;
        }
        if (!socket.destroyed) socket.write(reply);
      });
    }
  });
  socket.resume();
}
