/**
 * The operator page and API beyond this machine (docs/OPERATORS.md, "Reaching it from
 * elsewhere"): an HTTPS listener with the user's certificate, at the address and port the policy
 * names, serving operators only. The console's own page and API (passphrase logins, security
 * keys, the audit log, policy) never answer here. It starts when a policy that names it is
 * loaded and serves while the agent is unlocked; at lock it ends every connection and answers
 * 503 until the next unlock, but keeps its port: a port let go is one another process of the
 * user can take, with the user's certificate, to collect operators' keys. 0.0.0.0 is listened
 * on as [::] with IPv4 too, so neither family's side of the port is left to take.
 *
 * What it leaves: node:tls parses the private key into OpenSSL (its secure heap, which the agent
 * starts first thing, holds the private numbers); the file's bytes are zeroed once parsed.
 */
import type http from 'node:http';
import type https from 'node:https';
import net, { isIPv6 } from 'node:net';
import { KeywardError } from '../errors.js';
import { readOwnFile } from '../lib/files.js';
import { zeroReadBytes } from './http.js';

export interface RemoteListen {
  address: string;
  port: number;
  cert: string;
  key: string;
  /** What operators type (https://host:port): the Host and Origin every request must name. */
  origin: string;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, origin: string) => void;

export class RemoteOperators {
  /** The listener, and the configuration it was started with. */
  private up:
    | { config: string; origin: string; server: https.Server; guard: net.Server | undefined }
    | undefined;
  /** Why the listener is not up, when the policy asked for one. */
  error: string | undefined;

  /** Locked: connections ended, every request answered 503, the port kept. */
  private paused = false;

  constructor(private readonly handle: Handler) {}

  /** Where it serves (the origin), when it does. */
  get origin(): string | undefined {
    return this.paused ? undefined : this.up?.origin;
  }

  /**
   * Starts, restarts or stops the listener as the policy in force says (a failed one: again).
   * The same listener after a lock takes its certificate and key from the files again.
   */
  async follow(cfg: RemoteListen | undefined): Promise<void> {
    const config = cfg ? JSON.stringify(cfg) : undefined;
    if (cfg && config !== undefined && config === this.up?.config) {
      try {
        const tls = tlsOptions(cfg);
        try {
          this.up.server.setSecureContext(tls);
        } finally {
          tls.key.fill(0);
        }
        this.paused = false;
        this.error = undefined;
        return;
      } catch (e) {
        // Still paused, and still holding the port: a certificate or key made unusable (a
        // chmod, a rename) must not be a way to have the port let go for another to take.
        this.error = e instanceof Error ? e.message : String(e);
        return;
      }
    }
    await this.close();
    if (!cfg || config === undefined) return;
    try {
      const { server, guard } = await listen(cfg, (req, res) => {
        if (!this.paused) return this.handle(req, res, cfg.origin);
        res.writeHead(503, { 'Content-Type': 'application/json', Connection: 'close' });
        res.end(JSON.stringify({ error: 'the agent is locked' }));
      });
      this.up = { config, origin: cfg.origin, server, guard };
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    }
  }

  /** At lock: nothing is served (connections end now, new requests get 503); the port stays. */
  pause(): void {
    this.paused = true;
    this.up?.server.closeAllConnections();
  }

  async close(): Promise<void> {
    const s = this.up?.server;
    const guard = this.up?.guard;
    this.up = undefined;
    guard?.close();
    this.error = undefined;
    this.paused = false;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}

/** Certificates and keys are a few KB; a chain of several, tens. */
const TLS_FILE_MAX = 1024 * 1024;

/**
 * The certificate and key from their files, for a TLS context: regular files only (a FIFO would
 * hold the agent's unlock for as long as nothing writes to it), and the key the user's alone, as
 * the vault is (fail closed otherwise).
 */
function tlsOptions(cfg: RemoteListen): { key: Buffer; cert: Buffer } {
  try {
    const key = readOwnFile(cfg.key, { private: true, maxBytes: TLS_FILE_MAX });
    try {
      return { key, cert: readOwnFile(cfg.cert, { maxBytes: TLS_FILE_MAX }) };
    } catch (e) {
      key.fill(0);
      throw e;
    }
  } catch (e) {
    if (e instanceof KeywardError) throw e;
    throw new KeywardError(
      'USAGE',
      `the operator listener's certificate or key can't be read: ${(e as Error).message}`,
    );
  }
}

async function listen(
  cfg: RemoteListen,
  handler: http.RequestListener,
): Promise<{ server: https.Server; guard: net.Server | undefined }> {
  // Loaded here, not with the console: node:https and node:tls are ~0.5 MiB of an idle agent's
  // memory, which an agent without an operator listener does without. Before the key is read,
  // so that nothing awaits while its bytes are held.
  const { createServer } = await import('node:https');
  const { key, cert } = tlsOptions(cfg);
  let server: https.Server;
  try {
    // The context is made here, from the bytes: after this, they are not needed.
    server = createServer({ key, cert, minVersion: 'TLSv1.2' }, handler);
  } catch (e) {
    throw new KeywardError(
      'USAGE',
      `the operator listener's certificate and key are not usable: ${(e as Error).message}`,
    );
  } finally {
    key.fill(0);
  }
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.keepAliveTimeout = 5_000;
  server.maxConnections = 64;
  // What TLS decrypts goes through JavaScript, zeroed once parsed (OpenSSL's own record
  // buffers are beyond reach: THREAT-MODEL.md, "Not protected").
  zeroReadBytes(server, 'secureConnection');
  const on = (s: net.Server, host: string, ipv6Only: boolean) =>
    new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen({ host, port: cfg.port, exclusive: true, ipv6Only }, () => {
        s.off('error', reject);
        resolve();
      });
    });
  const noFamily = (e: NodeJS.ErrnoException) =>
    e.code === 'EAFNOSUPPORT' || e.code === 'EADDRNOTAVAIL';
  const everywhere = cfg.address === '0.0.0.0' || cfg.address === '::';
  try {
    // Every address: both families in one socket, so neither side of the port is free for
    // another process to stand on. A machine without IPv6 has only the one.
    if (everywhere)
      await on(server, '::', false).catch((e: NodeJS.ErrnoException) => {
        if (!noFamily(e)) throw e;
        return on(server, '0.0.0.0', false);
      });
    else await on(server, cfg.address, false);
  } catch (e) {
    throw new KeywardError(
      'USAGE',
      `the operator listener can't listen on ${cfg.address}:${cfg.port}: ${(e as Error).message}`,
    );
  }
  if (everywhere) return { server, guard: undefined };
  // One address: the port's side in the other family is held too, answering nothing, so a name
  // that resolves to both (localhost, a host with an AAAA record) can't lead an operator to
  // another process standing there with this certificate.
  const other = isIPv6(cfg.address) ? '0.0.0.0' : '::';
  const guard = net.createServer((socket) => socket.destroy());
  try {
    await on(guard, other, other === '::');
    return { server, guard };
  } catch (e) {
    if (noFamily(e as NodeJS.ErrnoException)) return { server, guard: undefined };
    server.close();
    throw new KeywardError(
      'USAGE',
      `the operator listener's port ${cfg.port} is taken on ${other === '::' ? '[::]' : '0.0.0.0'} by another process, which could stand there with this certificate: ${(e as Error).message}`,
    );
  }
}
