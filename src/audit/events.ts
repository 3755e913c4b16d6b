/** The closed list of audit event types (docs/AUDIT.md, "Events"), pinned by test/audit.test.ts. */
export const EVENT_TYPES = [
  'agent.start',
  'agent.stop',
  'vault.init',
  'vault.unlock',
  'vault.unlock_failed',
  'vault.lock',
  'vault.passwd',
  'vault.rekey',
  'secret.set',
  'secret.rm',
  'secret.read',
  'vault.list',
  'key.add',
  'key.remove',
  'key.sign',
  'approval.requested',
  'approval.granted',
  'approval.denied',
  'approval.expired',
  'approval.askpass_failed',
  'approval.factor_failed',
  'approval.operator',
  'credential.fetch',
  'credential.deliver',
  'credential.drop',
  'credential.evict',
  'run.exit',
  'mcp.call',
  'peer.rejected',
  'policy.loaded',
  'policy.changed',
  'policy.drift',
  'audit.rotated',
  'audit.recovered',
  'audit.gap',
  'audit.acknowledged',
  'audit.rekeyed',
  'audit.key_exported',
  'audit.read',
  'audit.restored',
  'backup.created',
  'totp.enrolled',
  'console.login',
  'console.logout',
  'console.credential',
  'operator.login',
  'operator.key',
  'project.identity',
  'project.resealed',
  'project.unsealed',
  'proxy.substitute',
  'proxy.block',
  'proxy.limit',
] as const;

export type EventType = (typeof EVENT_TYPES)[number];

export function isEventType(s: string): s is EventType {
  return (EVENT_TYPES as readonly string[]).includes(s);
}

/** Who caused an event. For the CLI in direct mode, the CLI process itself. */
export interface Actor {
  uid?: number;
  pid?: number;
  exe?: string;
  cmdline?: string[];
  cwd?: string;
  /** Names of loader variables in its environment (LD_PRELOAD, NODE_OPTIONS...), never values. */
  loaderVars?: string[];
  /** It hid its executable, directory and environment from the agent. */
  hidden?: boolean;
  /** The kernel could not say it is the process that connected (no SO_PEERPIDFD). */
  unpinned?: boolean;
}

/** What a caller records. Never a secret value: names, decisions, and hashes only. */
export interface AuditRecord {
  type: EventType;
  actor?: Actor;
  target?: string;
  decision?: 'allow' | 'deny' | 'error' | 'info';
  reason?: string;
  details?: Record<string, string | number | boolean | null>;
}
