/**
 * The approval domain's public surface: pending requests, who may approve, remembered grants,
 * and the askpass channel.
 */
export {
  askpass,
  Broker,
  Grants,
  mayApprove,
  type GrantScope,
  type Outcome,
  type Pending,
  type RequesterRef,
} from './broker.js';
export { enrollTotp, hotp, STEP_SECONDS, TOTP_SECRET, verifyTotp } from './totp.js';
export { TerminalChannel, type TerminalIo } from './terminal.js';
