/**
 * The agent domain's public surface (docs/PROTOCOL.md).
 */
// Types only: the daemon's code loads when an agent runs (daemon.ts), not with every client.
export type { Agent, AgentOptions } from './server.js';
export {
  agentApprovals,
  agentConsole,
  agentList,
  agentMcpPins,
  agentApprove,
  agentRead,
  agentRun,
  agentStatus,
  agentUnlock,
  AgentConnection,
  call,
  onAgentHello,
  onApprovalPending,
  type PendingNotice,
  errorFrom,
  jsonBody,
  type RunRequest,
  type RunSinks,
} from './client.js';
export {
  askpassFrom,
  runAgent,
  startAgent,
  stopAgent,
  tracerPid,
  type RunOptions,
} from './daemon.js';
export { checkAgentSocket, prepareSocketDir, socketPaths, type SocketPaths } from './socketdir.js';
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
export { identify, describeCaller, type ProcessIdentity } from './identity.js';
export { describeSignData, SSH } from './ssh.js';
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
