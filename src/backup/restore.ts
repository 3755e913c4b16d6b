/**
 * `keyward restore` (docs/BACKUP.md, "Restoring"): decrypt, check every hash, extract into a new
 * directory, open its vault with the passphrase, verify its audit log and checkpoints against the
 * manifest, continue the log with `audit.restored`, then put it in place in one step (renameat2
 * RENAME_EXCHANGE): a crash leaves the old home or the new one at KEYWARD_HOME, and an old home
 * is moved aside, never deleted. `--verify` extracts into a private temp directory instead and
 * writes nothing near the home.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { agentStatus, socketPaths } from '../agent/index.js';
import {
  auditPaths,
  headOf,
  resumeRestoredLog,
  shipConfigOf,
  verifyLog,
  writeShipFile,
} from '../audit/index.js';
import { IntegrityError, KeywardError, UsageError } from '../errors.js';
import { fsyncDir, withFileLock, type FileId } from '../lib/files.js';
import { loadPolicy } from '../policy/index.js';
import { renameExchange } from '../lib/libc.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import {
  headerInfoOf,
  readAgeIdentities,
  readHeaderInfo,
  readPassphrase,
  vaultExists,
  vaultPaths,
  withVaultRead,
  type PassphraseSource,
  type Unlock,
} from '../vault/index.js';
import { unpackContainer, type HomeFile, type Manifest } from './container.js';
import { decryptBackup, type Opened, type SealedBy } from './crypt.js';
import { holders } from './holders.js';

export interface RestoreOptions {
  home: string;
  input: string;
  verifyOnly: boolean;
  force: boolean;
  source: PassphraseSource;
  socketDir: string;
  /** age identity files, for a backup made to recipients (their keys never JS strings). */
  identityFiles?: readonly string[] | undefined;
}

export interface CurrentHome {
  path: string;
  state: 'absent' | 'empty' | 'in use';
  vaultId?: string;
  generation?: number;
  /** Why the vault there could not be read (a damaged header): no comparison was possible. */
  vaultUnread?: string;
  auditHead?: number;
  /** Why its audit log's head could not be read (a damaged line): no comparison by the head. */
  auditUnread?: string;
}

export interface RestoreReport {
  manifest: Manifest;
  manifestSha256: string;
  /** What made the backup's bytes: only the passphrase vouches for its date and origin. */
  sealedBy: SealedBy;
  secrets: number;
  auditEntries: number;
  current: CurrentHome;
  /** Where the home that was replaced now is (restore --force). */
  movedAside?: string;
  /** Directories an interrupted restore left beside the home (never deleted by keyward). */
  leftovers: string[];
  restored: boolean;
}

const LOCK_MS = 10_000;

