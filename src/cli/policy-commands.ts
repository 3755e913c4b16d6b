/**
 * keyward policy check | apply | show | history | diff | explain  (docs/POLICY.md)
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { InvalidArgumentError } from './commander.js';
import { agentStatus, call, jsonBody } from '../agent/index.js';
import { auditPaths, auditSink, shipConfigOf, writeShipFile } from '../audit/index.js';
import { IntegrityError, KeywardError, UsageError } from '../errors.js';
import { keywardHome } from '../lib/paths.js';
import {
  applyPolicy,
  checkPolicyText,
  diffPolicies,
  inForceSha,
  POLICY_MAX_BYTES,
  previewApply,
  sha256Hex,
  evaluate,
  loadPolicy,
  PolicyInvalidError,
  readHistory,
  type Caller,
  type Decision,
  type Policy,
  type PolicyRequest,
  weakAllows,
  linkedCallerPaths,
} from '../policy/index.js';
import { lookThenWrite, requireVault, useVault, type Vault } from '../vault/index.js';
import { readOwnFile } from '../lib/files.js';
import { askOnTerminal } from '../lib/tty.js';
import { note, type Io } from './report.js';
import { agentSocket, auth, paths } from './context.js';
import { asciiShown, jsonText, printable, textShown } from '../lib/text.js';

function readPolicyFile(file: string): string {
  try {
    // A regular file (a FIFO or /dev/zero would hold or fill this process), of a policy's size.
    return readOwnFile(file, { follow: true, maxBytes: POLICY_MAX_BYTES }).toString('utf8');
  } catch (e) {
    if (e instanceof KeywardError) throw e;
    throw new UsageError(
      'USAGE',
      `cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
}

/**
 * A policy a person checks or applies here: valid, and naming no program by a path this machine
 * resolves elsewhere (a rule that matches nothing: policy/paths.ts). Each problem on stderr.
 */
function checkedHere(io: Io, text: string, source: string): Policy {
  const p = checked(io, text, source);
  const linked = linkedCallerPaths(p);
  if (linked.length > 0) {
    for (const l of linked) io.stderr(`${printable(source)}: ${asciiShown(l)}\n`);
    throw new KeywardError(
      'POLICY_INVALID',
      `${printable(source)} names ${linked.length === 1 ? 'a caller path' : 'caller paths'} that go${linked.length === 1 ? 'es' : ''} through a symbolic link: ${linked.length === 1 ? 'its rule matches' : 'those rules match'} nothing`,
      { hint: 'write the path of the file itself, or a glob that matches it, as above' },
    );
  }
  return p;
}

/** Validates, printing every problem with its position before the error itself. */
function checked(io: Io, text: string, source: string): Policy {
  try {
    return checkPolicyText(text, source);
  } catch (e) {
    if (e instanceof PolicyInvalidError) {
      // The path and the message can hold the file's own keys and values: shown as ASCII.
      for (const p of e.problems)
        io.stderr(
          `${printable(source)}:${p.line}:${p.column}: ${asciiShown(`${p.path === '' ? '' : `${p.path}: `}${p.message}`)}\n`,
        );
    }
    throw e;
  }
}

/** A version number from history, or a file. */
function resolve(io: Io, ref: string): Policy {
  if (/^\d+$/.test(ref)) {
    const h = readHistory(keywardHome()).find((x) => x.version === Number(ref));
    if (!h)
      throw new UsageError('USAGE', `no applied policy version ${ref}`, {
        hint: 'see: keyward policy history',
      });
    return checked(io, fs.readFileSync(h.file, 'utf8'), h.file);
  }
  return checked(io, readPolicyFile(ref), ref);
}

function inForce(io: Io, v: Vault | undefined): ReturnType<typeof loadPolicy> {
  const home = keywardHome();
  const loaded = loadPolicy(home, v, auditSink(home));
  if (loaded.drift) {
    note(
      io,
      `WARNING: the policy files were changed behind keyward's back and are NOT in force; the applied version${loaded.version === undefined ? ' (the default)' : ` ${loaded.version}`} is: ${loaded.driftReasons.join('; ')}`,
    );
    note(io, 'to adopt an edit of policy.yaml: keyward policy apply policy.yaml');
  }
  if (loaded.legacy)
    note(
      io,
      'this vault keeps only the hash of its applied policy; keyward policy apply ~/.keyward/policy.yaml keeps the policy itself in the vault, so deleting the files changes nothing',
    );
  return loaded;
}

const collect = (v: string, prev: string[]) => [...prev, v];
function uidOption(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a user id');
  return n;
}

