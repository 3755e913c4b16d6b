/**
 * The agent: a daemon on a hardened Unix socket that knows which process asks, and releases a
 * secret only as policy says, after a person approves where it asks, and only once the release
 * is durable in the audit log (docs/PROTOCOL.md).
 */
import fs from 'node:fs';
import net from 'node:net';
import {
  Broker,
  Grants,
  askpass,
  mayApprove,
  TOTP_SECRET,
  verifyTotp,
  type RequesterRef,
  type TerminalChannel,
} from '../approval/index.js';
import {
  AuditLog,
  GroupCommitter,
  auditSink,
  writeCheckpoint,
  type Actor,
  type AuditRecord,
} from '../audit/index.js';
import { KeywardError } from '../errors.js';
import {
  closeFd,
  flock,
  LOCK_EX,
  LOCK_NB,
  peerCredentials,
  peerPidfd,
  pidfdOpen,
  EAGAIN,
  sealedMemfd,
  sendWithFd,
} from '../lib/libc.js';
import { secureFree, secureTake, type SecureBuffer } from '../lib/secure.js';
import { Masker, maskingForms } from '../run/index.js';
import { printable } from '../lib/text.js';
import {
  durationMs,
  cacheIdleMs,
  evaluate,
  loadPolicy,
  policyPaths,
  TokenBucket,
  UseCounter,
  withChannels,
  type ApprovalMode,
  type Loaded,
} from '../policy/index.js';
import {
  assertValidName,
  Vault,
  vaultPaths,
  type Unlock,
  type VaultPaths,
} from '../vault/index.js';
import { describeCaller, identify, stillSameProcess, type ProcessIdentity } from './identity.js';
import {
  FrameReader,
  frameHead,
  ProtocolError,
  requestName,
  RES_ERROR,
  RES_OK,
  str,
  type Frame,
  type WireError,
} from './protocol.js';
import { clearStaleSocket, prepareSocketDir, socketPaths, type SocketPaths } from './socketdir.js';
import { CredentialCache } from './cache.js';
import { RunService } from './run-service.js';
import { SshAgentService } from './ssh-agent.js';

const FRAME_TIMEOUT_MS = 5_000;
const IDLE_CONNECTION_MS = 120_000;
const BREAKER_DENIALS = 5;
const MAX_CONNECTIONS = 1024;
const BREAKER_WINDOW_MS = 60_000;

export interface AgentOptions {
  home: string;
  socketDir: string;
  /** The approval program (KEYWARD_ASKPASS, else SSH_ASKPASS), from the agent's own environment. */
  askpass: string | undefined;
  /** The agent's own terminal, when it runs in the foreground on one. */
  terminal?: TerminalChannel | undefined;
  env: NodeJS.ProcessEnv;
  log?: (line: string) => void;
}