function describeCurrent(home: string): CurrentHome {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(home);
  } catch {
    return { path: home, state: 'absent' };
  }
  if (st.isSymbolicLink())
    throw new IntegrityError(
      'INSECURE_PERMISSIONS',
      `refusing to restore into ${home}: it is a symbolic link`,
      { hint: 'point KEYWARD_HOME at the real directory (or a new path), then restore' },
    );
  if (!st.isDirectory())
    throw new UsageError('USAGE', `KEYWARD_HOME ${home} is not a directory`, {
      hint: 'move that file away, or point KEYWARD_HOME at a directory',
    });
  if (fs.readdirSync(home).length === 0) return { path: home, state: 'empty' };
  const c: CurrentHome = { path: home, state: 'in use' };
  const vp = vaultPaths(home);
  // A damaged home is still one to move aside; what could be read is reported, each part on its
  // own (found in review: a damaged vault header hid the audit log's head, and with it the
  // warning that the backup is older).
  try {
    if (vaultExists(vp)) {
      const info = readHeaderInfo(vp);
      c.vaultId = info.vaultId;
      c.generation = info.generation;
    }
  } catch (e) {
    c.vaultUnread = e instanceof KeywardError ? e.message : 'it could not be read';
  }
  try {
    // No log at all (a home from before it, or without one) is nothing to compare, not damage.
    if (fs.existsSync(auditPaths(home).dir)) c.auditHead = headOf(home).seq;
  } catch (e) {
    // No head to compare with: said with the rest (describeRestore; found in review: a line of
    // garbage at the log's end took the warning away).
    c.auditUnread = e instanceof KeywardError ? e.message : 'it could not be read';
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

/** A file or directory as extract made it, to find it again. */
type Made = { rel: string; abs: string; dir: boolean } & FileId;

function changedUnder(dir: string, rel: string, what: string): IntegrityError {
  return new IntegrityError(
    'INSECURE_PERMISSIONS',
    `the restore's new home ${dir} was changed while it was written: ${rel} ${what}`,
    {
      hint: 'a process of this user changed it; nothing was put in place. Find what did, then restore again',
    },
  );
}

/** The directory as made: a directory of its own, not a link (lstat), recorded. */
function madeDir(dir: string, abs: string): Made {
  const rel = path.relative(dir, abs) || '.';
  const st = fs.lstatSync(abs, { bigint: true });
  if (!st.isDirectory())
    throw changedUnder(dir, rel, st.isSymbolicLink() ? 'is a symbolic link' : 'is not a directory');
  return { rel, abs, dir: true, dev: st.dev, ino: st.ino };
}

/**
 * Writes every file under `dir` (new, 0700), each fsynced with its mtime, then every directory;
 * then finds each again where it made it. A process of the user can swap a directory of the new
 * home for a link while the files are written (Node has no openat): what the restore then checks
 * and puts in place must be what it wrote, so a directory that is a link, or a file or directory
 * that is not the one made, refuses the restore (found in review). A change after this check is
 * a change to the home after the restore, which the log and the vault's own checks are for.
 */
function extract(dir: string, files: readonly HomeFile[]): () => void {
  fs.mkdirSync(dir, { mode: 0o700 });
  const made = new Map<string, Made>([[dir, madeDir(dir, dir)]]);
  const flags =
    fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  for (const f of files) {
    const abs = path.join(dir, ...f.path.split('/'));
    let fd: number;
    const fresh: string[] = [];
    for (let p = path.dirname(abs); !made.has(p); p = path.dirname(p)) fresh.push(p);
    // One directory at a time, each found as made before anything goes under it: a link planted
    // where one is about to be made is never followed. What is there already and was not made
    // here, another process made (a path of the backup's own twice, or a file where it puts a
    // directory, is the backup's damage: made holds it, or the error is not EEXIST).
    const refuse = (p: string, e: unknown): never => {
      const code = (e as NodeJS.ErrnoException).code;
      if ((code === 'EEXIST' || code === 'ELOOP') && !made.has(p)) {
        const st = fs.lstatSync(p);
        throw changedUnder(
          dir,
          path.relative(dir, p),
          st.isSymbolicLink() ? 'is a symbolic link' : 'was made by another process',
        );
      }
      throw new IntegrityError(
        'BACKUP_CORRUPT',
        `the backup is damaged: ${f.path} can't be written where the manifest puts it (${code ?? 'error'})`,
      );
    };
    for (const p of fresh.reverse()) {
      try {
        fs.mkdirSync(p, { mode: 0o700 });
      } catch (e) {
        refuse(p, e);
      }
      made.set(p, madeDir(dir, p));
    }
    try {
      fd = fs.openSync(abs, flags, 0o600);
    } catch (e) {
      return refuse(abs, e);
    }
    try {
      let off = 0;
      while (off < f.bytes.length) off += fs.writeSync(fd, f.bytes, off, f.bytes.length - off);
      // On its millisecond, as Node rounds a time to one (policy history's appliedAt): seconds
      // as a double lose a few hundred nanoseconds, which must not move it to the next.
      const t = Math.round(f.mtimeMs) / 1000;
      fs.futimesSync(fd, t, t);
      fs.fsyncSync(fd);
      const st = fs.fstatSync(fd, { bigint: true });
      made.set(abs, { rel: f.path, abs, dir: false, dev: st.dev, ino: st.ino });
    } finally {
      fs.closeSync(fd);
    }
  }
  const dirs = [...made.values()].filter((m) => m.dir);
  for (const d of dirs.sort((a, b) => b.abs.length - a.abs.length)) fsyncDir(d.abs);
  foundAsMade(dir, [...made.values()]);
  // Checked again just before the new home is put in place: the restore works in it meanwhile
  // (the passphrase asked, the vault opened, the log verified and continued), and a directory
  // swapped for a link then would be put in place too (found in review).
  return () => foundAsMade(dir, dirs);
}

/** Each file and directory where extract made it, as it made it (not a link, the same inode). */
function foundAsMade(dir: string, all: readonly Made[]): void {
  // Shallowest first: a directory found as made before what is under it is looked at.
  for (const m of [...all].sort((a, b) => a.abs.length - b.abs.length)) {
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(m.abs, { bigint: true });
    } catch {
      throw changedUnder(dir, m.rel, 'is gone');
    }
    if (st.isSymbolicLink()) throw changedUnder(dir, m.rel, 'is a symbolic link');
    if (st.isDirectory() !== m.dir || st.dev !== m.dev || st.ino !== m.ino)
      throw changedUnder(dir, m.rel, 'is not what the restore wrote');
  }
}

/**
 * Nothing may hold the home while it is replaced: the agent of this socket directory, or any
 * process of this user with a file open in the home (an agent started with another socket
 * directory keeps its audit lock open there).
 */
