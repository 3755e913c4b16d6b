/**
 * `keyward demo`: a short guided run on a throwaway KEYWARD_HOME, running the real commands as
 * separate processes, the way a user types them. It grows as features land.
 */
import { spawnSync } from 'node:child_process';
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
  /** After the step, print this file's content (what the askpass program was shown). */
  showFile?: string;
}

export function registerDemoCommand(program: Command, io: Io): void {
  program
    .command('demo')
    .description('a guided run on a throwaway vault: init, secrets, audit, agent, approval, lock')
    .option('--keep', 'keep the throwaway KEYWARD_HOME afterwards')
    .action(function (this: Command) {
      const home = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-demo-'));
      const passFile = path.join(home, '..', `${path.basename(home)}.pass`);
      // A throwaway passphrase for a throwaway vault, in a private file, as a script would use.
      fs.writeFileSync(passFile, `demo-${randomBytes(12).toString('hex')}\n`, { mode: 0o600 });
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
      // A stand-in for the person at the askpass dialog: it records what it was shown, says yes.
      const prompts = path.join(home, 'askpass-saw.txt');
      const askpassProgram = path.join(home, 'askpass.sh');
      fs.writeFileSync(askpassProgram, `#!/bin/sh\nprintf '%s\\n' "$1" > '${prompts}'\nexit 0\n`, {
        mode: 0o700,
      });
      const withAskpass = { ...env, KEYWARD_ASKPASS: askpassProgram };
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
          say: 'Unlocked is not blanket access: the default policy wants a person to confirm, and with no one to ask, the answer is no (exit 6)',
          shown: 'keyward read github/token',
          args: ['read', 'github/token'],
          expectExit: 6,
        },
        {
          say: 'Stop it, and start it again with an askpass program (a person to ask)',
          shown: 'keyward agent stop',
          args: ['agent', 'stop'],
        },
        {
          say: '',
          shown: 'KEYWARD_ASKPASS=./askpass.sh keyward agent start',
          args: ['agent', 'start'],
          env: withAskpass,
        },
        { say: '', shown: 'keyward unlock', args: ['unlock'] },
        {
          say: 'Now the read asks first; this is what the person was shown, naming the calling process',
          shown: 'keyward read github/token',
          args: ['read', 'github/token'],
          showFile: prompts,
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
          if (s.showFile !== undefined && fs.existsSync(s.showFile))
            io.stdout(`[askpass was shown] ${fs.readFileSync(s.showFile, 'utf8')}`);
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
