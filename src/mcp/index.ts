/**
 * The MCP domain's public surface (docs/MCP.md).
 */
export { serveMcp, type ServeOptions } from './serve.js';
export { wrapMcp, type WrapOptions } from './gateway.js';
export {
  loadPins,
  pinsPath,
  savePins,
  serverPins,
  wordDiff,
  type Pin,
  type PinFile,
} from './pins.js';
