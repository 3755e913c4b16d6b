/**
 * Who is asking: the peer's process, named by SO_PEERCRED and pinned by a pidfd taken *before*
 * /proc is read. If the pidfd's process is still alive after the reads, the pid was not reused
 * in between, so what /proc said is about the process that connected.
 */
import fs from 'node:fs';
import type { Actor } from '../audit/index.js';
import { pidfdAlive } from '../lib/libc.js';
import { secretKeyedDigestOf, secureRandom, withFdInSecure } from '../lib/secure.js';
import { quote, quoteAll } from '../lib/text.js';
import { ExeHash, executable } from './exe-hash.js';
import type { Caller } from '../policy/index.js';

export interface ProcessIdentity extends Caller {
  pid: number;
  uid: number;
  /** Clock ticks since boot when the process started (/proc/PID/stat field 22): with the pid, unique. */
  startTime: string | undefined;
  cmdline: string[];
  ppid: number | undefined;
  ancestors: Array<{ pid: number; exe: string | undefined; elsewhere?: boolean }>;
  /**
   * Loader variables in its environment (LD_PRELOAD...), with the value where it is a path or
   * Node's options; undefined when the environment can't be read.
   */
  loaderVars?: Array<{ name: string; value: string | undefined }> | undefined;
  /**
   * A digest of every loader variable in the environment, whole (name and value, in order, none
   * left out), keyed by this agent: a grant binds to it, so a value that is not shown, cut, or
   * past the sixteenth is part of what was approved all the same. Never shown or recorded.
   */
  loaderDigest?: string | undefined;
  /** The executable's device and inode ("dev:ino"): a process grant binds to it. */
  exeFile?: string | undefined;
  /**
   * The process made itself unreadable (non-dumpable) before the agent ever saw it: its
   * executable, cwd and environment are unknown, so no rule on them matches, and its prompt
   * says it hid.
   */
  hidden?: boolean;
}

export const MAX_ANCESTORS = 32;

/**
 * Variables that make a program run or load code it did not ask for, or change what it runs:
 * a trusted executable started with LD_PRELOAD runs someone else's code. Shown in every prompt
 * and recorded; a rule can match on them (callers.loader_vars, docs/POLICY.md).
 */
export const LOADER_VARIABLES =
  /^(LD_\w+|NODE_OPTIONS|NODE_PATH|BASH_ENV|ENV|PYTHONSTARTUP|PYTHONPATH|PYTHONHOME|PYTHONUSERBASE|PERL5OPT|PERL5LIB|PERLLIB|RUBYOPT|RUBYLIB|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|JDK_JAVA_OPTIONS|GCONV_PATH|OPENSSL_CONF|OPENSSL_CONF_INCLUDE|OPENSSL_MODULES|OPENSSL_ENGINES|KRB5_CONFIG|GIT_EXEC_PATH|GIT_SSH_COMMAND|GIT_SSH|GIT_PROXY_COMMAND|GIT_CONFIG_\w+|GIT_CONFIG|ELECTRON_RUN_AS_NODE|PYTHONWARNINGS|LUA_INIT\w*|DYLD_\w+)$/;
const MAX_ENVIRON = 4 << 20;
/**
 * Loader variables whose value is a path or Node's options: shown in prompts. The others
 * (GIT_CONFIG_PARAMETERS, JAVA_TOOL_OPTIONS...) can carry a token of the caller's, and a prompt
 * given to an askpass program is on its command line, which every local user can read: for
 * those only the name is kept, and the value never becomes a string here.
 */
const SHOWN_VALUES =
  /^(LD_PRELOAD|LD_AUDIT|LD_LIBRARY_PATH|NODE_OPTIONS|NODE_PATH|BASH_ENV|ENV|PYTHONSTARTUP|PYTHONPATH|PYTHONHOME|PYTHONUSERBASE|PERL5LIB|PERLLIB|RUBYLIB|GCONV_PATH|OPENSSL_CONF|OPENSSL_CONF_INCLUDE|OPENSSL_MODULES|OPENSSL_ENGINES|KRB5_CONFIG|GIT_EXEC_PATH|ELECTRON_RUN_AS_NODE|DYLD_\w+)$/;
