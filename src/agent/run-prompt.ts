/**
 * What the approval prompt of a run says (docs/RUN.md): the program the agent will run and its
 * hash, the command line (cut when too long, and saying where it is whole), the directory, where
 * this secret goes, that its output is not masked when it is not, the MCP client, the sealed
 * file, then every variable the run sets and loader variables in the caller's environment (lists
 * a caller can make long: cut, and last, so nothing above is pushed out of sight). Everything
 * the caller controls is quoted, each argument on its own, so argument boundaries and the
 * sentence can't be forged.
 */
import os from 'node:os';
import { quote, quoteAll } from '../lib/text.js';
import { reservedName } from '../project/index.js';
import { CODE_LOADERS, LOADER_VARIABLES } from './identity.js';
import type { Wanted } from './run-request.js';

export interface RunPromptFacts {
  program: string;
  programSha: string | undefined;
  argv: readonly string[];
  cwd: string;
  wanted: readonly Wanted[];
  /** The names of the variables in the caller's environment (the child's). */
  environ: readonly string[];
  mcp: string | undefined;
  project: { project: string; names: readonly string[] } | undefined;
  /** Whether the run's output is masked (said when it is not). */
  masking: boolean;
  /** Whether the environment's HOME is not the user's home (where most programs read config). */
  homeMoved: boolean;
  /** Variables that change what a program runs, set otherwise than in the agent's (setOtherwise). */
  codeSetters: readonly string[];
  /** Every other variable set otherwise than in the agent's (setOtherwise). */
  otherDiffering?: readonly string[];
}

/**
 * Variables that change where a program's traffic goes, which certificates it trusts, what it
 * runs along the way, or where it reads the configuration that says so: with one of them, an
 * approved `curl`, `git`, `gh` or `gcloud` can send the secret to whoever set it. Shapes, not a
 * list of names (every tool has its own: CLOUDSDK_PROXY_ADDRESS, OPENAI_BASE_URL, VAULT_ADDR,
 * GIT_DIR...), case-insensitive (http_proxy is as common), in the order a prompt names them:
 * proxies, trust, what runs or records the traffic, endpoints, configuration. A name matched by
 * mistake only makes the prompt longer.
 */
const TRAFFIC_SHAPES: readonly RegExp[] = [
  /PROXY/i,
  /CA_?CERT|CERT_?(FILE|DIR|PATH)|CAINFO|CA_?BUNDLE|CA_?PATH|CA_?FILE|^\w+_CERT$|SSLKEYLOG|REQCERT|ROOTS_FILE|HOST_KEY_CHECKING|_HTTP_SSL$|(SSL|TLS|HTTPS)_?(VALIDATION|VERIF|NO_?VERIFY|REJECT_UNAUTHORIZED)|STRICT_SSL|INSECURE|SKIP_VERIFY|CONNECTION_VERIFICATION/i,
  /^GIT_(DIR|WORK_TREE|COMMON_DIR|TRACE\w*|CURL_VERBOSE|EXTERNAL_DIFF|ASKPASS|PAGER|EDITOR)$|^(SSH|SUDO)_ASKPASS$|^GO(ENV|SUMDB|NOSUMDB|NOSUMCHECK|PRIVATE|FLAGS|AUTH|TOOLCHAIN|MODCACHE)$|^TF_(CLI_ARGS\w*|DATA_DIR|PLUGIN_CACHE_DIR)$|^DOCKER_CONTEXT$|^GH_REPO$|^CLOUDSDK_PYTHON\w*$|_ARGS$|^(PSQLRC|PYENV_VERSION)$/i,
  /ENDPOINT|REGISTR(Y|IES)|_(BASE_URL|API_URL|API_BASE|ADDR|HOSTS?|REPOSITORY_URL|PUBLISH_URL|INDEX_URL|INDEX|DIST_SERVER|URLS?|URIS?|DSN|PORT|SERVERS?|SITE|PROFILE|CLOUD|KUBEAPISERVER)$|^MC_HOST_|^LDAP\w+$|^(TWO_TASK|TNS_ADMIN|SQLCMDSERVER|DSQUERY|TDSQUERY|MYSQL_HOME|MYSQL_TEST_LOGIN_FILE|CONDARC|GEMRC|CONDA_CHANNEL_ALIAS|TWINE_REPOSITORY)$|_REPOSITORIES_\w+_URL$|^UV_(DEFAULT_)?INDEX\w*$|^(HOSTALIASES|RES_OPTIONS|LOCALDOMAIN)$|^PG(HOST|HOSTADDR|PORT|SERVICE|SERVICEFILE|DATABASE|OPTIONS|TARGETSESSIONATTRS|SSL\w*|REQUIRESSL|GSSENCMODE|PASSFILE)$/i,
  /^(XDG_CONFIG_HOME|CURL_HOME|NETRC|\w*WGETRC|KUBECONFIG|CARGO_HOME|GNUPGHOME|DOCKER_CONFIG|CLOUDSDK_CONFIG|BOTO_CONFIG)$|CONFIG_FILE|_CONFIG_DIR$|CREDENTIALS|^NPM_CONFIG_(USERCONFIG|GLOBALCONFIG|CAFILE|CA|CERT)$|^PIP_(TRUSTED_HOST|CERT|CLIENT_CERT|FIND_LINKS)$|^GIT_SSL_/i,
];

