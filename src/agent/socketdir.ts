/**
 * The agent's socket directory (INTERFACE.md, "Places"): 0700, owned by this user, not a
 * symlink; anything else is refused with a hint (fail closed).
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import type net from 'node:net';
import path from 'node:path';
import { KeywardError } from '../errors.js';
import { assertPrivate } from '../lib/files.js';

const require = createRequire(import.meta.url);
/** node:net, loaded at first use: `keyward read` talks to the agent without it (read-blocking.ts). */
const nodeNet = (): typeof net => require('node:net') as typeof net;

export interface SocketPaths {
  dir: string;
  agent: string;
  ssh: string;
  lock: string;
}

export function socketPaths(dir: string): SocketPaths {
  return {
    dir,
    agent: path.join(dir, 'agent.sock'),
    ssh: path.join(dir, 'ssh-agent.sock'),
    lock: path.join(dir, 'agent.lock'),
  };
}

/** Creates the directory private, or checks that an existing one is. */
export function prepareSocketDir(dir: string): void {
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(path.dirname(dir), { recursive: true, mode: 0o700 });
    try {
      fs.mkdirSync(dir, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  assertPrivate(dir, 'dir');
}

/** Whether something answers on the socket path. */
export function socketAnswers(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = nodeNet().createConnection(p);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/**
 * Removes a socket left by an agent that died, after checking that nothing answers on it. Refuses
 * a path that is not a socket (someone put something else there).
 */
export async function clearStaleSocket(p: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return;
  }
  if (!st.isSocket()) {
    throw new KeywardError('INSECURE_PERMISSIONS', `${p} exists and is not a socket`, {
      hint: 'something other than keyward put a file there; remove it after checking what it is',
    });
  }
  if (await socketAnswers(p)) {
    throw new KeywardError('AGENT_RUNNING', `an agent is already listening on ${p}`, {
      hint: 'keyward agent stop',
    });
  }
  fs.rmSync(p);
}

const untrusted = (message: string) =>
  new KeywardError('AGENT_UNTRUSTED', message, {
    hint: 'keyward sends nothing to an agent it cannot trust; check who made this directory, or use your own KEYWARD_SOCKET_DIR',
  });

/**
 * A client's check before it connects (docs/PROTOCOL.md, "Trusting the agent"): the socket's
 * directory belongs to this user and nobody else can write to it, and the socket is this user's.
 * Someone else's directory means someone else could have put an agent there to collect
 * passphrases. (The peer's uid, checked once connected, is what holds against a swap after this.)
 */
export function checkAgentSocket(p: string): void {
  const uid = process.geteuid?.() ?? -1;
  const dir = path.dirname(p);
  let d: fs.Stats;
  try {
    d = fs.lstatSync(dir);
  } catch {
    throw new KeywardError('AGENT_UNAVAILABLE', `no agent answers on ${p}`, {
      hint: 'start one with: keyward agent start',
    });
  }
  if (d.isSymbolicLink()) throw untrusted(`the agent's directory ${dir} is a symbolic link`);
  if (!d.isDirectory()) throw untrusted(`the agent's directory ${dir} is not a directory`);
  if (d.uid !== uid)
    throw untrusted(`the agent's directory ${dir} belongs to uid ${d.uid}, not to you (${uid})`);
  if ((d.mode & 0o022) !== 0)
    throw untrusted(
      `others can write to the agent's directory ${dir} (mode ${(d.mode & 0o777).toString(8)})`,
    );
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    throw new KeywardError('AGENT_UNAVAILABLE', `no agent answers on ${p}`, {
      hint: 'start one with: keyward agent start',
    });
  }
  if (!st.isSocket()) throw untrusted(`${p} is not a socket`);
  if (st.uid !== uid)
    throw untrusted(`the socket ${p} belongs to uid ${st.uid}, not to you (${uid})`);
}

const MAX_CONNECTIONS = 1024;

/**
 * Listens on a Unix socket created 0600 (umask while binding: no window where it is wider), after
 * clearing a stale socket. Connections are capped: each holds a guarded secure buffer, and a
 * same-user process must not exhaust them.
 */
export async function listenPrivate(
  path: string,
  onConnection: (s: net.Socket) => void,
): Promise<net.Server> {
  await clearStaleSocket(path);
  const server = nodeNet().createServer({ pauseOnConnect: true }, onConnection);
  server.maxConnections = MAX_CONNECTIONS;
  const old = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
  } finally {
    process.umask(old);
  }
  fs.chmodSync(path, 0o600);
  return server;
}
