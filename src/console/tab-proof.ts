/**
 * A console tab outlives its agent (docs/CONSOLE.md, "A tab outlives its agent"): when the agent
 * stops, or a process of the user kills it, that process can take the console's port and answer
 * the tab the person still has open at the address keyward printed, asking for a login or an
 * approval's passphrase. So every login gives its tab a key of its own (kept in the tab's memory
 * only) and the key's id, and before the tab sends a passphrase, a code or an API key, or shows a
 * login form again, it asks whatever answers for a proof: HMAC-SHA-512 under that key of the id
 * and a nonce the tab chose, its first 32 bytes. Only the agent the tab logged in to can give it.
 *
 * A key per login, not one per agent: whoever holds one (an operator, say, whose page got it)
 * can prove nothing to another's tab. The keys are not vault secrets: they are credentials of
 * this process, as the session tokens are. A new agent knows none of the old one's: a tab of the
 * old one finds it went away.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { HttpError } from './http.js';

const NONCE = /^[A-Za-z0-9_-]{43}$/;
const ID = /^[A-Za-z0-9_-]{22}$/;
/** Keys remembered (tabs that logged in); past this, the oldest tab's proofs are refused. */
const MAX_KEYS = 1024;

export class TabProof {
  private readonly keys = new Map<string, Buffer>();

  /** A new tab's key and its id, base64url, for a login's answer. */
  issue(): { agentKeyId: string; agentKey: string } {
    const id = randomBytes(16).toString('base64url');
    const key = randomBytes(32);
    this.keys.set(id, key);
    for (const old of this.keys.keys()) {
      if (this.keys.size <= MAX_KEYS) break;
      this.keys.delete(old);
    }
    return { agentKeyId: id, agentKey: key.toString('base64url') };
  }

  /** The answer to a tab's hello: the proof over its id and nonce (32 bytes, base64url). */
  answer(body: Record<string, unknown>): { proof: string } {
    const { id, nonce } = body;
    if (typeof nonce !== 'string' || !NONCE.test(nonce) || typeof id !== 'string' || !ID.test(id))
      throw new HttpError(400, 'hello: an id and a nonce of 32 bytes, base64url');
    const key = this.keys.get(id);
    if (!key) throw new HttpError(404, 'hello: no tab of this agent has that id');
    const mac = createHmac('sha512', key)
      .update(
        Buffer.concat([
          Buffer.from(`keyward console hello\0${id}\0`),
          Buffer.from(nonce, 'base64url'),
        ]),
      )
      .digest();
    return { proof: mac.subarray(0, 32).toString('base64url') };
  }
}
