/**
 * Every record's value opened at once, for what must see them all (format 1's open, rekey):
 * through one secure scratch buffer, since a secure allocation per record would run the
 * process out of memory mappings on a large vault.
 */
import { MUST_LOCK, secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import { openInto } from './crypto.js';
import { corruptError, recordAd } from './format.js';
import type { Entry } from './records.js';

/**
 * Opens each entry's value under key, in order, into one secure scratch buffer (zeroed after
 * each): any number of records costs one secure allocation here, not one per record (each
 * holds memory mappings until the garbage collector runs, and a process has 65,530 of them).
 * A record larger than MUST_LOCK opens into a buffer of its own: a scratch that large could be
 * left unlocked (secureAlloc), and every small value would pass through it (found in review).
 */
export function eachValue(
  vaultId: Buffer,
  entries: readonly Entry[],
  key: SecureBuffer,
  fn: (e: Entry, plain: SecureBuffer, ad: Buffer) => void,
): void {
  const small = (e: Entry) => e.box.length <= MUST_LOCK;
  const longest = entries.reduce((m, e) => (small(e) ? Math.max(m, e.box.length) : m), 0);
  const scratch = secureAlloc(longest);
  try {
    for (const [i, e] of entries.entries()) {
      const own = small(e) ? undefined : secureAlloc(e.box.length);
      const into = own ?? scratch;
      try {
        const ad = recordAd(vaultId, e.id, e.name);
        const len = openInto(key, e.box, ad, into);
        if (len === undefined)
          throw corruptError(`vault record ${i + 1} failed authentication (tampered or damaged)`);
        try {
          fn(e, into.subarray(0, len) as SecureBuffer, ad);
        } finally {
          into.fill(0, 0, len);
        }
      } finally {
        secureFree(own);
      }
    }
  } finally {
    secureFree(scratch);
  }
}
