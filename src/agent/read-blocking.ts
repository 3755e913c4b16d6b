/**
 * `keyward read NAME` through the agent over a blocking socket of its own (lib/unix.ts), without
 * node:net: the whole conversation is a connection, the greeting, one request and its reply, so
 * an event loop and its streams add only their cost (node:net alone is ~1.5 ms of a ~65 ms
 * command; docs/PERFORMANCE.md, "keyward read"). The checks are the async client's
 * (AgentConnection.open, client.ts), in the same order: the socket's place (checkAgentSocket),
 * the listening process's uid, a keyward greeting before anything is sent. What arrives is read
 * into secure memory and zeroed there once framed; the value is written to fd from it.
 */
import { KeywardError } from '../errors.js';
import { libc } from '../lib/libc-core.js';
import { closeFd, peerCredentials } from '../lib/libc.js';
import { secureAlloc, secureFree, writeAllSync } from '../lib/secure.js';
import { unixConnect } from '../lib/unix.js';
import { errorFrom, greeted, malformed, notePending } from './client.js';
import {
  FrameReader,
  frameHead,
  REQ,
  RES_ERROR,
  RES_HELLO,
  RES_PENDING,
  type Frame,
} from './protocol.js';
import { checkAgentSocket } from './socketdir.js';

/** As the async client: longer than the first identification of a new executable. */
const HELLO_TIMEOUT_S = 30;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const EINTR = 4;
const EAGAIN = 11;
const MSG_NOSIGNAL = 0x4000;

/** How long a receive may wait (0: for ever, as a request waiting for a person may). */
function receiveTimeout(sock: number, seconds: number): void {
  const tv = Buffer.alloc(16); // struct timeval: tv_sec, tv_usec (64-bit each)
  tv.writeBigInt64LE(BigInt(seconds), 0);
  if (libc().setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, tv, tv.length) !== 0)
    throw new Error(`setsockopt failed (errno ${libc().errno()})`);
}

/**
 * Reads NAME through the agent at path and writes it to fd (a newline after it when asked).
 * False when no agent answers there (the caller reads the vault itself); a refusal throws its
 * KeywardError, as agentRead does.
 */
export function agentReadBlocking(
  path: string,
  name: string,
  fd: number,
  newline: boolean,
): boolean {
  try {
    checkAgentSocket(path);
  } catch (e) {
    if (e instanceof KeywardError && e.code === 'AGENT_UNAVAILABLE') return false;
    throw e;
  }
  let sock: number;
  try {
    sock = unixConnect(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') return false;
    throw e;
  }
  const reader = new FrameReader();
  reader.many = true;
  const chunk = secureAlloc(64 * 1024);
  const frames: Frame[] = [];
  try {
    const me = process.geteuid?.() ?? -1;
    let peer: number | undefined;
    try {
      peer = peerCredentials(sock).uid;
    } catch {
      peer = undefined;
    }
    if (peer !== me)
      throw new KeywardError(
        'AGENT_UNTRUSTED',
        `the process listening on ${path} runs as uid ${peer ?? 'unknown'}, not as you (${me})`,
        { hint: 'keyward sends nothing to it; find out who started it' },
      );
    receiveTimeout(sock, HELLO_TIMEOUT_S);
    const next = (): Frame => {
      for (;;) {
        const f = frames.shift();
        if (f) return f;
        const n = Number(libc().recvInto(sock, chunk, chunk.length, 0));
        if (n < 0) {
          const err = libc().errno();
          if (err === EINTR) continue;
          if (err === EAGAIN)
            throw new KeywardError('AGENT_UNAVAILABLE', `the agent on ${path} did not answer`);
          throw new KeywardError(
            'AGENT_UNAVAILABLE',
            `the connection to ${path} failed (errno ${err})`,
          );
        }
        if (n === 0) throw new KeywardError('AGENT_UNAVAILABLE', 'the agent closed the connection');
        try {
          frames.push(...reader.push(chunk.subarray(0, n)));
        } catch (e) {
          throw malformed(e);
        }
      }
    };
    // Nothing is sent before the agent has greeted (docs/PROTOCOL.md, "Trusting the agent").
    // No greeting (closed, or none in time) is no agent, as for agentRead: the caller reads the
    // vault itself.
    let hello: Frame;
    try {
      hello = next();
    } catch (e) {
      if (e instanceof KeywardError && e.code === 'AGENT_UNAVAILABLE') return false;
      throw e;
    }
    secureFree(hello.raw);
    if (hello.type !== RES_HELLO || hello.meta['agent'] !== 'keyward')
      throw new KeywardError('PROTOCOL_ERROR', `what answers on ${path} is not a keyward agent`);
    greeted();
    // A request may wait for a person (its approval's timeout, 10 minutes at most).
    receiveTimeout(sock, 0);
    const req = frameHead(REQ.read, { name, notify: true }, 0);
    for (let off = 0; off < req.length;) {
      const n = Number(
        libc().sendto(sock, req.subarray(off), req.length - off, MSG_NOSIGNAL, Buffer.alloc(0), 0),
      );
      if (n < 0) {
        const err = libc().errno();
        if (err === EINTR) continue;
        throw new KeywardError('AGENT_UNAVAILABLE', 'the agent closed the connection');
      }
      off += n;
    }
    for (;;) {
      const f = next();
      if (f.type === RES_PENDING) {
        notePending(f);
        continue;
      }
      if (f.type === RES_ERROR) {
        secureFree(f.raw);
        throw errorFrom(f);
      }
      try {
        if (f.raw) writeAllSync(fd, f.raw);
        if (newline) writeAllSync(fd, Buffer.from('\n'));
      } finally {
        secureFree(f.raw);
      }
      return true;
    }
  } finally {
    for (const f of frames.splice(0)) secureFree(f.raw);
    reader.destroy();
    secureFree(chunk);
    closeFd(sock);
  }
}
