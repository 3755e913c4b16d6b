/**
 * The runs MCP clients asked for (keyward mcp serve's run_with_credentials), so that what runs
 * inside one asks the agent as that client: a `keyward read` there is an MCP read (mcp_inline),
 * a nested `keyward run` is the client's and masked (docs/MCP.md).
 *
 * A run's child leads its own session (the exec step), and every process it starts stays in that
 * session unless it calls setsid: a caller is inside the run when its session is the run's,
 * however deep it is and after the child itself exited (Linux does not reuse a session's id while
 * a member lives). A session is kept after its run ends (a stale one can only make a caller an MCP
 * client, which restricts), the newest MAX_KEPT of them.
 */
import { procStat, type ProcessIdentity } from './identity.js';

const MAX_KEPT = 4096;

export class McpRuns {
  /** Session id (the run child's pid) -> the client that asked, newest last. */
  private readonly sessions = new Map<number, string>();

  /** A run for `client` started as pid (its session's leader). */
  started(pid: number, client: string): void {
    this.sessions.delete(pid);
    this.sessions.set(pid, client);
    while (this.sessions.size > MAX_KEPT) {
      const oldest = this.sessions.keys().next().value;
      if (oldest === undefined) break;
      this.sessions.delete(oldest);
    }
  }

  /** The MCP client whose run the caller is part of, or undefined. */
  clientOf(id: ProcessIdentity): string | undefined {
    if (this.sessions.size === 0) return undefined;
    const session = procStat(id.pid)?.session;
    const bySession = session === undefined ? undefined : this.sessions.get(session);
    if (bySession !== undefined) return bySession;
    // A caller that left the session (setsid) under a run still alive: its parents say so.
    for (const a of id.ancestors) {
      const c = this.sessions.get(a.pid);
      if (c !== undefined && procStat(a.pid)?.session === a.pid) return c;
    }
    return undefined;
  }
}
