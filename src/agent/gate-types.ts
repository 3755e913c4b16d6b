/**
 * What the gate (gate.ts) is given: the agent it serves (GateHost) and one request (GateRequest).
 */
import type { TerminalChannel } from '../approval/index.js';
import type { AuditRecord } from '../audit/index.js';
import type { RequestKind } from '../policy/index.js';
import type { UnlockWindow } from './unlock.js';

export interface GateHost {
  window: UnlockWindow;
  record(r: AuditRecord): Promise<unknown>;
  lock(reason: string): Promise<void>;
  /** The approval program (KEYWARD_ASKPASS, else SSH_ASKPASS), from the agent's own environment. */
  askpass: string | undefined;
  /** The agent's own terminal, when it runs in the foreground on one. */
  terminal: TerminalChannel | undefined;
  env: NodeJS.ProcessEnv;
  /**
   * Why a process may not have a secret directly, when a run's proxy holds it for the run that
   * process belongs to (docs/PROXY.md): otherwise undefined.
   */
  heldByProxy?: (pid: number, target: string) => Promise<string | undefined>;
  /** Said first in every prompt (an agent started with --allow-debugger). */
  warning: string | undefined;
  /**
   * The web console, when it runs: it can give confirm approvals (with a login) and, once a
   * WebAuthn credential is registered in this vault, webauthn approvals.
   */
  console?: { hasWebauthn(): boolean; hasOperators(): boolean } | undefined;
}

/** One request for the gate: what is asked, of what, and how a person is told about it. */
export interface GateRequest {
  target: string;
  kind: RequestKind;
  action: string;
  auditType: 'secret.read' | 'key.sign' | 'credential.deliver' | 'vault.list' | 'audit.read';
  /**
   * What the caller wants, as a person reads it ("read the secret ..."). Built by the handler
   * with quote() around every part the caller controls: it goes into the prompt as it is.
   */
  what: string;
  /** A run's whole command line: `what` may cut a long one; the pending request keeps it all. */
  command?: readonly string[];
  exists: boolean;
  /**
   * Every use is confirmed by a person, whatever the policy would allow or remember, and why (it
   * joins the decision's explanation): a key added with ssh-add -c, a request through an agent
   * forwarded to another host.
   */
  confirmEachUse?: string | undefined;
  /**
   * One request for several values (a run): all its targets, and the rules a person approved
   * for it so far (filled in here). A person is asked once per rule, shown every target that
   * rule decides (`also`); a later value is not asked again only when it was one of those shown
   * (a policy applied during the wait can't widen an approval). A high_value rule asks for each.
   */
  together?: {
    targets: readonly string[];
    approved: Map<string, Set<string>>;
    /** Each approved rule's text as the person's answer found it (a rule changed since asks). */
    texts?: Map<string, string>;
  };
  /** For keyward run --proxy: the value goes to the run's proxy, never to a process. */
  proxied?: boolean;
  /** The value goes back to an MCP client (its model): only a rule with mcp_inline gives it. */
  mcpInline?: boolean;
  /**
   * What a remembered approval is bound to besides the action and the target: a later request
   * is covered only when this is the same. A run's is everything its prompt showed (program,
   * arguments, directory, proxied or not), a signature's the kind of data signed (an SSHSIG
   * namespace, a login's user and server); a read's is the target alone.
   */
  grantScope?: string;
}
