/**
 * Sealed project files in the agent (docs/PROJECT-FILES.md, "Opening through the agent"). The
 * caller sends the file's bytes (public: it is committed); the agent parses them, checks the MAC
 * with this vault's project identity, names each value by the project the file names under its
 * MAC (`project:NAME/VAR`), and releases a value only through the gate, durable in the audit log
 * first, as it does the vault's. The identity never leaves the agent, and the CLI never holds
 * the data key.
 */
import { createHash } from 'node:crypto';
import type { AuditRecord } from '../audit/index.js';
import { AuthError, IntegrityError, KeywardError, UsageError } from '../errors.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import { quote } from '../lib/text.js';
import {
  checkName,
  encodeRecipient,
  OpenedProject,
  parseProject,
  projectIdentity,
  reservedName,
  publicKeyOf,
  type ProjectFile,
} from '../project/index.js';
import type { Vault } from '../vault/index.js';
import type { Gate } from './gate.js';
import { actorOf, LOADER_VARIABLES } from './identity.js';
import { refuseUnlessInline } from './release.js';
import type { Peer } from './peer.js';
import { str } from './protocol.js';
import type { Reply } from './release.js';
import { locked, usesSpent, type UnlockWindow } from './unlock.js';

export interface ProjectHost {
  window: UnlockWindow;
  gate: Gate;
  record(r: AuditRecord): Promise<unknown>;
  /** A value of a sealed file was released: the MCP gateway's scans look for it from now on. */
  released(file: Uint8Array, target: string, name: string): void;
  /** The MCP client whose run the caller is part of (run-service.ts), if any. */
  insideMcpRun?: (id: Peer['id']) => string | undefined;
}

/** A value's target in policy, prompts and the audit log. */
export const projectTarget = (file: ProjectFile, name: string) => `project:${file.project}/${name}`;

function notRecipient(file: ProjectFile, own: string | undefined): KeywardError {
  return new AuthError(
    'PROJECT_NOT_RECIPIENT',
    own === undefined
      ? `this vault has no project identity, so it is no recipient of ${file.project}'s file`
      : `your project identity ${own} is not a recipient of ${file.project}'s file`,
    {
      hint: 'give a recipient your `keyward project identity`, to run: keyward project recipients add IT',
    },
  );
}

/**
 * A parsed file opened with this vault's identity (the caller closes it). PROJECT_TAMPERED for a
 * changed file, PROJECT_NOT_RECIPIENT when this vault can't open it.
 */
function openProject(v: Vault, file: ProjectFile): OpenedProject {
  const id = projectIdentity(v, false);
  if (!id) throw notRecipient(file, undefined);
  try {
    const opened = OpenedProject.open(file, id);
    if (!opened) {
      const own = encodeRecipient(publicKeyOf(id));
      // Listed, yet no stanza opens with this identity: the key's wrap was changed.
      if (file.recipients.includes(own))
        throw new IntegrityError(
          'PROJECT_TAMPERED',
          `the sealed project file is damaged: it lists ${own}, but no key in it opens for that recipient`,
        );
      throw notRecipient(file, own);
    }
    return opened;
  } finally {
    secureFree(id);
  }
}

/**
 * Decrypts each value of `names` and drops it at once: a value that does not decrypt is
 * PROJECT_TAMPERED before anyone is asked to approve it.
 */
function trial(opened: OpenedProject, names: readonly string[]): void {
  for (const n of names) secureFree(opened.value(n));
}

/** The value of name in a sealed file's bytes, decrypted again (the caller frees it). */
export function reopenValue(v: Vault, file: Uint8Array, name: string): SecureBuffer {
  return valueOf(v, parseProject(file), name);
}

/** One value of a file, opened and closed again: the caller frees it. */
function valueOf(v: Vault, file: ProjectFile, name: string): SecureBuffer {
  const opened = openProject(v, file);
  try {
    const value = opened.value(name);
    if (!value) throw new KeywardError('SECRET_NOT_FOUND', `no ${name} in the file`);
    return value;
  } finally {
    opened.close();
  }
}

export class ProjectService {
  constructor(private readonly host: ProjectHost) {}

  /** The `project` request: op check or read; f.raw is the sealed file (freed here). */
  async handle(asker: Peer, meta: Record<string, unknown>, raw: SecureBuffer | undefined) {
    try {
      if (!raw) throw new UsageError('USAGE', 'a project request carries the sealed file');
      const op = str(meta, 'op');
      if (op === 'check') return this.check(raw);
      if (op === 'read') return await this.read(asker, raw, checkName(str(meta, 'name') ?? ''));
      throw new UsageError('USAGE', `unknown project operation ${quote(op ?? '(none)')}`);
    } finally {
      secureFree(raw);
    }
  }

  /** Well-formed, MAC verified, and opened by this vault's identity: no value is decrypted. */
  private check(raw: SecureBuffer): Reply {
    const opened = openProject(this.host.window.unlocked(), parseProject(raw));
    opened.close();
    const { file } = opened;
    return {
      meta: {
        project: file.project,
        id: opened.id,
        recipients: file.recipients,
        names: file.entries.map((e) => e.name),
        recipient: true,
      },
    };
  }

