/**
 * What every command needs from its surroundings: where the vault and the agent are, where the
 * passphrase comes from, and the audit sink operations record into.
 */
import type { Command } from 'commander';
import { socketPaths } from '../agent/index.js';
import { auditSink } from '../audit/index.js';
import { keywardHome, socketDir } from '../lib/paths.js';
import { vaultPaths, type Auth, type VaultPaths } from '../vault/index.js';
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
  return { file: passphraseFile(cmd), onNote: (m) => note(io, m), audit: auditSink(keywardHome()) };
}