interface Conn {
  socket: net.Socket;
  id: ProcessIdentity;
  pidfd: number;
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

function wireError(e: unknown): WireError {
  if (e instanceof KeywardError)
    return e.hint === undefined
      ? { code: e.code, message: e.message }
      : { code: e.code, message: e.message, hint: e.hint };
  if (e instanceof ProtocolError) return { code: 'PROTOCOL_ERROR', message: e.message };
  return { code: 'INTERNAL', message: 'internal error in the agent' };
}

/**
 * Listens on a Unix socket created 0600 (umask while binding: no window where it is wider), after
 * clearing a stale socket. Connections are capped: each holds a guarded secure buffer, and a
 * same-user process must not exhaust them.
 */
async function listenPrivate(
  path: string,
  onConnection: (s: net.Socket) => void,
): Promise<net.Server> {
  await clearStaleSocket(path);
  const server = net.createServer({ pauseOnConnect: true }, onConnection);
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

export class Agent {
  private server: net.Server | undefined;
  private sshServer: net.Server | undefined;
  private lockFd: number | undefined;
  private readonly vp: VaultPaths;
  private readonly sp: SocketPaths;
  private readonly audit: GroupCommitter;
  private readonly broker = new Broker();
  private readonly grants = new Grants();
  private readonly uses = new UseCounter();
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly conns = new Set<Conn>();
  private vault: Vault | undefined;
  private policy: Loaded | undefined;
  private unlockedAt = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private capTimer: NodeJS.Timeout | undefined;
  private denials: number[] = [];
  private readonly uid = process.geteuid?.() ?? -1;
  private stopping: Promise<void> | undefined;

  private readonly ssh: SshAgentService;
  private readonly runs: RunService;
  private readonly cache = new CredentialCache((name, reason) => {
    void this.record({ type: 'credential.evict', decision: 'info', target: name, reason }).catch(
      () => undefined,
    );
  });
  /** Bumped at every unlock, lock and vault re-read: caches of vault contents key on it. */
  private gen = 0;

  constructor(private readonly o: AgentOptions) {
    this.vp = vaultPaths(o.home);
    this.sp = socketPaths(o.socketDir);
    this.audit = new GroupCommitter(new AuditLog(o.home));
    this.runs = new RunService({
      vault: () => this.unlocked(),
      stillOpen: (v) => this.vault === v,
      authorize: (conn, req) =>
        this.authorize(conn.id, conn.pidfd, {
          target: req.target,
          kind: 'secret',
          action: 'run',
          auditType: 'credential.deliver',
          what: req.what,
          exists: this.unlocked().has(req.target),
        }),
      fetch: (conn, v, name, rule) => this.fetch(conn.id, v, name, rule),
      record: (r) => this.record(r),
      actor: (id) => this.actor(id),
      counted: () => this.counted(),
    });
    this.ssh = new SshAgentService({
      peer: (s) => this.peer(s),
      vault: () => this.unlocked(),
      isUnlocked: () => this.vault !== undefined,
      generation: () => this.gen,
      limits: () => {
        const u = this.policy?.policy.unlock;
        return {
          maxSignatures: u?.max_signatures,
          keyLifetimeMs: u?.key_lifetime === undefined ? undefined : durationMs(u.key_lifetime),
        };
      },
      authorize: (who, req) =>
        this.authorize(who.id, who.pidfd, {
          target: req.target,
          kind: 'key',
          action: 'sign',
          auditType: 'key.sign',
          what: req.what,
          exists: true,
          confirmEachUse: req.confirmEachUse,
        }),
      record: (r) => this.record(r),
      actor: (id) => this.actor(id),
      counted: () => this.counted(),
      lock: (reason, by) => this.lock(reason, by),
      unlock: async (passphrase, by) => {
        await this.openVault({ passphrase }, by, 'passphrase', 'ssh-agent');
      },
    });
  }

  get socketPath(): string {
    return this.sp.agent;
  }

  /** Binds the socket (0600 in a 0700 directory), one agent per socket directory. */
  async start(): Promise<void> {
    prepareSocketDir(this.sp.dir);
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
    await this.record({
      type: 'agent.start',
      decision: 'info',
      details: { socket: this.sp.agent },
    });
  }

  /** Locks, refuses everything pending, closes the socket. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.lock('agent stopped');
      await this.record({ type: 'agent.stop', decision: 'info' }).catch(() => undefined);
      for (const c of this.conns) c.socket.destroy();
      this.ssh.closeAll();
      this.runs.killAll();
      await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
      await new Promise<void>((r) => (this.sshServer ? this.sshServer.close(() => r()) : r()));
      fs.rmSync(this.sp.agent, { force: true });
      fs.rmSync(this.sp.ssh, { force: true });
      if (this.lockFd !== undefined) fs.closeSync(this.lockFd);
    })();
    return this.stopping;
  }

  private record(r: AuditRecord): Promise<unknown> {
    return this.audit.record(r);
  }

  private actor(id: ProcessIdentity): Actor {
    return {
      uid: id.uid,
      pid: id.pid,
      ...(id.exe === undefined ? {} : { exe: id.exe }),
      cmdline: id.cmdline,
      ...(id.cwd === undefined ? {} : { cwd: id.cwd }),
    };
  }

  /** Identity first: another uid is refused before a byte of its request is read. */
  /**
   * Who is on the other end. Another uid is disconnected before a byte is read, and recorded.
   * Undefined when the connection was refused.
   */
  private peer(socket: net.Socket): { id: ProcessIdentity; pidfd: number } | undefined {
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    let cred: { pid: number; uid: number };
    try {
      if (fd === undefined || fd < 0) throw new Error('no descriptor');
      cred = peerCredentials(fd);
    } catch {
      socket.destroy();
      return undefined;
    }
    if (cred.uid !== this.uid) {
      socket.destroy();
      void this.record({
        type: 'peer.rejected',
        decision: 'deny',
        reason: `peer uid ${cred.uid} is not the agent's uid ${this.uid}`,
        actor: { uid: cred.uid, pid: cred.pid },
      }).catch(() => undefined);
      return undefined;
    }
    // The pidfd first, /proc second, then the pidfd again: a peer that exited (its pid free for
    // reuse) before or while /proc was read is refused, never described as someone else.
    const pidfd = peerPidfd(fd) ?? pidfdOpen(cred.pid);
    const refused = (reason: string) => {
      if (pidfd !== undefined) closeFd(pidfd);
      socket.destroy();
      void this.record({
        type: 'peer.rejected',
        decision: 'deny',
        reason,
        actor: { uid: cred.uid, pid: cred.pid },
      }).catch(() => undefined);
      return undefined;
    };
    if (pidfd === undefined)
      return refused(
        'no pidfd for the peer: keyward needs Linux 5.3 or later (6.5 for SO_PEERPIDFD)',
      );
    const id = identify(cred.pid, cred.uid);
    if (!stillSameProcess(pidfd)) return refused('the peer exited before it could be identified');
    return { id, pidfd };
  }

  private accept(socket: net.Socket): void {
    const who = this.peer(socket);
    if (!who) return;
    const conn: Conn = { socket, ...who, reader: new FrameReader(), busy: false };
    this.conns.add(conn);
    let frameTimer: NodeJS.Timeout | undefined;
    socket.setTimeout(IDLE_CONNECTION_MS, () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = conn.reader.push(chunk);
      } catch (e) {
        this.fail(conn, e);
        return;
      }
      // The deadline runs from a frame's first byte: trickling bytes doesn't extend it.
      if (!conn.reader.pending) {
        clearTimeout(frameTimer);
        frameTimer = undefined;
      } else if (frameTimer === undefined) {
        frameTimer = setTimeout(
          () => this.fail(conn, new ProtocolError('incomplete frame (slow client)')),
          FRAME_TIMEOUT_MS,
        );
      }
      for (const f of frames) {
        if (conn.stream) conn.stream(f);
        else void this.serve(conn, f);
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      clearTimeout(frameTimer);
      conn.reader.destroy();
      closeFd(conn.pidfd);
      this.conns.delete(conn);
    });
    socket.resume();
  }

  private fail(conn: Conn, e: unknown): void {
    this.reply(conn, RES_ERROR, wireError(e) as unknown as Record<string, unknown>, undefined, () =>
      conn.socket.destroy(),
    );
  }

  /** Writes a response; raw (secret bytes) is freed once the kernel has it. */
  private reply(
    conn: Conn,
    type: number,
    meta: Record<string, unknown>,
    raw: SecureBuffer | undefined,
    done?: () => void,
  ): void {
    const s = conn.socket;
    if (s.destroyed) {
      secureFree(raw);
      return;
    }
    s.write(frameHead(type, meta, raw?.length ?? 0));
    if (raw && raw.length > 0) {
      s.write(raw, () => {
        secureFree(raw);
        done?.();
      });
    } else {
      secureFree(raw);
      if (done) s.write(Buffer.alloc(0), () => done());
    }
  }

  /**
   * An ok reply carrying a descriptor (SCM_RIGHTS). Sent with sendmsg on the socket itself, so
   * only when nothing else is queued on it (one request at a time makes that the normal case).
   * The descriptor is closed here either way.
   */
  private replyWithFd(
    conn: Conn,
    meta: Record<string, unknown>,
    fd: number,
    sent: (() => void) | undefined,
  ): void {
    const sock = (conn.socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    const frame = frameHead(RES_OK, meta, 0);
    const attempt = (tries: number) => {
      let n = -1;
      if (
        !conn.socket.destroyed &&
        sock !== undefined &&
        sock >= 0 &&
        conn.socket.writableLength === 0
      )
        n = sendWithFd(sock, frame, fd);
      if (n === -EAGAIN && tries < 100) {
        setTimeout(() => attempt(tries + 1), 10);
        return;
      }
      closeFd(fd);
      if (n > 0) {
        // The descriptor went with the first byte; the rest of the frame follows as usual.
        if (n < frame.length) conn.socket.write(frame.subarray(n));
        sent?.();
      } else this.fail(conn, new KeywardError('INTERNAL', 'the descriptor could not be sent'));
    };
    attempt(0);
  }

  private async serve(conn: Conn, f: Frame): Promise<void> {
    const name = requestName(f.type);
    if (conn.busy) {
      secureFree(f.raw);
      this.fail(conn, new ProtocolError('one request at a time on a connection'));
      return;
    }
    conn.busy = true;
    try {
      if (!name) throw new ProtocolError(`unknown request type ${f.type}`);
      if (!stillSameProcess(conn.pidfd)) {
        throw new KeywardError('POLICY_DENIED', 'the process that connected is gone', {
          hint: 'a reused pid never inherits a connection',
        });
      }
      const { meta, raw, fd, sent } = await this.dispatch(name, conn, f);
      if (fd !== undefined) this.replyWithFd(conn, meta, fd, sent);
      else this.reply(conn, RES_OK, meta, raw, sent);
    } catch (e) {
      secureFree(f.raw);
      this.reply(conn, RES_ERROR, wireError(e) as unknown as Record<string, unknown>, undefined);
      if (e instanceof ProtocolError) conn.socket.destroy();
    } finally {
      conn.busy = false;
    }
  }

  private async dispatch(
    name: NonNullable<ReturnType<typeof requestName>>,
    conn: Conn,
    f: Frame,
  ): Promise<{
    meta: Record<string, unknown>;
    raw?: SecureBuffer;
    fd?: number;
    sent?: (() => void) | undefined;
  }> {
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
        return {
          meta: {
            names: this.unlocked()
              .list()
              .map((e) => e.name),
          },
        };
      case 'read':
        secureFree(f.raw);
        return this.read(conn, str(f.meta, 'name') ?? '', 'inline', mcpClient(f.meta));
      case 'fetch':
        secureFree(f.raw);
        return this.read(conn, str(f.meta, 'name') ?? '', 'fd');
      case 'mcp':
        return this.mcpGateway(f);
      case 'run':
        return { meta: await this.runs.start(conn, f) };
      case 'approvals':
        secureFree(f.raw);
        return { meta: { pending: this.broker.list() } };
      case 'approve':
        return {
          meta: await this.approve(conn, str(f.meta, 'id') ?? '', f.raw, str(f.meta, 'code')),
        };
      case 'deny': {
        secureFree(f.raw);
        const id = str(f.meta, 'id') ?? '';
        const p = this.broker.get(id);
        if (!p || !this.broker.settle(id, 'denied'))
          throw new KeywardError('REQUEST_NOT_FOUND', `no pending request ${id}`);
        return { meta: { denied: id } };
      }
    }
  }

  status(): Record<string, unknown> {
    const now = Date.now();
    const u = this.policy?.policy.unlock;
    return {
      running: true,
      pid: process.pid,
      locked: this.vault === undefined,
      pending: this.broker.list().length,
      ...(this.vault && u
        ? {
            unlockedAt: new Date(this.unlockedAt).toISOString(),
            absoluteLeftMs: Math.max(0, this.unlockedAt + durationMs(u.max_lifetime) - now),
            usesLeft: u.max_uses === undefined ? null : Math.max(0, u.max_uses - this.usedInWindow),
          }
        : {}),
    };
  }

  private usedInWindow = 0;

  private vaultStamp = '';

  /** The open vault, re-read first when another process changed vault.kw. */
  private unlocked(): Vault {
    const v = this.vault;
    if (!v)
      throw new KeywardError('AGENT_LOCKED', 'the agent is locked', { hint: 'keyward unlock' });
    const st = fs.statSync(this.vp.file, { throwIfNoEntry: false });
    const stamp = st ? `${st.ino}:${st.size}:${st.mtimeMs}` : '';
    if (stamp !== this.vaultStamp) {
      try {
        v.refresh();
        this.cache.clear('the vault changed');
      } catch (e) {
        void this.lock(
          `the vault file changed and could not be re-read (${e instanceof Error ? e.message : 'error'})`,
        );
        throw e;
      }
      this.vaultStamp = stamp;
      this.gen += 1;
    }
    return v;
  }

  private policyStamp = '';

  /** The policy in force, re-loaded (and re-verified against the vault) after `policy apply`. */
  private currentPolicy(v: Vault): Loaded['policy'] {
    const st = fs.statSync(policyPaths(this.o.home).applied, { throwIfNoEntry: false });
    const stamp = st ? `${st.ino}:${st.mtimeMs}` : '';
    if (!this.policy || stamp !== this.policyStamp) {
      // A new policy may cache less, or differently: what the old one cached goes.
      if (this.policy) this.cache.clear('the policy changed');
      this.policy = loadPolicy(this.o.home, v, auditSink(this.o.home));
      this.policyStamp = stamp;
    }
    return this.policy.policy;
  }

  private async unlock(conn: Conn, f: Frame): Promise<Record<string, unknown>> {
    const keyring = f.meta['keyring'] === true;
    try {
      if (!keyring && (!f.raw || f.raw.length === 0))
        throw new KeywardError('USAGE', 'unlock needs a passphrase');
      if (this.vault) return { alreadyUnlocked: true };
      await this.openVault(
        keyring ? { keyring: true } : { passphrase: f.raw as SecureBuffer },
        conn.id,
        keyring ? 'keyring' : 'passphrase',
        'agent',
      );
    } finally {
      secureFree(f.raw);
    }
    return { unlocked: true, drift: (this.policy as Loaded | undefined)?.drift === true };
  }

  /** Opens the vault and starts an unlock window; a wrong passphrase is recorded and counted. */
  private async openVault(
    unlock: Unlock,
    by: ProcessIdentity,
    method: 'keyring' | 'passphrase',
    mode: 'agent' | 'ssh-agent',
  ): Promise<void> {
    if (this.vault) return;
    let v: Vault;
    try {
      v = Vault.open(this.vp, unlock);
    } catch (e) {
      if (
        e instanceof KeywardError &&
        (e.code === 'VAULT_BAD_PASSPHRASE' || e.code === 'KEYRING_KEY_MISMATCH')
      ) {
        await this.record({
          type: 'vault.unlock_failed',
          decision: 'deny',
          reason: e.message,
          actor: this.actor(by),
          details: { mode },
        });
        this.noteDenial();
      }
      throw e;
    }
    try {
      this.policy = undefined;
      this.currentPolicy(v);
    } catch (e) {
      v.close();
      throw e;
    }
    this.vault = v;
    this.vaultStamp = '';
    this.gen += 1;
    this.unlockedAt = Date.now();
    this.usedInWindow = 0;
    await this.record({
      type: 'vault.unlock',
      decision: 'allow',
      actor: this.actor(by),
      details: { method, mode },
    });
    this.armTimers();
  }

  private armTimers(): void {
    const u = this.policy?.policy.unlock;
    if (!u) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => void this.lock('idle timeout'), durationMs(u.idle_timeout));
    this.idleTimer.unref();
    if (!this.capTimer) {
      this.capTimer = setTimeout(
        () => void this.lock('absolute unlock limit'),
        durationMs(u.max_lifetime),
      );
      this.capTimer.unref();
    }
  }

