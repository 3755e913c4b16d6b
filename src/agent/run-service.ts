/**
 * `keyward run` in the agent (docs/RUN.md): the CLI asks, the agent authorizes every secret the
 * child is to get (identity, policy, approval, a durable `credential.deliver` record each), starts
 * the child itself through the exec step, drops its own copies at once, and relays the child's
 * streams over the connection, masked. The CLI never holds a value.
 */
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import type net from 'node:net';
import path from 'node:path';
import tty from 'node:tty';
import type { Actor, AuditRecord } from '../audit/index.js';
import { KeywardError, UsageError } from '../errors.js';
import { closeFd, openPty, setWindowSize } from '../lib/libc.js';
import { secureFree, writeAllSync, zero, type SecureBuffer } from '../lib/secure.js';
import {
  assertVarName,
  Masker,
  maskingForms,
  MAX_CHILD_FD,
  startChild,
  type EnvPiece,
} from '../run/index.js';
import { assertValidName, type Vault } from '../vault/index.js';
import type { ProcessIdentity } from './identity.js';
import { frameHead, str, STREAM, type Frame, type FrameReader } from './protocol.js';

const MAX_ARGS = 4096;
const MAX_SECRETS = 64;
/** Output the client hasn't taken yet before the child's output is paused. */
const HIGH_WATER = 1 << 20;
const SIGNALS = new Set([
  'SIGINT',
  'SIGTERM',
  'SIGHUP',
  'SIGQUIT',
  'SIGUSR1',
  'SIGUSR2',
  'SIGWINCH',
]);
const DEFAULT_PATH = '/usr/local/bin:/usr/bin:/bin';

export interface RunConn {
  socket: net.Socket;
  id: ProcessIdentity;
  pidfd: number;
  reader: FrameReader;
  /** Set once the run started: frames on this connection go to the run, not to requests. */
  stream?: (f: Frame) => void;
}

export interface RunHost {
  /** The open vault; throws AGENT_LOCKED. */
  vault(): Vault;
  /** Whether v is still the open vault (no lock or new unlock since). */
  stillOpen(v: Vault): boolean;
  authorize(
    conn: RunConn,
    req: { target: string; what: string },
  ): Promise<{ rule: string | undefined }>;
  /** A copy of the value (cache or vault; credential.fetch), the caller frees it. */
  fetch(
    conn: RunConn,
    v: Vault,
    name: string,
    rule: string | undefined,
  ): { value: SecureBuffer; cached: boolean };
  record(r: AuditRecord): Promise<unknown>;
  actor(id: ProcessIdentity): Actor;
  counted(): void;
}

interface Wanted {
  name: string;
  as: Array<{ var: string } | { fd: number }>;
}

/** Reads and checks the request: what to run, where, and which secret goes where. */
function parseRequest(meta: Record<string, unknown>): {
  argv: string[];
  cwd: string;
  wanted: Wanted[];
  masking: boolean;
  pty: { rows: number; cols: number } | undefined;
} {
  const bad = (m: string) => new UsageError('USAGE', m);
  const argv = meta['argv'];
  if (
    !Array.isArray(argv) ||
    argv.length === 0 ||
    argv.length > MAX_ARGS ||
    !argv.every((a) => typeof a === 'string' && !a.includes('\0'))
  )
    throw bad('run needs a command: keyward run [options] -- COMMAND [ARGS...]');
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
  return {
    argv: argv as string[],
    cwd,
    wanted: [...byName.values()],
    masking: meta['masking'] !== false,
    pty,
  };
}

/**
 * The caller's environment, NAME=VALUE entries separated by NULs, as views into raw (secure
 * memory: a caller's environment often holds tokens of its own). Names become strings; values
 * never do.
 */
function parseEnvBlock(raw: SecureBuffer | undefined): EnvPiece[] {
  const out: EnvPiece[] = [];
  if (!raw) return out;
  let start = 0;
  while (start < raw.length) {
    let end = raw.indexOf(0, start);
    if (end < 0) end = raw.length;
    const eq = raw.indexOf(0x3d, start);
    if (eq > start && eq < end) {
      const name = raw.subarray(start, eq).toString('latin1');
      if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
        out.push({ name, value: raw.subarray(eq + 1, end) });
    }
    start = end + 1;
  }
  return out;
}

const argvHash = (argv: readonly string[]) =>
  createHash('sha256').update(JSON.stringify(argv)).digest('hex');

export class RunService {
  private readonly children = new Set<ChildProcess>();

  constructor(private readonly host: RunHost) {}

