/**
 * agent run | start | stop, unlock, lock, status, approvals, approve, deny.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { InvalidArgumentError, Option } from './commander.js';
import { agentApprovals, agentApprove, agentStatus, agentUnlock, call } from '../agent/index.js';
import { KeywardError } from '../errors.js';
import { asciiShown, jsonText, printable } from '../lib/text.js';
import { askOnTerminal } from '../lib/tty.js';
import { note, type Io } from './report.js';
import { agentSocket, passphraseFile } from './places.js';
import { agentStopCommand, lockCommand } from './quick.js';
import { agentStartCommand } from './quick-start.js';
import { agentRunCommand, readyFdOf } from './agent-run.js';

function ms(n: unknown): string {
  const s = Math.round(Number(n) / 1000);
  return s >= 3600
    ? `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`
    : s >= 60
      ? `${Math.floor(s / 60)}m${s % 60}s`
      : `${s}s`;
}

export function registerAgentCommands(program: Command, io: Io): void {
  const agent = program
    .command('agent')
    .description('the daemon that holds the unlocked vault and answers on a Unix socket');

  agent
    .command('run')
    .description('run in the foreground (logs on stderr; Ctrl-C stops and wipes keys)')
    .option('--no-console', 'do not serve the web console')
    .addOption(
      new Option('--ready-fd <fd>', 'say "ready PID URL" on this descriptor once listening')
        .argParser((v) => {
          const fd = readyFdOf(v);
          if (fd === undefined) throw new InvalidArgumentError('a descriptor number of 3 or more');
          return fd;
        })
        .hideHelp(),
    )
    .action(async function (this: Command) {
      const o = this.opts<{ readyFd?: number; console: boolean }>();
      await agentRunCommand(io, { readyFd: o.readyFd, console: o.console });
    });

  agent
    .command('start')
    .description('start in the background')
    .option('--no-console', 'do not serve the web console')
    .action(async function (this: Command) {
      await agentStartCommand(io, this.opts<{ console: boolean }>().console);
    });

  agent
    .command('stop')
    .description('stop the agent (wipes keys)')
    .action(() => agentStopCommand(io));

  program
    .command('unlock')
    .description('open the unlock window (passphrase, or --keyring)')
    .option('--keyring', 'use the key in the OS keyring')
    .action(async function (this: Command) {
      const m = await agentUnlock(
        agentSocket(),
        { file: passphraseFile(this) },
        this.opts<{ keyring?: boolean }>().keyring === true,
        (m) => note(io, m),
      );
      io.stdout(m['alreadyUnlocked'] ? 'already unlocked\n' : 'unlocked\n');
      if (m['drift'])
        note(
          io,
          "WARNING: the policy files were changed behind keyward's back; the applied version is in force",
        );
      if (typeof m['auditWarning'] === 'string') note(io, printable(m['auditWarning'], 600));
    });

  program
    .command('lock')
    .description('close the unlock window: wipes keys and remembered approvals')
    .action(() => lockCommand(io));

  program
    .command('status')
    .description(
      'agent running? locked? what is left of the unlock window (exit 0 only when unlocked)',
    )
    .option('--json', 'machine-readable output')
    .action(async function (this: Command) {
      const s = (await agentStatus(agentSocket())) ?? { running: false };
      if (this.opts<{ json?: boolean }>().json) io.stdout(`${jsonText(s, 2)}\n`);
      else if (!s['running']) io.stdout('agent: not running\n');
      else {
        io.stdout(
          `agent: running (pid ${String(s['pid'])}), ${s['locked'] ? 'locked' : 'unlocked'}\n`,
        );
        const debuggable = Array.isArray(s['debuggable']) ? (s['debuggable'] as unknown[]) : [];
        const policy = s['policy'] as { drift?: unknown } | null | undefined;
        const drift = Array.isArray(policy?.drift) ? (policy.drift as unknown[]) : [];
        if (drift.length > 0)
          io.stdout(
            `WARNING: the policy files were changed behind keyward's back (the applied policy is in force): ${drift.map((d) => printable(String(d), 300)).join('; ')}\n`,
          );
        if (debuggable.length > 0)
          io.stdout(
            `WARNING: the agent can be debugged (started with --allow-debugger): ${debuggable.map((d) => printable(String(d), 300)).join('; ')}\n`,
          );
        if (!s['locked']) {
          io.stdout(
            `window: ${ms(s['absoluteLeftMs'])} left at most${s['usesLeft'] === null ? '' : `, ${String(s['usesLeft'])} uses left`}\n`,
          );
        }
        io.stdout(`pending approvals: ${String(s['pending'])}\n`);
        io.stdout(
          `console: ${typeof s['console'] === 'string' ? printable(s['console'], 200) : 'off'}\n`,
        );
      }
      if (!s['running'])
        throw new KeywardError('AGENT_UNAVAILABLE', 'no agent is running', {
          hint: 'keyward agent start',
        });
      if (s['locked'])
        throw new KeywardError('AGENT_LOCKED', 'the agent is locked', { hint: 'keyward unlock' });
    });

  program
    .command('approvals')
    .description('pending approval requests: id, caller, action, target')
    .option('--json', 'machine-readable output')
    .action(async function (this: Command) {
      const pending = await agentApprovals(agentSocket());
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${jsonText(pending, 2)}\n`);
        return;
      }
      if (pending.length === 0) io.stdout('no pending requests\n');
      for (const p of pending) io.stdout(pendingText(p));
    });

  program
    .command('approve')
    .argument('<id>', 'request id (see keyward approvals)')
    .description(
      'approve a pending request; needs the passphrase or a TOTP code, and never from the requesting process',
    )
    .option(
      '--code [-]',
      'with a TOTP code (after keyward totp enroll) instead of the passphrase: asked on the terminal, or read from standard input with --code -',
    )
    .action(async function (this: Command, id: string) {
      const code = this.opts<{ code?: string | true }>().code;
      // What is approved, said before the factor is asked: an id alone tells the person nothing,
      // and any process of the user can put its own request's id on their screen.
      const p = (await agentApprovals(agentSocket())).find((x) => x['id'] === id);
      if (!p)
        throw new KeywardError('REQUEST_NOT_FOUND', `no pending request ${printable(id, 40)}`, {
          hint: 'see: keyward approvals',
        });
      io.stderr(`keyward: approving ${pendingText(p)}`);
      await agentApprove(
        agentSocket(),
        id,
        { file: passphraseFile(this) },
        code === undefined ? undefined : totpCode(code, id),
      );
      io.stdout(`approved ${id}\n`);
    });

  const totp = program.command('totp').description('a TOTP authenticator as an approval factor');
  totp
    .command('enroll')
    .description(
      'make a new TOTP secret; shows an otpauth URI and a QR code for your authenticator app',
    )
    .option('--no-qr', 'the URI only')
    .action(async function (this: Command) {
      // The vault, the audit log and the TOTP code load for this command only.
      const [{ auth, paths }, { enrollTotp }, { useVault }] = await Promise.all([
        import('./context.js'),
        import('../approval/index.js'),
        import('../vault/index.js'),
      ]);
      const a = auth(this, io);
      const qr = this.opts<{ qr: boolean }>().qr;
      useVault(paths(), a, 'write', (v) => {
        a.audit.record({ type: 'totp.enrolled', decision: 'info' });
        enrollTotp(v, `vault-${v.id.slice(0, 8)}`, 1, qr);
        v.save();
      });
      note(
        io,
        'scan it (or type the secret) into your authenticator; approve with: keyward approve ID --code (it asks for the code)',
      );
    });

  program
    .command('deny')
    .argument('<id>', 'request id')
    .description('deny a pending request')
    .action(async (id: string) => {
      await call(agentSocket(), 'deny', { id });
      io.stdout(`denied ${id}\n`);
    });
}

/**
 * A pending request as `keyward approvals` shows it, and `approve` before it asks: id, action,
 * target, rule, who asks and what for. The agent escapes the caller's description itself; it is
 * shown as ASCII all the same (a process posing as the agent). Targets can hold requester text
 * (an ssh-add comment): escaped.
 */
