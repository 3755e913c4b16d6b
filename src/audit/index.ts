/**
 * The audit domain's public surface (docs/AUDIT.md).
 */
export {
  EVENT_TYPES,
  isEventType,
  type Actor,
  type AuditRecord,
  type EventType,
} from './events.js';
export { GroupCommitter } from './group.js';
export { AuditLog, type AuditOptions, type Head } from './log.js';
export { currentProcessActor } from './actor.js';
export {
  listSegments,
  verifySegments,
  type Checkpoint,
  type Finding,
  type RecordedGap,
  type VerifyResult,
} from './verify.js';
export {
  formatJournald,
  formatSyslog,
  NO_SHIPPING,
  readShipFile,
  sameShipping,
  shipConfigOf,
  writeShipFile,
  type ShipConfig,
  type ShippedEntry,
} from './ship.js';
export {
  findBreak,
  gapRecord,
  readCheckpoints,
  recordedBreaks,
  type Break,
  type SealedCheckpoint,
} from './checkpoint.js';
export { auditPaths } from './state.js';
export {
  agentAtBreak,
  resumeRestoredLog,
  auditInitHooks,
  auditSink,
  breakWarning,
  checkpointAtLock,
  headOf,
  initOrRepair,
  lenientAuditSink,
  rekeyBox,
  writeCheckpoint,
} from './service.js';
export { acknowledge, entryHashAt, verifyLog, type VerifyRequest } from './review.js';
export { readEntries, verifyAgainst, type EntrySelection, type ReadEntry } from './read.js';
export { readSeedFile, writeSeedHex, writeSeedQr } from './seed.js';
export type { CopyComparison } from './copy.js';
export { boxTrustOf } from './vault-keys.js';
export type { BoxTrust } from './box.js';
