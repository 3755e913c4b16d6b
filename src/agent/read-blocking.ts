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
import { closeFd, peerCredentials } from '../lib/libc.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import {
  EAGAIN,
  EINTR,
  setReceiveTimeout,
  unixConnect,
  unixRecv,
  unixSendAll,
} from '../lib/unix.js';
import {
  errorFrom,
  greeted,
  HELLO_TIMEOUT_MS,
  malformed,
  noAgentAt,
  notMine,
  notePending,
} from './client.js';
import {
  FrameReader,
  frameHead,
  REQ,
  RES_ERROR,
  RES_HELLO,
  RES_PENDING,
  type Frame,
} from './protocol.js';
import { writeReleased } from './requests.js';
import { checkAgentSocket } from './socketdir.js';

/** The socket, connected; undefined where no agent listens (ENOENT, ECONNREFUSED). */
function connect(path: string): number | undefined {
  try {
    return unixConnect(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // No agent can be reached at a path too long for an address (the async client falls back
    // to the vault there too).
    if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ENAMETOOLONG') return undefined;
    // A listener that never accepts: refused at once, as node:net does, not waited for.
    if (code === 'EAGAIN')
      throw new KeywardError(
        'AGENT_UNAVAILABLE',
        `what listens on ${path} takes no connection (its queue is full)`,
      );
    throw e;
  }
}

/**
 * Reads NAME through the agent at path and writes it to fd (a newline after it when asked).
 * False when no agent answers there (the caller reads the vault itself), where agentRead said
 * so too: no socket, nobody listening, no greeting (closed first, or none in 30 s). A refusal
 * throws its KeywardError, as agentRead does.
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
  const sock = connect(path);
  if (sock === undefined) return false;
  let reader: FrameReader | undefined;
  let chunk: SecureBuffer | undefined;
  const frames: Frame[] = [];
  try {
    const me = process.geteuid?.() ?? -1;
    let peer: number | undefined;
    try {
      peer = peerCredentials(sock).uid;
    } catch {
      peer = undefined;
    }
    if (peer !== me) throw notMine(path, peer, me);
    const r = (reader = new FrameReader());
    r.many = true;
    const buf = (chunk = secureAlloc(64 * 1024));
    // The greeting has one deadline, whatever arrives or interrupts meanwhile (a byte now and
    // then, a signal): each receive waits only what is left of it. None after the greeting.
    let deadline: number | undefined = Date.now() + HELLO_TIMEOUT_MS;
    const next = (): Frame => {
      for (;;) {
        const f = frames.shift();
        if (f) return f;
        if (deadline !== undefined) {
          const left = deadline - Date.now();
          if (left <= 0)
            throw new KeywardError('AGENT_UNAVAILABLE', `the agent on ${path} did not answer`);
          setReceiveTimeout(sock, Math.max(1, left));
        }
        const n = unixRecv(sock, buf, deadline !== undefined);
        if (n === -EAGAIN || n === -EINTR) continue; // the deadline above decides
        // As node:net's error event: the errno, not "no agent" (that is a close, or no time).
        if (n < 0) throw new Error(`the connection to ${path} failed (errno ${-n})`);
        if (n === 0) throw new KeywardError('AGENT_UNAVAILABLE', 'the agent closed the connection');
        try {
          frames.push(...r.push(buf.subarray(0, n)));
        } catch (e) {
          throw malformed(e);
        }
      }
    };
    // Nothing is sent before the agent has greeted (docs/PROTOCOL.md, "Trusting the agent").
    let hello: Frame;
    try {
      hello = next();
    } catch (e) {
      if (e instanceof KeywardError && e.code === 'AGENT_UNAVAILABLE') {
        // The command goes on without an agent (main.ts): it must not wait for this one again.
        noAgentAt(path, true);
        return false;
      }
      throw e;
    }
    // What came with the greeting came before the request: it answers nothing.
    if (frames.length > 0)
      throw new KeywardError('PROTOCOL_ERROR', `what answers on ${path} spoke before it was asked`);
    secureFree(hello.raw);
    if (hello.type !== RES_HELLO || hello.meta['agent'] !== 'keyward')
      throw new KeywardError('PROTOCOL_ERROR', `what answers on ${path} is not a keyward agent`);
    greeted();
    // A request may wait for a person (its approval's timeout, 10 minutes at most).
    deadline = undefined;
    setReceiveTimeout(sock, 0);
    if (!unixSendAll(sock, frameHead(REQ.read, { name, notify: true }, 0)))
      throw new KeywardError('AGENT_UNAVAILABLE', 'the agent closed the connection');
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
      writeReleased(f, fd, newline);
      return true;
    }
  } finally {
    for (const f of frames.splice(0)) secureFree(f.raw);
    reader?.destroy();
    secureFree(chunk);
    closeFd(sock);
  }
}
