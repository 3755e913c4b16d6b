/**
 * A console tab outlives its agent (docs/CONSOLE.md, "A tab outlives its agent"): when the agent
 * stops, or a process of the user kills it, that process can take the console's port and answer
 * the tab the person still has open at the address keyward printed, asking for a login or an
 * approval's passphrase. So every login gives the tab this agent's key (kept in the tab's memory
 * only), and before the tab sends a passphrase, a code or an API key, or shows a login form again,
 * it asks whatever answers for a proof: HMAC-SHA-512 under that key of a nonce the tab chose, its
 * first 32 bytes. Only the agent the tab logged in to can give it.
 *
 * The key is not a vault secret: it is a credential of this process, as the session tokens are,
 * and goes only to a tab that logged in (with the passphrase, a security key or an operator's
 * credential). A new agent has a new key: a tab of the old one knows it went away.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { HttpError } from './http.js';

const LABEL = Buffer.from('keyward console hello\0');
const NONCE = /^[A-Za-z0-9_-]{43}$/;

export class TabProof {
  private readonly key = randomBytes(32);

  /** What a login answers with, for the tab's memory: the key, base64url. */
  get forTab(): string {
    return this.key.toString('base64url');
  }

  /** The answer to a tab's hello: the proof over its nonce (32 bytes, base64url). */
  answer(body: Record<string, unknown>): { proof: string } {
    const n = body['nonce'];
    if (typeof n !== 'string' || !NONCE.test(n))
      throw new HttpError(400, 'hello: a nonce of 32 bytes, base64url');
    const mac = createHmac('sha512', this.key)
      .update(Buffer.concat([LABEL, Buffer.from(n, 'base64url')]))
      .digest();
    return { proof: mac.subarray(0, 32).toString('base64url') };
  }
}
