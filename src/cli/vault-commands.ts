/**
 * init, whoami, secret set / list / rm, passwd, rekey (read: read-command.ts).
 */
import type { Command } from 'commander';
import { InvalidArgumentError } from './commander.js';
import { UsageError } from '../errors.js';
import { socketDir } from '../lib/paths.js';
import { askOnTerminal } from '../lib/tty.js';
import {
  changePassphrase,
  createVault,
  KDF_BOUNDS,
  KDF_DEFAULT,
  KDF_INTERACTIVE,
  listSecrets,
  readHeaderInfo,
  rekeyVault,
  removeSecret,
  storeSecret,
  vaultExists,
  type KdfParams,
  type Vault,
  type VaultPaths,
} from '../vault/index.js';
import { auditInitHooks, auditSink } from '../audit/index.js';
import { installDefaultPolicy } from '../policy/index.js';
import { note, type Io } from './report.js';
import { agentList, agentStatus } from '../agent/index.js';
import { agentSocket, auth, passphraseFile, paths } from './context.js';
import { jsonText } from '../lib/text.js';

function intOption(min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}`);
    }
    return n;
  };
}

function kdfFrom(opts: { kdfOps?: number; kdfMemMib?: number }, io: Io): KdfParams {
  const kdf: KdfParams = {
    opsLimit: opts.kdfOps ?? KDF_DEFAULT.opsLimit,
    memLimitKiB: opts.kdfMemMib !== undefined ? opts.kdfMemMib * 1024 : KDF_DEFAULT.memLimitKiB,
  };
  if (kdf.opsLimit < KDF_INTERACTIVE.opsLimit || kdf.memLimitKiB < KDF_INTERACTIVE.memLimitKiB) {
    note(
      io,
      'warning: these KDF parameters are below libsodium\'s "interactive" level; a stolen vault file is cheaper to attack',
    );
  }
  return kdf;
}

/** What a new vault gets before and after its first save: audit keys and log, default policy. */
function initHooks(home: string): { setup: (v: Vault) => void; afterSave: (v: Vault) => void } {
  const audit = auditInitHooks(home);
  return {
    setup: audit.setup,
    afterSave: (v) => {
      audit.afterSave(v);
      const sink = auditSink(home);
      installDefaultPolicy(home, v, sink, new Date().toISOString().replace(/[:.]/g, '-'));
      sink.checkpoint(v);
    },
  };
}

function confirmForce(yes: boolean): void {
  if (yes) return;
  const answer = askOnTerminal(
    'Move the current vault aside and create a new, empty one? Type "yes": ',
  );
  if (answer === undefined) {
    throw new UsageError('CONFIRMATION_REQUIRED', 'init --force needs a confirmation', {
      hint: 'add --yes when no terminal is attached',
    });
  }
  if (answer !== 'yes') {
    throw new UsageError('CONFIRMATION_REQUIRED', 'not confirmed; nothing was changed');
  }
}

export function registerVaultCommands(program: Command, io: Io): void {
  const kdfOps = intOption(KDF_BOUNDS.opsMin, KDF_BOUNDS.opsMax);
  const kdfMem = intOption(KDF_BOUNDS.memMinKiB / 1024, KDF_BOUNDS.memMaxKiB / 1024);

  program
    .command('init')
    .description('create the vault (with a vault present: say so and exit 0)')
    .option('--force', 'move an existing vault aside (vault.kw.bak-TIME) and create a new one')
    .option('--yes', 'with --force: do not ask for confirmation')
    .option('--keyring', 'also keep a key in the OS keyring so unlock needs no passphrase')
    .option('--kdf-ops <n>', 'argon2id passes (default 3)', kdfOps)
    .option('--kdf-mem-mib <n>', 'argon2id memory in MiB (default 256)', kdfMem)
    .action(function (this: Command) {
      const o = this.opts<{
        force?: boolean;
        yes?: boolean;
        keyring?: boolean;
        kdfOps?: number;
        kdfMemMib?: number;
      }>();
      const p = paths();
      if (vaultExists(p) && !o.force) {
        io.stdout(`Already initialized: ${p.file}\n`);
        return;
      }
      if (o.force && vaultExists(p)) confirmForce(o.yes === true);
      const r = createVault(
        p,
        { file: passphraseFile(this) },
        {
          kdf: kdfFrom(o, io),
          keyring: o.keyring === true,
          force: o.force === true,
          ...initHooks(p.home),
        },
      );
      if (!r.created) {
        io.stdout(`Already initialized: ${p.file}\n`);
        return;
      }
      if (r.backup !== undefined) io.stdout(`Moved the previous vault to ${r.backup}\n`);
      io.stdout(`Initialized keyward vault ${r.vaultId} at ${p.file}\n`);
      if (o.keyring)
        io.stdout('The OS keyring holds a key for this vault; the passphrase still opens it.\n');
    });

  program
    .command('whoami')
    .description('non-sensitive facts: vault path, key ids, agent state (never a secret)')
    .option('--json', 'machine-readable output')
    .action(async function (this: Command) {
      const p = paths();
      const sock = socketDir();
      const st = await agentStatus(agentSocket());
      const agentState = st
        ? `running (pid ${String(st['pid'])}), ${st['locked'] ? 'locked' : 'unlocked'}`
        : 'not running';
      const h = vaultExists(p) ? headerFacts(p) : undefined;
      if (this.opts<{ json?: boolean }>().json) {
        const facts = {
          home: p.home,
          vault: p.file,
          initialized: h !== undefined,
          ...h,
          socketDir: sock,
          agent: agentState,
        };
        io.stdout(`${jsonText(facts, 2)}\n`);
        return;
      }
      io.stdout(`home:       ${p.home}\n`);
      if (h === undefined) {
        io.stdout(`vault:      none (create one with: keyward init)\n`);
      } else {
        io.stdout(`vault:      ${p.file}\n`);
        io.stdout(`vault id:   ${h.vaultId}\n`);
        io.stdout(`key id:     ${h.keyId}\n`);
        io.stdout(`format:     version ${h.formatVersion}, generation ${h.generation}\n`);
        io.stdout(`unlock by:  ${h.unlock.join(', ')}\n`);
      }
      io.stdout(`sockets:    ${sock}\n`);
      io.stdout(`agent:      ${agentState}\n`);
    });

  const secret = program
    .command('secret')
    .description('manage secrets (values are read from standard input only)');

  secret
    .command('set')
    .argument('<name>', 'secret name, e.g. github/token')
    .description('store a secret; the value is read from standard input (never from arguments)')
    .option('--raw', 'keep a trailing newline instead of stripping one')
    // A value after the name is refused with the reason, not with commander's "too many
    // arguments" (and never echoed).
    .allowExcessArguments(true)
    .action(function (this: Command, name: string) {
      if (this.args.length > 1)
        throw new UsageError(
          'USAGE',
          'a secret value never goes on the command line: it lands in your shell history, and any process can read it in /proc while keyward runs. Treat the value you typed as exposed: rotate it',
          {
            hint: `printf '%s' "$VALUE" | keyward secret set ${name}   (or keyward secret set ${name}, then type it)`,
          },
        );
      const r = storeSecret(paths(), auth(this, io), name, {
        raw: this.opts<{ raw?: boolean }>().raw === true,
      });
      io.stderr(
        `keyward: ${r.result === 'created' ? 'stored' : 'updated'} ${name} (${r.size} bytes)\n`,
      );
    });

  secret
    .command('list')
    .description('names and metadata, never values')
    .option('--json', 'machine-readable output')
    .action(async function (this: Command) {
      // Through the agent when one runs, as `read`: a locked one refuses (exit 5).
      const viaAgent = await agentStatus(agentSocket());
      const entries = viaAgent
        ? await agentList(agentSocket())
        : listSecrets(paths(), auth(this, io));
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${jsonText(entries, 2)}\n`);
        return;
      }
      if (entries.length === 0) {
        io.stderr('keyward: no secrets yet (add one with: keyward secret set NAME)\n');
        return;
      }
      const width = Math.max(4, ...entries.map((e) => e.name.length));
      io.stdout(`${'NAME'.padEnd(width)}  ${'BYTES'.padStart(8)}  UPDATED\n`);
      for (const e of entries) {
        io.stdout(`${e.name.padEnd(width)}  ${String(e.size).padStart(8)}  ${e.updated}\n`);
      }
    });

  secret
    .command('rm')
    .argument('<name>', 'secret name')
    .description('remove a secret')
    .action(function (this: Command, name: string) {
      removeSecret(paths(), auth(this, io), name);
      io.stderr(`keyward: removed ${name}\n`);
    });

  program
    .command('passwd')
    .description('change the vault passphrase (rewraps the data key)')
    .option('--new-passphrase-file <file>', 'read the new passphrase from FILE (mode 0600)')
    .option('--kdf-ops <n>', 'argon2id passes for the new passphrase', kdfOps)
    .option('--kdf-mem-mib <n>', 'argon2id memory in MiB for the new passphrase', kdfMem)
    .action(function (this: Command) {
      const o = this.opts<{ newPassphraseFile?: string; kdfOps?: number; kdfMemMib?: number }>();
      changePassphrase(paths(), auth(this, io), { file: o.newPassphraseFile }, kdfFrom(o, io));
      io.stdout('Passphrase changed.\n');
    });

  program
    .command('rekey')
    .description(
      'draw a new data key and re-encrypt everything (crash-safe: old or new, never neither)',
    )
    .action(function (this: Command) {
      const r = rekeyVault(paths(), auth(this, io));
      io.stdout(`Rekeyed. New key id: ${readHeaderInfo(paths()).keyId}\n`);
      if (r.keyringSlot === 'dropped') {
        note(
          io,
          'warning: the OS keyring was not available, so its slot was removed; unlock now needs the passphrase',
        );
      }
      if (r.keyringSlot === 'unstored') {
        note(
          io,
          "warning: the OS keyring refused the vault's new key; unlock needs the passphrase until keyward rekey runs again with the keyring available",
        );
      }
    });
}

function headerFacts(p: VaultPaths): {
  vaultId: string;
  keyId: string;
  formatVersion: number;
  generation: number;
  unlock: string[];
} {
  const h = readHeaderInfo(p);
  return {
    vaultId: h.vaultId,
    keyId: h.keyId,
    formatVersion: h.version,
    generation: h.generation,
    unlock: h.slots.map((s) =>
      s.type === 'passphrase'
        ? `passphrase (argon2id, ${s.kdf.opsLimit} passes, ${s.kdf.memLimitKiB / 1024} MiB)`
        : s.type,
    ),
  };
}