/**
 * The names that most often carry such an attack, shown first and whole whatever else the
 * environment holds: no number of made-up names with PROXY in them can push these out of the
 * prompt's cut.
 */
const FIRST_SHOWN: ReadonlySet<string> = new Set([
  'HTTPS_PROXY',
  'https_proxy',
  'HTTP_PROXY',
  'http_proxy',
  'ALL_PROXY',
  'all_proxy',
  'SSL_CERT_FILE',
  'SSL_CERT_DIR',
  'NODE_EXTRA_CA_CERTS',
  'NODE_TLS_REJECT_UNAUTHORIZED',
  'REQUESTS_CA_BUNDLE',
  'CURL_CA_BUNDLE',
  'GIT_SSL_NO_VERIFY',
  'GIT_SSL_CAINFO',
  'GIT_DIR',
  'SSLKEYLOGFILE',
]);

/** The rank of a traffic or trust variable (TRAFFIC_SHAPES), or undefined. */
export function trafficRank(name: string): number | undefined {
  // Names that turn a proxy off send nothing elsewhere (NO_PROXY, npm's noproxy).
  if (/NO_?PROXY$/i.test(name)) return undefined;
  const rank = TRAFFIC_SHAPES.findIndex((shape) => shape.test(name));
  return rank < 0 ? undefined : rank;
}

/**
 * Whether a HOME the environment sets (any of them: libc takes the first, others the last) is
 * not the user's home in the password database: a program then reads its configuration (its
 * proxy, its hosts, its certificates) from wherever the caller chose. Unknown is moved.
 */
export function homeMoved(env: ReadonlyArray<{ name: string; value: Uint8Array }>): boolean {
  let own: Buffer | undefined;
  try {
    own = Buffer.from(os.userInfo().homedir);
  } catch {
    own = undefined;
  }
  // eslint-disable-next-line no-restricted-syntax -- a directory's path, not a secret
  return env.some((e) => e.name === 'HOME' && (own === undefined || !own.equals(e.value)));
}

/** What says which session a process is of (HOME is said apart), not what it runs: not listed. */
const SESSION =
  /^(HOME|XDG_(SESSION_\w+|SEAT\w*|VTNR|CURRENT_DESKTOP)|SSH_(CLIENT|CONNECTION|TTY|AGENT_PID))$/;

/**
 * The names that most often make an approved program run a caller's code, said first and whole
 * however many others come before them (review: sixteen made-up `*_OPTS` pushed MAKEFILES out
 * of the prompt's cut). KEYWARD_SOCKET_DIR and XDG_RUNTIME_DIR move a nested keyward's socket.
 */
