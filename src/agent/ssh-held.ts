/**
 * A key the SSH agent holds (a vault key while unlocked, or one added with ssh-add), and the
 * lifetime of an added one: `ssh-add -t`, and the policy's `unlock.key_lifetime` counted from
 * its add (the one in force, applied to keys added before it too).
 */
import { KeywardError } from '../errors.js';
import type { SigningKey, SshReader } from '../keys/index.js';
import { CONSTRAIN_CONFIRM, CONSTRAIN_EXTENSION, CONSTRAIN_LIFETIME } from './ssh.js';

/** The longest delay a Node timer takes. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface Held {
  key: SigningKey;
  /** The blob it is listed and asked for under: an OpenSSH certificate's, else the key's. */
  blob?: Buffer;
  /** The comment ssh-add -l shows: the vault key's name, or what ssh-add sent. */
  comment: string;
  /** The name policy rules match: the vault key's name, or `ssh-add:COMMENT`. */
  target: string;
  source: 'vault' | 'ssh-add';
  confirm: boolean;
  addedAt?: number;
  expiresAt?: number;
  timer?: NodeJS.Timeout;
}

export const keyOf = (blob: Uint8Array) => Buffer.from(blob).toString('base64');

/** Ends h no later than a key_lifetime of capMs after its add: true when that moved its end. */
export function capTo(h: Held, capMs: number | undefined): boolean {
  if (capMs === undefined) return false;
  const end = (h.addedAt ?? Date.now()) + capMs;
  if (h.expiresAt !== undefined && h.expiresAt <= end) return false;
  h.expiresAt = end;
  return true;
}

/** Calls end at h's expiresAt (a timer takes at most 2^31 - 1 ms: longer, in such steps). */
export function armExpiry(h: Held, end: () => void): void {
  clearTimeout(h.timer);
  const left = (h.expiresAt ?? 0) - Date.now();
  if (left <= 0) return end();
  h.timer = setTimeout(() => armExpiry(h, end), Math.min(left, MAX_TIMER_MS));
  h.timer.unref();
}

/** The constraints of an ADD_ID_CONSTRAINED message (none for ADD_IDENTITY), to its end. */
export function readConstraints(
  r: SshReader,
  constrained: boolean,
): { lifetimeS: number | undefined; confirm: boolean } {
  let lifetimeS: number | undefined;
  let confirm = false;
  while (constrained && r.remaining > 0) {
    const c = r.byte();
    if (c === CONSTRAIN_LIFETIME) lifetimeS = r.u32();
    else if (c === CONSTRAIN_CONFIRM) confirm = true;
    else if (c === CONSTRAIN_EXTENSION) {
      // e.g. restrict-destination-v00@openssh.com: a constraint keyward can't enforce is
      // refused rather than ignored (as ssh-agent does).
      throw new KeywardError('USAGE', `unsupported key constraint ${r.text()}`);
    } else throw new KeywardError('USAGE', `unknown key constraint ${c}`);
  }
  if (r.remaining > 0) throw new KeywardError('PROTOCOL_ERROR', 'trailing bytes');
  return { lifetimeS, confirm };
}