/** The key of loader digests (ProcessIdentity.loaderDigest): this process's, made at first use. */
let loaderKey: Uint8Array | undefined;
const grantKey = (): Uint8Array => (loaderKey ??= secureRandom(32));

/** Loader variables kept per caller: a caller can't bury its request under thousands. */
const MAX_LOADER_VARIABLES = 16;
/**
 * The variables that load code into the most programs: kept however many others come first
 * (up to MAX_CODE_LOADERS), so sixteen GIT_CONFIG_KEY_n can't push NODE_OPTIONS out of the
 * prompt and the record.
 */
export const CODE_LOADERS: ReadonlySet<string> = new Set([
  'LD_PRELOAD',
  'LD_AUDIT',
  'LD_LIBRARY_PATH',
  'NODE_OPTIONS',
  'NODE_PATH',
  'BASH_ENV',
  'ENV',
  'PYTHONSTARTUP',
  'PYTHONPATH',
  'PYTHONHOME',
  'PERL5OPT',
  'PERL5LIB',
  'RUBYOPT',
  'RUBYLIB',
  'JAVA_TOOL_OPTIONS',
  '_JAVA_OPTIONS',
  'OPENSSL_CONF',
  'OPENSSL_MODULES',
  'GIT_EXEC_PATH',
  'GIT_SSH_COMMAND',
  'GIT_CONFIG',
  'PYTHONUSERBASE',
  'PERLLIB',
  'JDK_JAVA_OPTIONS',
  'ELECTRON_RUN_AS_NODE',
  'GCONV_PATH',
  'GIT_SSH',
  'GIT_PROXY_COMMAND',
  'PYTHONWARNINGS',
  'LUA_INIT',
]);
const MAX_CODE_LOADERS = 32;

/**
 * The loader variables of a process's initial environment, or undefined when it can't be read
 * (another process hid it). The environment often holds the caller's own tokens: it is read into
 * secure memory, and only the names and values of loader variables ever become strings.
 */
