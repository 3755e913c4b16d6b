/**
 * The approval domain's public surface: pending requests, who may approve, remembered grants,
 * and the askpass channel.
 */
export {
  askpass,
  askpassEnv,
  askpassPin,
  askpassProblem,
  ENDED,
  type AskpassAnswer,
} from './askpass.js';
export {
  Broker,
  Grants,
  mayApprove,
  requestDigest,
  type Factor,
  type GrantScope,
  type How,
  type Outcome,
  type Settled,
  type Pending,
  type RequesterRef,
  type Vote,
} from './broker.js';
export { enrollTotp, hotp, newTotp, STEP_SECONDS, TOTP_SECRET, verifyTotp } from './totp.js';
export { TerminalChannel, type TerminalIo } from './terminal.js';
