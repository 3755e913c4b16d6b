/**
 * seal FILE | project identity | project check [FILE] | project recipients add|rm
 * (docs/PROJECT-FILES.md). Direct on the vault, with the passphrase: the project identity is the
 * vault's own record.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { AuthError, KeywardError, UsageError } from '../errors.js';
import { jsonText, printable } from '../lib/text.js';
import { note, type Io } from './report.js';

export const DEFAULT_SEALED = '.keyward.env';

const many = (v: string, prev: string[] = []) => [...prev, v];

/** Files sealedFile() found by looking upward: readSealed() checks them again on what it opens. */
const found = new Set<string>();

/** Why a sealed file found by looking upward is not used, or undefined when it may be. */
function notUsable(st: fs.Stats): string | undefined {
  if (!st.isFile()) return 'not a regular file';
  if (st.uid !== process.geteuid?.()) return `owned by uid ${st.uid}`;
  if ((st.mode & 0o022) !== 0) return 'writable by others';
  return undefined;
}

/**
 * The sealed file a command means: the one given, else the nearest .keyward.env from the current
 * directory up to the repository's top (the directory holding .git), the home directory or the
 * root. A file found that way must be yours and writable by you alone: one planted by another
 * user in a shared directory above (/tmp) is refused, never used.
 */
export function sealedFile(given: string | undefined): string {
  if (given !== undefined) return given;
  const home = path.resolve(os.homedir());
  for (let d = process.cwd(); ; d = path.dirname(d)) {
    const f = path.join(d, DEFAULT_SEALED);
    const st = fs.lstatSync(f, { throwIfNoEntry: false });
    if (st) {
      const why = notUsable(st);
      if (why) throw refusedFound(f, why);
      found.add(f);
      return f;
    }
    if (fs.existsSync(path.join(d, '.git')) || d === home || path.dirname(d) === d)
      throw new UsageError(
        'USAGE',
        `no ${DEFAULT_SEALED} here or above (up to the repository's top)`,
        {
          hint: 'name the sealed file, or seal one: keyward seal .env',
        },
      );
  }
}

function refusedFound(f: string, why: string): KeywardError {
  return new KeywardError('INSECURE_PERMISSIONS', `found ${f}, but it is ${why}: not used`, {
    hint: 'name the sealed file you mean, or fix its owner and mode',
  });
}

/**
 * A sealed project file's bytes (public), read from a regular file (a FIFO would hang the
 * command), or a usage error naming why it can't be. A file found by looking upward is opened
 * without following a link and checked again on the descriptor: what was checked is what is read.
 */
