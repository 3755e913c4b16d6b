/**
 * operator key create NAME --groups G | key list [--json] | key revoke NAME (docs/OPERATORS.md).
 * Direct on the vault, with the passphrase (an agent that runs reads the change at its next
 * request): an API key lets someone approve, so adding one takes what opening the vault takes.
 */
import type { Command } from 'commander';
import { jsonText, printable } from '../lib/text.js';
import { note, type Io } from './report.js';

/** --groups a,b --groups c: every group once, in order. */
function groupList(v: string, prev: string[] = []): string[] {
  return [...prev, ...v.split(',').map((g) => g.trim())];
}

export function registerOperatorCommands(program: Command, io: Io): void {
  const operator = program
    .command('operator')
    .description('people who approve requests from elsewhere: OIDC (in policy) and API keys');
  const key = operator.command('key').description("operators' API keys, kept in the vault");

  key
    .command('create')
    .argument('<name>', 'a name for the key (who holds it), e.g. alice-oncall')
    .requiredOption(
      '--groups <groups>',
      'the operator groups it is in (comma-separated)',
      groupList,
    )
    .option(
      '--as <operator-id>',
      "the operator it stands for: its holder's id at the identity provider, so one person counts once in two-person control (default key:NAME)",
    )
    .description('make an API key for an operator; it is shown once (asks the passphrase)')
    .action(async function (this: Command, name: string) {
      const [{ auth, paths }, ops, { useVault }] = await Promise.all([
        import('./context.js'),
        import('../operators/index.js'),
        import('../vault/index.js'),
      ]);
      const { groups: given, as } = this.opts<{ groups: string[]; as?: string }>();
      const groups = ops.checkGroups(given);
      ops.checkKeyName(name);
      if (as !== undefined) ops.checkOperatorId(as);
      const a = auth(this, io);
      useVault(paths(), a, 'write', (v) => {
        const { key: made, stored } = ops.createKey(v, name, groups, new Date(), as);
        try {
          v.save();
          a.audit.record({
            type: 'operator.key',
            decision: 'info',
            reason: 'created',
            details: {
              action: 'create',
              key: stored.id,
              name,
              groups: groups.join(','),
              operator: stored.as ?? `key:${name}`,
            },
          });
        } catch (e) {
          ops.showKeyOnce(made, undefined);
          throw e;
        }
        ops.showKeyOnce(made, 1, name);
      });
      note(
        io,
        `operator key ${name} (groups ${groups.map((g) => printable(g, 128)).join(', ')}): hand it to its holder now; it is not shown again, and keyward keeps only its hash`,
      );
    });

  key
    .command('list')
    .option('--json', 'machine-readable output')
    .description('the API keys in the vault: name, id, groups, created (asks the passphrase)')
    .action(async function (this: Command) {
      const [{ auth, paths }, { readKeys }, { useVault }] = await Promise.all([
        import('./context.js'),
        import('../operators/index.js'),
        import('../vault/index.js'),
      ]);
      const keys = useVault(paths(), auth(this, io), 'read', (v) =>
        readKeys(v).map((k) => ({
          name: k.name,
          id: k.id,
          operator: k.as ?? `key:${k.name}`,
          groups: k.groups,
          created: k.created,
        })),
      );
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${jsonText(keys, 2)}\n`);
        return;
      }
      if (keys.length === 0) io.stdout('no operator API key (keyward operator key create)\n');
      for (const k of keys)
        io.stdout(
          `${k.name}  kwop_${k.id}_…  operator ${printable(k.operator, 256)}  groups ${k.groups.map((g) => printable(g, 128)).join(', ')}  created ${k.created}\n`,
        );
    });

  key
    .command('revoke')
    .argument('<name>', 'the key name (see keyward operator key list)')
    .description('remove an API key: it logs in no more (asks the passphrase)')
    .action(async function (this: Command, name: string) {
      const [{ auth, paths }, { revokeKey }, { useVault }] = await Promise.all([
        import('./context.js'),
        import('../operators/index.js'),
        import('../vault/index.js'),
      ]);
      const a = auth(this, io);
      useVault(paths(), a, 'write', (v) => {
        const k = revokeKey(v, name);
        a.audit.record({
          type: 'operator.key',
          decision: 'info',
          reason: 'revoked',
          details: { action: 'revoke', key: k.id, name },
        });
        v.save();
      });
      io.stdout(`revoked ${name}\n`);
      note(io, 'its open sessions end at their next request');
    });
}