const SETTERS_FIRST: ReadonlySet<string> = new Set([
  'MAKEFILES',
  'MAKEFLAGS',
  'MFLAGS',
  'SHELLOPTS',
  'BASHOPTS',
  'PS4',
  'PROMPT_COMMAND',
  'PATH',
  'SHELL',
  'EDITOR',
  'VISUAL',
  'PAGER',
  'GIT_TEMPLATE_DIR',
  'KEYWARD_SOCKET_DIR',
  'KEYWARD_HOME',
  'XDG_RUNTIME_DIR',
  'SSH_AUTH_SOCK',
]);

/** Variables that differ from one process to the next of a session, and say nothing of what runs. */
const NOISE =
  /^(PWD|OLDPWD|SHLVL|_|COLUMNS|LINES|TERM|TERM_PROGRAM\w*|COLORTERM|WINDOWID|TMUX_PANE|STY|WINDOW|SSH_TTY|GPG_TTY)$/;

/** How many of the other variables set otherwise than the session's a run's record names. */
const MAX_OTHERS_RECORDED = 64;

/**
 * The caller's variables whose value is not the agent's own (the agent's are the user's
 * session's, said in no prompt), but those that only say which session it is, in one pass:
 * - codeSetters: those that change what a program loads or runs (reservedName: the shell's
 *   SHELLOPTS and PS4, make's MAKEFILES and MAKEFLAGS, git's hooks and templates, editors and
 *   pagers...): an approved `make deploy` with MAKEFILES set runs a makefile of the caller's
 *   first (found in review: the prompt said nothing);
 * - otherDiffering: every one but those that only say which terminal or directory it is: the
 *   shapes above are a list, and a tool whose names fit none of them (libldap's LDAPURI,
 *   gcloud's CLOUDSDK_PYTHON: found in review) is still named, after them.
 */
export function setOtherwise(env: ReadonlyArray<{ name: string; value: Uint8Array }>): {
  codeSetters: string[];
  otherDiffering: string[];
} {
  const differing = new Set<string>();
  for (const e of env) {
    if (SESSION.test(e.name)) continue;
    const own = process.env[e.name];
    // eslint-disable-next-line no-restricted-syntax -- equal or not is all that is kept
    if (own === undefined || !Buffer.from(own).equals(e.value)) differing.add(e.name);
  }
  const names = [...differing];
  return {
    codeSetters: names.filter((n) => reservedName(n) !== undefined),
    otherDiffering: names.filter((n) => !NOISE.test(n)),
  };
}

const placeOf = (a: { var: string } | { fd: number }) =>
  'var' in a ? `$${a.var}` : `descriptor ${a.fd}`;

