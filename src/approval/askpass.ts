/**
 * The askpass channel (docs/PROTOCOL.md, "Approvals"): a person asked through a program of the
 * ssh-askpass convention, which the agent pins by path and content hash, runs with a pruned
 * environment, and ends with the request.
 */
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { readOwnFile } from '../lib/files.js';
import { processTree } from '../lib/proc-tree.js';
import { markupFree } from '../lib/text.js';

/**
 * What an askpass call came to: a person's yes or no (exit 0 or 1), or a failure of the program
 * itself, with its reason (it could not be run, it was killed, it said nothing in time).
 */
export type AskpassAnswer = { ok: boolean; failure?: undefined } | { ok: false; failure: string };

/**
 * Asks a person through an askpass program (the ssh-askpass convention): the prompt is its one
 * argument, exit 0 approves, anything else (or no answer within timeoutMs) denies.
 */
export function askpass(
  program: string,
  prompt: string,
  timeoutMs: number,
  env: NodeJS.ProcessEnv,
  ended?: AbortSignal,
): Promise<AskpassAnswer> {
  return new Promise((resolve) => {
    if (ended?.aborted) {
      resolve({ ok: false, failure: ENDED });
      return;
    }
    let done = false;
    const finish = (a: AskpassAnswer) => {
      if (!done) {
        done = true;
        resolve(a);
      }
    };
    // A program pinned at the agent's start runs only as it was then (askpassPin), and one that
    // was not pinned never runs (found by name on PATH at each prompt, it could be anything).
    const pin = pinned.get(program);
    if (!pin) {
      finish({ ok: false, failure: `${program} was not pinned at the agent's start: not run` });
      return;
    }
    if (contentHash(pin.path) !== pin.sha256) {
      finish({
        ok: false,
        failure: `${pin.path} changed since the agent started: not run (restart the agent to use the new one)`,
      });
      return;
    }
    let child;
    try {
      child = spawn(pin.path, [markupFree(prompt)], {
        env: askpassEnv(env),
        stdio: ['ignore', 'ignore', 'ignore'],
      });
    } catch (e) {
      finish({ ok: false, failure: `could not be run: ${(e as Error).message}` });
      return;
    }
    const spawned = child;
    // The program and whatever it started (a wrapper script's dialog is its child). Not a
    // process group of its own: that needs a session of its own, and an askpass that asks on
    // the terminal would lose it.
    // Walked before the kill: once the program is gone, what it started belongs to init.
    const end = () => {
      void (
        spawned.pid === undefined ? Promise.resolve([]) : processTree(spawned.pid, ASKPASS_TREE)
      ).then((tree) => {
        spawned.kill('SIGKILL');
        for (const pid of tree.slice(1)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone already
          }
        }
      });
    };
    const timer = setTimeout(() => {
      end();
      finish({ ok: false, failure: `gave no answer within ${Math.round(timeoutMs / 1000)} s` });
    }, timeoutMs);
    // Its request ended (its requester hung up, it was decided elsewhere, the agent locked):
    // the dialog goes, so nobody answers a question whose answer would go nowhere.
    const onEnded = () => {
      clearTimeout(timer);
      end();
      finish({ ok: false, failure: ENDED });
    };
    ended?.addEventListener('abort', onEnded, { once: true });
    child.on('exit', () => ended?.removeEventListener('abort', onEnded));
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      finish({ ok: false, failure: `could not be run (${e.code ?? e.message})` });
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0 || code === 1) finish({ ok: code === 0 });
      else if (signal) finish({ ok: false, failure: `was killed by ${signal}` });
      else finish({ ok: false, failure: `exited with status ${code}` });
    });
  });
}

/** The most processes of an askpass program's tree ended with it. */
const ASKPASS_TREE = 1024;

/** An askpass answer for a request that ended before the program answered (not a failure of it). */
export const ENDED = 'was ended with its request';

/** Larger askpass programs are not pinned (so not run): ssh-askpass is tens of KB. */
const ASKPASS_MAX_BYTES = 64 * 1024 * 1024;

/** Askpass programs pinned at the agent's start: where each was found, and its content's hash. */
const pinned = new Map<string, { path: string; sha256: string }>();

/** SHA-256 of a file's content, or undefined when it can't be read (public bytes). */
function contentHash(file: string): string | undefined {
  try {
    // A FIFO put there would hold the agent's thread; a huge file, its memory.
    const bytes = readOwnFile(file, { follow: true, maxBytes: ASKPASS_MAX_BYTES });
    return createHash('sha256').update(bytes).digest('hex');
  } catch {
    return undefined;
  }
}