  /** Wipes every key and grant, refuses everything pending. */
  async lock(reason: string, by?: ProcessIdentity): Promise<void> {
    clearTimeout(this.idleTimer);
    clearTimeout(this.capTimer);
    this.idleTimer = this.capTimer = undefined;
    this.broker.denyAll();
    this.grants.clear();
    this.uses.reset();
    this.buckets.clear();
    this.ssh.wipeAll();
    this.cache.clear('the agent locked');
    this.released.clear();
    this.gen += 1;
    const v = this.vault;
    this.vault = undefined;
    if (!v) return;
    try {
      writeCheckpoint(new AuditLog(this.o.home), v);
    } catch {
      // the checkpoint is a defence in depth; lock must happen regardless
    }
    v.close();
    await this.record({
      type: 'vault.lock',
      decision: 'info',
      reason,
      ...(by ? { actor: this.actor(by) } : {}),
    }).catch(() => undefined);
    this.o.log?.(`locked: ${reason}`);
  }

  private noteDenial(): void {
    const now = Date.now();
    this.denials = this.denials.filter((t) => now - t < BREAKER_WINDOW_MS);
    this.denials.push(now);
    if (this.denials.length >= BREAKER_DENIALS && this.vault) {
      this.denials = [];
      void this.lock(
        `circuit breaker: ${BREAKER_DENIALS} denials within ${BREAKER_WINDOW_MS / 1000} s`,
      );
    }
  }

