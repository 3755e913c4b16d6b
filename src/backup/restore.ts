/**
 * `keyward restore` (docs/BACKUP.md, "Restoring"): decrypt, check every hash, extract into a new
 * directory beside KEYWARD_HOME, open its vault with the passphrase, verify its audit log and
 * checkpoints, continue the log with `audit.restored`, then put it in place in one step
 * (renameat2 RENAME_EXCHANGE): a crash leaves the old home or the new one at KEYWARD_HOME, and
 * an old home is moved aside, never deleted. `--verify` stops before anything is written there.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { agentStatus, socketPaths } from '../agent/index.js';
import { headOf, resumeRestoredLog, verifyLog } from '../audit/index.js';
import { IntegrityError, KeywardError, UsageError } from '../errors.js';
import { fsyncDir } from '../lib/files.js';
import { renameExchange } from '../lib/libc.js';
import { secureFree } from '../lib/secure.js';
import {
  readHeaderInfo,
  readPassphrase,
  vaultExists,
  vaultPaths,
  withVaultRead,
  type PassphraseSource,
  type Unlock,
} from '../vault/index.js';
import { unpackContainer, type HomeFile, type Manifest } from './container.js';
import { decryptBackup, type Opened } from './crypt.js';

export interface RestoreOptions {
  home: string;
  input: string;
  verifyOnly: boolean;
  force: boolean;
  source: PassphraseSource;
  socketDir: string;
}

export interface CurrentHome {
  path: string;
  state: 'absent' | 'empty' | 'in use';
  vaultId?: string;
  generation?: number;
  auditHead?: number;
}

export interface RestoreReport {
  manifest: Manifest;
  manifestSha256: string;
  secrets: number;
  auditEntries: number;
  current: CurrentHome;
  /** Where the home that was replaced now is (restore --force). */
  movedAside?: string;
  /** Directories an interrupted restore left beside the home (never deleted by keyward). */
  leftovers: string[];
  restored: boolean;
}

function describeCurrent(home: string): CurrentHome {
  if (!fs.existsSync(home)) return { path: home, state: 'absent' };
  if (fs.readdirSync(home).length === 0) return { path: home, state: 'empty' };
  const c: CurrentHome = { path: home, state: 'in use' };
  const vp = vaultPaths(home);
  try {
    if (vaultExists(vp)) {
      const info = readHeaderInfo(vp);
      c.vaultId = info.vaultId;
      c.generation = info.generation;
    }
    c.auditHead = headOf(home).seq;
  } catch {
    // A damaged home is still one to move aside; what could be read is reported.
  }
  return c;
}

function leftoversOf(home: string): string[] {
  const dir = path.dirname(home);
  const prefix = `${path.basename(home)}.restoring-`;
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((n) => n.startsWith(prefix))
    .map((n) => path.join(dir, n));
}

