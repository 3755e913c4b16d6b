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
      const h = COMMAND_HELP[name];
      if (opts.length > 0 || h) {
        out.push('.RS');
        for (const o of opts) out.push('.TP', `.B ${roff(o.flags)}`, roff(o.description));
        if (h) {
          const exits = [0, ...new Set(h.exits)].sort((x, y) => x - y).join(', ');
          out.push('.PP', roff(`Exit status: ${exits}.`), '.PP', 'Examples:', '.nf');
          for (const e of h.examples) out.push(`  ${roff(e)}`);
          out.push('.fi');
        }
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

/** Exit statuses besides 0 that commands of a kind end with. */
const OPENS_VAULT = [2, 3, 4, 8];
const ASKS_AGENT = [2, 5, 8];
const RELEASES = [2, 3, 4, 5, 6, 7, 8];
/** Direct with the passphrase, or through the agent under policy (kinds list and audit). */
const VIEWS = RELEASES;

/** Each command's exit statuses (besides 0) and one or two examples, for its --help. */
export const COMMAND_HELP: Readonly<
  Record<string, { exits: number[]; examples: string[]; env?: string[] }>
> = {
  init: { exits: [2, 8], examples: ['keyward init', 'keyward init --force --yes'] },
  whoami: { exits: [2, 3, 8], examples: ['keyward whoami', 'keyward whoami --json'] },
  secret: { exits: RELEASES, examples: ['keyward secret list', 'keyward secret rm old/token'] },
  'secret set': {
    exits: OPENS_VAULT,
    examples: [
      'printf %s "$TOKEN" | keyward secret set github/token',
      'keyward secret set db/password    # on a terminal: asked, hidden',
    ],
  },
  'secret list': {
    exits: VIEWS,
    examples: ['keyward secret list', 'keyward secret list --json'],
  },
  'secret rm': { exits: OPENS_VAULT, examples: ['keyward secret rm github/token'] },
  passwd: { exits: OPENS_VAULT, examples: ['keyward passwd'] },
  rekey: { exits: OPENS_VAULT, examples: ['keyward rekey'] },
  read: {
    exits: RELEASES,
    examples: [
      'keyward read github/token',
      'GITHUB_TOKEN="$(keyward read github/token)" gh repo list',
      'keyward read --project DATABASE_URL    # from the nearest .keyward.env, by the agent',
    ],
  },
  agent: { exits: ASKS_AGENT, examples: ['keyward agent start', 'keyward agent stop'] },
  'agent run': {
    env: ['KEYWARD_ASKPASS'],
    exits: [2, 5, 8],
    examples: ['keyward agent run    # in the foreground, for a service manager'],
  },
  'agent start': {
    env: ['KEYWARD_ASKPASS'],
    exits: [2, 5, 8],
    examples: ['keyward agent start && keyward unlock'],
  },
  'agent stop': { exits: ASKS_AGENT, examples: ['keyward agent stop'] },
  unlock: {
    exits: [2, 4, 5, 8],
    examples: ['keyward unlock', 'keyward unlock --keyring'],
  },
  lock: { exits: ASKS_AGENT, examples: ['keyward lock'] },
  status: { exits: ASKS_AGENT, examples: ['keyward status', 'keyward status --json'] },
  approvals: { exits: ASKS_AGENT, examples: ['keyward approvals', 'keyward approvals --json'] },
  approve: {
    exits: [2, 3, 4, 5, 8],
    examples: [
      'keyward approve 7f3a',
      'keyward approve 7f3a --code',
      'oathtool --totp -b SECRET | keyward approve 7f3a --code -',
    ],
  },
  deny: { exits: [2, 3, 5, 8], examples: ['keyward deny 7f3a'] },
  totp: { exits: OPENS_VAULT, examples: ['keyward totp enroll'] },
  'totp enroll': { exits: OPENS_VAULT, examples: ['keyward totp enroll'] },
  key: { exits: OPENS_VAULT, examples: ['keyward key generate git-signing', 'keyward key list'] },
  'key generate': {
    exits: OPENS_VAULT,
    examples: ['keyward key generate git-signing', 'keyward key generate deploy --type ecdsa-p256'],
  },
  'key import': {
    exits: OPENS_VAULT,
    examples: [
      'keyward key import ~/.ssh/id_ed25519',
      'keyward key import ~/.ssh/work --name work',
    ],
  },
  'key list': {
    exits: VIEWS,
    examples: ['keyward key list', 'keyward key list --json'],
  },
  'key rm': { exits: OPENS_VAULT, examples: ['keyward key rm old-key'] },
  'ssh-env': { exits: [2], examples: ['eval "$(keyward ssh-env)"'] },
  run: {
    exits: RELEASES,
    examples: [
      'keyward run --env GITHUB_TOKEN=github/token -- gh repo list',
      'keyward run --fd 3=deploy/key -- ./deploy.sh    # the secret on descriptor 3',
      'keyward run --project -- npm test    # every value of the nearest .keyward.env',
      'keyward run --proxy --env GITHUB_TOKEN=github/token -- gh repo list    # a placeholder; the proxy puts the token in',
    ],
  },
  mcp: {
    exits: RELEASES,
    examples: [
      'keyward mcp serve',
      'keyward mcp wrap --name github -- npx -y @modelcontextprotocol/server-github',
    ],
  },
  'mcp serve': {
    exits: RELEASES,
    examples: ['keyward mcp serve    # in an MCP client configuration'],
  },
  'mcp wrap': {
    exits: RELEASES,
    examples: [
      'keyward mcp wrap --name github -- npx -y @modelcontextprotocol/server-github',
      'keyward mcp wrap --name docs --url https://mcp.example.com/mcp',
    ],
  },
  'mcp pins': {
    exits: OPENS_VAULT,
    examples: ['keyward mcp pins list', 'keyward mcp pins diff github'],
  },
  'mcp pins list': { exits: [...OPENS_VAULT, 5], examples: ['keyward mcp pins list'] },
  'mcp pins diff': { exits: [...OPENS_VAULT, 5], examples: ['keyward mcp pins diff github'] },
  'mcp pins trust': { exits: OPENS_VAULT, examples: ['keyward mcp pins trust github'] },
  'mcp pins reset': {
    exits: OPENS_VAULT,
    examples: ['keyward mcp pins reset github', 'keyward mcp pins reset --all'],
  },
  seal: {
    exits: OPENS_VAULT,
    examples: ['keyward seal .env', 'keyward seal .env --recipient age1... --output .keyward.env'],
  },
  unseal: {
    exits: OPENS_VAULT,
    examples: ['keyward unseal', 'keyward unseal .keyward.env --output /tmp/plain.env'],
  },
  project: { exits: OPENS_VAULT, examples: ['keyward project identity', 'keyward project check'] },
  'project identity': {
    exits: OPENS_VAULT,
    examples: ['keyward project identity', 'keyward project identity --import ci.key    # in CI'],
  },
  'project recipients': {
    exits: OPENS_VAULT,
    examples: ['keyward project recipients add age1...', 'keyward project recipients rm age1...'],
  },
  'project recipients add': {
    exits: OPENS_VAULT,
    examples: ['keyward project recipients add age1...'],
  },
  'project recipients rm': {
    exits: OPENS_VAULT,
    examples: ['keyward project recipients rm age1... .keyward.env'],
  },
  'project check': { exits: [2, 4, 8], examples: ['keyward project check .keyward.env --json'] },
  operator: {
    exits: OPENS_VAULT,
    examples: ['keyward operator key create alice-oncall --groups sre-team'],
  },
  'operator key': { exits: OPENS_VAULT, examples: ['keyward operator key list'] },
  'operator key create': {
    exits: OPENS_VAULT,
    examples: ['keyward operator key create alice-oncall --groups sre-team,release'],
  },
  'operator key list': { exits: OPENS_VAULT, examples: ['keyward operator key list --json'] },
  'operator key revoke': {
    exits: [...OPENS_VAULT, 3],
    examples: ['keyward operator key revoke alice-oncall'],
  },
  console: {
    exits: ASKS_AGENT,
    examples: ['keyward console credentials', 'keyward console revoke 3f2a'],
  },
  'console credentials': { exits: ASKS_AGENT, examples: ['keyward console credentials --json'] },
  'console rename': {
    exits: [...ASKS_AGENT, 3, 4],
    examples: ['keyward console rename 3f2a "laptop key"'],
  },
  'console revoke': { exits: [...ASKS_AGENT, 3, 4], examples: ['keyward console revoke 3f2a'] },
  audit: { exits: OPENS_VAULT, examples: ['keyward audit tail', 'keyward audit verify'] },
  'audit init': { exits: OPENS_VAULT, examples: ['keyward audit init'] },
  'audit verify': {
    exits: VIEWS,
    examples: ['keyward audit verify', 'keyward audit verify --chain-only'],
  },
  'audit acknowledge': {
    exits: OPENS_VAULT,
    examples: ['keyward audit verify', 'keyward audit acknowledge --head SEQ:SHA256'],
  },
  'audit tail': {
    exits: VIEWS,
    examples: ['keyward audit tail -n 50', 'keyward audit tail --sealed --follow'],
  },
  'audit export': {
    exits: VIEWS,
    examples: ['keyward audit export > audit.jsonl', 'keyward audit export --decrypt'],
  },
  'audit key': { exits: OPENS_VAULT, examples: ['keyward audit key export > audit.key'] },
  'audit key export': {
    exits: OPENS_VAULT,
    examples: ['keyward audit key export > audit.key'],
  },
  'audit rekey': { exits: OPENS_VAULT, examples: ['keyward audit rekey'] },
  policy: {
    exits: [2, 3, 4, 8],
    examples: ['keyward policy check policy.yaml', 'keyward policy apply policy.yaml'],
  },
  'policy check': { exits: [2, 8], examples: ['keyward policy check ~/.keyward/policy.yaml'] },
  'policy apply': {
    // 6: the person said no, or the policy in force changed while they were shown the changes.
    exits: [...OPENS_VAULT, 6],
    examples: ['keyward policy apply ~/.keyward/policy.yaml'],
  },
  'policy show': { exits: [2, 3, 8], examples: ['keyward policy show'] },
  'policy history': { exits: [2, 3, 8], examples: ['keyward policy history'] },
  'policy diff': { exits: [2, 3, 8], examples: ['keyward policy diff 3 4'] },
  'policy explain': {
    exits: [2, 3, 8],
    examples: ['keyward policy explain --target github/token --exe /usr/bin/gh'],
  },
  backup: {
    exits: [2, 3, 4, 5, 8],
    examples: [
      'keyward backup --output ~/keyward-$(date +%F).kwbackup',
      'keyward backup --output /mnt/offsite/keyward.age --recipient age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p',
    ],
  },
  restore: {
    exits: [2, 4, 5, 8],
    examples: [
      'keyward restore --input keyward.kwbackup --verify',
      'keyward restore --input keyward.kwbackup --force',
      'keyward restore --input keyward.age --identity backup-identity.txt',
    ],
  },
  doctor: { exits: [2, 8], examples: ['keyward doctor', 'keyward doctor --json'] },
  demo: { exits: [2], examples: ['keyward demo'] },
  completion: {
    exits: [2],
    examples: ['source <(keyward completion bash)', 'keyward completion fish | source'],
  },
};

/** The end of one command's --help: what it reads, how it can end, and examples. */
export function commandEpilogue(path: string): string {
  const h = COMMAND_HELP[path];
  if (!h) return '';
  const what = new Map(EXIT_STATUS);
  const exits = [0, ...new Set(h.exits)].sort((a, b) => a - b);
  return [
    '',
    `Environment: ${['KEYWARD_HOME', 'KEYWARD_SOCKET_DIR', 'KEYWARD_PASSPHRASE_FILE', ...(h.env ?? [])].join(', ')} (keyward --help says what each is)`,
    '',
    'Exit status:',
    ...exits.map((k) => `  ${String(k).padEnd(3)} ${what.get(k) ?? ''}`),
    '',
    'Examples:',
    ...h.examples.map((e) => `  ${e}`),
  ].join('\n');
}
