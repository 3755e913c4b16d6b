/**
 * The MCP domain's public surface (docs/MCP.md).
 */
export { serveMcp, type ServeOptions } from './serve.js';
