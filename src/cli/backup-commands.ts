/**
 * keyward backup | restore  (docs/BACKUP.md, docs/operations/backup-restore.md)
 */
import type { Command } from 'commander';
import { restoreBackup, takeBackup, type RestoreReport } from '../backup/index.js';
import { keywardHome, socketDir } from '../lib/paths.js';
import { quote } from '../lib/text.js';
import { auth, passphraseFile } from './context.js';
import { note, type Io } from './report.js';

const collect = (v: string, prev: string[]) => [...prev, v];

/** How the backup's bytes were made: only the vault's passphrase vouches for its manifest. */
const SEALED: Record<RestoreReport['sealedBy'], string> = {
  passphrase: "sealed with the vault's passphrase: only someone who knew it could have made it",
  recipient:
    "encrypted to age recipients, not sealed with the vault's passphrase: anyone with a recipient key could have made it from an older copy of the home, so its date is its own word",
  plain:
    "a plain container, not sealed with the vault's passphrase: anyone could have made it from an older copy of the home, so its date is its own word",
};

/**
 * What the home a restore replaces says against the backup, as warnings. The manifest's date is
 * its own word; the generation and the audit head are what the files say.
 */
function comparisonWarnings(r: RestoreReport, verifyOnly: boolean): string[] {
  const { manifest: m, current: c } = r;
  if (c.state !== 'in use') return [];
  const place = verifyOnly ? 'there' : 'replaced';
  const is = verifyOnly ? 'is' : 'was';
  const backupSeq = m.audit?.seq ?? 0;
  const out: string[] = [];
  // A restore over a newer home of the same vault is a rollback: said, every time.
  if (
    c.vaultId === m.vault.id &&
    ((c.generation !== undefined && c.generation > m.vault.generation) ||
      (c.auditHead !== undefined && c.auditHead > backupSeq))
  )
    out.push(
      `${verifyOnly ? 'this backup is' : 'the restored backup is'} older than the home ${verifyOnly ? 'there' : 'it replaced'} (vault generation ${m.vault.generation} against ${c.generation ?? '?'}, audit head seq ${backupSeq} against ${c.auditHead ?? '?'}): what was saved since ${verifyOnly ? 'would be' : 'is'} only in the home moved aside`,
    );
  if (c.vaultUnread !== undefined) {
    // A damaged header (the state keyward's own hint sends a person to restore from) gives
    // nothing to compare with: said, with the audit head when there is one (found in review).
    out.push(
      `the vault ${place} could not be read (${c.vaultUnread}), so whether this backup is older than it is unknown${c.auditHead !== undefined ? `; its audit log ${is} at seq ${c.auditHead} (the backup's: ${backupSeq})` : ''}${r.sealedBy === 'passphrase' ? '' : "; the backup's date is its own word"}`,
    );
  } else if (c.vaultId === undefined) {
    // A log and no vault (deleted, or a rename a crash cut short): the head is all there is.
    if (c.auditHead !== undefined && c.auditHead > backupSeq)
      out.push(
        `the home ${place} holds no vault, and its audit log ${is} at seq ${c.auditHead}, past the backup's ${backupSeq}: the backup may be older than what was there`,
      );
    if (c.auditUnread !== undefined)
      out.push(
        `the home ${place} holds no vault, and its audit log could not be read (${quote(c.auditUnread, 300)}): nothing of it could be compared with the backup`,
      );
  } else if (c.auditUnread !== undefined) {
    out.push(
      `the audit log ${place} could not be read (${quote(c.auditUnread, 300)}), so whether this backup is older than it is known only by the vault's generation${c.generation !== undefined ? ` (${c.generation} there, the backup's ${m.vault.generation})` : ''}`,
    );
  }
  return out;
}

function describeRestore(io: Io, r: RestoreReport, verifyOnly: boolean): void {
  const m = r.manifest;
  const lines = [
    `backup of vault ${m.vault.id}, taken ${m.created} by keyward ${m.keyward} (as its manifest says)`,
    `  ${SEALED[r.sealedBy]}`,
    `  ${m.files.length} files, every SHA-256 matches (manifest sha256 ${r.manifestSha256})`,
    `  the vault opens with the passphrase: ${r.secrets} secret${r.secrets === 1 ? '' : 's'}`,
    `  the audit log verifies: ${r.auditEntries} entries${m.audit ? `, head seq ${m.audit.seq}` : ''}, checkpoints match`,
  ];
  const c = r.current;
  const held = c.vaultId
    ? `vault ${c.vaultId}${c.vaultId === m.vault.id ? ' (the same vault)' : ' (another vault)'}`
    : c.vaultUnread !== undefined
      ? 'a vault that can not be read'
      : 'files but no vault';
  const holds = `${held}${c.generation !== undefined ? `, generation ${c.generation} (the backup's: ${m.vault.generation})` : ''}${c.auditHead !== undefined ? `, audit head seq ${c.auditHead} (the backup's: ${m.audit?.seq ?? 0})` : ''}`;
  const where =
    c.state === 'in use'
      ? `${c.path}, which holds ${holds}`
      : `${c.path} (${c.state === 'absent' ? 'not there yet' : 'empty'})`;
  lines.push(verifyOnly ? `would restore into ${where}` : `restored into ${c.path}`);
  if (verifyOnly && c.state === 'in use')
    lines.push(
      '  restore --force would move it aside (never deleting it) and put the backup there',
    );
  if (r.movedAside) {
    lines.push(`the home it replaced is now ${r.movedAside} (keyward never deletes it)`);
    lines.push(`  it held ${holds}`);
  }
  if (!verifyOnly)
    lines.push("the audit log goes on with audit.restored, linking the backup's head");
  io.stdout(`${lines.join('\n')}\n`);
  for (const w of comparisonWarnings(r, verifyOnly)) note(io, `warning: ${w}`);
  // Names read from the directory beside the home: anyone's choosing, shown quoted.
  for (const l of r.leftovers)
    note(
      io,
      `warning: ${quote(l, 400)} was left by an interrupted restore (it may hold a previous home); keyward never deletes it`,
    );
}

export function registerBackupCommands(program: Command, io: Io, version: string): void {
  program
    .command('backup')
    .description('write an encrypted backup of KEYWARD_HOME (vault, policy, audit log, pins)')
    .requiredOption('--output <file>', 'where to write it (atomically, mode 0600)')
    .option(
      '--recipient <age1...>',
      'encrypt to this age X25519 recipient instead of the vault passphrase (repeatable; no passphrase needed)',
      collect,
      [] as string[],
    )
    .action(async function (this: Command) {
      const o = this.opts<{ output: string; recipient: string[] }>();
      const r = await takeBackup({
        home: keywardHome(),
        output: o.output,
        recipients: o.recipient,
        auth: auth(this, io),
        socketDir: socketDir(),
        version,
      });
      io.stdout(
        `backed up ${r.manifest.files.length} files (vault ${r.manifest.vault.id}${r.manifest.audit ? `, audit head seq ${r.manifest.audit.seq}` : ''}) to ${r.output}\n` +
          `manifest sha256 ${r.manifestSha256}\n`,
      );
      note(
        io,
        o.recipient.length === 0
          ? 'encrypted to the vault passphrase as it is now; keyward restore --verify --input FILE checks it'
          : `encrypted to ${o.recipient.length} age recipient${o.recipient.length === 1 ? '' : 's'}: keyward restore --identity KEYFILE (or age -d -i KEYFILE) opens it; the vault inside still needs the passphrase`,
      );
    });

  program
    .command('restore')
    .description(
      'restore a backup into an empty KEYWARD_HOME (or --force: the old one moved aside)',
    )
    .requiredOption('--input <file>', 'the backup (or the container age -d gave back)')
    .option('--verify', 'check everything and say what would change; write nothing')
    .option('--force', 'move a KEYWARD_HOME in use aside (never deleted) and restore')
    .option(
      '--identity <file>',
      'an age identity file (age-keygen), for a backup made with --recipient (repeatable)',
      collect,
      [] as string[],
    )
    .action(async function (this: Command) {
      const o = this.opts<{
        input: string;
        verify?: boolean;
        force?: boolean;
        identity: string[];
      }>();
      const r = await restoreBackup({
        home: keywardHome(),
        input: o.input,
        verifyOnly: o.verify === true,
        force: o.force === true,
        source: { file: passphraseFile(this) },
        socketDir: socketDir(),
        identityFiles: o.identity,
      });
      describeRestore(io, r, o.verify === true);
    });
}
