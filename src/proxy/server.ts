/**
 * The credential proxy of one `keyward run --proxy` (docs/PROXY.md). The agent starts one per run,
 * on 127.0.0.1 at a port the kernel picks; the child reaches it through HTTPS_PROXY and
 * HTTP_PROXY, with a per-run secret in the URL's userinfo.
 *
 * Who may use it: a connection is served only when its other end is a process of the run's own
 * tree (tree.ts) and it carries the run's secret. Anything else is refused and recorded.
 *
 * What it does with a request:
 * - CONNECT to a host a binding names: the proxy first connects to the host and checks its
 *   certificate against the system's store, then answers 200, ends the child's TLS with a leaf of
 *   the run's CA (ca.ts), reads each request (framer.ts), puts the values in (request.ts) once the
 *   substitution is recorded, and forwards it.
 * - CONNECT to any other host: tunnelled as it is, or refused (the policy's `default`).
 * - A plain HTTP request (absolute URL): forwarded without any value; one that carries a
 *   placeholder is refused.
 * Every request is counted against its domain's rate limit first (HTTP 429 with Retry-After).
 */
import { timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import type { RunCa } from './ca.js';
import type { AnswerFramer } from './answers.js';
import { watchAnswers } from './echo.js';
import { FramingError, RequestFramer, type FrameEvent } from './framer.js';
import { randomBase62 } from './placeholder.js';
import { originHead, plan, withValues, type Binding, type Refusal } from './request.js';
import { holderInTree, socketOf } from './tree.js';
import { canonicalHost } from './host.js';
import {
  afterDrain,
  answer,
  authority,
  CONNECT_TIMEOUT_MS,
  relayPlain,
  upstreamTls,
} from './wire.js';
import type { ProxyHooks } from './hooks.js';

export type { ProxyEventType, ProxyHooks } from './hooks.js';

/** A bound host's tunnel: how many requests the child sent in it, and whether it is done. */
interface Tunnel {
  requests: number;
  over: boolean;
}
/** The most connections one run's proxy holds at once. */
const MAX_CONNECTIONS = 256;
/** How long a connection may take to send its whole first request head (not between bytes). */
const HEAD_TIMEOUT_MS = 30_000;

type Head = Extract<FrameEvent, { type: 'head' }>;
type Sock = net.Socket | tls.TLSSocket;

export class ProxyServer {
  private readonly server = net.createServer((s) => this.accept(s));
  private readonly conns = new Set<net.Socket>();
  private readonly secret = randomBase62(32);
  private readonly uid = process.geteuid?.() ?? -1;
  private port = 0;
  private locked = false;
  /** Made once per run: a context parses every certificate of the trust store. */
  private trust: tls.SecureContext | undefined;
  private readonly leafContexts = new Map<string, tls.SecureContext>();

  private constructor(
    private readonly bindings: Binding[],
    private readonly ca: RunCa,
    private readonly h: ProxyHooks,
  ) {
    this.server.on('error', () => undefined);
  }

  /** Listens on 127.0.0.1; owns the bindings' values from here on (close frees them). */
  static async start(bindings: Binding[], ca: RunCa, h: ProxyHooks): Promise<ProxyServer> {
    const p = new ProxyServer(bindings, ca, h);
    await new Promise<void>((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen(0, '127.0.0.1', () => resolve());
    });
    p.port = (p.server.address() as net.AddressInfo).port;
    return p;
  }

  /** The proxy's URL, with the run's secret as userinfo (it goes into the child's environment). */
  get url(): string {
    return `http://keyward:${this.secret}@127.0.0.1:${this.port}`;
  }

  /** The agent locked: the values are dropped; a request that needs one is refused from now on. */
  lock(): void {
    this.locked = true;
    // An answer on its way may hold a value, and the watch's forms go now: every connection ends.
    for (const c of this.conns) c.destroy();
    for (const b of this.bindings) secureFree(b.value);
    for (const f of this.h.forms) secureFree(f);
  }

  /** The run ended: no more connections, the values dropped. */
  close(): void {
    this.lock();
    this.server.close();
    for (const c of this.conns) c.destroy();
  }

  private accept(s: net.Socket): void {
    s.on('error', () => undefined);
    if (this.conns.size >= MAX_CONNECTIONS) return void s.destroy();
    // Another user's connection is dropped at once (one read of /proc/net/tcp): it can never
    // use the proxy, and must not hold the slots the run needs.
    const peer = this.peerSocket(s);
    if (!peer || peer.uid !== this.uid) return void s.destroy();
    this.conns.add(s);
    const deadline = setTimeout(() => s.destroy(), HEAD_TIMEOUT_MS);
    s.on('close', () => {
      clearTimeout(deadline);
      this.conns.delete(s);
    });
    s.setNoDelay(true);
    this.serve(s, peer.inode, () => clearTimeout(deadline));
  }

  /**
   * The process of the run's tree that holds the client socket (its inode), or undefined. Asked
   * only once the run's secret was shown: the walk reads /proc, and a stranger must not cause it.
   */
  private async owner(inode: number): Promise<number | undefined> {
    const root = this.h.root();
    return root === undefined ? undefined : holderInTree(root, inode);
  }

  /** The client end of s in /proc/net/tcp: its owner's uid and its inode. */
  private peerSocket(s: net.Socket): { inode: number; uid: number } | undefined {
    if (!s.remoteAddress || !s.remotePort || !s.localAddress) return undefined;
    return socketOf(
      { ip: s.remoteAddress, port: s.remotePort },
      { ip: s.localAddress, port: s.localPort ?? 0 },
    );
  }

  private authorized(headers: Array<[string, string]>): boolean {
    const want = Buffer.from(
      `Basic ${Buffer.from(`keyward:${this.secret}`).toString('base64')}`,
      'latin1',
    );
    return headers.some(([k, v]) => {
      if (k.toLowerCase() !== 'proxy-authorization') return false;
      const got = Buffer.from(v, 'latin1');
      return got.length === want.length && timingSafeEqual(got, want);
    });
  }

  private block(reason: string, target: string, details: Record<string, string | number | null>) {
    return this.h.record('proxy.block', 'deny', target, reason, details).catch(() => undefined);
  }

  /** Reads the first request of a connection and hands the connection to what it asks for. */
  private serve(s: net.Socket, inode: number, known: () => void): void {
    const framer = new RequestFramer();
    const onData = (chunk: Buffer) => {
      let events: FrameEvent[];
      try {
        events = framer.push(chunk);
      } catch (e) {
        s.off('data', onData);
        return answer(s, e instanceof FramingError ? e.status : 400, (e as Error).message);
      }
      const head = events[0];
      if (!head) return;
      s.off('data', onData);
      s.pause();
      if (head.type !== 'head') return answer(s, 400, 'a malformed request');
      if (!this.authorized(head.headers)) {
        void this.block('a request without the run\u2019s proxy credentials', 'proxy', {
          peerPort: s.remotePort ?? null,
        });
        return answer(s, 407, 'proxy credentials required', [
          'Proxy-Authenticate: Basic realm="keyward"',
        ]);
      }
      known();
      void this.owner(inode)
        .then((pid) => {
          if (pid === undefined) {
            void this.block('a connection from outside the run\u2019s process tree', 'proxy', {
              peerPort: s.remotePort ?? null,
            });
            return answer(s, 403, 'this proxy serves only the processes of its own run');
          }
          const rest = events.slice(1);
          return head.method === 'CONNECT'
            ? this.connect(s, pid, head, rest)
            : this.plainHttp(s, pid, head, rest, framer);
        })
        .catch((e: unknown) => answer(s, 502, e instanceof Error ? e.message : 'error'));
    };
    s.on('data', onData);
  }

  /** Refuses with a record of why. */
  private async refuse(s: Sock, r: Refusal, host: string, pid: number): Promise<void> {
    await this.block(r.reason, r.secret ?? host, { host, pid });
    answer(s, r.status, r.reason);
  }

  /** Takes one request from host's rate limit; answers 429 (recorded) when there is none. */
  private async limited(s: Sock, host: string, pid: number): Promise<boolean> {
    const wait = this.h.limit(host);
    if (wait === undefined) return false;
    const seconds = Math.max(1, Math.ceil(wait / 1000));
    await this.h
      .record('proxy.limit', 'deny', host, `the rate limit for ${host} is reached`, {
        host,
        pid,
        retryAfter: seconds,
      })
      .catch(() => undefined);
    answer(s, 429, `the rate limit for ${host} is reached`, [`Retry-After: ${seconds}`]);
    return true;
  }

  private bound(host: string, port: number): boolean {
    return this.bindings.some((b) => b.hosts.get(host)?.port === port);
  }

  private async connect(s: net.Socket, pid: number, head: Head, rest: FrameEvent[]): Promise<void> {
    const a = authority(head.target);
    const host = a && canonicalHost(a.host);
    if (!a || !host) return answer(s, 400, 'a CONNECT needs host:port');
    // A placeholder in the name asked for (a DNS lookup of it, or SNI) carries it out too; a
    // resolver lowercases names, so case doesn't hide it.
    const target = head.target.toLowerCase();
    for (const b of this.bindings)
      if (target.includes(b.placeholder.toString('latin1').toLowerCase()))
        return this.refuse(
          s,
          {
            status: 403,
            reason: `the placeholder of ${b.name} is in a CONNECT host name`,
            secret: b.name,
          },
          'a host name',
          pid,
        );
    const early = Buffer.concat(rest.map((e) => ('bytes' in e ? e.bytes : Buffer.alloc(0))));
    if (early.length > 0) return answer(s, 400, 'data was sent before the tunnel was set up');
    const bound = this.bound(host, a.port);
    if (!bound && this.h.defaultAction === 'deny')
      return this.refuse(
        s,
        {
          status: 403,
          reason: `${host}:${a.port} is not a host of the proxy policy (default: deny)`,
          secret: undefined,
        },
        host,
        pid,
      );
    // An intercepted host counts each request inside the tunnel; any other, the tunnel itself.
    if (bound) return this.intercept(s, pid, host, a.port);
    if (await this.limited(s, host, pid)) return;
    const up = net.connect({ host, port: a.port });
    s.on('close', () => up.destroy());
    up.setTimeout(CONNECT_TIMEOUT_MS, () => up.destroy(new Error('timed out')));
    up.once('error', (e) => answer(s, 502, `cannot reach ${host}:${a.port}: ${e.message}`));
    up.once('connect', () => {
      up.setTimeout(0);
      up.removeAllListeners('error');
      up.on('error', () => s.destroy());
      s.write('HTTP/1.1 200 Connection established\r\n\r\n');
      s.pipe(up);
      up.pipe(s);
    });
  }

  private async intercept(s: net.Socket, pid: number, host: string, port: number): Promise<void> {
    let up: tls.TLSSocket;
    try {
      this.trust ??= tls.createSecureContext({ ca: this.h.trust });
      up = await upstreamTls(host, port, this.trust);
    } catch (e) {
      return this.refuse(
        s,
        {
          status: 403,
          reason: `the upstream ${host}:${port} is refused: ${e instanceof Error ? e.message : 'error'}`,
          secret: undefined,
        },
        host,
        pid,
      );
    }
    const broken = () => s.destroy();
    up.on('error', broken);
    let context = this.leafContexts.get(host);
    if (!context) {
      const leaf = await this.ca.leaf(host);
      context = tls.createSecureContext({ cert: leaf.cert, key: leaf.key });
      this.leafContexts.set(host, context);
    }
    if (s.destroyed) return void up.destroy();
    s.write('HTTP/1.1 200 Connection established\r\n\r\n');
    const child = new tls.TLSSocket(s, {
      isServer: true,
      secureContext: context,
      ALPNProtocols: ['http/1.1'],
    });
    child.on('error', () => up.destroy());
    child.on('close', () => up.destroy());
    // Not once the watch has ended the child's side: what it wrote last still goes.
    up.on('close', () => {
      if (!child.writableEnded) child.destroy();
    });
    const answers = watchAnswers(
      up,
      child,
      this.h.forms,
      () => {
        void this.block(`${host} sent a value back in its answer; the connection was ended`, host, {
          host,
          pid,
        });
        // A reset, not a clean end: curl takes an answer whose head was cut short by a clean
        // end as whole, an empty body and exit 0.
        s.resetAndDestroy();
      },
      (held, overflowed) => {
        void this.block(
          overflowed
            ? `${host} framed its answer with more than ${held} bytes among the last of its content; the connection was ended`
            : `${host}'s connection ended before its answer did (or the answer had no length, whose end can't be told from a cut); its last ${held} bytes were not passed on`,
          host,
          { host, pid },
        );
        s.resetAndDestroy();
      },
    );
    // From here a reset upstream is the watch's to end the child's connection on (what the
    // answer's framing accounts for goes on first).
    up.removeListener('error', broken);
    const framer = new RequestFramer();
    const tunnel: Tunnel = { requests: 0, over: false };
    let work = Promise.resolve();
    child.on('data', (chunk: Buffer) => {
      if (tunnel.over) return;
      let events: FrameEvent[];
      try {
        events = framer.push(chunk);
      } catch (e) {
        tunnel.over = true;
        up.destroy();
        answer(child, e instanceof FramingError ? e.status : 400, (e as Error).message);
        return;
      }
      child.pause();
      work = work
        .then(() => this.forward(child, up, pid, host, port, events, answers, tunnel))
        .then(
          (go) => {
            // Not before the upstream took what was written: a child that sends faster than
            // its host reads would have the agent hold all of it.
            if (go) afterDrain(up, () => child.resume());
          },
          () => {
            child.destroy();
          },
        );
    });
  }

  /** Sends what the child sent on to up, values in; false when it refused (and answered). */
  private async forward(
    child: tls.TLSSocket,
    up: tls.TLSSocket,
    pid: number,
    host: string,
    port: number,
    events: FrameEvent[],
    answers: AnswerFramer,
    tunnel: Tunnel,
  ): Promise<boolean> {
    for (const e of events) {
      if (child.destroyed || up.destroyed) return false;
      if (e.type === 'end') continue;
      // After an upgrade request: only once the host switched to a WebSocket (else what follows
      // would reach a host that ignored the upgrade as requests no one planned or recorded).
      if (e.type === 'raw' && !(await answers.switched())) {
        tunnel.over = true;
        return true;
      }
      if (e.type !== 'head') {
        up.write(e.bytes);
        continue;
      }
      // The first request said Connection: close (request.ts): the host answers it and closes.
      // What the child pipelined after it goes nowhere: neither recorded as sent, nor written to
      // a host that has stopped reading (found flaky in the suite: the write's EPIPE ended the
      // connection before the first answer, already come, was read).
      if (tunnel.requests++ > 0) {
        tunnel.over = true;
        return true;
      }
      if (await this.limited(child, host, pid)) return (up.destroy(), false);
      const p = plan(e.bytes, host, port, this.bindings, false);
      if (!('used' in p)) return (await this.refuse(child, p, host, pid), up.destroy(), false);
      const length = Number(
        e.headers.find(([k]) => k.toLowerCase() === 'content-length')?.[1] ?? 0,
      );
      for (const b of p.used) {
        const why = this.locked
          ? 'the agent is locked'
          : await this.h.mayUse(b.name, { host, method: p.method, path: p.path });
        if (why !== undefined) {
          await this.refuse(child, { status: 403, reason: why, secret: b.name }, host, pid);
          up.destroy();
          return false;
        }
      }
      // Rule 4: each substitution is durable in the audit log before the value leaves.
      await Promise.all(
        p.used.map((b) =>
          this.h.record('proxy.substitute', 'allow', b.name, undefined, {
            host,
            port,
            method: p.method,
            path: p.path,
            in: p.where.get(b.name) ?? null,
            bytes: e.bytes.length + (Number.isFinite(length) ? length : 0),
            pid,
          }),
        ),
      );
      if (this.locked && p.used.length > 0) {
        await this.refuse(
          child,
          { status: 403, reason: 'the agent is locked', secret: p.used[0]?.name },
          host,
          pid,
        );
        up.destroy();
        return false;
      }
      const out = withValues(p);
      answers.expect(e.method, p.webSocket);
      up.write(out, () => {
        if (out !== p.head) secureFree(out as SecureBuffer);
      });
      // A host that answers a WebSocket upgrade without switching may keep the connection (the
      // request did not say close), and an answer's last bytes go only when it ends: nothing
      // more goes to it, and once its answer has come whole it is told so. (Not sooner: a
      // half-close cut the answer short, found in review, and not in the turn of its last read.)
      if (p.webSocket)
        void answers.switched().then((webSocket) => {
          if (webSocket) return;
          tunnel.over = true;
          void answers.finished().then(() => setImmediate(() => up.end()));
        });
    }
    return true;
  }

  /** A plain HTTP request (absolute URL): forwarded with no value in it, one per connection. */
  private async plainHttp(
    s: net.Socket,
    pid: number,
    head: Head,
    rest: FrameEvent[],
    framer: RequestFramer,
  ): Promise<void> {
    let url: URL;
    try {
      url = new URL(head.target);
    } catch {
      return answer(s, 400, 'a proxy request needs an absolute http:// URL');
    }
    if (url.protocol !== 'http:') return answer(s, 400, 'only http:// URLs go as plain requests');
    const host = canonicalHost(url.hostname);
    if (!host) return answer(s, 400, 'a malformed host');
    const port = Number(url.port || 80);
    const p = plan(head.bytes, host, port, this.bindings, true);
    if (!('used' in p)) return this.refuse(s, p, host, pid);
    if (!this.bound(host, port) && this.h.defaultAction === 'deny')
      return this.refuse(
        s,
        {
          status: 403,
          reason: `${host}:${port} is not a host of the proxy policy (default: deny)`,
          secret: undefined,
        },
        host,
        pid,
      );
    if (await this.limited(s, host, pid)) return;
    await relayPlain(s, host, port, originHead(head.bytes, url), rest, framer);
  }
}