  private channels(): Set<ApprovalMode> {
    const c = new Set<ApprovalMode>();
    if (this.o.askpass || this.o.terminal) c.add('confirm');
    // `keyward approve ID` from another terminal: with the passphrase, or a TOTP code once enrolled.
    c.add('passphrase');
    if (this.vault?.has(TOTP_SECRET)) c.add('totp');
    return c;
  }

  /**
   * Policy, limits and approval for one request; records every denial. Returns the deciding rule
   * when the request may go ahead; the caller then records the release (durably) and releases.
   */
  private async authorize(
    id: ProcessIdentity,
    pidfd: number,
    req: {
      target: string;
      kind: 'secret' | 'key';
      action: string;
      auditType: 'secret.read' | 'key.sign' | 'credential.deliver';
      what: string;
      exists: boolean;
      /** ssh-add -c: every use is confirmed by a person, whatever the policy would remember. */
      confirmEachUse?: boolean;
    },
  ): Promise<{ rule: string | undefined }> {
    const v = this.unlocked();
    const policy = this.currentPolicy(v);
    const name = req.target;
    const request = { target: name, kind: req.kind, action: req.action };
    const base = { target: name, actor: this.actor(id) };
    let evaluated = evaluate(policy, request, id);
    if (req.confirmEachUse && evaluated.decision !== 'deny') {
      evaluated = {
        decision: 'approve',
        rule: evaluated.rule,
        explanation: [...evaluated.explanation, 'the key was added with confirm (ssh-add -c)'],
        highValue: evaluated.decision === 'approve' && evaluated.highValue,
        approval:
          evaluated.decision === 'approve'
            ? { ...evaluated.approval, remember: { scope: 'once' } }
            : {
                mode: 'confirm',
                remember: { scope: 'once' },
                timeoutMs: 60_000,
                message: undefined,
              },
      };
    }
    const decision = withChannels(evaluated, this.channels());
    const refuse = async (
      message: string,
      code: 'POLICY_DENIED' | 'APPROVAL_REJECTED' | 'APPROVAL_TIMEOUT',
      hint?: string,
    ): Promise<never> => {
      await this.record({
        ...base,
        type: req.auditType,
        decision: 'deny',
        reason: message,
        details: { rule: decision.rule ?? null },
      });
      this.noteDenial();
      throw new KeywardError(code, message, hint === undefined ? {} : { hint });
    };
    if (decision.decision === 'deny') {
      return refuse(
        `denied by policy: ${decision.explanation.at(-1) ?? 'no rule matches'}`,
        'POLICY_DENIED',
        'see: keyward policy explain --target NAME --exe PATH',
      );
    }
    if (!req.exists) throw new KeywardError('SECRET_NOT_FOUND', `no ${req.kind} named ${name}`);
    const rule = policy.rules.find((r) => r.name === decision.rule);
    if (rule?.rate_limit) {
      let b = this.buckets.get(rule.name);
      if (!b)
        this.buckets.set(
          rule.name,
          (b = new TokenBucket(rule.rate_limit.per_minute, rule.rate_limit.burst, Date.now())),
        );
      if (!b.take(Date.now()))
        return refuse(`rate limit of rule ${rule.name} reached`, 'POLICY_DENIED', 'wait a little');
    }
    if (decision.decision === 'approve') {
      const a = decision.approval;
      const who =
        a.remember.scope === 'executable' ? id.exeSha256 : `${id.pid}:${id.startTime ?? ''}`;
      const grantKey =
        a.remember.scope === 'once' || who === undefined
          ? undefined
          : // The action is part of what was approved: a remembered run is not a remembered read.
            Grants.keyFor(decision.rule, `${req.action}\u0000${name}`, a.remember.scope, who);
      if (!(grantKey && !decision.highValue && this.grants.use(grantKey, Date.now()))) {
        const requester: RequesterRef = {
          pid: id.pid,
          startTime: id.startTime,
          description: printable(describeCaller(id), 600),
        };
        await this.record({
          ...base,
          type: 'approval.requested',
          decision: 'info',
          details: { rule: decision.rule, mode: a.mode },
        });
        // Command lines, paths, SSH user names and SSHSIG namespaces come from the requester:
        // escaped, so control characters and look-alikes can't rewrite what a person reads.
        const prompt = `keyward: ${printable(describeCaller(id), 600)} wants to ${printable(req.what, 600)} (rule ${decision.rule}).${a.message ? ` ${a.message}` : ''} Allow?`;
        const pending = this.broker.wait(
          {
            requester,
            action: req.action,
            target: name,
            rule: decision.rule,
            mode: a.mode,
            message: a.message,
          },
          a.timeoutMs,
        );
        if (a.mode === 'confirm') {
          const asked = this.o.askpass
            ? askpass(this.o.askpass, prompt, a.timeoutMs, this.o.env)
            : this.o.terminal?.ask(prompt, a.timeoutMs);
          void asked?.then((ok) => this.broker.settle(pending.id, ok ? 'granted' : 'denied'));
        }
        const outcome = await pending.outcome;
        if (outcome !== 'granted') {
          await this.record({
            ...base,
            type: outcome === 'expired' ? 'approval.expired' : 'approval.denied',
            decision: 'deny',
            details: { rule: decision.rule },
          });
          return outcome === 'expired'
            ? refuse('the approval request expired', 'APPROVAL_TIMEOUT')
            : refuse('the request was not approved', 'APPROVAL_REJECTED');
        }
        await this.record({
          ...base,
          type: 'approval.granted',
          decision: 'allow',
          details: { rule: decision.rule, mode: a.mode },
        });
        if (grantKey && !decision.highValue && a.remember.scope !== 'once')
          this.grants.remember(grantKey, a.remember.forMs, a.remember.uses, Date.now());
      }
    }
    if (
      rule?.max_uses_per_unlock !== undefined &&
      !this.uses.use(`rule:${rule.name}`, rule.max_uses_per_unlock)
    ) {
      return refuse(
        `rule ${rule.name} reached its uses for this unlock`,
        'POLICY_DENIED',
        'keyward lock, then keyward unlock',
      );
    }
    if (!stillSameProcess(pidfd)) return refuse('the requesting process is gone', 'POLICY_DENIED');
    if (!this.vault)
      throw new KeywardError('AGENT_LOCKED', 'the agent was locked while the request waited', {
        hint: 'keyward unlock',
      });
    return { rule: decision.rule };
  }