  /**
   * Authorizes, records, starts. Returns the ok reply's meta; the streams follow on the same
   * connection. f.raw (the caller's environment) is freed here.
   */
  async start(conn: RunConn, f: Frame): Promise<Record<string, unknown>> {
    const values = new Map<string, SecureBuffer>();
    let forms: SecureBuffer[] = [];
    let terminal: { master: number; slave: number } | undefined;
    try {
      const req = parseRequest(f.meta);
      const v = this.host.vault();
      const command = req.argv.join(' ');
      const rules = new Map<string, string | null>();
      for (const w of req.wanted) {
        const where = w.as.map((a) => ('var' in a ? `$${a.var}` : `descriptor ${a.fd}`)).join(', ');
        const { rule } = await this.host.authorize(conn, {
          target: w.name,
          what: `run "${command.slice(0, 200)}" with the secret "${w.name}" as ${where}`,
        });
        rules.set(w.name, rule ?? null);
      }
      if (!this.host.stillOpen(v))
        throw new KeywardError('AGENT_LOCKED', 'the agent was locked while the request waited', {
          hint: 'keyward unlock',
        });
      const cached = new Set<string>();
      for (const w of req.wanted) {
        const got = this.host.fetch(conn, v, w.name, rules.get(w.name) ?? undefined);
        values.set(w.name, got.value);
        if (got.cached) cached.add(w.name);
      }
      const details = (w: Wanted) => ({
        rule: rules.get(w.name) ?? null,
        as: w.as.map((a) => ('var' in a ? `env:${a.var}` : `fd:${a.fd}`)).join(','),
        program: req.argv[0] ?? null,
        argvSha256: argvHash(req.argv),
        bytes: values.get(w.name)?.length ?? 0,
        masking: req.masking,
      });
      // Rule 4: every delivery durable in the audit log before the child gets the value.
      await Promise.all(
        req.wanted.map((w) =>
          this.host.record({
            type: 'credential.deliver',
            decision: 'allow',
            target: w.name,
            actor: this.host.actor(conn.id),
            details: details(w),
          }),
        ),
      );
      if (!this.host.stillOpen(v))
        throw new KeywardError('AGENT_LOCKED', 'the agent was locked while the request waited', {
          hint: 'keyward unlock',
        });
      if (req.masking) for (const value of values.values()) forms.push(...maskingForms(value));
      const env = parseEnvBlock(f.raw);
      const fds: Array<{ fd: number; value: SecureBuffer }> = [];
      for (const w of req.wanted) {
        const value = values.get(w.name);
        if (!value) continue;
        for (const a of w.as) {
          if ('var' in a) env.push({ name: a.var, value });
          else fds.push({ fd: a.fd, value });
        }
      }
      const pathVar = env.filter((e) => e.name === 'PATH').at(-1);
      // The caller's stdout is a terminal: the child gets one too (colours, full-screen programs).
      if (req.pty) terminal = openPty(req.pty.rows, req.pty.cols);
      const child = startChild({
        argv: req.argv,
        cwd: req.cwd,
        env,
        fds,
        stdio: terminal ? terminal.slave : 'pipe',
        pty: terminal !== undefined,
        // PATH is no secret: it is how the program is found, as the caller's shell would.
        path: pathVar ? Buffer.from(pathVar.value).toString('utf8') : DEFAULT_PATH,
      });
      // The child has everything (the memfds are written and closed): the agent's copies go now.
      for (const value of values.values()) secureFree(value);
      values.clear();
      secureFree(f.raw);
      for (const w of req.wanted) {
        if (cached.has(w.name)) continue; // kept by the rule's cache: evicted when idle
        void this.host
          .record({
            type: 'credential.drop',
            decision: 'info',
            target: w.name,
            actor: this.host.actor(conn.id),
            reason: 'delivered to the child; the agent kept no copy',
            details: { pid: child.pid ?? null, masking: req.masking },
          })
          .catch(() => undefined);
      }
      this.host.counted();
      if (terminal) closeFd(terminal.slave);
      this.relay(conn, child, forms, req, details, terminal?.master);
      forms = [];
      terminal = undefined;
      return { pid: child.pid ?? null, masking: req.masking, pty: req.pty !== undefined };
    } finally {
      for (const value of values.values()) secureFree(value);
      for (const form of forms) secureFree(form);
      secureFree(f.raw);
      if (terminal) {
        closeFd(terminal.slave);
        closeFd(terminal.master);
      }
    }
  }