export function readSealed(target: string): Buffer {
  const strict = found.has(target);
  let fd: number;
  try {
    fd = fs.openSync(
      target,
      fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | (strict ? fs.constants.O_NOFOLLOW : 0),
    );
  } catch (e) {
    throw new UsageError(
      'USAGE',
      `cannot read ${target} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
  try {
    const st = fs.fstatSync(fd);
    const why = strict ? notUsable(st) : st.isFile() ? undefined : 'not a regular file';
    if (why) {
      if (strict) throw refusedFound(target, why);
      throw new UsageError('USAGE', `cannot read ${target}: it is ${why}`);
    }
    return fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

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
    .option(
      '--project <name>',
      "the project's name in policy targets, project:NAME/VAR (default: the git origin's host/path, else the directory's name)",
    )
    .description('seal a .env file into a project file safe to commit (asks the passphrase)')
    .action(async function (this: Command, file: string) {
      const o = this.opts<{
        recipient?: string[];
        output?: string;
        self: boolean;
        project?: string;
      }>();
      const [{ auth, paths }, project, { useVault }, { writeFileAtomic }] = await Promise.all([
        import('./context.js'),
        import('../project/index.js'),
        import('../vault/index.js'),
        import('../lib/files.js'),
      ]);
      const out = o.output ?? path.join(path.dirname(file), DEFAULT_SEALED);
      const recipients = [...(o.recipient ?? [])];
      for (const r of recipients)
        if (!project.decodeRecipient(r))
          throw new UsageError('USAGE', `${printable(r, 80)} is not an age recipient (age1...)`);
      // Sealing over a sealed file keeps its project, unless --project says otherwise (and then
      // that is said): a name is what the policy's rules go by. Only from a file this vault
      // opens (its MAC verified): anyone can write a well-formed file under a name of theirs.
      let existing: Buffer | undefined;
      try {
        existing = fs.readFileSync(out);
      } catch {
        existing = undefined;
      }
      let before: string | undefined;
      if (o.self) {
        const a = auth(this, io);
        const got = useVault(paths(), a, 'write', (v) => ({
          own: project.ownRecipient(v, a.audit),
          before: existing ? project.verifiedProject(v, existing) : undefined,
        }));
        recipients.unshift(got.own);
        before = got.before;
      }
      if (existing && before === undefined && o.project === undefined)
        note(
          io,
          `${out} exists, but this vault did not open it, so its project name is not kept (give --project to keep it)`,
        );
      const name =
        o.project !== undefined
          ? project.checkProjectName(o.project)
          : (before ?? project.defaultProjectName(file));
      if (before !== undefined && name !== before)
        note(io, `${out} was of the project ${before}; it is now of ${name ?? '?'}`);
      if (name === undefined)
        throw new UsageError(
          'USAGE',
          `no project name fits ${printable(path.dirname(path.resolve(file)), 80)}: give --project NAME (e.g. github.com/acme/api)`,
        );
      if (recipients.length === 0)
        throw new UsageError('USAGE', 'no recipient: give --recipient, or leave out --no-self');
      const { text, count } = await project.sealEnvFile(name, file, recipients);
      writeFileAtomic(out, [Buffer.from(text, 'ascii')]);
      io.stdout(
        `sealed ${count} values of the project ${name} for ${new Set(recipients).size} recipients into ${out}\n`,
      );
      note(io, `${file} still holds the values in plain text: delete it, and keep it out of git`);
    });

  program
    .command('unseal')
    .argument('[file]', `the sealed project file (default: the nearest ${DEFAULT_SEALED})`)
    .option('--output <file>', 'where the plain file goes (default: .env beside FILE)')
    .option('--force', 'replace the output file if it exists')
    .description(
      'write every value of a sealed file to a plain .env file (asks the passphrase; recorded)',
    )
    .action(async function (this: Command, file?: string) {
      const o = this.opts<{ output?: string; force?: boolean }>();
      const [{ auth, paths }, project, { useVault }] = await Promise.all([
        import('./context.js'),
        import('../project/index.js'),
        import('../vault/index.js'),
      ]);
      const target = sealedFile(file);
      const out = o.output ?? path.join(path.dirname(target), '.env');
      if (path.resolve(out) === path.resolve(target))
        throw new UsageError('USAGE', 'the output would replace the sealed file itself');
      if (!o.force && fs.existsSync(out))
        throw new UsageError('USAGE', `${out} exists`, { hint: 'give --output, or --force' });
      const bytes = readSealed(target);
      const p = project.parseProject(bytes);
      const a = auth(this, io);
      const done = useVault(paths(), a, 'read', (v) =>
        project.unsealTo(v, bytes, out, () =>
          // Rule 4: recorded (durably) before a value is written out.
          a.audit.record({
            type: 'project.unsealed',
            decision: 'allow',
            target: `project:${p.project}`,
            reason: 'every value written to a plain file',
            details: { file: target, output: path.resolve(out), names: p.entries.length },
          }),
        ),
      );
      if (done === undefined)
        throw new AuthError(
          'PROJECT_NOT_RECIPIENT',
          `your project identity is not a recipient of ${target}`,
        );
      io.stdout(
        `unsealed ${done.names.length} values of ${done.project} into ${out} (mode 0600)\n`,
      );
      note(
        io,
        `${out} holds every value in plain text: keep it out of git (.gitignore), and delete it when done`,
      );
    });

  const proj = program
    .command('project')
    .description('sealed project files and your project identity');
  proj
    .command('identity')
    .description('your project identity (an age recipient) to give teammates (asks the passphrase)')
    .option(
      '--import <file>',
      "make an age identity file's key (age-keygen's, mode 0600) this vault's project identity: for CI",
    )
    .action(async function (this: Command) {
      const o = this.opts<{ import?: string }>();
      const [{ auth, paths }, project, { useVault }] = await Promise.all([
        import('./context.js'),
        import('../project/index.js'),
        import('../vault/index.js'),
      ]);
      const a = auth(this, io);
      const file = o.import;
      io.stdout(
        `${useVault(paths(), a, 'write', (v) =>
          file === undefined
            ? project.ownRecipient(v, a.audit)
            : project.importIdentity(v, file, a.audit),
        )}\n`,
      );
    });

  const recipients = proj
    .command('recipients')
    .description("change a sealed file's recipients: sealed again under a new data key");
  for (const op of ['add', 'rm'] as const)
    recipients
      .command(op)
      .argument('<recipient>', 'an age recipient (age1...)')
      .argument('[file]', `the sealed project file (default: the nearest ${DEFAULT_SEALED})`)
      .description(
        op === 'add'
          ? 'seal the file again for one more recipient (asks the passphrase; you must be one)'
          : 'seal the file again without a recipient; rotate what they could open (asks the passphrase)',
      )
      .action(async function (this: Command, recipient: string, file?: string) {
        const [{ auth, paths }, project, { useVault }, { writeFileAtomic }] = await Promise.all([
          import('./context.js'),
          import('../project/index.js'),
          import('../vault/index.js'),
          import('../lib/files.js'),
        ]);
        const target = sealedFile(file);
        if (!project.decodeRecipient(recipient))
          throw new UsageError(
            'USAGE',
            `${printable(recipient, 80)} is not an age recipient (age1...)`,
          );
        const bytes = readSealed(target);
        const now = project.parseProject(bytes).recipients;
        if (op === 'add' && now.includes(recipient))
          throw new UsageError('USAGE', `${recipient} is a recipient already`);
        if (op === 'rm' && !now.includes(recipient))
          throw new UsageError('USAGE', `${recipient} is not a recipient of ${target}`);
        const next = op === 'add' ? [...now, recipient] : now.filter((r) => r !== recipient);
        if (next.length === 0)
          throw new UsageError('USAGE', 'a sealed file keeps at least one recipient');
        const a = auth(this, io);
        const text = useVault(paths(), a, 'read', (v) => {
          const t = project.resealProject(v, bytes, next);
          if (t !== undefined)
            a.audit.record({
              type: 'project.resealed',
              decision: 'info',
              target,
              reason: op === 'add' ? 'recipient added' : 'recipient removed',
              details: { recipient, recipients: next.length },
            });
          return t;
        });
        if (text === undefined)
          throw new UsageError(
            'USAGE',
            `your project identity is not a recipient of ${target}: a recipient must do this`,
          );
        writeFileAtomic(target, [Buffer.from(text, 'ascii')]);
        io.stdout(
          `${op === 'add' ? 'added' : 'removed'} ${recipient}; ${target} sealed again for ${next.length} recipients\n`,
        );
        if (op === 'rm')
          note(
            io,
            'they can open no new version, but they may have kept what they opened before: rotate those values',
          );
      });

  proj
    .command('check')
    .argument('[file]', `a sealed project file (default: the nearest ${DEFAULT_SEALED})`)
    .option('--json', 'machine-readable output')
    .description('is it well-formed, who are its recipients, which names it holds (no passphrase)')
    .action(async function (this: Command, file?: string) {
      const [{ parseProject }, { agentProjectCheck, socketPaths }, { socketDir }] =
        await Promise.all([
          import('../project/index.js'),
          import('../agent/index.js'),
          import('../lib/paths.js'),
        ]);
      const target = sealedFile(file);
      const bytes = readSealed(target);
      const p = parseProject(bytes);
      const names = p.entries.map((e) => e.name);
      // Whether this vault is a recipient, and the MAC, need the project identity: the agent's.
      let recipient: boolean | null = null;
      let refused: KeywardError | undefined;
      try {
        await agentProjectCheck(socketPaths(socketDir()).agent, bytes);
        recipient = true;
      } catch (e) {
        if (!(e instanceof KeywardError)) throw e;
        if (e.code === 'PROJECT_NOT_RECIPIENT') {
          recipient = false;
          refused = e;
        } else if (e.code !== 'AGENT_UNAVAILABLE' && e.code !== 'AGENT_LOCKED') throw e;
      }
      const mac = recipient ? 'verified' : 'unchecked';
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(
          `${jsonText({ file: target, project: p.project, recipient, mac, recipients: p.recipients, names }, 2)}\n`,
        );
      } else {
        io.stdout(
          `${target}: well-formed, project ${p.project}, ${names.length} values, ${p.recipients.length} recipients; ` +
            (recipient === true
              ? 'you are a recipient and its MAC verifies\n'
              : recipient === false
                ? 'you are NOT a recipient\n'
                : 'whether you are a recipient is unknown (no unlocked agent)\n'),
        );
        for (const r of p.recipients) io.stdout(`recipient ${r}\n`);
        for (const n of names) io.stdout(`name ${n}\n`);
        if (recipient === null)
          note(io, 'start and unlock the agent to check its MAC and whether you are a recipient');
      }
      if (refused) throw refused;
    });
}