  /** Counts a release against the window and slides the idle timeout. */
  private counted(): void {
    const u = this.policy?.policy.unlock;
    this.usedInWindow += 1;
    if (u?.max_uses !== undefined && this.usedInWindow >= u.max_uses)
      setImmediate(() => void this.lock('maximum uses per unlock reached'));
    else this.armTimers();
  }

  /** identity -> policy -> approval -> audit (durable) -> release. */
  private async read(
    conn: Conn,
    name: string,
    via: 'inline' | 'fd' = 'inline',
    mcp?: string,
  ): Promise<{
    meta: Record<string, unknown>;
    raw?: SecureBuffer;
    fd?: number;
    sent: (() => void) | undefined;
  }> {
    // Before policy: a rule matching ** must never reach keyward's own @ records.
    assertValidName(name);
    const v = this.unlocked();
    if (mcp !== undefined) {
      // Inline to an MCP client means into a model's context: only where the deciding rule says
      // so. Checked before any approval, so nobody is asked to approve what will be refused.
      const policy = this.currentPolicy(v);
      const decided = evaluate(policy, { target: name, kind: 'secret', action: 'read' }, conn.id);
      const r = policy.rules.find((x) => x.name === decided.rule);
      if (decided.decision !== 'deny' && !r?.mcp_inline) {
        const message = `the policy does not release ${name} inline to MCP clients (rule ${decided.rule ?? 'none'} lacks mcp_inline: true)`;
        await this.record({
          target: name,
          actor: this.actor(conn.id),
          type: 'secret.read',
          decision: 'deny',
          reason: message,
          details: { rule: decided.rule ?? null, mcpClient: mcp },
        });
        throw new KeywardError('POLICY_DENIED', message, {
          hint: 'use run_with_credentials, which never returns the value',
        });
      }
    }
    const { rule } = await this.authorize(conn.id, conn.pidfd, {
      target: name,
      kind: 'secret',
      action: 'read',
      auditType: 'secret.read',
      what: `read the secret "${name}"${mcp ? ` for the MCP client ${mcp}` : ''}`,
      exists: v.has(name),
    });
    if (this.vault !== v)
      throw new KeywardError('AGENT_LOCKED', 'the agent was locked while the request waited', {
        hint: 'keyward unlock',
      });
    const { value, cached } = this.fetch(conn.id, v, name, rule);
    try {
      // Rule 4: durable in the audit log before the value leaves.
      await this.record({
        target: name,
        actor: this.actor(conn.id),
        type: 'secret.read',
        decision: 'allow',
        details: { rule: rule ?? null, bytes: value.length, cached, via, mcpClient: mcp ?? null },
      });
    } catch (e) {
      secureFree(value);
      throw e;
    }
    if (this.vault !== v) {
      // Locked (or unlocked anew) while the record was made durable: the unlock that allowed
      // this release is over, so the value stays here. The audit log shows the read; the
      // lock after it says it never left.
      secureFree(value);
      throw new KeywardError('AGENT_LOCKED', 'the agent was locked while the request waited', {
        hint: 'keyward unlock',
      });
    }
    this.counted();
    if (via === 'fd') {
      // keyward/client: the value in a sealed memfd, passed with SCM_RIGHTS; the agent's copy
      // goes now, the descriptor once it is sent.
      let fd: number;
      try {
        fd = sealedMemfd('keyward-credential', [value]);
      } finally {
        secureFree(value);
      }
      return {
        meta: { name, fd: true },
        fd,
        sent: cached ? undefined : () => this.dropped(conn.id, name, 'released on a descriptor'),
      };
    }
    return {
      meta: { name },
      raw: value,
      // Not cached: once the kernel has the value, the agent holds no copy.
      sent: cached ? undefined : () => this.dropped(conn.id, name, 'released to the reader'),
    };
  }

