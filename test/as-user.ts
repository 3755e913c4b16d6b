/**
 * Another user of the machine, for tests that attack from a second uid or that must run as a
 * user who is not root (root reads every process's descriptors, hidden or not). setpriv runs
 * the command as OTHER_UID; only root can use it (rootTests).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BIN, type kw } from './helpers.js';

export const OTHER_UID = 43210;

export const asUser = ['setpriv', `--reuid=${OTHER_UID}`, `--regid=${OTHER_UID}`, '--clear-groups'];

/** The CLI as OTHER_UID. */
export function kwAs(args: string[], env: NodeJS.ProcessEnv, input = ''): ReturnType<typeof kw> {
  const [cmd, ...pre] = asUser as [string, ...string[]];
  const r = spawnSync(cmd, [...pre, process.execPath, BIN, ...args], { env, input });
  return {
    code: r.status,
    signal: r.signal,
    stdout: r.stdout.toString(),
    stderr: r.stderr.toString(),
    stdoutBytes: r.stdout,
  };
}

/** Gives a tree to uid (its links themselves, not what they point to). */
export function chownTree(p: string, uid: number): void {
  fs.lchownSync(p, uid, uid);
  if (fs.lstatSync(p).isDirectory())
    for (const e of fs.readdirSync(p)) chownTree(path.join(p, e), uid);
}

/**
 * `keyward agent run` as OTHER_UID (user: true) or as this user, once it says it listens; its
 * exit rejects (with what it said).
 */
export async function agentRunning(env: NodeJS.ProcessEnv, user: boolean): Promise<ChildProcess> {
  const argv = [process.execPath, BIN, 'agent', 'run'];
  const full = user ? [...asUser, ...argv] : argv;
  const child = spawn(full[0] as string, full.slice(1), {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      if (/keyward agent \d+ listening on/.test(err)) resolve();
    });
    child.once('exit', () => reject(new Error(`the agent exited: ${err}`)));
  });
  return child;
}
