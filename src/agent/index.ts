/**
 * The agent domain's public surface (docs/PROTOCOL.md).
 */
// Types only: the daemon's code loads when an agent runs (daemon.ts), not with every client.
import type { RunOptions } from './daemon.js';
import type { startAgent as StartAgent } from './start.js';
export type { Agent, AgentOptions } from './server.js';
export {
  agentApprovals,
  agentConsole,
  agentKeys,
  agentList,
  agentMcpPins,
  agentApprove,
  agentRead,
  agentProjectCheck,
  agentProjectRead,
  agentRun,
  agentUnlock,
  type RunRequest,
  type RunSinks,
} from './requests.js';
export {
  agentStatus,
  AgentConnection,
  call,
  onAgentHello,
  onApprovalPending,
  stopAgent,
  type PendingNotice,
  errorFrom,
  jsonBody,
} from './client.js';
export type { RunOptions } from './daemon.js';
/*
 * Starting, running and stopping an agent load the daemon's code (and the approval domain) when
 * called, not with every client that imports this entry.
 */
export async function runAgent(o: RunOptions): Promise<void> {
  return (await import('./daemon.js')).runAgent(o);
}
export async function startAgent(
  ...args: Parameters<typeof StartAgent>
): ReturnType<typeof StartAgent> {
  return (await import('./start.js')).startAgent(...args);
}
export { checkAgentSocket, prepareSocketDir, socketPaths, type SocketPaths } from './socketdir.js';
export { agentReadBlocking } from './read-blocking.js';
export {
  FrameReader,
  frameHead,
  MAX_FRAME,
  PROTOCOL_VERSION,
  REQ,
  RES_ERROR,
  RES_HELLO,
  RES_OK,
  type Frame,
} from './protocol.js';
export { describeCaller, type ProcessIdentity } from './identity.js';
export {
  INSTRUCTIONS,
  pinnedEntry,
  readPinRecord,
  trustWaiting,
  waitingEntry,
  waitingNames,
  writePinRecord,
  type PinRecord,
  type ServerRecord,
  type PinEntry,
} from './mcp-pins.js';
