/**
 * The operator page and API beyond this machine (docs/OPERATORS.md, "Reaching it from
 * elsewhere"): an HTTPS listener with the user's certificate, at the address and port the policy
 * names, serving operators only. The console's own page and API (passphrase logins, security
 * keys, the audit log, policy) never answer here. It runs while the agent is unlocked: it starts
 * when a policy that names it is loaded, and closes at lock.
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

  constructor(private readonly handle: Handler) {}

  /** Where it listens (the origin), when it does. */
  get origin(): string | undefined {
    return this.up?.origin;
  }

  /** Starts, restarts or stops the listener as the policy in force says (a failed one: again). */
  async follow(cfg: RemoteListen | undefined): Promise<void> {
    const config = cfg ? JSON.stringify(cfg) : undefined;
    if (config !== undefined && config === this.up?.config) return;
    await this.close();
    if (!cfg || config === undefined) return;
    try {
      const server = await listen(cfg, (req, res) => this.handle(req, res, cfg.origin));
      this.up = { config, origin: cfg.origin, server };
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e);
    }
  }

  async close(): Promise<void> {
    const s = this.up?.server;
    this.up = undefined;
    this.error = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}

async function listen(cfg: RemoteListen, handler: http.RequestListener): Promise<https.Server> {
  // The private key must be the user's alone, as the vault is (fail closed otherwise).
  assertPrivate(cfg.key, 'file');
  let key: Buffer;
  let cert: Buffer;
  try {
    key = fs.readFileSync(cfg.key);
    cert = fs.readFileSync(cfg.cert);
  } catch (e) {
    throw new KeywardError(
      'USAGE',
      `the operator listener's certificate or key can't be read: ${(e as Error).message}`,
    );
  }
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
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: cfg.address, port: cfg.port, exclusive: true }, () => resolve());
  }).catch((e: unknown) => {
    throw new KeywardError(
      'USAGE',
      `the operator listener can't listen on ${cfg.address}:${cfg.port}: ${(e as Error).message}`,
    );
  });
  return server;
}