  /**
   * A value for a release: from the cache when the deciding rule caches and it is there, else
   * decrypted from the vault (credential.fetch) and, when the rule caches, kept. The caller frees
   * the returned copy.
   */
  private fetch(
    id: ProcessIdentity,
    v: Vault,
    name: string,
    ruleName: string | undefined,
  ): { value: SecureBuffer; cached: boolean } {
    // Re-read the vault if it changed while a person decided (a rotated value, a removed one).
    if (this.unlocked() !== v)
      throw new KeywardError('AGENT_LOCKED', 'the agent was locked while the request waited', {
        hint: 'keyward unlock',
      });
    const rule = this.currentPolicy(v).rules.find((r) => r.name === ruleName);
    const idle = cacheIdleMs(rule);
    this.released.add(name);
    const hit = idle === undefined || !rule ? undefined : this.cache.take(rule.name, name);
    if (hit) return { value: hit, cached: true };
    const value = v.reveal(name);
    void this.record({
      type: 'credential.fetch',
      decision: 'info',
      target: name,
      actor: this.actor(id),
      details: { rule: ruleName ?? null, cacheIdleMs: idle ?? null },
    }).catch(() => undefined);
    if (idle !== undefined && rule) this.cache.put(rule.name, name, value, idle);
    return { value, cached: idle !== undefined };
  }