export function runPrompt(f: RunPromptFacts): {
  /** The sentence for one secret; `proxiedTo`: the hosts its proxy puts it into (--proxy). */
  what: (w: Wanted, proxiedTo: readonly string[] | undefined) => string;
  /** Whether the command line was cut (the pending request then carries it whole). */
  cut: boolean;
  /**
   * Traffic and trust variables (HOME when moved), then loader variables, in the caller's
   * environment (said in every prompt, and recorded).
   */
  notable: string[];
} {
  const loaders = [...new Set(f.environ.filter((n) => LOADER_VARIABLES.test(n)))];
  // Proxies and trust first, so no number of others pushes them out of the prompt's cut.
  const ranked = [...new Set(f.environ)]
    .map((n) => ({ n, rank: LOADER_VARIABLES.test(n) ? undefined : trafficRank(n) }))
    .filter((x): x is { n: string; rank: number } => x.rank !== undefined)
    .sort((a, b) => a.rank - b.rank);
  const traffic = [...(f.homeMoved ? ['HOME'] : []), ...ranked.map((x) => x.n)];
  const trafficFirst = traffic.filter((n) => n === 'HOME' || FIRST_SHOWN.has(n));
  // The rest of what changes what runs, where the agent's own values don't say the same.
  const listed = new Set([...traffic, ...loaders]);
  const setters = f.codeSetters.filter((n) => !listed.has(n));
  const named = new Set([...traffic, ...loaders, ...setters]);
  const others = (f.otherDiffering ?? []).filter((n) => !named.has(n));
  // Recorded too, up to MAX_OTHERS_RECORDED and how many more: sixteen made-up names push a
  // seventeenth out of the prompt's list, not out of the record (found in review).
  const notable = [
    ...named,
    ...others.slice(0, MAX_OTHERS_RECORDED),
    ...(others.length > MAX_OTHERS_RECORDED
      ? [`(${others.length - MAX_OTHERS_RECORDED} more)`]
      : []),
  ];
  // Every variable and descriptor the run sets, and from which secret, whatever rule each
  // secret falls under (one allowed outright is still in the run).
  const places = f.wanted.flatMap((w) => w.as.map((a) => `${placeOf(a)} from ${quote(w.name)}`));
  const sets =
    places.length > 1
      ? `; in all the run sets ${places.slice(0, 30).join(', ')}${places.length > 30 ? ` and ${places.length - 30} more` : ''}`
      : '';
  // What the sealed file sets, whichever secret the prompt asks for.
  const p = f.project;
  const fromFile = p
    ? `; the sealed project file of ${quote(p.project)} sets ${p.names.length > 20 ? `${p.names.length} variables, among them ` : ''}${p.names.slice(0, 20).join(', ')}`
    : '';
  // A command line too long for a prompt is cut there, and says where it is whole.
  const shown = quoteAll(f.argv);
  const cut = shown !== quoteAll(f.argv, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
  const argv = cut ? `${shown} (cut here; the whole command: keyward approvals --json)` : shown;
  const hash = f.programSha
    ? ` (sha256 ${f.programSha.slice(0, 16)})`
    : ' (not hashed: unreadable, or larger than 256 MiB)';
  return {
    cut,
    notable,
    what: (w, proxiedTo) => {
      const where = w.as.map(placeOf).join(', ');
      return (
        `run ${quote(f.program)}${hash} as: ${argv}, in ${quote(f.cwd)}, with the secret ${quote(w.name)} ` +
        (proxiedTo
          ? `held by keyward's proxy and put only into its requests to ${proxiedTo.map((h) => quote(h)).join(', ')} (the command gets a placeholder as ${where})`
          : `as ${where}`) +
        // What matters to the answer first; the lists, which the caller can make long, last
        // and cut (recorded: every name of the first three lists, and up to 64 of the others).
        (f.masking ? '' : '; its output not masked') +
        (traffic.length > 0
          ? `; its environment may send its traffic elsewhere or change what it trusts: ${shortList(
              traffic.filter((n) => !trafficFirst.includes(n)),
              16,
              trafficFirst,
            )}`
          : '') +
        (f.mcp ? `; asked by an MCP client that calls itself ${quote(f.mcp)}` : '') +
        fromFile +
        sets +
        (loaders.length > 0 ? `; its environment sets ${loaderList(loaders)}` : '') +
        (setters.length > 0
          ? `; its environment sets what programs run otherwise than your session does: ${shortList(
              setters.filter((n) => !SETTERS_FIRST.has(n)),
              16,
              setters.filter((n) => SETTERS_FIRST.has(n)),
            )}`
          : '') +
        (others.length > 0
          ? `; and its environment sets ${others.length} other variable${others.length === 1 ? '' : 's'} otherwise than your session does: ${shortList(others, 16)}`
          : '')
      );
    },
  };
}

/**
 * The loader variables: those that load code into most programs (CODE_LOADERS, a fixed set) all
 * of them and first, wherever they are in the environment, so that no number of others hides
 * LD_PRELOAD; then at most 16 others, each at most 64 characters, and how many more.
 */
function loaderList(names: readonly string[]): string {
  const first = names.filter((n) => CODE_LOADERS.has(n));
  const rest = names.filter((n) => !CODE_LOADERS.has(n));
  return shortList(rest, 16, first);
}

/** At most `max` names after `first`, each at most 64 characters, and how many more. */
function shortList(names: readonly string[], max: number, first: readonly string[] = []): string {
  const shown = names.slice(0, max).map((n) => (n.length > 64 ? `${n.slice(0, 61)}...` : n));
  return `${[...first, ...shown].join(', ')}${names.length > max ? ` and ${names.length - max} more` : ''}`;
}
