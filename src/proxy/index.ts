/**
 * The credential proxy (issue 22, in progress): so far, the per-run certificate authority that
 * lets it end TLS for the hosts a run's policy binds to a secret, and the placeholders the child
 * gets in place of tokens, with their substitution in secure memory, and the framing of the
 * requests a child sends through it.
 */
export { RunCa, type Leaf } from './ca.js';
export { makePlaceholder, substitute } from './placeholder.js';
export { FramingError, MAX_HEAD, RequestFramer, type FrameEvent } from './framer.js';