/** What of the agent's environment an askpass program gets: what it needs to reach the person. */
const ASKPASS_KEEPS =
  /^(DISPLAY|WAYLAND_DISPLAY|XAUTHORITY|DBUS_SESSION_BUS_ADDRESS|XDG_RUNTIME_DIR|XDG_SESSION_TYPE|HOME|USER|LOGNAME|LANG|LANGUAGE|LC_\w+|TERM|TZ)$/;

/**
 * The askpass program's environment: the display, the session bus, the locale and who the user
 * is, nothing else of the agent's (a BASH_ENV or PYTHONPATH there would make a wrapper run code of
 * the user's). What it runs by name is looked up only where root alone can write: a directory of
 * the user's own on PATH (~/.local/bin) would let any process of the user put its own `exit 0`
 * there; and Python leaves out the user's site directory (~/.local/lib/python3.X), where a
 * usercustomize.py runs first (both found in review). A program that reads its settings from the
 * user's home (GTK's modules in ~/.config) is still the user's to change: THREAT-MODEL.md.
 */
export function askpassEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) if (ASKPASS_KEEPS.test(k)) out[k] = v;
  return {
    ...out,
    PATH: rootOnlyPath(env['PATH']),
    PYTHONNOUSERSITE: '1',
    SSH_ASKPASS_PROMPT: 'confirm',
  };
}

/**
 * The directories of a PATH that only root can change: absolute, every part of the way owned by
 * root, none writable by group or others but a sticky one's entries (/tmp's, which root owns).
 * A process of the user can put nothing in them, nor swap them for directories of its own: each is
 * kept as its real path (a link of the user's on the way, as ~/.nix-profile is, could be pointed
 * elsewhere once checked: found in review). None such: a PATH that names nothing, never an empty
 * one (which a shell reads as the working directory).
 */
export function rootOnlyPath(envPath: string | undefined): string {
  const kept: string[] = [];
  for (const dir of (envPath ?? '').split(':')) {
    if (!path.isAbsolute(dir)) continue;
    try {
      const real = fs.realpathSync(dir);
      if (kept.includes(real)) continue;
      const parts = real.split('/').filter((x) => x !== '');
      let ok = true;
      for (let i = 0; i <= parts.length && ok; i++) {
        const st = fs.statSync(`/${parts.slice(0, i).join('/')}`);
        const last = i === parts.length;
        const shared = (st.mode & 0o022) !== 0;
        ok = st.isDirectory() && st.uid === 0 && (!shared || (!last && (st.mode & 0o1000) !== 0));
      }
      if (ok) kept.push(real);
    } catch {
      // not there, or not to be read: not a place to look
    }
  }
  return kept.length > 0 ? kept.join(':') : '/nonexistent';
}

/** Where a program (a path, or a name on PATH) is: its first executable regular file. */
function locate(program: string, envPath: string | undefined): string | undefined {
  const candidates = program.includes('/')
    ? [program]
    : (envPath ?? '')
        .split(':')
        .filter((d) => d !== '')
        .map((d) => path.join(d, program));
  return candidates.find((c) => {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return fs.statSync(c).isFile();
    } catch {
      return false;
    }
  });
}

/**
 * Pins the askpass program as it is at the agent's start: found once on PATH (not again at each
 * prompt), and its content hashed. A program replaced or edited since (by any process of the
 * user: `exit 0` approves everything) is not run, and the request is not approved by it.
 */
export function askpassPin(program: string, envPath: string | undefined): void {
  const found = locate(program, envPath);
  const sha256 = found === undefined ? undefined : contentHash(found);
  if (found !== undefined && sha256 !== undefined)
    pinned.set(program, { path: path.resolve(found), sha256 });
}

/**
 * Why an askpass program can't be run, or undefined when it can: a path (or a name on PATH) to
 * an executable regular file. Checked at agent start and by doctor.
 */
export function askpassProblem(program: string, envPath: string | undefined): string | undefined {
  if (!program.includes('/') && !(envPath ?? '').split(':').some((d) => d !== ''))
    return `${program} is not a path and there is no PATH`;
  const found = locate(program, envPath);
  if (found !== undefined)
    return contentHash(found) === undefined
      ? `it can't be read (or is over ${ASKPASS_MAX_BYTES / 1024 / 1024} MiB): the agent pins an askpass program's content at its start, so that one replaced since is never run`
      : undefined;
  return program.includes('/')
    ? `${program} is not an executable file`
    : `${program} was not found on PATH`;
}
