/**
 * `keyward run` in the agent (docs/RUN.md): the CLI asks, the agent authorizes every secret the
 * child is to get (identity, policy, approval, a durable `credential.deliver` record each), starts
 * the child itself through the exec step, drops its own copies at once, and relays the child's
 * streams over the connection, masked. The CLI never holds a value.
 */
import type { ChildProcess } from 'node:child_process';
import { KeywardError } from '../errors.js';
import { closeFd } from '../lib/libc.js';
import { openPty } from '../lib/process.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import { quote } from '../lib/text.js';
import { startTime, treeOf, type Pinned } from '../proxy/index.js';
import { maskingForms, startChild } from '../run/index.js';
import type { ProcessIdentity } from './identity.js';
import { McpRuns } from './mcp-runs.js';
import { programHash } from './exe-hash.js';
import { homeMoved, runPrompt, setOtherwise } from './run-prompt.js';
import { commandNotFound } from './run-relay.js';
import { rulesMoved } from './gate-caller.js';
import {
  argvHash,
  MAX_HASHED_PROGRAM,
  parseMeta,
  envDigest,
  parseRaw,
  resolveProgram,
  programChanged,
  stillTheProgram,
  type Wanted,
} from './run-request.js';
import { ProjectRun } from './projects.js';
import {
  DomainLimits,
  PROXY_VARIABLES,
  proxyBindings,
  proxyFor,
  proxyMoved,
  type RunProxy,
} from './run-proxy.js';
import { relay } from './run-relay.js';
import { usesSpent } from './unlock.js';
import type { Frame } from './protocol.js';
import type { RunConn, RunHost } from './run-types.js';

export type { RunConn, RunHost } from './run-types.js';

const DEFAULT_PATH = '/usr/local/bin:/usr/bin:/bin';
/** After SIGTERM at agent stop, how long a child gets before SIGKILL. */
const STOP_GRACE_MS = 5_000;

export class RunService {
  private readonly children = new Set<ChildProcess>();
  /** The runs MCP clients asked for, by session (mcp-runs.ts). */
  private readonly mcpRuns = new McpRuns();
  private readonly proxies = new Set<RunProxy>();
  private readonly limits = new DomainLimits();

  constructor(private readonly host: RunHost) {}