/** Writes every file under `dir` (new, 0700), each fsynced, then every directory. */
function extract(dir: string, files: readonly HomeFile[]): void {
  fs.mkdirSync(dir, { mode: 0o700 });
  const dirs = new Set<string>([dir]);
  const flags =
    fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  for (const f of files) {
    const abs = path.join(dir, ...f.path.split('/'));
    try {
      for (let p = path.dirname(abs); !dirs.has(p); p = path.dirname(p)) {
        dirs.add(p);
      }
      fs.mkdirSync(path.dirname(abs), { recursive: true, mode: 0o700 });
      const fd = fs.openSync(abs, flags, 0o600);
      try {
        let off = 0;
        while (off < f.bytes.length) off += fs.writeSync(fd, f.bytes, off, f.bytes.length - off);
        const t = f.mtimeMs / 1000;
        fs.futimesSync(fd, t, t);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    } catch (e) {
      throw new IntegrityError(
        'BACKUP_CORRUPT',
        `the backup is damaged: ${f.path} can't be written where the manifest puts it (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      );
    }
  }
  for (const d of [...dirs].sort((a, b) => b.length - a.length)) fsyncDir(d);
}

async function agentRunning(socketDir: string): Promise<boolean> {
  try {
    return (await agentStatus(socketPaths(socketDir).agent)) !== undefined;
  } catch (e) {
    // Something answers there that isn't a keyward agent we trust: not a place to restore under.
    if (e instanceof KeywardError) return true;
    throw e;
  }
}

export async function restoreBackup(o: RestoreOptions): Promise<RestoreReport> {
  const home = path.resolve(o.home);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(o.input);
  } catch (e) {
    throw new UsageError(
      'USAGE',
      `can't read ${o.input}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
    );
  }
  const current = describeCurrent(home);
  const leftovers = leftoversOf(home);
  if (!o.verifyOnly) {
    if (await agentRunning(o.socketDir))
      throw new KeywardError('AGENT_RUNNING', 'an agent is running for this home', {
        hint: 'stop it first (keyward agent stop), then restore',
      });
    if (current.state === 'in use' && !o.force)
      throw new UsageError(
        'CONFIRMATION_REQUIRED',
        `KEYWARD_HOME ${home} is in use${current.vaultId ? ` (vault ${current.vaultId})` : ''}: restore fills only an empty or missing home`,
        {
          hint: 'keyward restore --verify --input FILE shows what would change; --force moves the current home aside (never deletes it) and restores',
        },
      );
  }

  let passphraseRead = false;
  const unlock = (): Unlock => {
    passphraseRead = true;
    return { passphrase: readPassphrase(o.source) };
  };
  let opened: Opened | undefined;
  let container: Uint8Array;
  let unlockUsed: Unlock | undefined;
  try {
    const d = await decryptBackup(bytes, () => (unlockUsed = unlock()));
    container = d.container;
    opened = d.opened;
    const { manifest, manifestSha256, files } = unpackContainer(container);
    if (d.vaultId !== undefined && d.vaultId !== manifest.vault.id)
      throw new IntegrityError(
        'BACKUP_CORRUPT',
        `the backup is damaged: it is encrypted to vault ${d.vaultId} but holds vault ${manifest.vault.id}`,
      );
    const tmp = path.join(
      path.dirname(home),
      `${path.basename(home)}.restoring-${process.pid}-${randomBytes(4).toString('hex')}`,
    );
    fs.mkdirSync(path.dirname(home), { recursive: true, mode: 0o700 });
    let placed = false;
    try {
      extract(tmp, files);
      const u: Unlock = opened
        ? { derived: opened }
        : passphraseRead
          ? (unlockUsed as Unlock)
          : unlock();
      opened = undefined; // the vault owns the derivation now
      const seen = withVaultRead(vaultPaths(tmp), u, (v) => {
        if (v.id !== manifest.vault.id)
          throw new IntegrityError(
            'BACKUP_CORRUPT',
            `the backup is damaged: its manifest names vault ${manifest.vault.id}, its vault.kw is ${v.id}`,
          );
        const r = verifyLog({ home: tmp, vault: v });
        if (!r.ok)
          throw new IntegrityError(
            'BACKUP_CORRUPT',
            `the backup's audit log does not verify: ${r.finding.reason} (${path.basename(r.finding.file)}, line ${r.finding.line})`,
          );
        const secrets = v.list().length;
        if (!o.verifyOnly)
          resumeRestoredLog(tmp, v, {
            backupCreated: manifest.created,
            backupHeadSeq: manifest.audit?.seq ?? 0,
            backupHeadHash: manifest.audit?.hash ?? null,
            manifestSha256,
            replacedVault: current.vaultId ?? null,
            replacedHeadSeq: current.auditHead ?? null,
          });
        return { secrets, entries: r.entries };
      });
      if (o.verifyOnly)
        return {
          manifest,
          manifestSha256,
          secrets: seen.secrets,
          auditEntries: seen.entries,
          current,
          leftovers,
          restored: false,
        };
      // From here the temp directory is never removed: after the exchange it holds the old home.
      placed = true;
      const movedAside = placeHome(tmp, home, current);
      return {
        manifest,
        manifestSha256,
        secrets: seen.secrets,
        auditEntries: seen.entries,
        current,
        ...(movedAside ? { movedAside } : {}),
        leftovers,
        restored: true,
      };
    } finally {
      if (!placed) fs.rmSync(tmp, { recursive: true, force: true });
    }
  } finally {
    if (opened) secureFree(opened.kek);
    if (unlockUsed && 'passphrase' in unlockUsed) secureFree(unlockUsed.passphrase);
  }
}

/**
 * Puts the extracted home at `home`: a rename where nothing (or an empty directory) is there, an
 * exchange then a rename aside where a home is. Returns where the old home went.
 */
function placeHome(tmp: string, home: string, current: CurrentHome): string | undefined {
  const parent = path.dirname(home);
  if (current.state !== 'in use') {
    fs.renameSync(tmp, home);
    fsyncDir(parent);
    return undefined;
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const aside = `${home}.before-restore-${stamp}`;
  renameExchange(tmp, home);
  fsyncDir(parent);
  // Now tmp holds the old home: from here on a crash leaves it there, named .restoring-*.
  fs.renameSync(tmp, aside);
  fsyncDir(parent);
  return aside;
}
