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
}

export function registerDemoCommand(program: Command, io: Io): void {
  program
    .command('demo')
    .description('a guided run on a throwaway vault: init, secret set, list, read')
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
      };
      delete env['KEYWARD_SOCKET_DIR'];
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
          say: 'What keyward knows without a passphrase',
          shown: 'keyward whoami',
          args: ['whoami'],
        },
      ];
      io.stdout(`keyward demo: a throwaway vault in ${home}\n`);
      io.stdout(`(KEYWARD_PASSPHRASE_FILE points at a generated passphrase file for this run)\n`);
      let failed = false;
      try {
        for (const s of steps) {
          io.stdout(`\n# ${s.say}\n$ ${s.shown}\n`);
          const r = spawnSync(process.execPath, [BIN, ...s.args], {
            env,
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
