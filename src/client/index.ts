/**
 * keyward/client: a credential for a program that is already running (docs/RUN.md, "The client
 * module"). The agent authorizes the caller (this process) as for `keyward read`, puts the value
 * in a sealed memfd and passes the descriptor over the socket (SCM_RIGHTS); this module reads it
 * straight into secure memory and closes it. No socket buffer, JS string or intermediate Buffer
 * holds the value. With `inline: true` (for callers that can't take descriptors) the value comes
 * in the reply's bytes instead, copied into secure memory as it arrives.
 *
 *   import { getCredential, freeCredential } from 'keyward/client';
 *   const token = await getCredential('github/token');   // a Buffer in secure memory
 *   try { use(token) } finally { freeCredential(token) }  // zeroes it
 */
import fs from 'node:fs';
import {
  call,
  checkAgentSocket,
  errorFrom,
  FrameReader,
  frameHead,
  REQ,
  RES_ERROR,
  RES_HELLO,
  socketPaths,
  type Frame,
} from '../agent/index.js';
import { KeywardError } from '../errors.js';
import { closeFd, peerCredentials } from '../lib/libc.js';
import { EAGAIN, recvWithFd, unixConnect } from '../lib/unix.js';
import { socketDir } from '../lib/paths.js';
import { readFdToSecure, secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';

export type { SecureBuffer as Credential } from '../lib/secure.js';

const MAX_VALUE = 16 * 1024 * 1024;
const POLL_MS = 10;
/** Longer than the longest approval a policy can ask for (10 minutes). */
const DEFAULT_TIMEOUT_MS = 11 * 60_000;

export interface CredentialOptions {
  /** The agent socket; default from KEYWARD_SOCKET_DIR, as the CLI finds it. */
  socket?: string;
  /** The value in the reply's bytes rather than on a descriptor. */
  inline?: boolean;
  /** How long to wait for the agent (approvals included); default 11 minutes. */
  timeoutMs?: number;
}

/** Zeroes and releases a credential. */
export function freeCredential(c: SecureBuffer): void {
  secureFree(c);
}

/**
 * The secret NAME, in secure memory; free it with freeCredential as soon as it has been used.
 * Rejects with a KeywardError (code and exit code as the CLI's) when the agent refuses.
 */
export async function getCredential(
  name: string,
  o: CredentialOptions = {},
): Promise<SecureBuffer> {
  const path = o.socket ?? socketPaths(socketDir()).agent;
  if (o.inline) {
    const f = await call(path, 'read', { name });
    return f.raw ?? secureAlloc(0);
  }
  checkAgentSocket(path);
  let sock: number;
  try {
    sock = unixConnect(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new KeywardError(
      'AGENT_UNAVAILABLE',
      `no agent answers on ${path} (${code ?? 'error'})`,
      {
        hint: 'start one with: keyward agent start',
      },
    );
  }
  let received: number | undefined;
  const reader = new FrameReader();
  reader.many = true;
  try {
    const me = process.geteuid?.() ?? -1;
    const peer = peerCredentials(sock).uid;
    if (peer !== me)
      throw new KeywardError(
        'AGENT_UNTRUSTED',
        `the process listening on ${path} runs as uid ${peer}, not as you (${me})`,
      );
    const chunk = Buffer.alloc(64 * 1024);
    const deadline = Date.now() + (o.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const frames: Frame[] = [];
    /** The next frame; a descriptor that came with the bytes is kept in `received`. */
    const next = async (): Promise<Frame> => {
      for (;;) {
        const f = frames.shift();
        if (f) return f;
        if (Date.now() > deadline)
          throw new KeywardError('APPROVAL_TIMEOUT', 'no answer from the agent in time');
        const { n, fd } = recvWithFd(sock, chunk);
        if (fd !== undefined) {
          if (received !== undefined) closeFd(received);
          received = fd;
        }
        if (n === -EAGAIN) {
          await new Promise((r) => setTimeout(r, POLL_MS));
          continue;
        }
        if (n <= 0) throw new KeywardError('AGENT_UNAVAILABLE', 'the agent closed the connection');
        frames.push(...reader.push(chunk.subarray(0, n)));
      }
    };
    // Nothing is sent before the agent has greeted (docs/PROTOCOL.md, "Trusting the agent").
    const hello = await next();
    secureFree(hello.raw);
    if (hello.type !== RES_HELLO || hello.meta['agent'] !== 'keyward')
      throw new KeywardError('PROTOCOL_ERROR', `what answers on ${path} is not a keyward agent`);
    const req = frameHead(REQ.fetch, { name }, 0);
    for (let off = 0; off < req.length;) off += fs.writeSync(sock, req, off);
    // The reply: a frame of metadata only (the value is on the descriptor that comes with it).
    const reply = await next();
    secureFree(reply.raw);
    if (reply.type === RES_ERROR) throw errorFrom(reply);
    if (received === undefined)
      throw new KeywardError('PROTOCOL_ERROR', 'the agent sent no descriptor');
    return readFdToSecure(received, MAX_VALUE);
  } finally {
    if (received !== undefined) closeFd(received);
    closeFd(sock);
    reader.destroy();
  }
}
