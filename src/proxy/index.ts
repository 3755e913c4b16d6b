/**
 * The credential proxy (docs/PROXY.md): the per-run certificate authority that lets it end TLS
 * for the hosts a run's policy binds to a secret, the placeholders the child gets in place of
 * tokens and their substitution in secure memory, the framing of the requests a child sends, the
 * check that a connection comes from the run's process tree, and the proxy server itself.
 */
import type { RunCa as RunCaT } from './ca.js';
import type { ProxyServer, ProxyHooks } from './server.js';
import type { Binding } from './request.js';
export type { Leaf, RunCa } from './ca.js';
export { makePlaceholder, substitute } from './placeholder.js';
export { FramingError, MAX_HEAD, RequestFramer, type FrameEvent } from './framer.js';
export { type Binding, type HostRule, type Part } from './request.js';
export type { ProxyServer, ProxyEventType, ProxyHooks } from './server.js';
export { startTime, treeOf, type Pinned } from './tree.js';

/**
 * A new run's certificate authority (ca.ts). Loaded on first use: @peculiar/x509 and its ASN.1
 * modules are about a fifth of an agent's start-up, and only a proxied run needs them.
 */
export async function createRunCa(hosts: readonly string[]): Promise<RunCaT> {
  return (await import('./ca.js')).RunCa.create(hosts);
}

/**
 * A run's proxy server, listening (server.ts). Loaded on first use, like the authority: the
 * server and its wire bring node:tls, with https ~0.5 MiB of an idle agent's memory that only a proxied run
 * needs (docs/PERFORMANCE.md, "Agent memory").
 */
export async function startProxyServer(
  bindings: Binding[],
  ca: RunCaT,
  hooks: ProxyHooks,
): Promise<ProxyServer> {
  return (await import('./server.js')).ProxyServer.start(bindings, ca, hooks);
}