async function refuseIfHeld(home: string, socketDir: string): Promise<void> {
  let answered: boolean;
  try {
    answered = (await agentStatus(socketPaths(socketDir).agent)) !== undefined;
  } catch (e) {
    // Something answers there that isn't a keyward agent we trust: not a place to restore under.
    if (!(e instanceof KeywardError)) throw e;
    answered = true;
  }
  if (answered)
    throw new KeywardError('AGENT_RUNNING', 'an agent is running for this home', {
      hint: 'stop it first (keyward agent stop), then restore',
    });
  const held = holders(home);
  if (held.length > 0)
    throw new KeywardError(
      'AGENT_RUNNING',
      `${held.map((p) => `pid ${p.pid} (${p.exe})`).join(', ')} has files open in ${home}`,
      {
        hint: 'stop it first (an agent: keyward agent stop with its KEYWARD_SOCKET_DIR), then restore',
      },
    );
}

function damaged(why: string): IntegrityError {
  return new IntegrityError('BACKUP_CORRUPT', `the backup is damaged: ${why}`, {
    hint: 'nothing was restored; use another copy of the backup',
  });
}

/** The home by its real directory: processes' open files are seen by real paths in /proc. */
function realHome(home: string): string {
  const abs = path.resolve(home);
  try {
    return path.join(fs.realpathSync(path.dirname(abs)), path.basename(abs));
  } catch {
    return abs; // a parent that is not there yet: nothing can hold it
  }
}

export async function restoreBackup(o: RestoreOptions): Promise<RestoreReport> {
  const home = realHome(o.home);
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
    await refuseIfHeld(home, o.socketDir);
    if (current.state === 'in use' && !o.force)
      throw new UsageError(
        'CONFIRMATION_REQUIRED',
        `KEYWARD_HOME ${home} is in use${current.vaultId ? ` (vault ${current.vaultId})` : ''}: restore fills only an empty or missing home`,
        {
          hint: 'keyward restore --verify --input FILE shows what would change; --force moves the current home aside (never deletes it) and restores',
        },
      );
  }

  let unlockUsed: Unlock | undefined;
  const unlock = (): Unlock => (unlockUsed ??= { passphrase: readPassphrase(o.source) });
  let opened: Opened | undefined;
  // --verify works in a private directory of its own; a restore beside the home (same
  // filesystem, so it can be swapped in with one rename).
  let scratch: string | undefined;
  let tmp: string;
  let removeTmp = true;
  const identities: SecureBuffer[] = [];
  try {
    for (const f of o.identityFiles ?? []) identities.push(...readAgeIdentities(f));
  } catch (e) {
    for (const k of identities) secureFree(k);
    throw e;
  }
  try {
    const d = await decryptBackup(bytes, unlock, identities).finally(() => {
      for (const k of identities) secureFree(k);
    });
    opened = d.opened;
    const { manifest, manifestSha256, files } = unpackContainer(d.container);
    if (d.vaultId !== undefined && d.vaultId !== manifest.vault.id)
      throw damaged(`it is encrypted to vault ${d.vaultId} but holds vault ${manifest.vault.id}`);
    if (o.verifyOnly) {
      scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-verify-'));
      tmp = path.join(scratch, 'home');
    } else {
      fs.mkdirSync(path.dirname(home), { recursive: true, mode: 0o700 });
      tmp = path.join(
        path.dirname(home),
        `${path.basename(home)}.restoring-${process.pid}-${randomBytes(4).toString('hex')}`,
      );
    }
    try {
      const stillAsMade = extract(tmp, files);
      checkAgainstManifest(tmp, manifest, files);
      const u: Unlock = opened ? { derived: opened } : unlock();
      opened = undefined; // the vault owns the derivation now
      const seen = withVaultRead(vaultPaths(tmp), u, (v) => {
        if (v.id !== manifest.vault.id)
          throw damaged(`its manifest names vault ${manifest.vault.id}, its vault.kw is ${v.id}`);
        const r = verifyLog({ home: tmp, vault: v });
        if (!r.ok)
          throw damaged(
            `its audit log does not verify: ${r.finding.reason} (${path.basename(r.finding.file)}, line ${r.finding.line})`,
          );
        const head = r.entries === 0 ? null : { seq: r.headSeq, hash: r.headHash };
        if (JSON.stringify(head) !== JSON.stringify(manifest.audit))
          throw damaged(
            `its manifest says the audit log ends at ${manifest.audit ? `seq ${manifest.audit.seq}` : 'nothing'}, the log it holds at ${head ? `seq ${head.seq}` : 'nothing'}`,
          );
        const secrets = v.list().length;
        if (o.verifyOnly) return { secrets, entries: r.entries };
        // Where the log is shipped is the applied policy's word, not a file the backup held
        // (madeAtRestore): the restore's own record goes there, and the file is made again.
        const ship = shipConfigOf(loadPolicy(tmp, v, undefined).policy.audit);
        writeShipFile(auditPaths(tmp), ship);
        resumeRestoredLog(
          tmp,
          v,
          {
            backupCreated: manifest.created,
            backupHeadSeq: manifest.audit?.seq ?? 0,
            backupHeadHash: manifest.audit?.hash ?? null,
            manifestSha256,
            replacedVault: current.vaultId ?? null,
            replacedHeadSeq: current.auditHead ?? null,
          },
          ship,
        );
        return { secrets, entries: r.entries };
      });
      const report: RestoreReport = {
        manifest,
        manifestSha256,
        sealedBy: d.sealedBy,
        secrets: seen.secrets,
        auditEntries: seen.entries,
        current,
        leftovers,
        restored: !o.verifyOnly,
      };
      if (o.verifyOnly) return report;
      // Again, now: an agent may have started while the passphrase was asked. The holders are
      // checked once more under the old home's locks, just before the swap (placeHome).
      await refuseIfHeld(home, o.socketDir);
      stillAsMade();
      const movedAside = placeHome(tmp, home, current, () => (removeTmp = false));
      return movedAside ? { ...report, movedAside } : report;
    } finally {
      if (removeTmp) fs.rmSync(tmp, { recursive: true, force: true });
      if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
    }
  } finally {
    if (opened) secureFree(opened.kek);
    if (unlockUsed && 'passphrase' in unlockUsed) secureFree(unlockUsed.passphrase);
  }
}

