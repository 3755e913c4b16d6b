/**
 * What `keyward --help` ends with and what the man page (docs/keyward.1, `npm run man`) holds,
 * from one source: the command tree, the environment keyward reads, and the exit statuses.
 */
import type { Command } from 'commander';
import { EXIT } from '../errors.js';

/** The variables keyward reads (INTERFACE.md, "Places"). */
export const ENVIRONMENT: ReadonlyArray<readonly [string, string]> = [
  ['KEYWARD_HOME', 'where the vault, the policy and the audit log live (default ~/.keyward)'],
  [
    'KEYWARD_SOCKET_DIR',
    "the agent's sockets (default $XDG_RUNTIME_DIR/keyward, else $KEYWARD_HOME/run)",
  ],
  [
    'KEYWARD_PASSPHRASE_FILE',
    'a file (mode 0600) whose first line is the passphrase; --passphrase-file wins over it',
  ],
  ['KEYWARD_ASKPASS', 'the program the agent runs to ask a person to approve a request'],
  ['KEYWARD_DEBUG', 'set to 1 to print the stack of an internal error'],
];

export const EXIT_STATUS: ReadonlyArray<readonly [number, string]> = [
  [EXIT.OK, 'success'],
  [EXIT.INTERNAL, 'an internal error (a bug in keyward)'],
  [EXIT.USAGE, 'a bad option, name or value'],
  [EXIT.NOT_FOUND, 'no vault yet, or no such secret or key'],
  [EXIT.AUTH, 'a wrong passphrase, key or code'],
  [EXIT.UNAVAILABLE, 'no agent, or it is locked'],
  [EXIT.DENIED, 'denied by policy or by a person'],
  [EXIT.TIMEOUT, 'an approval timed out'],
  [EXIT.INTEGRITY, 'a damaged or tampered file, or one others can change'],
];

/** The end of `keyward --help`. */
export function helpEpilogue(): string {
  const pad = (s: string, n: number) => s.padEnd(n);
  return [
    '',
    'Environment:',
    ...ENVIRONMENT.map(([k, v]) => `  ${pad(k, 25)} ${v}`),
    '',
    'Exit status:',
    ...EXIT_STATUS.map(([k, v]) => `  ${pad(String(k), 3)} ${v}`),
    '',
    'Examples:',
    '  keyward init && keyward agent start && keyward unlock',
    '  printf %s "$TOKEN" | keyward secret set github/token',
    '  keyward run --env GITHUB_TOKEN=github/token -- gh repo list',
    '',
    'Every command: keyward help COMMAND. The whole contract: docs/CLI.md, man ./docs/keyward.1',
  ].join('\n');
}

/** roff for one line of text: backslashes and leading dots or quotes made literal. */
function roff(s: string): string {
  const t = s.replace(/\\/g, '\\e').replace(/-/g, '\\-');
  return /^[.']/.test(t) ? `\\&${t}` : t;
}

/** The man page, section 1, from the command tree. */
export function manPage(program: Command, version: string): string {
  const out = [
    `.TH KEYWARD 1 "" "keyward ${version}" "User Commands"`,
    '.SH NAME',
    `keyward \\- ${roff(program.description())}`,
    '.SH SYNOPSIS',
    '.B keyward',
    '[\\fB\\-\\-passphrase\\-file\\fR \\fIFILE\\fR] [\\fB\\-\\-allow\\-debugger\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]',
    '.SH DESCRIPTION',
    roff(
      'keyward keeps secrets and signing keys in an encrypted vault and releases them, through an agent, only under policy, with approvals, to callers it identifies, each release recorded in a tamper-evident audit log.',
    ),
    '.SH COMMANDS',
  ];
  const walk = (c: Command, path: string) => {
    for (const s of c.commands.filter((x) => x.name() !== 'help')) {
      const name = path ? `${path} ${s.name()}` : s.name();
      const usage = s.usage().replace('[options]', '').trim();
      out.push(
        '.TP',
        `.B keyward ${roff(name)}${usage ? ` ${roff(usage)}` : ''}`,
        roff(s.description()),
      );
      const opts = s.options.filter((o) => o.long !== '--help');
      if (opts.length > 0) {
        out.push('.RS');
        for (const o of opts) out.push('.TP', `.B ${roff(o.flags)}`, roff(o.description));
        out.push('.RE');
      }
      walk(s, name);
    }
  };
  walk(program, '');
  out.push('.SH OPTIONS');
  for (const o of program.options) out.push('.TP', `.B ${roff(o.flags)}`, roff(o.description));
  out.push('.SH ENVIRONMENT');
  for (const [k, v] of ENVIRONMENT) out.push('.TP', `.B ${k}`, roff(v));
  out.push('.SH EXIT STATUS');
  for (const [k, v] of EXIT_STATUS) out.push('.TP', `.B ${k}`, roff(v));
  out.push(
    '.SH FILES',
    '.TP',
    '.B ~/.keyward/vault.kw',
    roff('the vault (docs/FORMAT.md)'),
    '.TP',
    '.B ~/.keyward/audit/',
    roff('the audit log (docs/AUDIT.md)'),
    '.SH SEE ALSO',
    '.BR ssh\\-agent (1),',
    '.BR ssh\\-add (1);',
    roff('docs/CLI.md, docs/THREAT-MODEL.md and docs/PROTOCOL.md in the source.'),
    '',
  );
  return out.join('\n');
}
