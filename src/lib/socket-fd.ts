/**
 * The descriptor under a net.Socket. Its own module: the agent's client needs it, and importing
 * it from agent/peer.ts made every command load the agent's peer identification (and
 * node:crypto with it), ~3 ms of each.
 */
import type net from 'node:net';

/** The descriptor under a net.Socket (Node keeps it on the handle). */
export function socketFd(socket: net.Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return fd === undefined || fd < 0 ? undefined : fd;
}