  /**
   * Authorizes, records, starts. Returns the ok reply's meta; the streams follow on the same
   * connection. f.raw (command line and the caller's environment) is freed here.
   */
  async start(conn: RunConn, f: Frame): Promise<Record<string, unknown>> {
    const values = new Map<string, SecureBuffer>();
    let forms: SecureBuffer[] = [];
    let terminal: { master: number; slave: number } | undefined;
    let delivered: Wanted[] = [];
    let recordDetails:
      ((w: Wanted) => Record<string, string | number | boolean | null>) | undefined;
    let project: ProjectRun | undefined;
    let proxy: RunProxy | undefined;
    try {
      const split = ProjectRun.split(f.meta, f.raw);
      project = split.project;
      const { argv, env, environ } = parseRaw(split.head);
      const asked = parseMeta(f.meta, argv);
      // A `keyward run` inside a run an MCP client asked for is that client's too: named in its
      // prompts and records, and its output masked whatever it asked.
      // Whatever the request says of itself: a command inside an MCP run can speak the protocol.
      const within = this.insideMcpRun(conn.id);
      const req = within === undefined ? asked : { ...asked, mcp: within, masking: true };
      const pathEntry = env.filter((e) => e.name === 'PATH').at(-1);
      // PATH is no secret: it is how the program is found, as the caller's shell would.
      const pathVar = pathEntry ? Buffer.from(pathEntry.value).toString('utf8') : DEFAULT_PATH;
      const program = resolveProgram(argv[0] ?? '', req.cwd, pathVar);
      if (program === undefined) {
        // As a shell says it, with its status (127); no secret was asked for.
        secureFree(f.raw);
        commandNotFound(conn, argv[0] ?? '');
        return { pid: null, masking: req.masking, pty: false };
      }
      // Off the agent's thread, and once per file (exe-hash.ts). One that can't be read
      // (execute-only) or is too large has no hash: its stamp still binds the run, and a
      // remembered approval of it, to the file as it was when asked about.
      const hashed = await programHash(program, MAX_HASHED_PROGRAM);
      const programSha = hashed?.sha256;
      const programStamp = hashed?.stamp;
      const v = this.host.vault();
      project?.addTo(v, req.wanted);
      // The policy the approvals begin under: each secret's rule (and a proxy's section) must be
      // the same, word for word, when the values are fetched and when they go (stillHere).
      const askedUnder = this.host.policy(v);
      const policy = req.proxy ? askedUnder : undefined;
      const boundTo = policy ? proxyBindings(policy, req.wanted) : new Map<string, string[]>();
      const rules = new Map<string, string | null>();
      // One approval per rule for the whole run, naming every secret that rule gives it.
      const together = {
        targets: req.wanted.map((w) => w.name),
        approved: new Map<string, Set<string>>(),
      };
      // A remembered approval covers a later run of this same command only (gate.ts), as its
      // prompt showed it: program and hash, arguments, directory, proxied or not, the MCP client,
      // the sealed file and whether its output is masked; never another command of the same
      // process.
      const grantScope = JSON.stringify([
        policy ? 'proxied' : 'plain',
        program,
        programSha ?? programStamp ?? null,
        req.argv,
        req.cwd,
        // The whole environment (a digest): the same command with GIT_SSH set is another run.
        envDigest(environ),
        req.wanted.map((w) => [w.name, w.as]),
        req.mcp ?? null,
        // The sealed file by its bytes: its id is the sealer's to choose.
        project ? [project.fileId, project.digest] : null,
        // Masked or not: the prompt says so, and an unmasked run prints what a masked one hid.
        req.masking ? 'masked' : 'unmasked',
      ]);
      // What every prompt of the run says of it (run-prompt.ts).
      const prompt = runPrompt({
        program,
        programSha,
        argv: req.argv,
        cwd: req.cwd,
        wanted: req.wanted,
        environ: env.map((e) => e.name),
        mcp: req.mcp,
        project,
        masking: req.masking,
        homeMoved: homeMoved(env),
        ...setOtherwise(env),
      });
      for (const w of req.wanted) {
        const { rule } = await this.host.authorize(conn, {
          target: w.name,
          what: prompt.what(w, policy ? (boundTo.get(w.name) ?? []) : undefined),
          ...(prompt.cut ? { command: req.argv } : {}),
          together,
          grantScope,
          ...(project?.has(w.name) ? { exists: true } : {}),
          ...(policy ? { proxied: true } : {}),
        });
        rules.set(w.name, rule ?? null);
      }
      // Replaced while the person read the prompt: refused before any value is fetched.
      if (!stillTheProgram(program, programStamp)) throw programChanged(program);
      const stillHere = () => {
        if (!this.host.stillOpen(v))
          throw new KeywardError('AGENT_LOCKED', 'the agent was locked while the request waited', {
            hint: 'keyward unlock',
          });
        if (conn.socket.destroyed)
          throw new KeywardError('CANCELLED', 'keyward run went away before its command started');
        const now = this.host.policy(this.host.vault()); // the vault read again if it changed
        const moved =
          rulesMoved(now, askedUnder, rules, (name) => this.host.decide(conn, name)) ??
          (policy ? proxyMoved(now, policy) : undefined);
        if (moved)
          throw new KeywardError('POLICY_DENIED', moved, { hint: 'run the command again' });
      };
      stillHere();
      if (!this.host.take(req.wanted.length)) throw usesSpent();
      const cached = new Set<string>();
      const sizes = new Map<string, number>();
      for (const w of req.wanted) {
        let got: { value: SecureBuffer; cached: boolean };
        if (project?.has(w.name)) {
          const { file, name } = project.source(w.name);
          this.host.projectReleased(file, w.name, name);
          got = project.take(v, w.name);
        } else got = this.host.fetch(conn, v, w.name, rules.get(w.name) ?? undefined);
        values.set(w.name, got.value);
        sizes.set(w.name, got.value.length);
        if (got.cached) cached.add(w.name);
      }
      const details = (w: Wanted) => ({
        rule: rules.get(w.name) ?? null,
        as: w.as.map((a) => ('var' in a ? `env:${a.var}` : `fd:${a.fd}`)).join(','),
        program,
        programSha256: programSha ?? null,
        argvSha256: argvHash(req.argv),
        cwd: req.cwd,
        notableEnv: prompt.notable.join(',') || null,
        bytes: sizes.get(w.name) ?? 0,
        cached: cached.has(w.name),
        masking: req.masking,
        mcpClient: req.mcp ?? null,
        ...(project?.has(w.name) ? { file: project.fileId } : {}),
        ...(policy ? { proxy: (boundTo.get(w.name) ?? []).join(',') } : {}),
      });
      recordDetails = details;
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
      delivered = req.wanted;
      stillHere();
      if (req.masking) for (const value of values.values()) forms.push(...maskingForms(value));
      const started: { pin?: Pinned | undefined } = {};
      if (policy) {
        proxy = await proxyFor(
          { host: this.host, limits: this.limits, proxies: this.proxies },
          conn,
          v,
          policy,
          values,
          rules,
          program,
          () => started.pin,
        );
        if (req.masking)
          for (const p of proxy.placeholders.values()) forms.push(...maskingForms(p));
        const ours = new Set<string>(PROXY_VARIABLES);
        for (let i = env.length - 1; i >= 0; i--)
          if (ours.has(env[i]?.name ?? '')) env.splice(i, 1);
        env.push(...proxy.env);
        for (const [name, p] of proxy.placeholders) values.set(name, p as SecureBuffer);
      }
      const fds: Array<{ fd: number; value: SecureBuffer }> = [];
      for (const w of req.wanted) {
        const value = values.get(w.name);
        if (!value) continue;
        for (const a of w.as) {
          if ('var' in a) env.push({ name: a.var, value });
          else fds.push({ fd: a.fd, value });
        }
      }
      // The program the person approved (its hash) must be the one run, checked again last.
      // (The instant between this check and the exec remains: THREAT-MODEL.md.)
      if (!stillTheProgram(program, programStamp)) throw programChanged(program);
      // The caller's stdout is a terminal: the child gets one too (colours, full-screen programs).
      if (req.pty) terminal = openPty(req.pty.rows, req.pty.cols);
      const child = await startChild({
        argv: [program, ...req.argv.slice(1)],
        argv0: req.argv[0] ?? program,
        cwd: req.cwd,
        env,
        fds,
        stdio: terminal ? terminal.slave : 'pipe',
        pty: terminal !== undefined,
        path: pathVar,
        // The exec step took its time to start: everything checked before the values go is
        // checked again (a lock, the caller gone, the policy moved, the program replaced).
        ready: () => {
          stillHere();
          if (!stillTheProgram(program, programStamp)) throw programChanged(program);
        },
        // Meanwhile, a lock or the caller gone ends the run at once: the values go with it.
        cancelled: () =>
          !this.host.stillOpen(v)
            ? 'the agent was locked while the command started'
            : conn.socket.destroyed
              ? 'keyward run went away before its command started'
              : undefined,
      });
      // The proxy serves the tree under the child while the child lives: once it exits, its pid
      // could be another process's, and the proxy takes no new connection.
      const start = child.pid === undefined ? undefined : startTime(child.pid);
      if (child.pid !== undefined && start !== undefined) started.pin = { pid: child.pid, start };
      if (req.mcp !== undefined && child.pid !== undefined)
        this.mcpRuns.started(child.pid, req.mcp);
      child.once('exit', () => (started.pin = undefined));
      // The child has everything (the memfds are written and closed): the agent's copies go now
      // (under --proxy these are the placeholders; the proxy holds the values).
      if (!proxy) for (const value of values.values()) secureFree(value);
      values.clear();
      secureFree(f.raw);
      const dropped = (names: string[], reason: string) => {
        for (const name of names)
          void this.host
            .record({
              type: 'credential.drop',
              decision: 'info',
              target: name,
              actor: this.host.actor(conn.id),
              reason,
              details: { pid: child.pid ?? null, masking: req.masking },
            })
            .catch(() => undefined);
      };
      // Kept by the rule's cache (evicted when idle), or by the proxy (dropped at the run's end).
      if (!proxy)
        dropped(
          req.wanted.map((w) => w.name).filter((n) => !cached.has(n)),
          req.masking
            ? 'delivered to the child; the agent keeps only its masking forms until the run ends'
            : 'delivered to the child; the agent kept no copy',
        );
      for (let i = 0; i < req.wanted.length; i++) this.host.counted();
      const master = terminal?.master;
      if (terminal) closeFd(terminal.slave);
      terminal = undefined;
      delivered = [];
      const running = proxy;
      proxy = undefined;
      relay(
        {
          children: this.children,
          record: (r) => this.host.record(r),
          actor: (id) => this.host.actor(id),
        },
        conn,
        child,
        forms,
        req,
        details,
        master,
        running &&
          (() => {
            this.proxies.delete(running);
            running.close();
            dropped(
              req.wanted.map((w) => w.name),
              'the run ended: its proxy dropped the value',
            );
          }),
      );
      forms = [];
      return { pid: child.pid ?? null, masking: req.masking, pty: master !== undefined };
    } catch (e) {
      // A delivery recorded as allowed whose child never started: say so.
      for (const w of delivered) {
        void this.host
          .record({
            type: 'run.exit',
            decision: 'error',
            target: w.name,
            actor: this.host.actor(conn.id),
            reason: `the command did not start (${e instanceof Error ? e.message : 'error'})`,
            details: recordDetails ? recordDetails(w) : {},
          })
          .catch(() => undefined);
      }
      throw e;
    } finally {
      if (proxy) {
        this.proxies.delete(proxy);
        proxy.close();
      }
      project?.close();
      for (const value of values.values()) secureFree(value);
      for (const form of forms) secureFree(form);
      secureFree(f.raw);
      if (terminal) {
        closeFd(terminal.slave);
        closeFd(terminal.master);
      }
    }
  }

