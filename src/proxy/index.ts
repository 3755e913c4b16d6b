/**
 * The credential proxy (docs/PROXY.md): the per-run certificate authority that lets it end TLS
 * for the hosts a run's policy binds to a secret, the placeholders the child gets in place of
 * tokens and their substitution in secure memory, the framing of the requests a child sends, the
 * check that a connection comes from the run's process tree, and the proxy server itself.
 */
export { RunCa, type Leaf } from './ca.js';
export { makePlaceholder, substitute } from './placeholder.js';
export { FramingError, MAX_HEAD, RequestFramer, type FrameEvent } from './framer.js';
export { type Binding, type HostRule, type Part } from './request.js';
export { ProxyServer, type ProxyEventType, type ProxyHooks } from './server.js';
export { startTime, treeOf, type Pinned } from './tree.js';
