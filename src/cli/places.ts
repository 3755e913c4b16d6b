/**
 * Where the agent is and where the passphrase comes from: what most agent commands need, without
 * the vault and audit modules context.ts brings (each command loads only what it runs).
 */
import type { Command } from 'commander';
import { socketPaths } from '../agent/index.js';
import { socketDir } from '../lib/paths.js';

export const agentSocket = (): string => socketPaths(socketDir()).agent;

export function passphraseFile(cmd: Command): string | undefined {
  const fromFlag = cmd.optsWithGlobals()['passphraseFile'] as string | undefined;
  const fromEnv = process.env['KEYWARD_PASSPHRASE_FILE'];
  return fromFlag ?? (fromEnv !== undefined && fromEnv !== '' ? fromEnv : undefined);
}
