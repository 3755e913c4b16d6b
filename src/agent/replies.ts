/**
 * Writing replies on keyward's socket: ok and error frames, an ok carrying a descriptor, and the
 * notice that a request waits for a person. Secret bytes in a reply are freed once the kernel
 * has them.
 */
import type net from 'node:net';
import type { Pending } from '../approval/index.js';
import { KeywardError } from '../errors.js';
import { closeFd } from '../lib/libc.js';
import { EAGAIN, sendWithFd } from '../lib/unix.js';
import { secureFree, secureTake, type SecureBuffer } from '../lib/secure.js';
import { socketFd } from '../lib/socket-fd.js';
import {
  frameHead,
  inOneWrite,
  ProtocolError,
  RES_ERROR,
  RES_OK,
  RES_PENDING,
  type WireError,
} from './protocol.js';

/**
 * A reply's raw part holding JSON that is never secret (names, metadata, hashes): in raw
 * because it can outgrow a meta (16 KiB).
 */
export function jsonRaw(o: unknown): SecureBuffer {
  return secureTake(Buffer.from(JSON.stringify(o), 'utf8'));
}

/** What a reply is written to: a connection's socket. */
export interface Connected {
  socket: net.Socket;
}

/** What goes on the wire for an error: a code, a message and a hint; never a stack. */
export function wireError(e: unknown): WireError {
  if (e instanceof KeywardError)
    return e.hint === undefined
      ? { code: e.code, message: e.message }
      : { code: e.code, message: e.message, hint: e.hint };
  if (e instanceof ProtocolError) return { code: 'PROTOCOL_ERROR', message: e.message };
  return { code: 'INTERNAL', message: 'internal error in the agent' };
}

/** Tells the requester its request waits for a person, and where the console is. */
export function notifyPending(
  socket: net.Socket,
  p: Pending,
  consoleUrl: string | undefined,
): void {
  if (socket.destroyed) return;
  socket.write(
    frameHead(
      RES_PENDING,
      {
        id: p.id,
        mode: p.mode,
        action: p.action,
        target: p.target,
        expiresAt: p.expiresAt,
        timeoutMs: Math.max(0, p.expiresAt - Date.now()),
        console: consoleUrl ?? null,
      },
      0,
    ),
  );
}

export function fail(conn: Connected, e: unknown): void {
  reply(conn, RES_ERROR, wireError(e) as unknown as Record<string, unknown>, undefined, () =>
    conn.socket.destroy(),
  );
}

/** Writes a response; raw (secret bytes) is freed once the kernel has it. */
export function reply(
  conn: Connected,
  type: number,
  meta: Record<string, unknown>,
  raw: SecureBuffer | undefined,
  done?: () => void,
): void {
  const s = conn.socket;
  if (s.destroyed) {
    secureFree(raw);
    return;
  }
  let head: Buffer;
  try {
    head = frameHead(type, meta, raw?.length ?? 0);
  } catch (e) {
    // Too large for a frame: the bytes go now, not when the collector finds them.
    secureFree(raw);
    throw e;
  }
  inOneWrite(s, () => {
    s.write(head);
    if (raw && raw.length > 0) {
      s.write(raw, () => {
        secureFree(raw);
        done?.();
      });
    } else {
      secureFree(raw);
      if (done) s.write(Buffer.alloc(0), () => done());
    }
  });
}

/**
 * An ok reply carrying a descriptor (SCM_RIGHTS). Sent with sendmsg on the socket itself, so
 * only when nothing else is queued on it (one request at a time makes that the normal case).
 * The descriptor is closed here either way.
 */
export function replyWithFd(
  conn: Connected,
  meta: Record<string, unknown>,
  fd: number,
  sent: (() => void) | undefined,
): void {
  const sock = socketFd(conn.socket);
  const frame = frameHead(RES_OK, meta, 0);
  const attempt = (tries: number) => {
    let n = -1;
    if (!conn.socket.destroyed && sock !== undefined && conn.socket.writableLength === 0)
      n = sendWithFd(sock, frame, fd);
    if (n === -EAGAIN && tries < 100) {
      setTimeout(() => attempt(tries + 1), 10);
      return;
    }
    closeFd(fd);
    if (n > 0) {
      // The descriptor went with the first byte; the rest of the frame follows as usual.
      if (n < frame.length) conn.socket.write(frame.subarray(n));
      sent?.();
    } else fail(conn, new KeywardError('INTERNAL', 'the descriptor could not be sent'));
  };
  attempt(0);
}
