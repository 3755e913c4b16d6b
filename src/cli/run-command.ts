/**
 * `keyward run [--env VAR=NAME]... [--env-file FILE]... [--fd N=NAME]... [--proxy] [--no-masking] -- CMD`
 * (docs/RUN.md). The agent starts CMD with the secrets; this process only relays streams and
 * signals, and never holds a value.
 */
import fs from 'node:fs';
import tty from 'node:tty';
import type { Command } from 'commander';
import { agentRun, type RunRequest } from '../agent/index.js';
import { UsageError } from '../errors.js';
import { assertVarName, parseEnvFile } from '../run/index.js';
import { agentSocket } from './context.js';
import type { Io } from './report.js';

import { ChildExit } from './report.js';

const collect = (v: string, all: string[]) => [...all, v];

function pair(spec: string, option: string): [string, string] {
  const eq = spec.indexOf('=');
  if (eq <= 0 || eq === spec.length - 1)
    throw new UsageError('USAGE', `${option} ${JSON.stringify(spec)}: expected LEFT=SECRET`, {
      hint: option === '--fd' ? 'e.g. --fd 3=db/password' : 'e.g. --env GITHUB_TOKEN=github/token',
    });
  return [spec.slice(0, eq), spec.slice(eq + 1)];
}

export function registerRunCommand(program: Command, _io: Io): void {
  program
    .command('run')
    .description(
      'run a command with secrets in its environment or on descriptors; the agent starts it, output is masked',
    )
    .option('--env <VAR=NAME>', 'put the secret NAME in the variable VAR (repeatable)', collect, [])
    .option(
      '--env-file <file>',
      'NAME=VALUE lines; values keyward:SECRET are resolved (repeatable)',
      collect,
      [],
    )
    .option(
      '--fd <N=NAME>',
      'give the secret NAME on descriptor N, a sealed memfd (repeatable)',
      collect,
      [],
    )
    .option(
      '--project [file]',
      'give every value of a sealed project file under its own name (default: the nearest .keyward.env)',
    )
    .option(
      '--proxy',
      'give the command placeholders; a proxy puts the values into its requests to the hosts the policy binds them to',
    )
    .option('--no-masking', "don't mask the secrets' values in the command's output")
    .argument('<command...>', 'the command and its arguments, after --')
    .action(async function (this: Command, command: string[]) {
      const o = this.opts<{
        env: string[];
        envFile: string[];
        fd: string[];
        masking: boolean;
        project?: string | true;
        proxy?: boolean;
      }>();
      const env: RunRequest['env'] = [];
      const plain: Array<[string, string]> = [];
      for (const file of o.envFile) {
        let text: string;
        try {
          text = fs.readFileSync(file, 'utf8');
        } catch (e) {
          throw new UsageError(
            'USAGE',
            `cannot read the env file ${file} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
          );
        }
        for (const e of parseEnvFile(text, file)) {
          if ('ref' in e) env.push({ var: e.var, name: e.ref });
          else plain.push([e.var, e.value]);
        }
      }
      for (const spec of o.env) {
        const [v, name] = pair(spec, '--env');
        assertVarName(v, '--env');
        env.push({ var: v, name });
      }
      const fds = o.fd.map((spec) => {
        const [n, name] = pair(spec, '--fd');
        if (!/^[0-9]{1,3}$/.test(n))
          throw new UsageError('USAGE', `--fd ${spec}: N must be a number`);
        return { fd: Number(n), name };
      });
      // The child's environment: this one, then the env file's plain values. Injected values
      // are added by the agent, last, so they win.
      const entries = new Map<string, string>();
      for (const [k, v] of Object.entries(process.env)) if (v !== undefined) entries.set(k, v);
      for (const [k, v] of plain) entries.set(k, v);
      const environ = Buffer.from([...entries].map(([k, v]) => `${k}=${v}\0`).join(''), 'utf8');
      const request: RunRequest = {
        argv: command,
        cwd: process.cwd(),
        env,
        fds,
        masking: o.masking,
        ...(o.proxy ? { proxy: true } : {}),
      };
      if (o.project !== undefined) {
        const { readSealed, sealedFile } = await import('./project-commands.js');
        request.project = readSealed(sealedFile(o.project === true ? undefined : o.project));
      }
      // A pty only for an interactive terminal: with piped input, a terminal would mangle it
      // (line editing, ^C and ^D as signals, echo) and merge stderr into stdout.
      if (tty.isatty(0) && tty.isatty(1))
        request.pty = { rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 };
      const code = await agentRun(agentSocket(), request, environ);
      throw new ChildExit(code);
    });
}
