/**
 * What every command needs from its surroundings: where the vault and the agent are, where the
 * passphrase comes from, and the audit sink operations record into.
 */
import type { Command } from 'commander';
import { socketPaths } from '../agent/index.js';
import { auditSink } from '../audit/index.js';
import { keywardHome, socketDir } from '../lib/paths.js';
import {
  KDF_INTERACTIVE,
  vaultPaths,
  type Auth,
  type OnDerive,
  type VaultPaths,
} from '../vault/index.js';
import { note, type Io } from './report.js';

export const agentSocket = (): string => socketPaths(socketDir()).agent;

export function paths(): VaultPaths {
  return vaultPaths(keywardHome());
}

export function passphraseFile(cmd: Command): string | undefined {
  const fromFlag = cmd.optsWithGlobals()['passphraseFile'] as string | undefined;
  const fromEnv = process.env['KEYWARD_PASSPHRASE_FILE'];
  return fromFlag ?? (fromEnv !== undefined && fromEnv !== '' ? fromEnv : undefined);
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