  /** identity -> the file opens -> policy -> approval -> audit (durable) -> the value. */
  private async read(asker: Peer, raw: SecureBuffer, name: string): Promise<Reply> {
    const w = this.host.window;
    const v = w.unlocked();
    // Tampering and "not yours" are said before anyone is asked to approve; the data key is
    // dropped again while a person decides.
    const file = parseProject(raw);
    const opened = openProject(v, file);
    try {
      trial(opened, [name]);
    } finally {
      opened.close();
    }
    const target = projectTarget(file, name);
    // Inside a run an MCP client asked for, the value would go back to the model: as a read of
    // the vault's, only where a rule says mcp_inline.
    const mcp = this.host.insideMcpRun?.(asker.id);
    if (mcp !== undefined) await refuseUnlessInline(this.host, v, asker, target, mcp);
    const { rule } = await this.host.gate.authorize(asker, {
      target,
      kind: 'secret',
      action: 'read',
      auditType: 'secret.read',
      what: `read ${quote(name)} from the sealed project file of ${quote(file.project)}${mcp ? ` for an MCP client that calls itself ${quote(mcp)}` : ''}`,
      exists: file.entries.some((e) => e.name === name),
      ...(mcp === undefined ? {} : { mcpInline: true }),
    });
    if (!w.stillOpen(v)) throw locked();
    if (!w.take()) throw usesSpent();
    const value = valueOf(v, file, name);
    try {
      // Rule 4: durable in the audit log before the value leaves.
      await this.host.record({
        target,
        actor: actorOf(asker.id),
        type: 'secret.read',
        decision: 'allow',
        details: {
          rule: rule ?? null,
          bytes: value.length,
          via: 'inline',
          file: opened.id,
          mcpClient: mcp ?? null,
        },
      });
      if (!w.stillOpen(v)) throw locked();
    } catch (e) {
      secureFree(value);
      throw e;
    }
    this.host.released(raw, target, name);
    w.counted();
    return { meta: { name: target }, raw: value };
  }
}

/**
 * `keyward run --project`: the last `projectBytes` bytes of a run request's raw part are a sealed
 * file, and each of its values goes to the child under its own name (docs/PROJECT-FILES.md).
 */
export class ProjectRun {
  private readonly targets = new Map<string, string>();
  /** The file as addTo checked it (closed again): its project, names and id. */
  private checked: OpenedProject | undefined;
  private opened: OpenedProject | undefined;

  private constructor(private readonly bytes: SecureBuffer) {}

  /** The request's raw part without the file, and the run's project, if it has one. */
  static split(
    meta: Record<string, unknown>,
    raw: SecureBuffer | undefined,
  ): { head: SecureBuffer | undefined; project: ProjectRun | undefined } {
    const n = meta['projectBytes'];
    if (n === undefined) return { head: raw, project: undefined };
    if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0 || !raw || n > raw.length)
      throw new UsageError('USAGE', 'a malformed run request (projectBytes)');
    return {
      head: raw.subarray(0, raw.length - n) as SecureBuffer,
      project: new ProjectRun(raw.subarray(raw.length - n) as SecureBuffer),
    };
  }

  /**
   * Checks the file opens (MAC, recipient) and adds each value to what the run wants, as the
   * variable of its name. A variable given by --env too is a usage error.
   */
  addTo(v: Vault, wanted: Array<{ name: string; as: Array<{ var: string } | { fd: number }> }>) {
    const opened = openProject(v, parseProject(this.bytes));
    try {
      trial(opened, opened.names);
    } finally {
      opened.close();
    }
    const taken = new Set(wanted.flatMap((w) => w.as.map((a) => ('var' in a ? a.var : ''))));
    for (const name of opened.names) {
      if (taken.has(name))
        throw new UsageError('USAGE', `${name} is given by --env and by the project file`);
      // parseProject refuses these already; the agent's own list of loader variables too.
      if (LOADER_VARIABLES.test(name) || reservedName(name))
        throw new IntegrityError(
          'PROJECT_TAMPERED',
          `the sealed project file sets ${name}, which keyward never seals (it may change what a program runs); if it is yours, seal it again without ${name}`,
        );
      const target = projectTarget(opened.file, name);
      this.targets.set(target, name);
      wanted.push({ name: target, as: [{ var: name }] });
    }
    this.checked = opened;
  }

  /** The file's project and names, for the run's prompt, and its id, for the audit records. */
  get project(): string {
    return this.checked?.project ?? '';
  }

  get names(): string[] {
    return this.checked?.names ?? [];
  }

  get fileId(): string {
    return this.checked?.id ?? '';
  }

  /**
   * The SHA-256 of the whole file (names, ciphertexts, recipients: nothing secret), what a
   * remembered approval of the run is bound to: the id is the sealer's to choose, and a file
   * that copies another's id, project and names with values of its own is another file.
   */
  get digest(): string {
    return createHash('sha256').update(this.bytes).digest('hex');
  }

  has(target: string): boolean {
    return this.targets.has(target);
  }

  /** What the MCP gateway's scans need to look for target's value: the file and the name in it. */
  source(target: string): { file: Uint8Array; name: string } {
    return { file: this.bytes, name: this.targets.get(target) ?? '' };
  }

  /** The value behind a target (the caller frees it); the file is opened once, until close(). */
  take(v: Vault, target: string): { value: SecureBuffer; cached: false } {
    if (!this.checked) throw new Error('take() before addTo()');
    this.opened ??= openProject(v, this.checked.file);
    const value = this.opened.value(this.targets.get(target) ?? '');
    if (!value) throw new KeywardError('SECRET_NOT_FOUND', `no ${target}`);
    return { value, cached: false };
  }

  close(): void {
    this.opened?.close();
    this.opened = undefined;
  }
}