  /**
   * Why pid may not have target directly: a live proxied run holds it, and pid is of that run's
   * tree. Otherwise undefined.
   */
  async heldByProxy(pid: number, target: string): Promise<string | undefined> {
    for (const p of this.proxies) {
      if (!p.names.has(target)) continue;
      const root = p.root();
      if (root && (await treeOf(root)).includes(pid))
        return `${target} is held by the proxy of the run of ${quote(p.program)} (pid ${root.pid}): a process of that run gets it only through the proxy`;
    }
    return undefined;
  }

  /**
   * The MCP client whose run the caller is part of (the run's child, or a process under it), or
   * undefined. A command a model had run is still the model's: what it asks of the agent is
   * asked for that client (a value inline only where a rule says mcp_inline).
   */
  insideMcpRun(id: ProcessIdentity): string | undefined {
    return this.mcpRuns.clientOf(id);
  }

  /** The agent locked: every run's proxy drops its values and refuses what would need one. */
  lockProxies(): void {
    for (const p of this.proxies) p.server.lock();
  }

  /** Ends every running child (agent stop): SIGTERM to its group, SIGKILL after a grace time. */
  killAll(): void {
    for (const p of this.proxies) p.close();
    this.proxies.clear();
    for (const c of this.children) {
      const pid = c.pid;
      if (pid === undefined) continue;
      const kill = (sig: NodeJS.Signals) => {
        try {
          process.kill(-pid, sig);
        } catch {
          // gone
        }
      };
      kill('SIGTERM');
      setTimeout(() => kill('SIGKILL'), STOP_GRACE_MS).unref();
    }
  }
}
