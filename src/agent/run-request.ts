/**
 * What a `keyward run` request asks for (docs/PROTOCOL.md, "Frames", type run): its command
 * line and the caller's environment from the raw bytes, which secret goes where from the meta,
 * and the program as an absolute path. All of it comes from the caller and is checked here.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { KeywardError, UsageError } from '../errors.js';
import { fileKey } from '../lib/files.js';
import { quote } from '../lib/text.js';
import { secretKeyedDigest, secureRandom, type SecureBuffer } from '../lib/secure.js';
import { assertVarName, MAX_CHILD_FD, type EnvPiece } from '../run/index.js';
import { assertValidName } from '../vault/index.js';
import { str } from './protocol.js';
import { LOADER_VARIABLES } from './identity.js';
import { reservedName } from '../project/index.js';

/**
 * Names that say they carry a credential (`NODE_AUTH_TOKEN`, `DOCKER_PASSWORD`): what a secret is
 * for, never code to load, even where a family below would take them.
 */
const CREDENTIAL_NAME = /_(TOKEN|PASSWORD|PASSWD|PASS|SECRET|API_KEY|KEY|PAT|AUTH)$/i;

/**
 * Whether a secret may not go into variable v: the loader variables, and every name a sealed
 * project file may not set (project/file.ts: the shell's and libc's, interpreters' and tools'
 * options and config paths, editors and pagers, trust and proxies, whole families;
 * case-insensitive), but names that say they are credentials.
 */
function codeVariable(v: string): boolean {
  return LOADER_VARIABLES.test(v) || (reservedName(v) !== undefined && !CREDENTIAL_NAME.test(v));
}

const MAX_ARGS = 65_536;
const MAX_SECRETS = 64;

export interface Wanted {
  name: string;
  as: Array<{ var: string } | { fd: number }>;
}

export interface RunRequestSpec {
  argv: string[];
  cwd: string;
  wanted: Wanted[];
  masking: boolean;
  pty: { rows: number; cols: number } | undefined;
  /** The MCP client this run is for (keyward mcp serve's run_with_credentials). */
  mcp: string | undefined;
  /** --proxy: the child gets placeholders, and a proxy puts the values in (docs/PROXY.md). */
  proxy: boolean;
}

const bad = (m: string) => new UsageError('USAGE', m);

/**
 * The raw part of a run request: u32 argc, argc NUL-terminated arguments, then the caller's
 * environment as NAME=VALUE entries, NUL-separated. Arguments become strings (they are shown
 * to a person and recorded); environment values stay views into raw (secure memory: a caller's
 * environment often holds tokens of its own); names become strings. environ: the environment's
 * bytes as they came (a view), for envDigest.
 */
export function parseRaw(raw: SecureBuffer | undefined): {
  argv: string[];
  env: EnvPiece[];
  environ: Uint8Array;
} {
  if (!raw || raw.length < 4) throw bad('run needs a command: keyward run [options] -- COMMAND');
  const argc = raw.readUInt32BE(0);
  if (argc === 0 || argc > MAX_ARGS)
    throw bad('run needs a command: keyward run [options] -- COMMAND');
  const argv: string[] = [];
  let at = 4;
  for (let i = 0; i < argc; i++) {
    const end = raw.indexOf(0, at);
    if (end < 0) throw bad('a malformed command line');
    argv.push(raw.subarray(at, end).toString('utf8'));
    at = end + 1;
  }
  const env: EnvPiece[] = [];
  const environ = raw.subarray(at);
  while (at < raw.length) {
    let end = raw.indexOf(0, at);
    if (end < 0) end = raw.length;
    // '=' within this entry only (a search to the buffer's end per entry is quadratic).
    const rel = raw.subarray(at, end).indexOf(0x3d);
    const eq = rel < 0 ? -1 : at + rel;
    if (eq > at && eq < end) {
      const name = raw.subarray(at, eq).toString('latin1');
      if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
        env.push({ name, value: raw.subarray(eq + 1, end) });
    }
    at = end + 1;
  }
  return { argv, env, environ };
}

