/**
 * `keyward run --proxy` in the agent (docs/PROXY.md): the child gets placeholders where it would
 * have had secrets, and a proxy of its own (src/proxy) puts the values into its requests to the
 * hosts the policy binds them to. This file makes a run's proxy from the policy and the values
 * run-service.ts authorized, writes the CA certificate files the child trusts, and gives the
 * environment that points the child at both.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { KeywardError, UsageError } from '../errors.js';
import { readOwnFile, writeFileAtomic } from '../lib/files.js';
import { randomBytes, secureFree, secureSlice, type SecureBuffer } from '../lib/secure.js';
import type { Policy } from '../policy/index.js';
import { TokenBucket } from '../policy/index.js';
import {
  makePlaceholder,
  startProxyServer,
  type ProxyServer,
  createRunCa,
  type Binding,
  type HostRule,
  type Pinned,
  type ProxyHooks,
} from '../proxy/index.js';
import { maskingForms, type EnvPiece } from '../run/index.js';
import { quote } from '../lib/text.js';
import type { Vault } from '../vault/index.js';
import { sameRule } from './gate-caller.js';
import type { Wanted } from './run-request.js';
import type { RunConn, RunHost } from './run-types.js';

/** Where the system's trust store usually is (Debian, Fedora, Alpine and macOS-like layouts). */
const SYSTEM_BUNDLES = [
  '/etc/ssl/certs/ca-certificates.crt',
  '/etc/pki/tls/certs/ca-bundle.crt',
  '/etc/ssl/cert.pem',
];

/** The variables a proxied run sets; a run's --env can't name them. */
export const PROXY_VARIABLES = [
  'HTTPS_PROXY',
  'https_proxy',
  'HTTP_PROXY',
  'http_proxy',
  'NO_PROXY',
  'no_proxy',
  'NODE_USE_ENV_PROXY',
  'NODE_EXTRA_CA_CERTS',
  'SSL_CERT_FILE',
  'REQUESTS_CA_BUNDLE',
  'CURL_CA_BUNDLE',
  'GIT_SSL_CAINFO',
] as const;

/**
 * The system's trust store as PEM text: the first bundle found, else Node's own list (node:tls
 * loaded then: an idle agent does without it).
 */
export async function systemTrust(): Promise<string> {
  for (const f of SYSTEM_BUNDLES) {
    try {
      return fs.readFileSync(f, 'utf8');
    } catch {
      // the next
    }
  }
  return (await import('node:tls')).rootCertificates.join('\n');
}

/** The hosts the policy binds to name, with how. */
export function hostsFor(policy: Policy, name: string): Map<string, HostRule> {
  const out = new Map<string, HostRule>();
  for (const [host, b] of Object.entries(policy.proxy?.hosts ?? {}))
    if (b.secret === name)
      out.set(host, {
        port: b.port,
        in: new Set(b.in),
        headers: new Set(b.headers.map((h) => h.toLowerCase())),
        header: b.header,
        format: b.format,
      });
  return out;
}

/**
 * A proxied run's secrets and the hosts the policy binds each to (the only requests the proxy
 * puts it into). Refuses a run that holds nothing back, an --env that names one of the proxy's
 * own variables, and a secret no host is bound to.
 */
export function proxyBindings(policy: Policy, wanted: readonly Wanted[]): Map<string, string[]> {
  if (wanted.length === 0)
    throw new UsageError('USAGE', '--proxy needs a secret to hold back: --env VAR=NAME');
  const boundTo = new Map<string, string[]>();
  for (const w of wanted) {
    for (const a of w.as)
      if ('var' in a && (PROXY_VARIABLES as readonly string[]).includes(a.var))
        throw new UsageError('USAGE', `--proxy sets ${a.var} itself: choose another --env name`);
    const hosts = [...hostsFor(policy, w.name).keys()];
    if (hosts.length === 0)
      throw new KeywardError(
        'POLICY_DENIED',
        `--proxy: the policy binds no host to ${quote(w.name)} (proxy.hosts), so nothing would put it into a request`,
        { hint: 'docs/PROXY.md, "The policy"' },
      );
    boundTo.set(w.name, hosts);
  }
  return boundTo;
}

/**
 * Why a proxied run may no longer go on under the policy in force, or undefined: its `proxy`
 * section (which hosts get which secret, how, and whose certificate is trusted) is not, word
 * for word, the one the run started under.
 */
export function proxyMoved(now: Policy, started: Policy): string | undefined {
  if (
    now === started ||
    JSON.stringify(now.proxy ?? null) === JSON.stringify(started.proxy ?? null)
  )
    return undefined;
  return 'the policy changed: its proxy section is not the one the run started under; run the command again';
}

