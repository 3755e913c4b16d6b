/**
 * `keyward demo`: a short guided run on a throwaway KEYWARD_HOME, running the real commands as
 * separate processes, the way a user types them. It grows as features land.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { randomBytes } from '../lib/secure.js';
import type { Io } from './report.js';

const BIN = fileURLToPath(new URL('../../../bin/keyward.js', import.meta.url));

interface Step {
  say: string;
  shown: string;
  args: string[];
  input?: string;
  expectExit?: number;
  env?: NodeJS.ProcessEnv;
  /**
   * The step waits for a person: it runs in the background, its stderr (where to approve) is
   * shown as it comes, and then what to do. Any of these exits is the person's answer.
   */
  person?: { exits: number[]; then: string };
}

/** Runs a step that waits for a person, showing its output as it comes. */
function personStep(s: Step, env: NodeJS.ProcessEnv, io: Io): Promise<number | null> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [BIN, ...s.args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let told = false;
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => {
      io.stdout(d.toString());
      if (!told && /approve it /.test(d.toString())) {
        told = true;
        io.stdout(`${s.person?.then ?? ''}\n`);
      }
    });
    c.on('exit', (code) => {
      io.stdout(out);
      if (out !== '' && !out.endsWith('\n')) io.stdout('\n');
      resolve(code);
    });
  });
}

export function registerDemoCommand(program: Command, io: Io): void {
  program
    .command('demo')
    .description('a guided run on a throwaway vault: init, secrets, audit, agent, approval, lock')
    .option('--keep', 'keep the throwaway KEYWARD_HOME afterwards')
    .action(async function (this: Command) {
      const home = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-demo-'));
      const passFile = path.join(home, '..', `${path.basename(home)}.pass`);
      // A throwaway passphrase for a throwaway vault, in a private file, as a script would use.
      const demoPassphrase = `demo-${randomBytes(12).toString('hex')}`;
      fs.writeFileSync(passFile, `${demoPassphrase}\n`, { mode: 0o600 });
      const wrongFile = `${passFile}.wrong`;
      fs.writeFileSync(wrongFile, 'not the passphrase\n', { mode: 0o600 });
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        KEYWARD_HOME: path.join(home, 'vault'),
        KEYWARD_PASSPHRASE_FILE: passFile,
        KEYWARD_SOCKET_DIR: path.join(home, 'run'),
      };
      delete env['KEYWARD_ASKPASS'];
      delete env['SSH_ASKPASS'];
      const steps: Step[] = [
        {
          say: 'Create a vault (argon2id, about half a second)',
          shown: 'keyward init',
          args: ['init'],
        },
        { say: 'Init again: nothing is lost', shown: 'keyward init', args: ['init'] },
        {
          say: 'Store a secret; the value comes on standard input, never in arguments',
          shown: "printf %s 'ghp_demo_token_123456' | keyward secret set github/token",
          args: ['secret', 'set', 'github/token'],
          input: 'ghp_demo_token_123456',
        },
        {
          say: 'List names and metadata (never values)',
          shown: 'keyward secret list',
          args: ['secret', 'list'],
        },
        { say: 'Read it back', shown: 'keyward read github/token', args: ['read', 'github/token'] },
        {
          say: 'A wrong passphrase opens nothing (exit 4)',
          shown: 'keyward read github/token --passphrase-file wrong.txt',
          args: ['read', 'github/token', '--passphrase-file', wrongFile],
          expectExit: 4,
        },
        {
          say: 'Every step above is in the tamper-evident audit log',
          shown: 'keyward audit verify',
          args: ['audit', 'verify'],
        },
        {
          say: 'Start the agent: it holds the unlocked vault and knows which process asks',
          shown: 'keyward agent start',
          args: ['agent', 'start'],
        },
        {
          say: 'Unlock it (the window is bounded: 15 min idle, 4 h at most)',
          shown: 'keyward unlock',
          args: ['unlock'],
        },
        {
          say: 'Unlocked is not blanket access: the default policy wants a person to confirm each read. This read waits for you',
          shown: 'keyward read github/token',
          args: ['read', 'github/token'],
          person: {
            exits: [0, 6, 7],
            then: `\n>>> Open that address in a browser on this machine, log in with this throwaway vault's passphrase:\n>>>   ${demoPassphrase}\n>>> and press Approve (or Deny). The request waits 60 s.\n`,
          },
        },
        {
          say: 'Lock wipes the keys; a read now fails (exit 5)',
          shown: 'keyward lock && keyward read github/token',
          args: ['lock'],
        },
        { say: '', shown: '', args: ['read', 'github/token'], expectExit: 5 },
        {
          say: 'What keyward knows without a passphrase',
          shown: 'keyward whoami',
          args: ['whoami'],
        },
        { say: 'Stop the agent', shown: 'keyward agent stop', args: ['agent', 'stop'] },
      ];
      io.stdout(`keyward demo: a throwaway vault in ${home}\n`);
      io.stdout(`(KEYWARD_PASSPHRASE_FILE points at a generated passphrase file for this run)\n`);
      let failed = false;
      try {
        for (const s of steps) {
          if (s.say !== '') io.stdout(`\n# ${s.say}\n`);
          if (s.shown !== '') io.stdout(`$ ${s.shown}\n`);
          if (s.person) {
            const code = await personStep(s, env, io);
            io.stdout(
              code === 0
                ? '(a person approved: the value was released, and the audit log says who asked and who approved)\n'
                : code === 6
                  ? '(denied: exit 6; nothing was released)\n'
                  : code === 7
                    ? '(nobody answered in time: exit 7; nothing was released)\n'
                    : `(unexpected exit code ${code})\n`,
            );
            if (!s.person.exits.includes(code ?? -1)) {
              failed = true;
              break;
            }
            continue;
          }
          const r = spawnSync(process.execPath, [BIN, ...s.args], {
            env: s.env ?? env,
            input: s.input ?? '',
            encoding: 'utf8',
          });
          io.stdout(r.stdout);
          if (r.stdout !== '' && !r.stdout.endsWith('\n')) io.stdout('\n');
          io.stdout(r.stderr);
          if (r.status !== (s.expectExit ?? 0)) {
            io.stdout(`(unexpected exit code ${r.status})\n`);
            failed = true;
            break;
          }
          if (s.expectExit !== undefined) io.stdout(`(exit ${r.status})\n`);
        }
      } finally {
        spawnSync(process.execPath, [BIN, 'agent', 'stop'], { env });
        fs.rmSync(passFile, { force: true });
        fs.rmSync(wrongFile, { force: true });
        if (this.opts<{ keep?: boolean }>().keep) io.stdout(`\nKept ${home}\n`);
        else fs.rmSync(home, { recursive: true, force: true });
      }
      if (failed) throw new Error('the demo did not run as expected');
      io.stdout(
        '\nDone. Your own vault lives in ~/.keyward (or $KEYWARD_HOME): start with keyward init\n',
      );
    });
}
