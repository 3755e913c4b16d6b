/**
 * Values released from sealed project files, remembered for the MCP gateway's leak scans
 * (mcp.ts), as the vault's released names are (release.ts): for the agent's life, across locks,
 * since a value released before a lock is still in whatever received it. What is kept is the
 * file the value came from (public: it is committed) and the value's name in it; a scan opens
 * the file again with this vault's project identity, so no value outlives a lock here.
 */
import { sha256Public } from '../lib/openssl.js';
import type { SecureBuffer } from '../lib/secure.js';
import type { Vault } from '../vault/index.js';

/**
 * Sealed files remembered at once. A file is a few kB and each release of one is authorized and
 * audited; past the bound the file released from longest ago is forgotten (THREAT-MODEL.md).
 */
const MAX_FILES = 1000;

export interface ProjectRelease {
  /** The value's target (`project:NAME/VAR`): what a scan reports. */
  target: string;
  /** The file's SHA-256: changes when the file does, and a scan builds the value's forms again. */
  id: string;
  /** The value, decrypted again from the file (the caller frees it). */
  open(v: Vault): SecureBuffer;
}

export class ProjectReleases {
  /**
   * By the file's SHA-256, oldest release first. Not by its `id:` line: that is the sealer's to
   * choose, so a file sealed by anyone (the recipient is public) under a released file's id
   * would take its place here, and the scans would look for its value instead.
   */
  private readonly files = new Map<string, { bytes: Buffer; names: Map<string, string> }>();

  constructor(
    private readonly reopen: (v: Vault, file: Uint8Array, name: string) => SecureBuffer,
  ) {}

  /** The value of name in the file (its bytes) was released as target. */
  note(file: Uint8Array, target: string, name: string): void {
    const id = sha256Public(file, Buffer.alloc(32)).toString('hex');
    let f = this.files.get(id);
    if (f) this.files.delete(id);
    // A copy: the request's buffer is freed when it is answered. The file is public.
    else f = { bytes: Buffer.from(file), names: new Map() };
    f.names.set(target, name);
    this.files.set(id, f);
    const oldest = this.files.keys().next().value;
    if (this.files.size > MAX_FILES && oldest !== undefined) this.files.delete(oldest);
  }

  *released(): Iterable<ProjectRelease> {
    for (const [id, f] of this.files)
      for (const [target, name] of f.names)
        yield { target, id, open: (v: Vault) => this.reopen(v, f.bytes, name) };
  }
}
