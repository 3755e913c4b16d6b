/**
 * The gateway's connection to the agent: one connection kept open (the agent identifies the
 * gateway once, not per message), one request at a time on it, as the protocol asks. A broken
 * connection is opened again for the next request; a request that fails on a fresh connection
 * fails (the gateway fails closed on it).
 */
import { AgentConnection, REQ, type Frame } from '../agent/index.js';
import { KeywardError } from '../errors.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';

export class AgentLink {
  private conn: AgentConnection | undefined;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly socket: string) {}

  /** An mcp request (meta.op says which); raw is freed once sent. */
  mcp(meta: Record<string, unknown>, raw?: SecureBuffer): Promise<Frame> {
    const run = this.chain.then(
      () => this.once(meta, raw),
      () => this.once(meta, raw),
    );
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async once(meta: Record<string, unknown>, raw?: SecureBuffer): Promise<Frame> {
    // A connection the agent closed while idle (a restart, a lock that ended it) is replaced.
    if (this.conn && (this.conn.socket.destroyed || !this.conn.socket.writable)) this.close();
    let conn: AgentConnection;
    try {
      conn = this.conn ??= await AgentConnection.open(this.socket, { sendsSecret: true });
    } catch (e) {
      secureFree(raw);
      throw e;
    }
    try {
      conn.send(REQ.mcp, meta, raw);
      return await conn.next();
    } catch (e) {
      // An error the agent sent is its answer, and the connection stays; anything else ends it.
      if (
        !(e instanceof KeywardError) ||
        e.code === 'AGENT_UNAVAILABLE' ||
        e.code === 'PROTOCOL_ERROR'
      )
        this.close();
      throw e;
    }
  }

  close(): void {
    this.conn?.close();
    this.conn = undefined;
  }
}
