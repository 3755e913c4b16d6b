/**
 * The delivery domain's public surface (docs/RUN.md): starting a child with secrets the agent
 * holds, masking its output, and the env-file format the CLI reads.
 */
export { maskingForms, MASK_MIN_BYTES } from './encode.js';
export { Masker, MASK_MARKER } from './mask.js';
export { startChild, MAX_CHILD_FD, type ChildSpec } from './exec.js';
export { type EnvPiece } from './control.js';
export { assertVarName, parseEnvFile, REF_PREFIX, type EnvEntry } from './envfile.js';
