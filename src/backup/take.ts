/**
 * `keyward backup` (docs/BACKUP.md): a consistent snapshot of KEYWARD_HOME, taken under the
 * vault's lock and then the audit log's (the order every writer takes them in), packed into the
 * container, encrypted, written atomically (0600), and recorded in the audit log.
 */
import fs from 'node:fs';
import path from 'node:path';
import { IntegrityError, UsageError } from '../errors.js';
import { assertPrivate, openOwnFile, stageFile, withFileLock } from '../lib/files.js';
import { auditPaths, auditSink, headOf } from '../audit/index.js';
import {
  headerInfoOf,
  requireVault,
  useVault,
  vaultPaths,
  type Auth,
  type BackupSealer,
  type VaultHeaderInfo,
} from '../vault/index.js';
import {
  leftOut,
  madeAtRestore,
  packContainer,
  type HomeFile,
  type Manifest,
} from './container.js';
import { checkRecipient, encryptBackup } from './crypt.js';

const LOCK_MS = 10_000;
const NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/** Every file of the home, in a fixed order; a link or a file others could change is refused. */
export function collectHome(home: string, skipDirs: readonly string[]): HomeFile[] {
  const out: HomeFile[] = [];
  const skip = new Set(skipDirs.map((d) => path.resolve(d)));
  const walk = (dir: string, rel: string, depth: number) => {
    const entries = fs.readdirSync(dir, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const d of entries) {
      const abs = path.join(dir, d.name);
      const r = rel === '' ? d.name : `${rel}/${d.name}`;
      if (skip.has(abs) || leftOut(r) || madeAtRestore(r)) continue;
      if (d.isSymbolicLink())
        throw new IntegrityError(
          'INSECURE_PERMISSIONS',
          `refusing to back up ${abs}: it is a symbolic link (keyward makes none under its home)`,
          { hint: 'look at what it points to and why it is there; remove it, then back up again' },
        );
      if (!d.isDirectory() && !d.isFile()) continue; // sockets and pipes: nothing to keep
      if (!NAME.test(d.name) || depth > 4)
        throw new UsageError(
          'USAGE',
          `refusing to back up ${abs}: keyward does not know this file, and a backup holds only names it can restore`,
          { hint: 'move it out of KEYWARD_HOME, then back up again' },
        );
      assertPrivate(abs, d.isDirectory() ? 'dir' : 'file');
      if (d.isDirectory()) walk(abs, r, depth + 1);
      else out.push({ path: r, ...readNoFollow(abs) });
    }
  };
  walk(home, '', 0);
  return out;
}

/**
 * A file's bytes, opened as keyward opens its own (openOwnFile: no link, no waiting, a regular
 * file only): a file swapped for a FIFO after the directory was read (found in review) would
 * otherwise hold the backup, and the vault's and audit log's locks with it.
 */
function readNoFollow(file: string): { bytes: Buffer; mtimeMs: number } {
  const fd = openOwnFile(file);
  try {
    return { bytes: fs.readFileSync(fd), mtimeMs: fs.fstatSync(fd).mtimeMs };
  } finally {
    fs.closeSync(fd);
  }
}

export interface BackupOptions {
  home: string;
  output: string;
  /** age X25519 recipients; none means "to the vault's passphrase". */
  recipients: readonly string[];
  /** Opens the vault (passphrase backups only). */
  auth: Auth;
  /** The agent's socket directory: left out when it lies inside the home. */
  socketDir: string;
  version: string;
}

export interface BackupReport {
  output: string;
  manifest: Manifest;
  manifestSha256: string;
  bytes: number;
}

export async function takeBackup(o: BackupOptions): Promise<BackupReport> {
  const home = path.resolve(o.home);
  const output = path.resolve(o.output);
  const paths = vaultPaths(home);
  requireVault(paths);
  for (const r of o.recipients) checkRecipient(r);
  if (!fs.existsSync(path.dirname(output)))
    throw new UsageError('USAGE', `no such directory: ${path.dirname(output)}`);
  if (fs.existsSync(output) && !fs.lstatSync(output).isFile())
    throw new UsageError('USAGE', `${output} exists and is not a regular file`, {
      hint: '--output names the backup file itself, not a directory',
    });
  // By real paths: a link to the home is the home.
  const realHome = fs.realpathSync(home);
  const realOut = path.join(fs.realpathSync(path.dirname(output)), path.basename(output));
  if (realOut === realHome || realOut.startsWith(`${realHome}${path.sep}`))
    throw new UsageError('USAGE', `refusing to write the backup inside KEYWARD_HOME (${home})`, {
      hint: 'write it elsewhere: a backup of the home kept in the home is lost with it',
    });

  type Snapshot = { files: HomeFile[]; head: Manifest['audit']; info: VaultHeaderInfo };
  const snapshot = (): Snapshot => {
    const hasLog = fs.existsSync(auditPaths(home).dir);
    const read = () => {
      const head = hasLog ? headOf(home) : undefined;
      const files = collectHome(home, [o.socketDir]);
      // The vault's facts from the bytes the backup holds, not from a second read of the file.
      const vault = files.find((f) => f.path === 'vault.kw');
      if (!vault) throw new UsageError('USAGE', `no vault.kw in ${home}`);
      return {
        info: headerInfoOf(paths.file, vault.bytes),
        files,
        head: head && head.seq > 0 ? { seq: head.seq, hash: head.hash } : null,
      };
    };
    return hasLog ? withFileLock(auditPaths(home).lock, LOCK_MS, read) : read();
  };

  let sealer: BackupSealer | undefined;
  let snap: Snapshot;
  try {
    if (o.recipients.length === 0) {
      // Under the vault's write lock (nobody saves meanwhile), with the vault open for its key.
      snap = useVault(paths, o.auth, 'write', (v) => {
        sealer = v.backupSealer();
        return snapshot();
      });
    } else {
      snap = withFileLock(paths.lock, LOCK_MS, snapshot);
    }
    const { info } = snap;
    const packed = packContainer(
      {
        format: 1,
        keyward: o.version,
        created: new Date().toISOString(),
        vault: { id: info.vaultId, format: info.version, generation: info.generation },
        audit: snap.head,
      },
      snap.files,
    );
    const encrypted = await encryptBackup(
      packed.bytes,
      sealer ? { sealer } : { recipients: o.recipients },
    );
    // Recorded before it replaces anything: a backup the log can't show is not kept, and a
    // failure here leaves the file already at `output` (yesterday's backup) as it was.
    const staged = stageFile(output, [encrypted]);
    try {
      auditSink(home).record({
        type: 'backup.created',
        decision: 'info',
        target: output,
        details: {
          manifestSha256: packed.manifestSha256,
          files: packed.manifest.files.length,
          bytes: encrypted.length,
          headSeq: snap.head?.seq ?? 0,
          encryptedTo: sealer ? 'vault' : `${o.recipients.length} age recipient(s)`,
        },
      });
    } catch (e) {
      staged.discard();
      throw e;
    }
    staged.commit();
    return {
      output,
      manifest: packed.manifest,
      manifestSha256: packed.manifestSha256,
      bytes: encrypted.length,
    };
  } finally {
    sealer?.free();
  }
}