function loaderVariables(
  pid: number,
): { found: Array<{ name: string; value: string | undefined }>; digest: string } | undefined {
  let fd: number;
  try {
    fd = fs.openSync(`/proc/${pid}/environ`, 'r');
  } catch {
    return undefined;
  }
  try {
    return withFdInSecure(fd, MAX_ENVIRON, (env) => {
      // By name, the last occurrence's value (ld.so and shells take the last): thirty copies of
      // a harmless LD_PRELOAD can't hide the one that loads.
      const loaders = new Map<string, string | undefined>();
      const others = new Map<string, string | undefined>();
      const whole: Uint8Array[] = [];
      let more = 0;
      let at = 0;
      while (at < env.length) {
        let end = env.indexOf(0, at);
        if (end < 0) end = env.length;
        // '=' within this entry only: a search to the end of the buffer for every entry would
        // make a crafted environment cost quadratic time in the agent.
        const eq = env.subarray(at, Math.min(end, at + 65)).indexOf(0x3d);
        if (eq > 0) {
          const name = env.subarray(at, at + eq).toString('latin1');
          if (LOADER_VARIABLES.test(name)) {
            // Views of the secure buffer, each entry with its NUL: nothing copied.
            whole.push(env.subarray(at, Math.min(end + 1, env.length)));
            const list = CODE_LOADERS.has(name) ? loaders : others;
            const max = list === loaders ? MAX_CODE_LOADERS : MAX_LOADER_VARIABLES;
            if (list.has(name) || list.size < max) {
              const value = SHOWN_VALUES.test(name)
                ? env.subarray(at + eq + 1, Math.min(end, at + eq + 1 + 4096)).toString('utf8')
                : undefined;
              list.set(name, value);
            } else more += 1;
          }
        }
        at = end + 1;
      }
      const found = [...loaders, ...others].map(([name, value]) => ({ name, value }));
      // What was left out is said, never silently dropped.
      if (more > 0) found.push({ name: `(${more} more loader variables)`, value: undefined });
      return { found, digest: secretKeyedDigestOf(whole, grantKey()).toString('hex') };
    });
  } catch {
    return undefined;
  } finally {
    fs.closeSync(fd);
  }
}
/** A file's device and inode ("dev:ino"), following links; undefined when it can't be stat'ed. */
function fileOf(p: string): string | undefined {
  try {
    const st = fs.statSync(p, { bigint: true });
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/** The agent's own mount and user namespaces and root directory, read once. */
let own:
  { mnt: string | undefined; user: string | undefined; root: string | undefined } | undefined;

/**
 * Whether what /proc says of process pid's executable can't be taken as the agent would read it:
 * the process runs in a mount or user namespace or under a root of its own (a namespace it made, a
 * pivot_root or chroot there: its /usr/bin/git is the real file, loading a library its own
 * /etc/ld.so.preload names), or its executable's path (`path`, the caller's view) names, in the
 * agent's view, another file than the one running (`file`, the dev:ino of /proc/PID/exe: a bind
 * mount of its own gives any program a trusted path), or can't be told. A deleted executable's
 * path is such too.
 */
function elsewhere(pid: number, path: string | undefined, file: string | undefined): boolean {
  if (path === undefined) return false;
  own ??= {
    mnt: readlink('/proc/self/ns/mnt'),
    user: readlink('/proc/self/ns/user'),
    root: fileOf('/'),
  };
  const mnt = readlink(`/proc/${pid}/ns/mnt`);
  if (mnt === undefined || mnt !== own.mnt) return true;
  // A user namespace of its own lets a process chroot (into a root whose /etc/ld.so.preload
  // loads its library, exec the real program) and come back under / before it asks.
  const user = readlink(`/proc/${pid}/ns/user`);
  if (user === undefined || user !== own.user) return true;
  const root = fileOf(`/proc/${pid}/root`);
  if (root === undefined || root !== own.root) return true;
  return file === undefined || fileOf(path) !== file;
}

function readlink(p: string): string | undefined {
  try {
    return fs.readlinkSync(p);
  } catch {
    return undefined;
  }
}

/** /proc/PID/stat is one line of at most ~700 bytes (a 16-byte name and 52 numbers). */
const statBuf = Buffer.alloc(1024);

/**
 * ppid and start time from /proc/PID/stat (the command name may hold spaces and parentheses).
 * Read for the caller and each ancestor at every connection: one open, read and close into a
 * reused buffer (readFileSync adds an fstat and a second read).
 */
export function procStat(
  pid: number,
): { ppid: number; session: number; startTime: string } | undefined {
  let text: string;
  try {
    const fd = fs.openSync(`/proc/${pid}/stat`, 'r');
    try {
      text = statBuf.toString('latin1', 0, fs.readSync(fd, statBuf, 0, statBuf.length, 0));
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state): ppid is field 4, session field 6, starttime field 22.
  const ppid = Number(fields[1]);
  const session = Number(fields[3]);
  const startTime = fields[19];
  return Number.isInteger(ppid) && Number.isInteger(session) && startTime !== undefined
    ? { ppid, session, startTime }
    : undefined;
}

const exeHashes = new WeakMap<ProcessIdentity, ExeHash>();

/** The hash behind an identity's exeSha256 (owned by its program handle, peer.ts). */
export function exeHashOf(id: ProcessIdentity): ExeHash | undefined {
  return exeHashes.get(id);
}

/** Makes an identity's exeSha256 read from another hash (the program handle's, seen first). */
export function bindExeHash(id: ProcessIdentity, hash: ExeHash | undefined): void {
  if (hash) exeHashes.set(id, hash);
  else exeHashes.delete(id);
}

export function identify(pid: number, uid: number): ProcessIdentity {
  const s = procStat(pid);
  const exe = executable(pid);
  try {
    let cmdline: string[];
    try {
      // NUL-separated, with a trailing NUL.
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1);
    } catch {
      cmdline = [];
    }
    const ancestors: ProcessIdentity['ancestors'] = [];
    let next = s?.ppid;
    while (next !== undefined && next > 0 && ancestors.length < MAX_ANCESTORS) {
      const a = readlink(`/proc/${next}/exe`);
      ancestors.push({
        pid: next,
        exe: a,
        // An unreadable link (root's processes, init, sshd) names nothing to vouch for.
        ...(a !== undefined && elsewhere(next, a, fileOf(`/proc/${next}/exe`))
          ? { elsewhere: true }
          : {}),
      });
      next = next === 1 ? undefined : procStat(next)?.ppid;
    }
    const exePath = readlink(`/proc/${pid}/exe`);
    const loaders = loaderVariables(pid);
    const id: ProcessIdentity = {
      pid,
      uid,
      exe: exePath,
      ...(elsewhere(pid, exePath, exe?.file) ? { exeElsewhere: true } : {}),
      exeFile: exe?.file,
      loaderVars: loaders?.found,
      loaderDigest: loaders?.digest,
      cwd: readlink(`/proc/${pid}/cwd`),
      cmdline,
      startTime: s?.startTime,
      ppid: s?.ppid,
      ancestors,
    };
    // exeSha256 is hashed on first read (exe-hash.ts); enumerable, so a copy carries the value.
    Object.defineProperty(id, 'exeSha256', {
      enumerable: true,
      get: () => exeHashes.get(id)?.get(),
    });
    // A process seen (its executable's path read) whose file could not be stat'ed has a hash
    // that can't be taken, not an unknown one.
    bindExeHash(
      id,
      exe?.hash ?? (id.exe === undefined ? undefined : ExeHash.unreadable('can not be examined')),
    );
    return id;
  } catch (e) {
    exe?.hash.close();
    throw e;
  }
}

/** The process behind this identity is still the one that connected (its pidfd is alive). */
export function stillSameProcess(pidfd: number): boolean {
  return pidfdAlive(pidfd);
}

/** Said after the pid of a caller the kernel could not pin (no SO_PEERPIDFD). */
const UNPINNED =
  ", which the kernel can't say is the process that connected: Linux before 6.5 has no SO_PEERPIDFD";

/** Said after an executable the agent can't take as it reads it (elsewhere()). */
const ELSEWHERE =
  " (which the agent can't vouch for: a mount or user namespace or root of the caller's own, or another file by that path)";

/**
 * Who asks, as a person reads it in a prompt and in `keyward approvals`. Everything in it that
 * the caller controls (executable path, arguments, directory) is quoted by quote(): it can't end
 * the sentence, and a cut says so. A process that hid (non-dumpable before the agent ever saw
 * it) is described as such, never as an unknown but innocent program.
 */
export function describeCaller(id: ProcessIdentity): string {
  const chain = id.ancestors
    .slice(0, 4)
    .map(
      (a) =>
        `${a.exe === undefined ? '(hidden)' : quote(a.exe)}${a.elsewhere ? ELSEWHERE : ''}[${a.pid}]`,
    )
    .join(' <- ');
  const who = id.hidden
    ? `a process that hid its identity (pid ${id.pid}: its executable, directory and environment can't be read)`
    : `${id.exe === undefined ? '(unknown executable)' : quote(id.exe)}${id.exeElsewhere ? ELSEWHERE : ''} (pid ${id.pid}${id.unpinned ? UNPINNED : ''})`;
  const where = id.cwd === undefined ? '' : ` in ${quote(id.cwd)}`;
  const loaders = (id.loaderVars ?? [])
    .map((v) =>
      v.name.startsWith('(')
        ? v.name
        : v.value === undefined
          ? `${v.name} (value not shown)`
          : `${v.name}=${quote(v.value)}`,
    )
    .join(' ');
  // Unread (too large, or it changed as it was read): said, never shown as a clean one.
  const unread =
    id.loaderVars === undefined && !id.hidden ? ', whose environment could not be read' : '';
  return `${who} running ${quoteAll(id.cmdline)}${where}${chain ? `, started by ${chain}` : ''}${loaders ? `, with ${loaders}` : ''}${unread}`;
}

/** Who did it, as the audit log records a caller. */
export function actorOf(id: ProcessIdentity): Actor {
  return {
    uid: id.uid,
    pid: id.pid,
    ...(id.exe === undefined ? {} : { exe: id.exe }),
    cmdline: id.cmdline,
    ...(id.cwd === undefined ? {} : { cwd: id.cwd }),
    ...(id.loaderVars && id.loaderVars.length > 0
      ? { loaderVars: id.loaderVars.map((v) => v.name) }
      : {}),
    ...(id.hidden ? { hidden: true } : {}),
    ...(id.unpinned ? { unpinned: true } : {}),
  };
}
