/**
 * The audit state's box key, checked against the vault's by a writer that holds the vault
 * (docs/AUDIT.md, "Keys"): anyone who can write the state can name a key of their own there (the
 * file is the user's), and would open every body sealed to it.
 */
import type { AuditRecord } from './events.js';
import { readState, writeState, type AuditPaths, type AuditState } from './state.js';
import { secureFree } from '../lib/secure.js';

/**
 * The box keys a writer that holds the vault knows (docs/AUDIT.md, "Keys"). `known`: the key as
 * the vault last sealed it beside the log (audit/box: one decryption; undefined when absent or
 * not the vault's). `confirm()`: the vault's own, from its box secret (reading that record
 * authenticates every later one of the vault: a few hundred ms in a vault of 100,000), with the
 * keys audit rekey retired, which still open with the vault. `remember()` seals the current one
 * beside the log again.
 */
export interface BoxTrust {
  known: Buffer | undefined;
  confirm(): { current: Buffer; retired: Buffer[] } | undefined;
  remember(current: Buffer): void;
  /** Who found a wrong key, for the record: "the agent", "the command line". */
  by: string;
}

/** A wrong key found: the record of the break, and its reason for the person. */
export interface BoxGap {
  record: AuditRecord;
  reason: string;
}

/**
 * Under the log's lock, before anything is sealed: the state's box key is the vault's, or it is
 * set back to it (st changed and written; `wrote`). A key the vault holds (a retired one, left by
 * a rekey that stopped between its two writes) is set back silently: those bodies open. Any other
 * is a break (`gap`).
 */
export function checkBox(
  trust: BoxTrust | undefined,
  st: AuditState,
  paths: AuditPaths,
): { wrote: boolean; gap?: BoxGap } {
  // eslint-disable-next-line no-restricted-syntax -- public keys
  if (trust === undefined || trust.known?.equals(st.boxPublicKey)) return { wrote: false };
  // Not the key sealed beside the log (or none is): asked of the vault itself.
  const vault = trust.confirm();
  if (vault === undefined) return { wrote: false };
  // The copy beside the log differed from the state's key, or was missing: one of them was not
  // the vault's, so the copy is sealed again either way.
  trust.remember(vault.current);
  // eslint-disable-next-line no-restricted-syntax -- public keys
  if (st.boxPublicKey.equals(vault.current)) return { wrote: false };
  // eslint-disable-next-line no-restricted-syntax -- public keys
  const ours = vault.retired.some((k) => k.equals(st.boxPublicKey));
  st.boxPublicKey = Buffer.from(vault.current);
  writeState(paths, st);
  if (ours) return { wrote: true };
  const reason =
    "the audit state named a box key that is not this vault's: bodies sealed to it open only with that key's owner; the state names the vault's key again";
  return {
    wrote: true,
    gap: {
      record: {
        type: 'audit.gap',
        decision: 'error',
        reason,
        details: { checkpoint: 'box key', detectedBy: trust.by },
      },
      reason,
    },
  };
}

/** The state pointed at a new box public key (audit rekey); the caller holds the log's lock. */
export function replaceBoxKey(paths: AuditPaths, publicKey: Buffer): void {
  const st = readState(paths);
  try {
    writeState(paths, { ...st, boxPublicKey: publicKey });
  } finally {
    secureFree(st.key);
  }
}
