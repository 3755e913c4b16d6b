/**
 * The unlock window's dealings with vault.kw around the open vault: opening it (a failed unlock
 * is recorded and counts toward the circuit breaker), the stamp that tells another process's
 * save without a stat at every request, and the audit checkpoints sealed into it at a lock.
 */
import fs from 'node:fs';
import path from 'node:path';
import { AuditLog, agentAtBreak, checkpointAtLock, type AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { WatchedStamp } from '../lib/watch.js';
import { Vault, type Unlock, type VaultPaths } from '../vault/index.js';
import { actorOf, type ProcessIdentity } from './identity.js';
import type { WindowHost } from './window-host.js';

/** The vault opened for a window; a wrong passphrase is recorded and counted. */
export async function openForWindow(
  host: WindowHost,
  vp: VaultPaths,
  unlock: Unlock,
  by: ProcessIdentity,
  mode: 'agent' | 'ssh-agent',
): Promise<Vault> {
  try {
    // argon2id off the event loop: other clients are answered meanwhile.
    return await Vault.openAsync(vp, unlock);
  } catch (e) {
    if (
      e instanceof KeywardError &&
      (e.code === 'VAULT_BAD_PASSPHRASE' || e.code === 'KEYRING_KEY_MISMATCH')
    ) {
      await host.record({
        type: 'vault.unlock_failed',
        decision: 'deny',
        reason: e.message,
        actor: actorOf(by),
        details: { mode },
      });
      host.noteDenial();
    }
    throw e;
  }
}

/**
 * The checkpoints sealed at a lock (underVault runs a seal under the vault's lock), and the
 * record of a break found; what became of them is said for the lock's record.
 */
export function sealAtLock(
  home: string,
  v: Vault,
  agentLast: { seq: number; hash: string } | undefined,
  underVault: (save: () => void) => void,
): { checkpoints: string; gap?: AuditRecord } {
  try {
    return checkpointAtLock(new AuditLog(home), v, agentLast, underVault);
  } catch (e) {
    // The checkpoints are a defence in depth; the lock happens regardless. The log could not
    // be looked at (made unreadable, say): the vault keeps the agent's last entry, as at a
    // break against it (whether the agent's entries are still there can't be told).
    return {
      checkpoints: `no checkpoint sealed (${e instanceof Error ? e.message : 'failed'})${agentAtBreak(v, agentLast, true, underVault)}`,
    };
  }
}

/** Takes vault.kw's stamp again when the watch on it and its directory sees a change. */
export function watchVaultFile(file: string): WatchedStamp {
  return new WatchedStamp(
    () => [path.dirname(file), file].filter((f) => fs.existsSync(f)),
    () => vaultFileStamp(file),
  );
}

/**
 * vault.kw's stamp: its inode, size and times. The change time too: a rewrite in place at the
 * same size with the modification time put back (touch -r) still moves it, and its owner can't
 * set it back.
 */
export function vaultFileStamp(file: string): string {
  const st = fs.statSync(file, { throwIfNoEntry: false, bigint: true });
  return st ? `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}` : '';
}

/** Whether a vaultFileStamp is of the file with this inode and length (the one a save wrote). */
export function stampIsOf(stamp: string, file: { ino: bigint; size: number }): boolean {
  return stamp.startsWith(`${file.ino}:${file.size}:`);
}
