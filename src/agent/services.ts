/**
 * The agent's parts, made and wired together in one place (server.ts keeps to sockets and
 * dispatch). Each part gets only what it uses: the open vault and its limits (unlock.ts),
 * policy and approval (gate.ts), what leaves the agent (release.ts, run-service.ts,
 * ssh-agent.ts), what it shows (views.ts), the MCP gateway's service (mcp.ts) and the console.
 */
import type net from 'node:net';
import path from 'node:path';
import type { AuditRecord } from '../audit/index.js';
import type { ConsoleServer } from '../console/index.js';
import { durationMs, type Loaded } from '../policy/index.js';
import type { CredentialCache } from './cache.js';
import { makeConsole, type ConsoleLinkHost } from './console-link.js';
import { Gate } from './gate.js';
import { actorOf, type ProcessIdentity } from './identity.js';
import { McpService } from './mcp.js';
import type { Peer } from './peer.js';
import { ProjectReleases } from './project-releases.js';
import { ProjectService, reopenValue } from './projects.js';
import { Releases } from './release.js';
import { RunService } from './run-service.js';
import type { AgentOptions } from './server.js';
import { SshAgentService } from './ssh-agent.js';
import { UnlockWindow } from './unlock.js';
import { Views } from './views.js';

/** What the parts need from the agent itself. */
export interface ServiceHooks {
  record(r: AuditRecord): Promise<unknown>;
  lock(reason: string, by?: ProcessIdentity): Promise<void>;
  /** Released values kept for reuse (docs/RUN.md), and how to drop them all. */
  cache: CredentialCache;
  clearCache(why: string): void;
  policyLoaded(loaded: Loaded): void;
  /** Who is on the other end of an SSH connection (peer.ts). */
  peer(socket: net.Socket): Peer | undefined;
}

export interface Services {
  window: UnlockWindow;
  gate: Gate;
  views: Views;
  releases: Releases;
  mcp: McpService;
  runs: RunService;
  projects: ProjectService;
  ssh: SshAgentService;
  console: ConsoleServer | undefined;
  consoleLink: ConsoleLinkHost;
}

export function makeServices(o: AgentOptions, h: ServiceHooks): Services {
  const record = (r: AuditRecord) => h.record(r);
  // The window and the gate each call into the other (a denial counts toward the breaker, the
  // breaker locks the window): the window's calls come after both exist.
  const window = new UnlockWindow({
    home: o.home,
    record,
    lock: (reason) => h.lock(reason),
    noteDenial: () => theGate.noteDenial(),
    changed: (what) => h.clearCache(what),
    policyReplaced: () => theGate.policyChanged(),
    // A released value rotated or removed is still looked for by the leak scans until a lock.
    released: (): Iterable<string> => releases.releasedNames(),
    replaced: (values): void => mcp.replaced(values),
    policyLoaded: (loaded) => {
      h.policyLoaded(loaded);
      // ssh-added keys live no longer than the key_lifetime in force, counted from their add.
      const u = loaded.policy.unlock;
      ssh.capLifetimes(u?.key_lifetime === undefined ? undefined : durationMs(u.key_lifetime));
    },
  });
  const consoleLink: ConsoleLinkHost = {
    home: o.home,
    window,
    gate: () => theGate,
    record,
  };
  const web = o.console === false ? undefined : makeConsole(consoleLink);
  const theGate: Gate = new Gate({
    heldByProxy: (pid: number, target: string): Promise<string | undefined> =>
      runs.heldByProxy(pid, target),
    window,
    record,
    lock: (reason) => h.lock(reason),
    askpass: o.askpass,
    terminal: o.terminal,
    console: web
      ? { hasWebauthn: () => web.hasWebauthn(), hasOperators: () => web.hasOperators() }
      : undefined,
    env: o.env,
    warning:
      o.debuggable && o.debuggable.length > 0
        ? `WARNING: this agent can be debugged (${o.debuggable.join('; ')}).`
        : undefined,
  });
  const views = new Views({ home: o.home, window, gate: theGate, record });
  const releases = new Releases({
    window,
    gate: theGate,
    cache: h.cache,
    record,
    insideMcpRun: (id) => runs.insideMcpRun(id),
  });
  const fromProjects = new ProjectReleases(reopenValue);
  const noteProject = (file: Uint8Array, target: string, name: string) =>
    fromProjects.note(file, target, name);
  const mcp = new McpService({
    window,
    record,
    released: () => releases.releasedNames(),
    releasedRecord: (name, id) => releases.releasedRecord(name, id),
    projectReleased: () => fromProjects.released(),
  });
  const runs: RunService = new RunService({
    vault: () => window.unlocked(),
    stillOpen: (v) => window.stillOpen(v),
    authorize: (conn, req) =>
      theGate.authorize(conn, {
        target: req.target,
        kind: 'secret',
        action: 'run',
        auditType: 'credential.deliver',
        what: req.what,
        ...(req.command ? { command: req.command } : {}),
        exists: req.exists ?? window.unlocked().has(req.target),
        ...(req.together ? { together: req.together } : {}),
        ...(req.proxied ? { proxied: true } : {}),
        ...(req.grantScope === undefined ? {} : { grantScope: req.grantScope }),
      }),
    policy: (v) => window.currentPolicy(v),
    decide: (conn, target) => {
      const d = theGate.explain(
        window.currentPolicy(window.unlocked()),
        { target, kind: 'secret', action: 'run' },
        conn.id,
      );
      return {
        decision: d.decision,
        rule: d.rule,
        highValue: d.decision === 'approve' && d.highValue,
      };
    },
    proxyDir: path.join(o.socketDir, 'proxy'),
    fetch: (conn, v, name, rule) => releases.fetch(conn.id, v, name, rule),
    projectReleased: noteProject,
    record,
    actor: actorOf,
    take: (n?: number) => window.take(n),
    counted: () => window.counted(),
  });
  const ssh = new SshAgentService({
    peer: (s) => h.peer(s),
    vault: () => window.unlocked(),
    isUnlocked: () => window.isOpen,
    stillOpen: (v) => window.stillOpen(v),
    generation: () => window.gen,
    limits: (fresh) => {
      // fresh: the policy in force, read again when one was applied (the SSH socket may be the
      // only one the agent is asked on); else as last read (a signature's authorization read it).
      const u =
        fresh && window.isOpen
          ? window.currentPolicy(window.unlocked()).unlock
          : window.loaded?.policy.unlock;
      return {
        maxSignatures: u?.max_signatures,
        keyLifetimeMs: u?.key_lifetime === undefined ? undefined : durationMs(u.key_lifetime),
      };
    },
    authorize: (who, req) =>
      theGate.authorize(who, {
        target: req.target,
        kind: 'key',
        action: 'sign',
        auditType: 'key.sign',
        what: req.what,
        grantScope: req.grantScope,
        exists: true,
        confirmEachUse: req.confirmEachUse,
      }),
    record,
    actor: actorOf,
    take: (n?: number) => window.take(n),
    counted: () => window.counted(),
    lock: (reason, by) => h.lock(reason, by),
    unlock: async (passphrase, by) => {
      await window.open({ passphrase }, by, 'passphrase', 'ssh-agent');
    },
  });
  const projects = new ProjectService({
    window,
    gate: theGate,
    record,
    released: noteProject,
    insideMcpRun: (id) => runs.insideMcpRun(id),
  });
  return {
    window,
    gate: theGate,
    views,
    releases,
    mcp,
    runs,
    projects,
    ssh,
    console: web,
    consoleLink,
  };
}
