/**
 * seal FILE | project identity | project check [FILE] (docs/PROJECT-FILES.md). Direct on the
 * vault, with the passphrase: the project identity is the vault's own record.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { printable } from '../lib/text.js';
import { note, type Io } from './report.js';

export const DEFAULT_SEALED = '.keyward.env';

const many = (v: string, prev: string[] = []) => [...prev, v];

export function registerProjectCommands(program: Command, io: Io): void {
  program
    .command('seal')
    .argument('<file>', 'a plain .env file (NAME=VALUE lines)')
    .option('--recipient <age1...>', 'also seal to this recipient (repeatable)', many)
    .option(
      '--output <file>',
      `where the sealed file goes (default: ${DEFAULT_SEALED} beside FILE)`,
    )
    .option('--no-self', 'do not seal to your own project identity')
    .description('seal a .env file into a project file safe to commit (asks the passphrase)')
    .action(async function (this: Command, file: string) {
      const o = this.opts<{ recipient?: string[]; output?: string; self: boolean }>();
      const [{ auth, paths }, project, { useVault }, { writeFileAtomic }] = await Promise.all([
        import('./context.js'),
        import('../project/index.js'),
        import('../vault/index.js'),
        import('../lib/files.js'),
      ]);
      const recipients = [...(o.recipient ?? [])];
      for (const r of recipients)
        if (!project.decodeRecipient(r))
          throw new UsageError('USAGE', `${printable(r, 80)} is not an age recipient (age1...)`);
      if (o.self) {
        const a = auth(this, io);
        recipients.unshift(useVault(paths(), a, 'write', (v) => project.ownRecipient(v, a.audit)));
      }
      if (recipients.length === 0)
        throw new UsageError('USAGE', 'no recipient: give --recipient, or leave out --no-self');
      const out = o.output ?? path.join(path.dirname(file), DEFAULT_SEALED);
      const text = await project.sealEnvFile(file, recipients);
      writeFileAtomic(out, [Buffer.from(text, 'ascii')]);
      const names = project.parseProject(Buffer.from(text, 'ascii')).entries.length;
      io.stdout(`sealed ${names} values for ${new Set(recipients).size} recipients into ${out}\n`);
      note(io, `${file} still holds the values in plain text: delete it, and keep it out of git`);
    });

  const proj = program
    .command('project')
    .description('sealed project files and your project identity');
  proj
    .command('identity')
    .description('your project identity (an age recipient) to give teammates (asks the passphrase)')
    .action(async function (this: Command) {
      const [{ auth, paths }, project, { useVault }] = await Promise.all([
        import('./context.js'),
        import('../project/index.js'),
        import('../vault/index.js'),
      ]);
      const a = auth(this, io);
      io.stdout(`${useVault(paths(), a, 'write', (v) => project.ownRecipient(v, a.audit))}\n`);
    });

  proj
    .command('check')
    .argument('[file]', `a sealed project file (default: ${DEFAULT_SEALED})`)
    .option('--json', 'machine-readable output')
    .description('is it well-formed, who are its recipients, which names it holds (no passphrase)')
    .action(async function (this: Command, file?: string) {
      const { parseProject } = await import('../project/index.js');
      const target = file ?? DEFAULT_SEALED;
      let bytes: Buffer;
      try {
        bytes = fs.readFileSync(target);
      } catch (e) {
        throw new UsageError(
          'USAGE',
          `cannot read ${target} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
        );
      }
      const p = parseProject(bytes);
      const names = p.entries.map((e) => e.name);
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(
          `${JSON.stringify({ file: target, recipients: p.recipients, names }, null, 2)}\n`,
        );
        return;
      }
      io.stdout(
        `${target}: well-formed, ${names.length} values, ${p.recipients.length} recipients\n`,
      );
      for (const r of p.recipients) io.stdout(`recipient ${r}\n`);
      for (const n of names) io.stdout(`name ${n}\n`);
      note(io, 'its MAC and values are checked when a recipient opens it');
    });
}