  /** Names released since the unlock: the values the MCP gateway looks for (cleared at lock). */
  private readonly released = new Set<string>();
  private readonly scanBucket = new TokenBucket(6000, 1000, Date.now());

  /**
   * What keyward mcp wrap asks of the agent (docs/MCP.md, "The gateway"): the verified policy's
   * mcp section; a keyed hash for tool-definition pins; and a scan of bytes for the values
   * released since the unlock (which names, and a redacted copy). Values never leave.
   */
  private mcpGateway(f: Frame): { meta: Record<string, unknown>; raw?: SecureBuffer } {
    const v = this.unlocked();
    const op = str(f.meta, 'op');
    try {
      if (op === 'policy') return { meta: { mcp: this.currentPolicy(v).mcp ?? null } };
      if (op === 'mac') {
        const label = str(f.meta, 'label') ?? '';
        return { meta: { mac: v.mac(`mcp ${label}`, f.raw ?? Buffer.alloc(0)).toString('hex') } };
      }
      if (op === 'scan') {
        // An oracle ("is this one of the released values?") must not be a fast one: a 6-digit
        // value could be guessed through it (docs/THREAT-MODEL.md).
        if (!this.scanBucket.take(Date.now()))
          throw new KeywardError('POLICY_DENIED', 'too many leak scans; try again in a moment');
        const data = f.raw ?? Buffer.alloc(0);
        const found: string[] = [];
        const all: SecureBuffer[] = [];
        try {
          for (const name of this.released) {
            if (!v.has(name)) continue;
            const value = v.reveal(name);
            try {
              const forms = maskingForms(value);
              if (forms.some((form) => data.indexOf(form) >= 0)) found.push(name);
              all.push(...forms);
            } finally {
              secureFree(value);
            }
          }
          if (f.meta['redact'] !== true || found.length === 0) return { meta: { found } };
          const masker = new Masker(all);
          try {
            const out = Buffer.concat([masker.push(Buffer.from(data)), masker.flush()]);
            return { meta: { found }, raw: secureTake(out) };
          } finally {
            masker.destroy();
          }
        } finally {
          for (const form of all) secureFree(form);
        }
      }
      throw new ProtocolError(`unknown mcp operation ${op ?? ''}`);
    } finally {
      secureFree(f.raw);
    }
  }