/**
 * What the manifest says that its hashes don't already vouch for: the vault's header (its
 * format and generation) and, for a log with entries, the sealed checkpoint file, without which
 * a log cut back to the vault's older checkpoint would pass.
 */
function checkAgainstManifest(dir: string, m: Manifest, files: readonly HomeFile[]): void {
  const vault = files.find((f) => f.path === 'vault.kw');
  if (!vault) throw damaged('it holds no vault.kw');
  const info = headerInfoOf(vaultPaths(dir).file, vault.bytes);
  if (info.version !== m.vault.format || info.generation !== m.vault.generation)
    throw damaged(
      `its manifest says vault format ${m.vault.format} generation ${m.vault.generation}, its vault.kw is format ${info.version} generation ${info.generation}`,
    );
  const hasLog = files.some((f) => /^audit\/log-\d+\.jsonl$/.test(f.path));
  const checkpoint = path.relative(dir, auditPaths(dir).checkpoint).split(path.sep).join('/');
  if (hasLog && !files.some((f) => f.path === checkpoint))
    throw damaged('it holds an audit log without its checkpoint file');
}

/**
 * Puts the extracted home at `home`: a rename where nothing (or an empty directory) is there; an
 * exchange, then a rename aside, where a home is in use, both under the old home's vault and
 * audit locks (no writer in between). `swapped` is called the moment `tmp` stops holding the new
 * home. Returns where the old home went.
 */
function placeHome(
  tmp: string,
  home: string,
  current: CurrentHome,
  swapped: () => void,
): string | undefined {
  const parent = path.dirname(home);
  if (current.state !== 'in use') {
    try {
      fs.renameSync(tmp, home);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOTDIR') throw e;
      throw new UsageError(
        'CONFIRMATION_REQUIRED',
        `KEYWARD_HOME ${home} was filled while the backup was being restored: nothing was changed`,
        { hint: 'look at what is there now; restore --force moves it aside' },
      );
    }
    swapped();
    fsyncDir(parent);
    return undefined;
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const aside = `${home}.before-restore-${stamp}`;
  const exchange = () => {
    const held = holders(home);
    if (held.length > 0)
      throw new KeywardError(
        'AGENT_RUNNING',
        `${held.map((p) => `pid ${p.pid} (${p.exe})`).join(', ')} has files open in ${home}`,
        { hint: 'stop it first, then restore' },
      );
    try {
      renameExchange(tmp, home);
    } catch (e) {
      throw new UsageError(
        'USAGE',
        `this filesystem can't swap ${home} for the restored home in one step (renameat2 RENAME_EXCHANGE): nothing was changed`,
        {
          hint: 'move the current home aside yourself (mv), then restore into the empty path',
          cause: e,
        },
      );
    }
    swapped();
    fsyncDir(parent);
    // Now tmp holds the old home: from here on a crash leaves it there, named .restoring-*.
    fs.renameSync(tmp, aside);
    fsyncDir(parent);
  };
  const vaultLock = vaultPaths(home).lock;
  const auditLock = auditPaths(home).lock;
  const withAudit = () =>
    fs.existsSync(auditLock) ? withFileLock(auditLock, LOCK_MS, exchange) : exchange();
  if (fs.existsSync(vaultLock)) withFileLock(vaultLock, LOCK_MS, withAudit);
  else withAudit();
  return aside;
}
