/**
 * The agent: a daemon on a hardened Unix socket that knows which process asks, and releases a
 * secret only as policy says, after a person approves where it asks, and only once the release
 * is durable in the audit log (docs/PROTOCOL.md).
 *
 * This file keeps to sockets and dispatch; services.ts makes the parts; audit-watch.ts ships the
 * log and checks it at unlock. Who asks: peer.ts.
 * Whether they may: gate.ts. The open vault and its limits: unlock.ts. What leaves: release.ts,
 * run-service.ts, ssh-agent.ts. What it shows: views.ts.
 */
import fs from 'node:fs';
import path from 'node:path';
import type net from 'node:net';
import type { TerminalChannel } from '../approval/index.js';
import { AuditLog, GroupCommitter, type AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { flock, LOCK_EX, LOCK_NB, queuedBytes } from '../lib/libc.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import type { ProcessIdentity } from './identity.js';
import { actorOf } from './identity.js';
import { changedSince, closePeer, identifyPeer, ProcessRegistry, type Peer } from './peer.js';
import { socketFd } from '../lib/socket-fd.js';
import {
  FrameReader,
  frameHead,
  ProtocolError,
  requestName,
  RES_ERROR,
  RES_HELLO,
  RES_OK,
  str,
  type Frame,
} from './protocol.js';
import { listenPrivate, prepareSocketDir, socketPaths, type SocketPaths } from './socketdir.js';
import type { ConsoleServer } from '../console/index.js';
import { auditWarningAtUnlock, followShipping, unshippedReason } from './audit-watch.js';
import { CredentialCache } from './cache.js';
import { consoleRequest, type ConsoleLinkHost } from './console-link.js';
import type { Gate } from './gate.js';
import type { McpService } from './mcp.js';
import type { Releases } from './release.js';
import { type Reply } from './release.js';
import { fail, jsonRaw, notifyPending, reply, replyWithFd, wireError } from './replies.js';
import type { ProjectService } from './projects.js';
import type { RunService } from './run-service.js';
import type { SshAgentService } from './ssh-agent.js';
import type { UnlockWindow } from './unlock.js';
import { makeServices } from './services.js';
import type { Views } from './views.js';
import { FrameDeadline, IDLE_CONNECTION_MS } from './inflight.js';

export interface AgentOptions {
  home: string;
  socketDir: string;
  /** The approval program (KEYWARD_ASKPASS, else SSH_ASKPASS), from the agent's own environment. */
  askpass: string | undefined;
  /** The agent's own terminal, when it runs in the foreground on one. */
  terminal?: TerminalChannel | undefined;
  env: NodeJS.ProcessEnv;
  log?: (line: string) => void;
  /**
   * Why this agent could be debugged, when the user started it with --allow-debugger anyway
   * (runtime-guard.ts). Announced in status, the audit log and every prompt; clients refuse to
   * send it a secret unless they too are given --allow-debugger.
   */
  debuggable?: string[];
  /** Serve the web console (default on; `agent run --no-console` turns it off). */
  console?: boolean;
}

interface Conn extends Peer {
  socket: net.Socket;
  reader: FrameReader;
  busy: boolean;
  /** Set while a run streams on this connection (run-service.ts). */
  stream?: (f: Frame) => void;
}

/** The MCP client a request is made for ("name version"), as keyward mcp serve declares it. */
function mcpClient(meta: Record<string, unknown>): string | undefined {
  const m = meta['mcp'];
  if (typeof m !== 'string') return undefined;
  return m.slice(0, 200);
}

export class Agent {
  private server: net.Server | undefined;
  private sshServer: net.Server | undefined;
  private lockFd: number | undefined;
  private readonly sp: SocketPaths;
  private readonly audit: GroupCommitter;
  private readonly auditLog: AuditLog;
  private readonly conns = new Set<Conn>();
  private readonly registry = new ProcessRegistry();
  private readonly uid = process.geteuid?.() ?? -1;
  private stopping: Promise<void> | undefined;
  /** The last break the agent's writer found (it locked then): an unlock it ends says why. */
  private lastBreak: string | undefined;

  private readonly window: UnlockWindow;
  private readonly gate: Gate;
  private readonly releases: Releases;
  private readonly views: Views;
  private readonly mcp: McpService;
  private readonly ssh: SshAgentService;
  private readonly runs: RunService;
  private readonly projects: ProjectService;
  private readonly console: ConsoleServer | undefined;
  private readonly consoleLink: ConsoleLinkHost;
  private readonly cache = new CredentialCache((name, reason) => {
    void this.record({ type: 'credential.evict', decision: 'info', target: name, reason }).catch(
      () => undefined,
    );
  });

  constructor(private readonly o: AgentOptions) {
    this.sp = socketPaths(o.socketDir);
    // The agent is the log's long-running writer: it keeps the state and segment between appends.
    this.auditLog = new AuditLog(o.home, { keep: true, journal: true, shipWaitMs: 1000 });
    this.audit = new GroupCommitter(this.auditLog);
    // While unlocked, bodies are sealed to the vault's box key, whatever audit/state names.
    this.auditLog.trustBoxKeys(() => this.window.boxTrust());
    // The log was cut behind the agent (its last entry is gone or changed): the batch that found
    // it begins with audit.gap, and the agent locks before anything of that batch is released.
    this.audit.onGap = (reason) => {
      this.lastBreak = reason;
      this.o.log?.(`the audit log was tampered with: ${reason}`);
      void this.lock(`the audit log was tampered with: ${reason}`);
    };
    this.audit.onUnshipped = (n) => void this.lock(unshippedReason(this.auditLog, n));
    const services = makeServices(o, {
      record: (r) => this.record(r),
      lock: (reason, by) => this.lock(reason, by),
      clearCache: (what) => this.cache.clear(what),
      cache: this.cache,
      policyLoaded: (loaded) => {
        followShipping(this.auditLog, loaded, (r) => this.record(r));
        // The operators' TLS listener, when the policy names one (it runs while unlocked).
        void this.console?.remote.follow(loaded.policy.operators?.listen).then(() => {
          const error = this.console?.remote.error;
          if (error) this.o.log?.(`the operator listener is not up: ${error}`);
        });
      },
      peer: (socket) => identifyPeer(socket, this.uid, this.registry, (r) => this.record(r)),
    });
    ({
      window: this.window,
      gate: this.gate,
      views: this.views,
      releases: this.releases,
      mcp: this.mcp,
      runs: this.runs,
      projects: this.projects,
      ssh: this.ssh,
      console: this.console,
      consoleLink: this.consoleLink,
    } = services);
  }

  get socketPath(): string {
    return this.sp.agent;
  }

  /** Binds the socket (0600 in a 0700 directory), one agent per socket directory. */
  async start(): Promise<void> {
    prepareSocketDir(this.sp.dir);
    // A run's CA certificate files left by an agent that did not stop (they are public, and dead).
    fs.rmSync(path.join(this.sp.dir, 'proxy'), { recursive: true, force: true });
    const fd = fs.openSync(
      this.sp.lock,
      fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW,
      0o600,
    );
    if (!flock(fd, LOCK_EX | LOCK_NB)) {
      fs.closeSync(fd);
      throw new KeywardError('AGENT_RUNNING', `an agent already runs for ${this.sp.dir}`, {
        hint: 'keyward agent stop',
      });
    }
    this.lockFd = fd;
    this.server = await listenPrivate(this.sp.agent, (s) => this.accept(s));
    // ssh-agent.sock: the OpenSSH agent protocol (src/agent/ssh-agent.ts), same peer checks.
    this.sshServer = await listenPrivate(this.sp.ssh, (s) => this.ssh.accept(s));
    // The web console, on 127.0.0.1 at a port the kernel picks (src/console).
    await this.console?.start();
    await this.record({
      type: 'agent.start',
      decision: 'info',
      details: {
        socket: this.sp.agent,
        debuggable: this.debuggable.join('; ') || null,
        console: this.console?.url ?? null,
        // The operators' TLS listener: its origin, or why the policy's is not up.
        operatorListen: this.console?.remote.origin ?? null,
        ...(this.console?.remote.error ? { operatorListenError: this.console.remote.error } : {}),
      },
    });
  }

  /** The web console's address, when it runs. */
  get consoleUrl(): string | undefined {
    return this.console?.url;
  }

  /**
   * Undoes a start that failed part of the way: stopped when it held the socket directory's
   * lock (its sockets are this agent's), left alone when it did not (they are another agent's).
   */
  async abandonStart(): Promise<void> {
    if (this.lockFd !== undefined) await this.stop();
  }

  /** Locks, refuses everything pending, closes the socket. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.lock('agent stopped');
      await this.record({ type: 'agent.stop', decision: 'info' }).catch(() => undefined);
      for (const c of this.conns) c.socket.destroy();
      this.ssh.closeAll();
      this.runs.killAll();
      await this.console?.stop();
      await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
      await new Promise<void>((r) => (this.sshServer ? this.sshServer.close(() => r()) : r()));
      fs.rmSync(this.sp.agent, { force: true });
      fs.rmSync(this.sp.ssh, { force: true });
      if (this.lockFd !== undefined) fs.closeSync(this.lockFd);
      this.registry.clear();
      this.auditLog.close();
    })();
    return this.stopping;
  }

  private record(r: AuditRecord): Promise<unknown> {
    return this.audit.record(r);
  }

  private accept(socket: net.Socket): void {
    const who = identifyPeer(socket, this.uid, this.registry, (r) => this.record(r));
    if (!who) return;
    // A client sends nothing before the greeting. Bytes already waiting were written before the
    // agent looked at the process, perhaps by another program that then exec'd the one it saw
    // (docs/THREAT-MODEL.md, "Caller identity ..."): refused, never taken as that program's.
    const fd = socketFd(socket);
    if (fd === undefined || queuedBytes(fd) !== 0) {
      closePeer(who);
      socket.destroy();
      void this.record({
        type: 'peer.rejected',
        decision: 'deny',
        reason: 'the client wrote before the agent greeted it',
        actor: actorOf(who.id),
      }).catch(() => undefined);
      return;
    }
    const conn: Conn = { socket, ...who, reader: new FrameReader(), busy: false };
    // A request waiting for a person: the requester hears it at once, with where to approve.
    this.conns.add(conn);
    // Identified: the greeting tells the client whom it talks to before it sends anything.
    socket.write(
      frameHead(RES_HELLO, { agent: 'keyward', pid: process.pid, debuggable: this.debuggable }, 0),
    );
    const deadline = new FrameDeadline(() =>
      fail(conn, new ProtocolError('incomplete frame (slow client)')),
    );
    socket.setTimeout(IDLE_CONNECTION_MS, () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = conn.reader.push(chunk);
      } catch (e) {
        fail(conn, e);
        return;
      }
      // The deadline runs from a frame's first byte: trickling bytes doesn't extend it.
      deadline.update(conn.reader.pending, frames.length);
      for (const f of frames) {
        if (conn.stream) conn.stream(f);
        else void this.serve(conn, f);
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      conn.gone = true;
      conn.abandon?.();
      deadline.clear();
      conn.reader.destroy();
      closePeer(conn);
      this.conns.delete(conn);
    });
    socket.resume();
  }

  private async serve(conn: Conn, f: Frame): Promise<void> {
    const name = requestName(f.type);
    if (conn.busy) {
      secureFree(f.raw);
      fail(conn, new ProtocolError('one request at a time on a connection'));
      return;
    }
    conn.busy = true;
    // A request may wait for a person for up to its approval's timeout (10 minutes at most): the
    // idle limit is for connections that ask nothing, not for one waiting for an answer.
    conn.socket.setTimeout(0);
    try {
      if (!name) throw new ProtocolError(`unknown request type ${f.type}`);
      // The process that connected, still running the program it ran then: a reused pid never
      // inherits a connection, and neither does a program exec'd with the descriptor.
      const changed = changedSince(conn);
      if (changed) {
        throw new KeywardError('POLICY_DENIED', changed, {
          hint: 'connect again: the new program is identified and asked for on its own',
        });
      }
      // A client that asks for it (notify: true) hears at once when its request waits for a
      // person (frame 0x83); one written to the protocol before that hears only the reply.
      conn.notifyPending =
        f.meta['notify'] === true
          ? (p) => notifyPending(conn.socket, p, this.console?.url)
          : undefined;
      const { meta, raw, fd, sent } = await this.dispatch(name, conn, f);
      if (fd !== undefined) replyWithFd(conn, meta, fd, sent);
      else reply(conn, RES_OK, meta, raw, sent);
    } catch (e) {
      secureFree(f.raw);
      reply(conn, RES_ERROR, wireError(e) as unknown as Record<string, unknown>, undefined);
      if (e instanceof ProtocolError) conn.socket.destroy();
    } finally {
      conn.busy = false;
      if (!conn.stream && !conn.socket.destroyed) conn.socket.setTimeout(IDLE_CONNECTION_MS);
    }
  }

  private async dispatch(
    name: NonNullable<ReturnType<typeof requestName>>,
    conn: Conn,
    f: Frame,
  ): Promise<Reply> {
    switch (name) {
      case 'status':
        secureFree(f.raw);
        return { meta: this.status() };
      case 'unlock':
        return { meta: await this.unlock(conn, f) };
      case 'lock':
        secureFree(f.raw);
        await this.lock('lock requested', conn.id);
        return { meta: { locked: true } };
      case 'stop':
        secureFree(f.raw);
        setImmediate(() => void this.stop().then(() => this.o.log?.('agent stopped')));
        return { meta: { stopping: true } };
      case 'list':
        secureFree(f.raw);
        return this.views.list(conn, f.meta);
      case 'audit':
        secureFree(f.raw);
        return this.views.audit(conn, f.meta);
      case 'policy':
        secureFree(f.raw);
        if (str(f.meta, 'op') !== 'explain')
          throw new KeywardError(
            'USAGE',
            `unknown policy operation ${str(f.meta, 'op') ?? '(none)'}`,
          );
        return this.views.explain(f.meta);
      case 'read':
        secureFree(f.raw);
        return this.releases.read(conn, str(f.meta, 'name') ?? '', 'inline', mcpClient(f.meta));
      case 'fetch':
        secureFree(f.raw);
        return this.releases.read(conn, str(f.meta, 'name') ?? '', 'fd');
      case 'mcp':
        return this.mcp.handle(conn, f);
      case 'console':
        return consoleRequest(this.consoleLink, conn, f);
      case 'run':
        return { meta: await this.runs.start(conn, f) };
      case 'project':
        return this.projects.handle(conn, f.meta, f.raw);
      case 'approvals':
        secureFree(f.raw);
        // In the bytes, not the meta: whole command lines can be longer than a frame's meta.
        return {
          meta: { format: 'json' },
          raw: jsonRaw(this.gate.pending()),
        };
      case 'approve':
        return {
          meta: await this.gate.approve(
            conn.id,
            str(f.meta, 'id') ?? '',
            f.raw,
            str(f.meta, 'code'),
          ),
        };
      case 'deny':
        secureFree(f.raw);
        return { meta: this.gate.deny(str(f.meta, 'id') ?? '', 'cli', conn.id) };
    }
  }

  private get debuggable(): string[] {
    return this.o.debuggable ?? [];
  }

  status(): Record<string, unknown> {
    // First: it reads a policy applied since, which may end the window (a shorter max_lifetime).
    const window = this.window.status(Date.now());
    return {
      running: true,
      pid: process.pid,
      debuggable: this.debuggable,
      locked: !this.window.isOpen,
      pending: this.gate.pending().length,
      console: this.console?.url ?? null,
      // The operators' TLS listener: its origin, or why the policy's is not up.
      operatorListen: this.console?.remote.origin ?? null,
      ...(this.console?.remote.error ? { operatorListenError: this.console.remote.error } : {}),
      ...window,
    };
  }

  private async unlock(conn: Conn, f: Frame): Promise<Record<string, unknown>> {
    const keyring = f.meta['keyring'] === true;
    try {
      if (!keyring && (!f.raw || f.raw.length === 0))
        throw new KeywardError('USAGE', 'unlock needs a passphrase');
      if (this.window.isOpen) return { alreadyUnlocked: true };
      this.lastBreak = undefined;
      await this.window.open(
        keyring ? { keyring: true } : { passphrase: f.raw as SecureBuffer },
        conn.id,
        keyring ? 'keyring' : 'passphrase',
        'agent',
      );
    } finally {
      secureFree(f.raw);
    }
    // The unlock's own record found a break (the log changed behind the agent): the break is
    // recorded and the agent locked again. The next unlock goes on; the break stays reported.
    if (!this.window.isOpen)
      throw this.lastBreak === undefined
        ? new KeywardError('AGENT_LOCKED', 'the agent was locked again meanwhile', {
            hint: 'keyward unlock',
          })
        : new KeywardError(
            'AGENT_LOCKED',
            `the agent locked again at once: the audit log was tampered with (${this.lastBreak}); the break is recorded`,
            {
              hint: 'keyward unlock again; keyward audit verify reports the break until it is acknowledged',
            },
          );
    return {
      unlocked: true,
      drift: this.window.loaded?.drift === true,
      auditWarning:
        (await auditWarningAtUnlock(this.o.home, this.window.unlocked(), (r) => this.record(r))) ??
        null,
    };
  }

  /** Wipes every key and grant, refuses everything pending. */
  async lock(reason: string, by?: ProcessIdentity): Promise<void> {
    this.gate.reset();
    this.console?.endSessions();
    // Nothing answers operators from elsewhere while locked (its connections end at once, and
    // it answers 503 until the next unlock), but it keeps its port (console/remote.ts).
    this.console?.remote.pause();
    this.ssh.wipeAll();
    this.runs.lockProxies();
    this.cache.clear('the agent locked');
    // The vault read a last time (a rotation not seen yet is kept too), then the values the scans
    // keep after a rotation sealed with its key, for after the next unlock.
    this.mcp.forget(this.window.lastLook());
    const closed = this.window.close(this.audit.lastWritten);
    if (closed === undefined) return;
    const { gap } = closed;
    let { checkpoints } = closed;
    // The lock's record of a break names the agent's last entry when the cut took it: its writer
    // goes on from the log as it is, not recording the same cut a second time.
    if (gap) this.audit.forgetLast();
    // A break the lock found is recorded first, through the agent's own writer; one that can't
    // be is said in the lock's own record.
    if (gap)
      await this.record(gap).catch((e: unknown) => {
        checkpoints += `; the break was not recorded (${e instanceof Error ? e.message : 'failed'})`;
      });
    await this.record({
      type: 'vault.lock',
      decision: 'info',
      reason,
      ...(by ? { actor: actorOf(by) } : {}),
      details: { checkpoints },
    }).catch(() => undefined);
    this.o.log?.(`locked: ${reason}`);
  }
}