function pendingText(p: Record<string, unknown>): string {
  const who = asciiShown(
    String((p['requester'] as { description?: string } | undefined)?.description ?? '?'),
  );
  const f = (v: unknown) => printable(String(v), 300);
  const left = Math.max(0, Math.round((Number(p['expiresAt']) - Date.now()) / 1000));
  let text = `${f(p['id'])}  ${f(p['action'])} ${f(p['target'])}  (rule ${f(p['rule'])}, ${f(p['mode'])}, ${left} s left)\n    by ${who}\n`;
  // The request as its prompt says it: the command, the hosts, the method and path.
  if (typeof p['what'] === 'string') text += `    to ${asciiShown(p['what'], 1000)}\n`;
  // One approval of a run covers every value its rule gives it: all of them are said.
  const also = Array.isArray(p['also']) ? (p['also'] as unknown[]) : [];
  if (also.length > 0) text += `    and also ${also.map(f).join(', ')}\n`;
  return text;
}

/**
 * The TOTP code for `approve ID --code`: asked on the terminal, or one line of standard input
 * (`--code -`, or no terminal). Never from the command line: every process of the user can read
 * a command line (/proc/PID/cmdline) while the CLI starts, and spend the code on a request of its
 * own first (a code is accepted once).
 */
function totpCode(given: string | true, id: string): string {
  if (given !== true && given !== '-')
    throw new KeywardError(
      'USAGE',
      'a TOTP code on the command line can be read by any process of yours and spent on its own request first',
      {
        hint: `keyward approve ${id} --code (asks for it), or: keyward approve ${id} --code - < FILE`,
      },
    );
  const asked =
    given === true ? askOnTerminal(`TOTP code to approve ${printable(id, 40)}: `) : undefined;
  const line = asked ?? firstLineOfStdin();
  if (!/^\d{6,8}$/.test(line))
    throw new KeywardError('USAGE', 'that is not a TOTP code (6 to 8 digits)', {
      hint: 'the code your authenticator shows now',
    });
  return line;
}

const pause = new Int32Array(new SharedArrayBuffer(4));

/** The first line of standard input (at most 64 bytes: a code is 6 to 8). */
function firstLineOfStdin(): string {
  const buf = Buffer.alloc(65);
  let len = 0;
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(0, buf, len, buf.length - len, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EOF') break;
      if (code !== 'EAGAIN' && code !== 'EINTR') throw e;
      // A non-blocking stdin with nothing yet: wait a little, not spin.
      Atomics.wait(pause, 0, 0, 20);
      continue;
    }
    if (n === 0) break;
    len += n;
    if (buf.subarray(0, len).includes(0x0a) || len >= 64) break;
  }
  const text = buf.subarray(0, len).toString('utf8');
  return (text.split('\n')[0] ?? '').trim();
}