/** What a proxied run's requests are checked against, each time one would carry a value. */
export interface ProxyUse {
  /** The policy the run started under, and each secret's deciding rule then. */
  started: Policy;
  rules: ReadonlyMap<string, string | null>;
  program: string;
  stillOpen(): boolean;
  /** The policy in force, read again, and the one of the run's vault. */
  now(): Policy;
  inForce(): Policy;
  decide(name: string): {
    decision: 'allow' | 'approve' | 'deny';
    rule: string | undefined;
    highValue: boolean;
  };
  authorize(req: { proxied: true; target: string; what: string; exists: true }): Promise<unknown>;
}

/**
 * The proxy's mayUse hook: why a request may not carry name's value now, or undefined. A
 * high_value rule asks a person for every request; the answer stands only if the policy still
 * gives the value here after it (the gate checks the rule of the answer, not the proxy section).
 */
export function proxyMayUse(
  u: ProxyUse,
): (
  name: string,
  r: { host: string; method: string; path: string },
) => Promise<string | undefined> {
  const moved = (name: string) => {
    if (!u.stillOpen()) return { why: 'the agent is locked' };
    const why = proxyMoved(u.now(), u.started);
    if (why) return { why };
    const d = u.decide(name);
    if (d.decision === 'deny')
      return { why: `the policy now denies ${name} (${d.rule ?? 'no rule'})` };
    if (
      (d.rule ?? null) !== (u.rules.get(name) ?? null) ||
      !sameRule(u.inForce(), u.started, d.rule)
    )
      return {
        why: `the policy changed: rule ${d.rule ?? '(none)'} decides ${name} now; run the command again`,
      };
    return { d };
  };
  return async (name, r) => {
    const now = moved(name);
    if (now.why !== undefined) return now.why;
    if (now.d?.decision !== 'approve' || !now.d.highValue) return undefined;
    try {
      await u.authorize({
        proxied: true,
        target: name,
        what: `send the secret ${quote(name)} to ${quote(r.host)} in ${quote(r.method)} ${quote(r.path)}, through the proxy of the run of ${quote(u.program)}`,
        exists: true,
      });
    } catch (e) {
      return e instanceof Error ? e.message : 'refused';
    }
    return moved(name).why;
  };
}

/** Agent-wide per-domain buckets (rate_limits.domains): one per pattern. */
export class DomainLimits {
  private readonly buckets = new Map<string, TokenBucket>();

  /** undefined: one request taken; else ms until the domain's limit has room. */
  take(policy: Policy, host: string): number | undefined {
    const domains = policy.rate_limits?.domains ?? {};
    const pattern =
      host in domains
        ? host
        : (Object.keys(domains)
            .filter((d) => d.startsWith('*.') && host.endsWith(d.slice(1)))
            .sort((a, b) => b.length - a.length)[0] ?? ('*' in domains ? '*' : undefined));
    if (pattern === undefined) return undefined;
    const l = domains[pattern];
    if (!l) return undefined;
    // Under changed limits, what is left over is carried (never a full bucket: TokenBucket.under).
    const per = l.requests_per_minute;
    let b = this.buckets.get(pattern);
    if (!b?.limits(per, l.burst)) {
      b = b ? b.under(per, l.burst, Date.now()) : new TokenBucket(per, l.burst, Date.now());
      this.buckets.set(pattern, b);
    }
    return b.take(Date.now()) ? undefined : Math.max(1, b.waitMs());
  }
}

export interface RunProxy {
  server: ProxyServer;
  /** The secrets it holds, the program of its run, and the run's first process while it lives. */
  names: Set<string>;
  program: string;
  root: () => Pinned | undefined;
  /** The placeholder each secret's variable or descriptor gets. */
  placeholders: Map<string, Buffer>;
  /** The child's proxy and trust variables. */
  env: EnvPiece[];
  /** The run ended: the proxy closes, its values and its certificate files go. */
  close(): void;
}

/**
 * Makes the run's proxy. Takes the values (the proxy owns them from here: they are removed from
 * `values`); on error, nothing is left running or written.
 */