/** Reads and checks the request's metadata: where, and which secret goes where. */
export function parseMeta(meta: Record<string, unknown>, argv: string[]): RunRequestSpec {
  const cwd = str(meta, 'cwd');
  if (cwd === undefined || !path.isAbsolute(cwd) || cwd.includes('\0'))
    throw bad('run needs an absolute working directory');
  const byName = new Map<string, Wanted>();
  const want = (name: unknown, as: { var: string } | { fd: number }) => {
    if (typeof name !== 'string') throw bad('a secret name is missing');
    assertValidName(name);
    let w = byName.get(name);
    if (!w) byName.set(name, (w = { name, as: [] }));
    w.as.push(as);
  };
  const vars = new Set<string>();
  for (const e of Array.isArray(meta['env']) ? (meta['env'] as unknown[]) : []) {
    const o = (e ?? {}) as Record<string, unknown>;
    const v = typeof o['var'] === 'string' ? o['var'] : '';
    assertVarName(v, '--env');
    // A secret in a variable that makes a program load or run code (BASH_ENV, LD_PRELOAD, PATH)
    // runs whatever file the value names: the caller knows the values of the secrets it may
    // have, so it could name a file of its own. Never: a secret goes into a plain variable.
    if (codeVariable(v))
      throw new UsageError(
        'USAGE',
        `--env ${v}: a secret never goes into a variable that makes a program load or run code, trust another certificate or send its traffic elsewhere`,
        { hint: 'choose another variable name' },
      );
    if (vars.has(v)) throw bad(`--env ${v} is given twice`);
    vars.add(v);
    want(o['name'], { var: v });
  }
  const fds = new Set<number>();
  for (const e of Array.isArray(meta['fds']) ? (meta['fds'] as unknown[]) : []) {
    const o = (e ?? {}) as Record<string, unknown>;
    const fd = o['fd'];
    if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 3 || fd > MAX_CHILD_FD)
      throw bad(`--fd needs a descriptor number from 3 to ${MAX_CHILD_FD}`);
    if (fds.has(fd)) throw bad(`--fd ${fd} is given twice`);
    fds.add(fd);
    want(o['name'], { fd });
  }
  if (byName.size > MAX_SECRETS) throw bad(`at most ${MAX_SECRETS} secrets per run`);
  const p = meta['pty'] as Record<string, unknown> | undefined;
  const dim = (n: unknown, fallback: number) =>
    typeof n === 'number' && Number.isInteger(n) && n > 0 && n < 10_000 ? n : fallback;
  const pty =
    p && typeof p === 'object' ? { rows: dim(p['rows'], 24), cols: dim(p['cols'], 80) } : undefined;
  const mcp = typeof meta['mcp'] === 'string' ? meta['mcp'].slice(0, 200) : undefined;
  return {
    argv,
    cwd,
    wanted: [...byName.values()],
    masking: meta['masking'] !== false,
    pty,
    mcp,
    proxy: meta['proxy'] === true,
  };
}

/**
 * The program that will run, as an absolute path: looked up in the caller's PATH here, so what a
 * person approves (and the audit log records) is exactly what is executed.
 */
export function resolveProgram(file: string, cwd: string, pathVar: string): string | undefined {
  const executable = (p: string) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  };
  if (file.includes('/')) {
    const p = path.resolve(cwd, file);
    if (executable(p)) return p;
  } else {
    for (const dir of pathVar.split(':')) {
      const p = path.resolve(cwd, dir === '' ? '.' : dir, file);
      if (executable(p)) return p;
    }
  }
  return undefined;
}

/** The largest program hashed for a run's prompt (node is ~100 MiB). */
export const MAX_HASHED_PROGRAM = 256 * 1024 * 1024;

/** Whether path still names the file stamped (exec follows links, as stat does). */
export function stillTheProgram(p: string, stamp: string | undefined): boolean {
  // No stamp: the file could not be looked at when it was asked about; never run unseen.
  if (stamp === undefined) return false;
  try {
    return fileKey(fs.statSync(p, { bigint: true })) === stamp;
  } catch {
    return false;
  }
}

export const argvHash = (argv: readonly string[]) =>
  createHash('sha256').update(JSON.stringify(argv)).digest('hex');

/** A key for envDigest, drawn once per agent: a digest can't be checked against a guess elsewhere. */
let digestKey: SecureBuffer | undefined;

/**
 * A keyed BLAKE2b digest of the environment the caller gives the child (its bytes as sent), for
 * what a remembered approval of the run covers: the same command with GIT_SSH or NODE_OPTIONS
 * set otherwise is another run. Only the digest leaves secure memory.
 */
export function envDigest(environ: Uint8Array): string {
  digestKey ??= secureRandom(32);
  return secretKeyedDigest(environ, digestKey).toString('hex');
}

/** The program changed after it was hashed for the approval. */
export function programChanged(program: string): KeywardError {
  return new KeywardError(
    'POLICY_DENIED',
    `${quote(program)} changed after it was hashed for the approval: not run`,
    { hint: 'run it again: the new program is hashed and asked for anew' },
  );
}
