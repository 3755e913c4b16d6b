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
import fs from 'node:fs';
import type http from 'node:http';
import https from 'node:https';
import { KeywardError } from '../errors.js';
import { assertPrivate } from '../lib/files.js';

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
  private up: { config: string; origin: string; server: https.Server } | undefined;
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
        return;
      } catch (e) {
        await this.close();
        this.error = e instanceof Error ? e.message : String(e);
        return;
      }
    }
    await this.close();
    if (!cfg || config === undefined) return;
    try {
      const server = await listen(cfg, (req, res) => {
        if (!this.paused) return this.handle(req, res, cfg.origin);
        res.writeHead(503, { 'Content-Type': 'application/json', Connection: 'close' });
        res.end(JSON.stringify({ error: 'the agent is locked' }));
      });
      this.up = { config, origin: cfg.origin, server };
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
    this.up = undefined;
    this.error = undefined;
    this.paused = false;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}

/** The certificate and key from their files (the key the user's alone), for a TLS context. */
function tlsOptions(cfg: RemoteListen): { key: Buffer; cert: Buffer } {
  // The private key must be the user's alone, as the vault is (fail closed otherwise).
  assertPrivate(cfg.key, 'file');
  try {
    return { key: fs.readFileSync(cfg.key), cert: fs.readFileSync(cfg.cert) };
  } catch (e) {
    throw new KeywardError(
      'USAGE',
      `the operator listener's certificate or key can't be read: ${(e as Error).message}`,
    );
  }
}

async function listen(cfg: RemoteListen, handler: http.RequestListener): Promise<https.Server> {
  const { key, cert } = tlsOptions(cfg);
  let server: https.Server;
  try {
    // The context is made here, from the bytes: after this, they are not needed.
    server = https.createServer({ key, cert, minVersion: 'TLSv1.2' }, handler);
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
  const on = (host: string, ipv6Only: boolean) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port: cfg.port, exclusive: true, ipv6Only }, () => {
        server.off('error', reject);
        resolve();
      });
    });
  try {
    // Every address: both families in one socket, so neither side of the port is free for
    // another process to stand on. A machine without IPv6 has only the one.
    if (cfg.address === '0.0.0.0' || cfg.address === '::')
      await on('::', false).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EAFNOSUPPORT' && e.code !== 'EADDRNOTAVAIL') throw e;
        return on('0.0.0.0', false);
      });
    else await on(cfg.address, false);
  } catch (e) {
    throw new KeywardError(
      'USAGE',
      `the operator listener can't listen on ${cfg.address}:${cfg.port}: ${(e as Error).message}`,
    );
  }
  return server;
}
