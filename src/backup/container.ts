/**
 * The plaintext inside a backup (docs/BACKUP.md, "The container"): a magic line, the manifest as
 * one line of JSON, then each file's bytes in the manifest's order. What `age -d` gives back from
 * a backup made to recipients, and what `restore --input` also accepts as it is.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { IntegrityError } from '../errors.js';
import { printable } from '../lib/text.js';

export const CONTAINER_MAGIC = Buffer.from('keyward-backup 1\n', 'ascii');
/** Paths are relative to KEYWARD_HOME: plain names, no `.` or `..` part, no leading slash. */
const PATH = /^(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\/){0,4}[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const HEX64 = /^[0-9a-f]{64}$/;

const manifestSchema = z
  .object({
    format: z.literal(1),
    // Printed by restore: a version's characters only (found in review: a crafted manifest's
    // terminal escapes hid the rollback warning printed after it).
    keyward: z.string().regex(/^[0-9A-Za-z.+_-]{1,64}$/),
    created: z.string().datetime(),
    vault: z
      .object({
        id: z.string().regex(/^[0-9a-f]{32}$/),
        format: z.number().int().min(1).max(2),
        generation: z.number().int().min(0),
      })
      .strict(),
    audit: z
      .object({ seq: z.number().int().min(1), hash: z.string().regex(HEX64) })
      .strict()
      .nullable(),
    files: z
      .array(
        z
          .object({
            path: z.string().regex(PATH),
            size: z.number().int().min(0),
            sha256: z.string().regex(HEX64),
            mtimeMs: z.number().min(0),
          })
          .strict(),
      )
      .min(1)
      .max(100_000),
  })
  .strict();

export type Manifest = z.infer<typeof manifestSchema>;
export interface HomeFile {
  path: string;
  bytes: Buffer;
  /** Its modification time (policy history shows when each version was applied by it). */
  mtimeMs: number;
}

/**
 * Files a backup leaves out, and a restore refuses to find in one: the lock files (empty; made
 * again on first use), temp files of a writer in progress, and the audit writer's state, which
 * holds the current epoch key in the clear: a restore makes a new one from the vault, so a
 * backup's holder gets no key to the log and a crafted one can't plant one. The agent's journal
 * (audit/journal.ts) too: the backup is taken under the log's lock, so the segments hold every
 * line the journal does, and a journal restored beside older segments would have lines to put
 * back that are not theirs.
 */
export function leftOut(rel: string): boolean {
  return (
    // Or anything under them: a restore would make the lock file a directory.
    /^(vault\.lock|audit\/lock|audit\/state|audit\/journal)(\/|$)/.test(rel) ||
    /(^|\/)\.[^/]*\.tmp-[^/]*$/.test(rel)
  );
}

/**
 * Files a backup leaves out that a restore makes again from the restored vault: `audit/ship`,
 * where the audit log is shipped, follows the applied policy kept in the vault (found in review:
 * a redirect planted in the file came back with every restore, and shipped the restore's own
 * record there). Older backups that hold it are restored, the file then written over.
 */
export function madeAtRestore(rel: string): boolean {
  return rel === 'audit/ship';
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function corrupt(why: string): IntegrityError {
  return new IntegrityError('BACKUP_CORRUPT', `the backup is damaged: ${why}`, {
    hint: 'nothing was restored; use another copy of the backup',
  });
}

/** The container's bytes and its manifest's SHA-256 (what the audit log records). */
export function packContainer(
  head: Omit<Manifest, 'files'>,
  files: readonly HomeFile[],
): { bytes: Buffer; manifest: Manifest; manifestSha256: string } {
  const manifest: Manifest = {
    ...head,
    files: files.map((f) => ({
      path: f.path,
      size: f.bytes.length,
      sha256: sha256(f.bytes),
      mtimeMs: f.mtimeMs,
    })),
  };
  const line = Buffer.from(`${JSON.stringify(manifest)}\n`, 'utf8');
  return {
    bytes: Buffer.concat([CONTAINER_MAGIC, line, ...files.map((f) => f.bytes)]),
    manifest,
    manifestSha256: sha256(line.subarray(0, line.length - 1)),
  };
}

export function isContainer(bytes: Uint8Array): boolean {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // eslint-disable-next-line no-restricted-syntax -- the magic is public
  return b.subarray(0, CONTAINER_MAGIC.length).equals(CONTAINER_MAGIC);
}

/**
 * The manifest and files of a container, every size and hash checked, every path unique and
 * inside the home. Anything else is BACKUP_CORRUPT.
 */
export function unpackContainer(bytes: Uint8Array): {
  manifest: Manifest;
  manifestSha256: string;
  files: HomeFile[];
} {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (!isContainer(b)) throw corrupt('it does not start with "keyward-backup 1"');
  const end = b.indexOf(0x0a, CONTAINER_MAGIC.length);
  if (end < 0) throw corrupt('its manifest is cut short');
  const line = b.subarray(CONTAINER_MAGIC.length, end);
  let parsed: unknown;
  try {
    parsed = JSON.parse(line.toString('utf8'));
  } catch {
    throw corrupt('its manifest is not JSON');
  }
  const m = manifestSchema.safeParse(parsed);
  if (!m.success) {
    // Zod's words quote what the file holds (an unknown key's name): shown escaped.
    const issue = m.error.issues[0];
    const where = issue?.path.join('.') || 'the manifest';
    throw corrupt(
      `its manifest is malformed (${printable(where, 80)}: ${printable(issue?.message ?? '', 200)})`,
    );
  }
  const manifest = m.data;
  const seen = new Set<string>();
  const dirs = new Set<string>();
  const files: HomeFile[] = [];
  let at = end + 1;
  for (const f of manifest.files) {
    if (seen.has(f.path)) throw corrupt(`${f.path} is listed twice`);
    if (dirs.has(f.path)) throw corrupt(`${f.path} is a file and a directory`);
    // A path that is a file here and a directory there (vault.kw and vault.kw/x).
    const parts = f.path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (seen.has(dir)) throw corrupt(`${dir} is a file and a directory`);
      dirs.add(dir);
    }
    if (leftOut(f.path)) throw corrupt(`it holds ${f.path}, which no backup holds`);
    seen.add(f.path);
    if (at + f.size > b.length) throw corrupt(`${f.path} is cut short`);
    const data = Buffer.from(b.subarray(at, at + f.size));
    at += f.size;
    if (sha256(data) !== f.sha256) throw corrupt(`${f.path} does not match its SHA-256`);
    files.push({ path: f.path, bytes: data, mtimeMs: f.mtimeMs });
  }
  if (at !== b.length) throw corrupt(`${b.length - at} bytes follow the last file`);
  if (!seen.has('vault.kw')) throw corrupt('it holds no vault.kw');
  return { manifest, manifestSha256: sha256(line), files };
}
