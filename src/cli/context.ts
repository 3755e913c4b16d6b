/**
 * What every command needs from its surroundings: where the vault and the agent are, where the
 * passphrase comes from, and the audit sink operations record into.
 */
import type { Command } from 'commander';
import { auditSink } from '../audit/index.js';
import { keywardHome } from '../lib/paths.js';
import {
  KDF_INTERACTIVE,
  vaultPaths,
  type Auth,
  type OnDerive,
  type VaultPaths,
} from '../vault/index.js';
import { note, type Io } from './report.js';
import { passphraseFile } from './places.js';

export { agentSocket, passphraseFile } from './places.js';

export function paths(): VaultPaths {
  return vaultPaths(keywardHome());
}

export function auth(cmd: Command, io: Io): Auth {
  return {
    file: passphraseFile(cmd),
    onNote: (m) => note(io, m),
    onDerive: derivingLine(io),
    audit: auditSink(keywardHome()),
  };
}

/**
 * "deriving key…" on a terminal while argon2id runs at more than libsodium's interactive cost
 * (the default takes about half a second, seconds on a busy machine), erased when it ends.
 */
function derivingLine(io: Io): OnDerive | undefined {
  if (!process.stderr.isTTY) return undefined;
  return (kdf) => {
    const quick =
      kdf.opsLimit <= KDF_INTERACTIVE.opsLimit && kdf.memLimitKiB <= KDF_INTERACTIVE.memLimitKiB;
    if (quick) return undefined;
    io.stderr('keyward: deriving key…');
    return () => io.stderr('\r\x1b[K');
  };
}