export async function startRunProxy(o: {
  program: string;
  policy: Policy;
  values: Map<string, SecureBuffer>;
  dir: string;
  hooks: Omit<ProxyHooks, 'defaultAction' | 'trust' | 'forms'>;
}): Promise<RunProxy> {
  const system = await systemTrust();
  let trust = system;
  const extra = o.policy.proxy?.upstream_ca;
  if (extra !== undefined) {
    let pem: Buffer;
    try {
      pem = readOwnFile(extra, { follow: true, maxBytes: 16 * 1024 * 1024 });
    } catch (e) {
      throw new KeywardError(
        'POLICY_DENIED',
        `the policy's proxy.upstream_ca ${extra} can't be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      );
    }
    // Pinned by the policy: a file another process of the user rewrote would trust its CA.
    if (createHash('sha256').update(pem).digest('hex') !== o.policy.proxy?.upstream_ca_sha256)
      throw new KeywardError(
        'POLICY_DENIED',
        `the policy's proxy.upstream_ca ${extra} is not the file the policy pins (upstream_ca_sha256): it changed since`,
      );
    trust += `\n${pem.toString('utf8')}`;
  }
  for (const [name, value] of o.values)
    // A value goes into a header line: a control character would end the line, or the head.
    if (value.some((c) => c < 0x20 || c === 0x7f))
      throw new KeywardError(
        'POLICY_DENIED',
        `${name} holds a control character or a line break, which can't go into a request header`,
      );
  const bindings: Binding[] = [];
  const forms: SecureBuffer[] = [];
  const placeholders = new Map<string, Buffer>();
  for (const [name, value] of o.values) {
    const placeholder = Buffer.from(makePlaceholder(value), 'latin1');
    placeholders.set(name, placeholder);
    bindings.push({ name, placeholder, value, hosts: hostsFor(o.policy, name) });
    const f = maskingForms(value);
    // A value too short for masking is still watched for as it is.
    forms.push(...(f.length > 0 ? f : [secureSlice(value, 0, value.length)]));
  }
  o.values.clear();
  const id = randomBytes(8).toString('hex');
  const files = [path.join(o.dir, `${id}-ca.pem`), path.join(o.dir, `${id}-bundle.pem`)];
  let server: ProxyServer | undefined;
  try {
    const hosts = [...new Set(bindings.flatMap((b) => [...b.hosts.keys()]))];
    const ca = await createRunCa(hosts);
    server = await startProxyServer(bindings, ca, {
      ...o.hooks,
      defaultAction: o.policy.proxy?.default ?? 'tunnel',
      trust: [trust],
      forms,
    });
    fs.mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    writeFileAtomic(files[0] as string, [Buffer.from(ca.certPem)]);
    writeFileAtomic(files[1] as string, [Buffer.from(`${system}\n${ca.certPem}`)]);
    const url = Buffer.from(server.url);
    // Loopback stays direct, except a bound host (a test's upstream, a local gateway).
    const noProxy = Buffer.from(
      ['localhost', '127.0.0.1', '::1'].filter((h) => !hosts.includes(h)).join(','),
    );
    const env: EnvPiece[] = [
      ...['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'].map((name) => ({
        name,
        value: url,
      })),
      { name: 'NO_PROXY', value: noProxy },
      { name: 'no_proxy', value: noProxy },
      { name: 'NODE_USE_ENV_PROXY', value: Buffer.from('1') },
      { name: 'NODE_EXTRA_CA_CERTS', value: Buffer.from(files[0] as string) },
      ...['SSL_CERT_FILE', 'REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'GIT_SSL_CAINFO'].map(
        (name) => ({ name, value: Buffer.from(files[1] as string) }),
      ),
    ];
    const s = server;
    return {
      server: s,
      names: new Set(bindings.map((b) => b.name)),
      program: o.program,
      root: o.hooks.root,
      placeholders,
      env,
      close: () => {
        s.close();
        for (const f of files) fs.rmSync(f, { force: true });
      },
    };
  } catch (e) {
    if (server) server.close();
    else for (const x of [...bindings.map((b) => b.value), ...forms]) secureFree(x);
    for (const f of files) fs.rmSync(f, { force: true });
    throw e;
  }
}

/**
 * The run's proxy, holding the values (taken from `values`, which then holds none), wired to the
 * run service that asked for it (run-service.ts).
 */
export async function proxyFor(
  service: { host: RunHost; limits: DomainLimits; proxies: Set<RunProxy> },
  conn: RunConn,
  v: Vault,
  policy: Policy,
  values: Map<string, SecureBuffer>,
  rules: Map<string, string | null>,
  program: string,
  root: () => Pinned | undefined,
): Promise<RunProxy> {
  const p = await startRunProxy({
    program,
    policy,
    values,
    dir: service.host.proxyDir,
    hooks: {
      root,
      mayUse: proxyMayUse({
        started: policy,
        rules,
        program,
        stillOpen: () => service.host.stillOpen(v),
        now: () => service.host.policy(service.host.vault()), // read again
        inForce: () => service.host.policy(v),
        decide: (name) => service.host.decide(conn, name),
        authorize: (req) => service.host.authorize(conn, req),
      }),
      record: (type, decision, target, reason, details) =>
        service.host.record({
          type,
          decision,
          target,
          actor: service.host.actor(conn.id),
          ...(reason === undefined ? {} : { reason }),
          details,
        }),
      // Once locked, the policy the run started under (the vault is closed: not read again),
      // for the rest of the run, a later unlock included; requests that carry a value are
      // decided again by mayUse, which a lock refuses.
      limit: (host) =>
        service.limits.take(service.host.stillOpen(v) ? service.host.policy(v) : policy, host),
    },
  });
  service.proxies.add(p);
  return p;
}