export function registerPolicyCommands(program: Command, io: Io): void {
  const policy = program
    .command('policy')
    .description('who may use which secret or key, and how a person must approve it')
    // Before init there is no policy in force to show, explain or change: say so (exit 3).
    // check reads only the file it is given.
    .hook('preAction', (_group, action) => {
      if (action.name() !== 'check') requireVault(paths());
    });

  policy
    .command('check')
    .argument('<file>', 'a policy file')
    .description('validate; every problem with FILE:LINE:COLUMN (exit 2)')
    .action((file: string) => {
      const p = checkedHere(io, readPolicyFile(file), file);
      io.stdout(`ok: ${file} is a valid policy with ${p.rules.length} rule(s)\n`);
      for (const n of weakAllows(p)) io.stderr(`keyward: note: ${n}\n`);
    });

  policy
    .command('apply')
    .argument('<file>', 'a policy file')
    .description(
      'validate, show every change against the policy in force, ask, and install (asks the passphrase; recorded as policy.changed)',
    )
    .option('--yes', 'install without asking (the changes are still shown)')
    .option(
      '--sha256 <hex>',
      'install only if FILE is this text (its sha256, as policy history shows)',
    )
    .action(function (this: Command, file: string) {
      const o = this.opts<{ yes?: boolean; sha256?: string }>();
      if (o.sha256 !== undefined && !/^[0-9a-f]{64}$/.test(o.sha256))
        throw new UsageError('USAGE', '--sha256 takes 64 lowercase hex digits');
      const text = readPolicyFile(file);
      const policy = checkedHere(io, text, file);
      if (o.sha256 !== undefined && sha256Hex(text) !== o.sha256)
        throw new KeywardError('POLICY_INVALID', `${file} is not the text --sha256 names`, {
          hint: `its sha256 is ${sha256Hex(text)}`,
        });
      // A person, not a key any process of the user could fetch from the keyring: installing a
      // policy changes what every later request is allowed.
      const a = { ...auth(this, io), passphraseOnly: true };
      const home = keywardHome();
      // The changes are worked out against the vault's copy (the files could say anything), shown
      // in full, and the person asked before anything is written; the write is bound to the
      // policy that was in force when they were shown.
      const r = lookThenWrite(
        paths(),
        a,
        (v) => previewApply(home, text, file, v),
        (seen) => {
          const shown = [
            `Changes to the policy in force (applying sha256 ${sha256Hex(text)}):`,
            ...(seen.unknown === undefined
              ? []
              : [`  note: ${seen.unknown}: every field is shown against the defaults`]),
            ...weakAllows(policy).map((n) => `  note: ${n}`),
            ...(seen.diff.changes.length === 0
              ? ['  (none)']
              : seen.diff.changes.map((c) => `  ${c}`)),
            `  in all: ${seen.diff.summary}`,
          ].join('\n');
          io.stderr(`${shown}\n`);
          // Not typed at a terminal (a script, input from a pipe): it applies what it was given,
          // as it always could; the changes are on stderr all the same.
          if (o.yes === true || o.sha256 !== undefined || !process.stdin.isTTY) return true;
          // The question goes to the terminal: the changes with it, when stderr goes elsewhere.
          const answer = askOnTerminal(
            `${process.stderr.isTTY ? '' : `${shown}\n`}Apply these changes (${seen.diff.summary})? [y/N] `,
          );
          if (answer === undefined)
            throw new UsageError(
              'CONFIRMATION_REQUIRED',
              'policy apply can not ask on this terminal (a background job, or no terminal of its own): nothing applied',
              { hint: 'run it in the foreground, or pass --yes after reading the changes above' },
            );
          return /^y(es)?$/i.test(answer);
        },
        (v, seen) => {
          if (inForceSha(home, v) !== seen.inForce)
            throw new KeywardError(
              'CANCELLED',
              'the policy in force changed while the changes were shown: nothing applied',
              { hint: `run keyward policy apply ${file} again` },
            );
          return applyPolicy(home, text, file, v, a.audit);
        },
      );
      if (r === undefined) throw new KeywardError('CANCELLED', 'not applied: the answer was no');
      // Writers that can't read the policy (locked ones) ship by this; the agent checks it.
      writeShipFile(auditPaths(keywardHome()), shipConfigOf(policy.audit));
      io.stdout(`Applied policy version ${r.version} (sha256 ${r.sha256}): ${r.summary}\n`);
    });

  policy
    .command('show')
    .description('print the policy in force')
    .option(
      '--verify',
      'also check it against the record sealed in the vault (asks the passphrase)',
    )
    .action(function (this: Command) {
      const verify = this.opts<{ verify?: boolean }>().verify === true;
      const loaded = verify
        ? useVault(paths(), auth(this, io), 'read', (v) => inForce(io, v))
        : inForce(io, undefined);
      // As text a person reads: a control character in it (one applied before they were
      // refused) can't erase a rule from the screen.
      io.stdout(
        loaded.version === undefined
          ? `# no policy applied yet: the built-in default is in force\n${textShown(loaded.text)}`
          : textShown(loaded.text),
      );
      if (!verify)
        note(io, 'read from the files, unverified: keyward policy show --verify checks the vault');
      if (verify && loaded.drift)
        throw new IntegrityError(
          'POLICY_TAMPERED',
          `the policy files differ from the applied policy kept in the vault: ${loaded.driftReasons.join('; ')}`,
          {
            hint: 'the applied version (printed above) is in force; find out who changed the files, then keyward policy apply a policy you trust',
          },
        );
    });

  policy
    .command('history')
    .description('every applied version')
    .option('--json', 'machine-readable output')
    .action(function (this: Command) {
      const h = readHistory(keywardHome()).map(({ file, ...rest }) => ({
        ...rest,
        file: path.basename(file),
      }));
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${jsonText(h, 2)}\n`);
        return;
      }
      for (const e of h)
        io.stdout(
          `${String(e.version).padStart(4)}  ${e.appliedAt}  ${e.sha256.slice(0, 16)}  ${e.rules} rule(s)\n`,
        );
    });

  policy
    .command('diff')
    .argument('<a>', 'version number or file')
    .argument('<b>', 'version number or file')
    .description('rules added, removed, modified between two policies')
    .action((a: string, b: string) => {
      const d = diffPolicies(resolve(io, a), resolve(io, b));
      for (const c of d.changes) io.stdout(`${c}\n`);
      io.stdout(`${d.summary}\n`);
    });

  policy
    .command('explain')
    .description('the decision for a caller and target, the rule that made it, and why')
    .requiredOption('--target <name>', 'secret or key name')
    .option('--kind <kind>', 'secret, key, list or audit', 'secret')
    .option('--exe <path>', "the caller's executable")
    .option('--exe-sha256 <hex>', "the caller's executable hash")
    .option(
      '--ancestor <path>',
      'an ancestor process executable (repeatable, parent first)',
      collect,
      [],
    )
    .option('--uid <n>', "the caller's uid", uidOption)
    .option('--cwd <dir>', "the caller's working directory")
    .option(
      '--loader-var <name>',
      'a loader variable the caller carries, such as LD_PRELOAD (repeatable)',
      collect,
      [],
    )
    .option('--file <file>', 'explain against this policy file instead of the one in force')
    .action(async function (this: Command) {
      const o = this.opts<{
        target: string;
        kind: string;
        exe?: string;
        exeSha256?: string;
        ancestor: string[];
        uid?: number;
        cwd?: string;
        loaderVar: string[];
        file?: string;
      }>();
      const kind = o.kind;
      if (kind !== 'secret' && kind !== 'key' && kind !== 'list' && kind !== 'audit')
        throw new UsageError('USAGE', '--kind is secret, key, list or audit');
      const request: PolicyRequest = { target: o.target, kind, action: 'explain' };
      // As the agent sees a program: the file the kernel runs, after symbolic links.
      const real = (p: string) => {
        try {
          return fs.realpathSync(p);
        } catch {
          return p;
        }
      };
      const caller: Caller = {
        exe: o.exe === undefined ? undefined : real(o.exe),
        exeSha256: o.exeSha256,
        uid: o.uid,
        cwd: o.cwd === undefined ? undefined : real(o.cwd),
        ancestors: o.ancestor.map((exe) => ({ exe: real(exe) })),
        loaderVars: o.loaderVar.map((name) => ({ name })),
      };
      let d: Decision;
      const st = o.file === undefined ? await agentStatus(agentSocket()) : undefined;
      if (st !== undefined && st['locked'] === false) {
        // The policy in force is the one the agent holds (applied, verified in the vault).
        d = jsonBody<Decision>(
          await call(agentSocket(), 'policy', {
            op: 'explain',
            target: o.target,
            kind,
            // The paths as resolved here, as the agent would see them run (found in review: the
            // agent was sent a link's path, and said a rule on it matched).
            caller: {
              ...(caller.exe === undefined ? {} : { exe: caller.exe }),
              ...(o.exeSha256 === undefined ? {} : { exeSha256: o.exeSha256 }),
              ...(o.uid === undefined ? {} : { uid: o.uid }),
              ...(caller.cwd === undefined ? {} : { cwd: caller.cwd }),
              ancestors: caller.ancestors?.map((a) => a.exe) ?? [],
              loaderVars: o.loaderVar,
            },
          }),
        );
      } else {
        // The files: the policy in force unless they were changed behind keyward's back, which
        // only the vault can tell (inForce warns when it sees it).
        const p =
          o.file !== undefined
            ? checked(io, readPolicyFile(o.file), o.file)
            : inForce(io, undefined).policy;
        if (o.file === undefined)
          note(
            io,
            `from the policy files, unverified (${st ? 'the agent is locked' : 'no agent runs'}); an unlocked agent answers from the policy in force, kept in the vault`,
          );
        d = evaluate(p, request, caller);
      }
      const how =
        d.decision === 'approve'
          ? ` (${d.approval.mode}${d.highValue ? ', high value' : ''}, remember ${d.approval.remember.scope})`
          : '';
      io.stdout(`${d.decision}${how}${d.rule ? ` by rule ${d.rule}` : ''}\n`);
      // The explanation quotes the policy's own values (an exe, a cwd): shown as ASCII.
      for (const line of d.explanation) io.stdout(`  ${asciiShown(line)}\n`);
    });
}
