/**
 * The credential proxy (issue 22, in progress): so far, the per-run certificate authority that
 * lets it end TLS for the hosts a run's policy binds to a secret.
 */
export { RunCa, type Leaf } from './ca.js';