  private dropped(id: ProcessIdentity, name: string, reason: string): void {
    void this.record({
      type: 'credential.drop',
      decision: 'info',
      target: name,
      actor: this.actor(id),
      reason,
    }).catch(() => undefined);
  }

  private lastTotpStep = -1;

  /**
   * `keyward approve ID`: with the passphrase (raw) or a TOTP code (meta.code). The factor must be
   * the one the rule asked for; either also answers a `confirm` request (a stronger factor).
   */
  private async approve(
    conn: Conn,
    reqId: string,
    factor: SecureBuffer | undefined,
    code: string | undefined,
  ): Promise<Record<string, unknown>> {
    try {
      const p = this.broker.get(reqId);
      if (!p)
        throw new KeywardError('REQUEST_NOT_FOUND', `no pending request ${reqId}`, {
          hint: 'see: keyward approvals',
        });
      if (!mayApprove(p.requester, conn.id)) {
        await this.record({
          type: 'approval.denied',
          decision: 'deny',
          target: p.target,
          reason: 'self-approval refused',
          actor: this.actor(conn.id),
        });
        throw new KeywardError(
          'SELF_APPROVAL',
          "a process cannot approve its own request, nor one of its ancestors' requests",
          {
            hint: 'approve from another terminal',
          },
        );
      }
      const v = this.unlocked();
      if (code !== undefined) {
        if (p.mode !== 'totp' && p.mode !== 'confirm')
          throw new KeywardError('USAGE', `this request needs ${p.mode} approval, not a TOTP code`);
        const secret = v.revealInternal(TOTP_SECRET);
        if (!secret)
          throw new KeywardError('USAGE', 'no TOTP is enrolled', { hint: 'keyward totp enroll' });
        let step: number | undefined;
        try {
          step = verifyTotp(secret, code, Date.now(), this.lastTotpStep);
        } finally {
          secureFree(secret);
        }
        if (step === undefined) {
          this.noteDenial();
          throw new KeywardError(
            'VAULT_BAD_PASSPHRASE',
            'wrong or already used TOTP code; the request is still pending',
          );
        }
        this.lastTotpStep = step;
      } else {
        if (p.mode !== 'passphrase' && p.mode !== 'confirm') {
          throw new KeywardError('USAGE', `this request needs ${p.mode} approval`, {
            hint: 'keyward approve ID --code CODE',
          });
        }
        if (!factor || factor.length === 0) {
          throw new KeywardError('USAGE', 'approving needs the passphrase', {
            hint: 'keyward approve ID asks for it (or --passphrase-file)',
          });
        }
        if (!v.checkPassphrase(factor)) {
          this.noteDenial();
          throw new KeywardError(
            'VAULT_BAD_PASSPHRASE',
            'wrong passphrase; the request is still pending',
          );
        }
      }
      if (!this.broker.settle(reqId, 'granted'))
        throw new KeywardError('REQUEST_NOT_FOUND', `request ${reqId} is no longer pending`);
      return { approved: reqId };
    } finally {
      secureFree(factor);
    }
  }
}
