/**
 * The MCP domain's public surface (docs/MCP.md). The MCP SDK loads only with what needs it:
 * `mcp serve`, and the gateway's Streamable HTTP side.
 */
import type { ServeOptions } from './serve.js';

export type { ServeOptions };
export async function serveMcp(o: ServeOptions): Promise<void> {
  return (await import('./serve.js')).serveMcp(o);
}
export { wrapMcp, type WrapOptions } from './gateway.js';
export { checkServerUrl, parseHeaderOption, type HeaderTemplate } from './remote.js';
export {
  canonical,
  definitionHash,
  definitionOf,
  definitionsPath,
  loadDefinitions,
  recordDefinitions,
  wordDiff,
  wordDiffParts,
  type DiffPart,
  type DefinitionFile,
} from './pins.js';
