/**
 * The policy domain's public surface (docs/POLICY.md).
 */
export {
  APPROVAL_MODES,
  cacheIdleMs,
  CACHE_IDLE_DEFAULT_MS,
  durationMs,
  POLICY_MAX_BYTES,
  type ApprovalMode,
  type ParseResult,
  type Policy,
  type PolicyProblem,
  type PolicyRule,
  type McpPolicy,
  type ProxyPolicy,
  type RateLimitPolicy,
} from './schema.js';
export { parsePolicies, parsePolicy, parsePoliciesInWorker } from './parse-thread.js';
export {
  evaluate,
  withChannels,
  type ApprovalNeeded,
  type Caller,
  type Decision,
  type PolicyRequest,
  type RequestKind,
  type Remember,
} from './evaluate.js';
export { TokenBucket, UseCounter } from './limits.js';
export { weakAllows } from './lint.js';
export { linkedCallerPaths } from './paths.js';
export { diffPolicies, type PolicyDiff } from './diff.js';
export {
  applyPolicy,
  inForceSha,
  installDefaultPolicy,
  previewApply,
  type Applied,
} from './apply.js';
export {
  checkPolicyText,
  DEFAULT_POLICY,
  loadPolicy,
  PolicyInvalidError,
  policyPaths,
  policyFilesDigest,
  policyStamp,
  readApplied,
  readHistory,
  sha256Hex,
  type HistoryEntry,
  type Loaded,
  type SealedPolicy,
} from './store.js';
