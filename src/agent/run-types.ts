/**
 * What the run service (run-service.ts) is given: the agent it serves (RunHost) and the
 * connection a run arrives on (RunConn).
 */
import type net from 'node:net';
import type { Actor, AuditRecord } from '../audit/index.js';
import type { SecureBuffer } from '../lib/secure.js';
import type { Policy } from '../policy/index.js';
import type { Vault } from '../vault/index.js';
import type { ProcessIdentity } from './identity.js';
import type { Peer } from './peer.js';
import type { Frame, FrameReader } from './protocol.js';

export interface RunConn extends Peer {
  socket: net.Socket;
  reader: FrameReader;
  /** Set once the run started: frames on this connection go to the run, not to requests. */
  stream?: (f: Frame) => void;
}

export interface RunHost {
  /** The open vault; throws AGENT_LOCKED. */
  vault(): Vault;
  /** Whether v is still the open vault (no lock or new unlock since). */
  stillOpen(v: Vault): boolean;
  authorize(
    conn: RunConn,
    req: {
      target: string;
      what: string;
      /** The whole command line, when `what` had to cut it. */
      command?: readonly string[];
      exists?: boolean;
      together?: { targets: readonly string[]; approved: Map<string, Set<string>> };
      proxied?: boolean;
      /** What a remembered approval of the run is bound to (gate.ts, GateRequest.grantScope). */
      grantScope?: string;
    },
  ): Promise<{ rule: string | undefined }>;
  /** The policy in force for the open vault. */
  policy(v: Vault): Policy;
  /** What the policy in force decides for the caller and a secret now (no approval asked). */
  decide(
    conn: RunConn,
    target: string,
  ): { decision: 'allow' | 'approve' | 'deny'; rule: string | undefined; highValue: boolean };
  /** Where a proxied run's CA certificate files go (the agent's private directory). */
  proxyDir: string;
  /** A copy of the value (cache or vault; credential.fetch), the caller frees it. */
  fetch(
    conn: RunConn,
    v: Vault,
    name: string,
    rule: string | undefined,
  ): { value: SecureBuffer; cached: boolean };
  /** A value of a sealed file goes to a run: the MCP gateway's scans look for it from now on. */
  projectReleased(file: Uint8Array, target: string, name: string): void;
  record(r: AuditRecord): Promise<unknown>;
  actor(id: ProcessIdentity): Actor;
  /** Takes n uses of the unlock window (false: its max_uses would be passed). */
  take(n: number): boolean;
  counted(): void;
}
