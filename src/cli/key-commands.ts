/**
 * key generate | list, ssh-env  (signing; docs/PROTOCOL.md, "SSH agent")
 */
import type { Command } from 'commander';
import { ed25519Blob, fingerprint, publicKeyLine, socketPaths } from '../agent/index.js';
import { UsageError } from '../errors.js';
import { socketDir } from '../lib/paths.js';
import { generateEd25519, listKeys, useVault } from '../vault/index.js';
import { auth, paths } from './context.js';
import type { Io } from './report.js';

export function registerKeyCommands(program: Command, io: Io): void {
  const key = program
    .command('key')
    .description('signing keys kept in the vault and served on the SSH agent socket');

  key
    .command('generate')
    .argument('<name>', 'key name, e.g. git-signing')
    .description('make a new key in the vault and print its public key')
    .option('--type <type>', 'ed25519 (ecdsa and rsa come later)', 'ed25519')
    .action(function (this: Command, name: string) {
      const type = this.opts<{ type: string }>().type;
      if (type !== 'ed25519') {
        throw new UsageError('USAGE', `key type ${type} is not supported yet`, {
          hint: 'use --type ed25519',
        });
      }
      const a = auth(this, io);
      const k = useVault(paths(), a, 'write', (v) => {
        a.audit.record({
          type: 'key.add',
          target: name,
          decision: 'allow',
          details: { keyType: 'ssh-ed25519' },
        });
        const made = generateEd25519(v, name);
        v.save();
        return made;
      });
      io.stdout(`${publicKeyLine(ed25519Blob(k.publicKey), name)}\n`);
    });

  key
    .command('list')
    .description('keys with their fingerprints, as ssh-keygen -l prints them')
    .option('--json', 'machine-readable output')
    .action(function (this: Command) {
      const keys = useVault(paths(), auth(this, io), 'read', (v) => listKeys(v)).map((k) => {
        const blob = ed25519Blob(k.publicKey);
        return {
          name: k.name,
          type: k.type,
          fingerprint: fingerprint(blob),
          publicKey: publicKeyLine(blob, k.name),
        };
      });
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${JSON.stringify(keys, null, 2)}\n`);
        return;
      }
      if (keys.length === 0)
        io.stderr('keyward: no keys yet (make one with: keyward key generate NAME)\n');
      for (const k of keys) io.stdout(`256 ${k.fingerprint} ${k.name} (ED25519)\n`);
    });

  program
    .command('ssh-env')
    .description('print the export line that points ssh, ssh-add and git at keyward')
    .action(() => {
      io.stdout(`export SSH_AUTH_SOCK=${socketPaths(socketDir()).ssh}\n`);
    });
}