  /** Streams between the child and the connection until the child is gone. Owns forms. */
  private relay(
    conn: RunConn,
    child: ChildProcess,
    forms: SecureBuffer[],
    req: { argv: string[]; wanted: Wanted[] },
    details: (w: Wanted) => Record<string, string | number | boolean | null>,
    master?: number,
  ): void {
    this.children.add(child);
    // Under a pty the child's output (stdout and stderr together) comes from the master.
    const term = master === undefined ? undefined : new tty.ReadStream(master);
    term?.on('error', () => undefined);
    const started = Date.now();
    const s = conn.socket;
    s.setTimeout(0);
    conn.reader.many = true;
    const maskers = forms.length > 0 ? [new Masker(forms), new Masker(forms)] : undefined;
    const send = (type: number, meta: Record<string, unknown>, data?: Buffer) => {
      if (s.destroyed) return;
      s.write(frameHead(type, meta, data?.length ?? 0));
      if (data && data.length > 0) s.write(data);
    };
    const pump = (stream: NodeJS.ReadableStream | null, type: number, masker?: Masker) => {
      stream?.on('data', (chunk: Buffer) => {
        if (masker) {
          const out = masker.push(chunk); // zeroes chunk
          if (out.length > 0) send(type, {}, out);
        } else {
          // --no-masking: the bytes go as they are; this copy is zeroed once written.
          send(type, {}, chunk);
          s.write(Buffer.alloc(0), () => zero(chunk));
        }
        if (s.writableLength > HIGH_WATER) {
          stream.pause();
          s.once('drain', () => stream.resume());
        }
      });
    };
    pump(term ?? child.stdout, STREAM.stdout, maskers?.[0]);
    pump(child.stderr, STREAM.stderr, maskers?.[1]);
    const toChild = (data: Uint8Array, done: () => void) => {
      if (master !== undefined) {
        try {
          writeAllSync(master, data);
        } catch {
          // the child is gone
        }
        done();
      } else if (child.stdin && !child.stdin.destroyed) child.stdin.write(data, done);
      else done();
    };
    conn.stream = (fr: Frame) => {
      try {
        if (fr.type === STREAM.stdin && fr.raw) {
          const raw = fr.raw;
          toChild(raw, () => secureFree(raw));
          return;
        }
        secureFree(fr.raw);
        if (fr.type === STREAM.stdinEnd) {
          // On a terminal, end of input is ^D.
          if (master !== undefined) toChild(Buffer.from([4]), () => undefined);
          else child.stdin?.end();
        } else if (fr.type === STREAM.resize && master !== undefined) {
          const rows = fr.meta['rows'];
          const cols = fr.meta['cols'];
          if (typeof rows === 'number' && typeof cols === 'number' && rows > 0 && cols > 0)
            setWindowSize(master, Math.min(rows, 9999), Math.min(cols, 9999));
        } else if (fr.type === STREAM.signal) {
          const sig = str(fr.meta, 'signal');
          if (sig !== undefined && SIGNALS.has(sig)) child.kill(sig as NodeJS.Signals);
        }
      } catch {
        // a child that is gone: its close event ends the run
      }
    };
    child.stdin?.on('error', () => undefined);
    let ended = false;
    const end = (code: number | null, signal: NodeJS.Signals | null, error?: string) => {
      if (ended) return;
      ended = true;
      this.children.delete(child);
      if (maskers) {
        const [o, e] = maskers;
        const tailOut = o?.flush();
        const tailErr = e?.flush();
        if (tailOut && tailOut.length > 0) send(STREAM.stdout, {}, tailOut);
        if (tailErr && tailErr.length > 0) send(STREAM.stderr, {}, tailErr);
        o?.destroy();
        e?.destroy();
      }
      for (const form of forms) secureFree(form);
      if (error) send(STREAM.stderr, {}, Buffer.from(`keyward run: ${error}\n`));
      send(STREAM.exit, { code, signal });
      s.end();
      for (const w of req.wanted) {
        void this.host
          .record({
            type: 'run.exit',
            decision: 'info',
            target: w.name,
            actor: this.host.actor(conn.id),
            details: {
              ...details(w),
              code,
              signal,
              durationMs: Date.now() - started,
            },
          })
          .catch(() => undefined);
      }
    };
    child.on('error', (e: NodeJS.ErrnoException) =>
      end(e.code === 'ENOENT' ? 127 : 126, null, `cannot start: ${e.code ?? 'error'}`),
    );
    if (term) {
      // The master reads what the child wrote until every holder of the slave is gone (EIO).
      let exited: [number | null, NodeJS.Signals | null] | undefined;
      let drained = false;
      const done = () => {
        if (exited && drained) {
          term.destroy();
          end(...exited);
        }
      };
      term.once('end', () => ((drained = true), done()));
      term.once('error', () => ((drained = true), done()));
      term.once('close', () => ((drained = true), done()));
      child.on('exit', (code, signal) => {
        exited = [code, signal];
        // A grandchild that keeps the terminal open doesn't keep the run alive.
        setTimeout(() => ((drained = true), done()), 2000).unref();
        done();
      });
    } else child.on('close', (code, signal) => end(code, signal));
    // The client went away (terminal closed, killed): as a terminal hangup would.
    s.on('close', () => {
      if (!ended) child.kill('SIGHUP');
    });
  }

  /** Ends every running child (agent stop). */
  killAll(): void {
    for (const c of this.children) c.kill('SIGTERM');
  }
}
