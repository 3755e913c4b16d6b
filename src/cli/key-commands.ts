/**
 * key generate | import | list | rm, ssh-env  (signing; docs/PROTOCOL.md, "SSH agent")
 */
import type { Command } from 'commander';
import { agentKeys, agentStatus, socketPaths } from '../agent/index.js';
import { UsageError } from '../errors.js';
import {
  deleteKey,
  fingerprint,
  generateKey,
  importKey,
  listKeys,
  publicKeyLine,
  typeLabel,
  type KeyType,
} from '../keys/index.js';
import { hardenProcess } from '../lib/libc.js';
import { socketDir } from '../lib/paths.js';
import { withoutMallocCache } from '../lib/process.js';
import { useVault } from '../vault/index.js';
import { agentSocket, auth, paths } from './context.js';
import type { Io } from './report.js';
import { jsonText } from '../lib/text.js';

/**
 * The vault's keys from the agent when one runs (no passphrase asked), or undefined when none
 * does: then the vault is opened directly. A locked agent refuses (exit 5), as `read` and
 * `secret list` do. A `precheck` (key generate's "is the name taken?") is a convenience: a
 * locked agent, or a policy that doesn't allow the list outright, gives undefined.
 */
async function keysFromAgent(
  precheck = false,
): Promise<Array<{ name: string; type: string; bits: number; publicBlob: Buffer }> | undefined> {
  const status = await agentStatus(agentSocket());
  if (!status || (precheck && status['locked'])) return undefined;
  return agentKeys(agentSocket(), precheck);
}

const TYPES: Record<string, KeyType> = {
  ed25519: 'ssh-ed25519',
  ecdsa: 'ecdsa-sha2-nistp256',
  'ecdsa-p256': 'ecdsa-sha2-nistp256',
  'ecdsa-p384': 'ecdsa-sha2-nistp384',
  'ecdsa-p521': 'ecdsa-sha2-nistp521',
  rsa: 'ssh-rsa',
};

/**
 * A command about to parse a private key runs as the agent does: glibc's per-thread cache off
 * (an exec of this same process, once) and M_PERTURB on, so what Node's decipher and OpenSSL's
 * parse copy and free is overwritten when freed (found in review: an imported key's private
 * numbers stayed in the CLI's heap; docs/THREAT-MODEL.md, "ECDSA and RSA keys").
 */
function asKeyHolder(): void {
  withoutMallocCache();
  hardenProcess();
}

export function registerKeyCommands(program: Command, io: Io): void {
  const key = program
    .command('key')
    .description('signing keys kept in the vault and served on the SSH agent socket');

  key
    .command('generate')
    .argument('<name>', 'key name, e.g. git-signing')
    .description('make a new key in the vault and print its public key')
    .option(
      '--type <type>',
      'ed25519, ecdsa-p256 (ecdsa), ecdsa-p384, ecdsa-p521 or rsa',
      'ed25519',
    )
    .option('--bits <n>', 'RSA modulus size: 2048 to 8192', '3072')
    .action(async function (this: Command, name: string) {
      asKeyHolder();
      const o = this.opts<{ type: string; bits: string }>();
      const type = TYPES[o.type];
      if (!type) {
        throw new UsageError('USAGE', `unknown key type ${o.type}`, {
          hint: `use --type ${Object.keys(TYPES).join(', ')}`,
        });
      }
      const bits = Number(o.bits);
      if (!/^\d+$/.test(o.bits) || bits < 2048 || bits > 8192)
        throw new UsageError('USAGE', `--bits ${o.bits} is not between 2048 and 8192`);
      // A name already taken is said before the passphrase is asked, when an unlocked agent can
      // tell (names are encrypted: without it, only the vault opened can).
      if ((await keysFromAgent(true))?.some((k) => k.name === name))
        throw new UsageError('USAGE', `a key named ${name} exists`, {
          hint: 'choose another name',
        });
      const k = generateKey(paths(), auth(this, io), name, type, bits);
      io.stdout(`${publicKeyLine(k.publicBlob, name)}\n`);
    });

  key
    .command('import')
    .argument('<file>', 'an OpenSSH private key file (what ssh-keygen writes)')
    .description('copy a private key file into the vault (the file is left as it is)')
    .option('--name <name>', 'key name (default: the key comment, else the file name)')
    .option(
      '--key-passphrase-file <file>',
      "a file (mode 0600) holding the key file's passphrase; else it is asked on the terminal",
    )
    .action(function (this: Command, file: string) {
      asKeyHolder();
      const o = this.opts<{ name?: string; keyPassphraseFile?: string }>();
      const k = importKey(paths(), auth(this, io), o.name, file, {
        keyPassphraseFile: o.keyPassphraseFile,
      });
      io.stderr(
        `keyward: imported ${k.name} (${k.bits} ${fingerprint(k.publicBlob)} ${typeLabel(k.type)}); ` +
          `you may now delete ${file}\n`,
      );
      io.stdout(`${publicKeyLine(k.publicBlob, k.name)}\n`);
    });

  key
    .command('list')
    .description('keys with their fingerprints, as ssh-keygen -l prints them')
    .option('--json', 'machine-readable output')
    .action(async function (this: Command) {
      const held =
        (await keysFromAgent()) ?? useVault(paths(), auth(this, io), 'read', (v) => listKeys(v));
      const keys = held.map((k) => ({
        name: k.name,
        type: k.type,
        bits: k.bits,
        fingerprint: fingerprint(k.publicBlob),
        publicKey: publicKeyLine(k.publicBlob, k.name),
      }));
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${jsonText(keys, 2)}\n`);
        return;
      }
      if (keys.length === 0)
        io.stderr('keyward: no keys yet (make one with: keyward key generate NAME)\n');
      for (const k of keys)
        io.stdout(`${k.bits} ${k.fingerprint} ${k.name} (${typeLabel(k.type)})\n`);
    });

  key
    .command('rm')
    .argument('<name>', 'key name')
    .description('delete a key from the vault (asks the passphrase)')
    .action(function (this: Command, name: string) {
      deleteKey(paths(), auth(this, io), name);
      io.stderr(`keyward: removed the key ${name}\n`);
    });

  program
    .command('ssh-env')
    .description('print the export line that points ssh, ssh-add and git at keyward')
    .action(async () => {
      io.stdout(`export SSH_AUTH_SOCK=${socketPaths(socketDir()).ssh}\n`);
      // The SSH protocol carries no hint: a locked or absent agent just has "no identities".
      // Said here, on stderr, so `eval "$(keyward ssh-env)"` still works.
      const status = await agentStatus(agentSocket());
      if (!status)
        io.stderr(
          'keyward: warning: no agent runs: ssh will find no keys until keyward agent start && keyward unlock\n',
        );
      else if (status['locked'])
        io.stderr(
          'keyward: warning: the agent is locked: ssh will find no keys until keyward unlock\n',
        );
    });
}
