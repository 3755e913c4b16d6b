/**
 * keyward audit init | verify | tail | export | key export | rekey  (docs/AUDIT.md)
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { InvalidArgumentError } from './commander.js';
import { agentStatus, call, jsonBody } from '../agent/index.js';
import {
  acknowledge,
  initOrRepair,
  lenientAuditSink,
  readEntries,
  rekeyBox,
  verifyLog,
  writeSeedHex,
  writeSeedQr,
  type ReadEntry,
  type VerifyResult,
} from '../audit/index.js';
import { UsageError } from '../errors.js';
import { keywardHome } from '../lib/paths.js';
import {
  hasTerminal,
  requireVault,
  useVault,
  vaultExists,
  type Auth,
  type Vault,
} from '../vault/index.js';
import { acksLine, againstCopy, report, reportAgents } from './audit-verify.js';
import { note, type Io } from './report.js';
import { agentSocket, auth, passphraseFile, paths } from './context.js';
import { jsonText, printable } from '../lib/text.js';

/** A vault can be opened without hanging: a passphrase file, a keyring slot, or a terminal. */
function canUnlock(cmd: Command): boolean {
  return passphraseFile(cmd) !== undefined || hasTerminal();
}

function lenientAuth(cmd: Command, io: Io): Auth & { audit: ReturnType<typeof lenientAuditSink> } {
  return {
    ...auth(cmd, io),
    audit: lenientAuditSink(keywardHome(), (m) => note(io, `warning: ${m}`)),
  };
}

function progress(io: Io, label: string): ((done: number, total: number) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  let last = -1;
  return (done, total) => {
    const pct = total === 0 ? 100 : Math.floor((done / total) * 100);
    if (pct === last) return;
    last = pct;
    const bar = '#'.repeat(Math.floor(pct / 4)).padEnd(25, ' ');
    io.stderr(`\r${label} [${bar}] ${String(pct).padStart(3)}%${pct === 100 ? '\n' : ''}`);
  };
}

function sinceOption(v: string): number {
  const t = Date.parse(v);
  if (Number.isNaN(t))
    throw new InvalidArgumentError(
      'expected a date or time, e.g. 2026-11-22 or 2026-11-22T15:00:00Z',
    );
  return t;
}

/** `--head SEQ:SHA256`, as `audit verify` prints it. */
function headOption(v: string): { seq: number; hash: string } {
  const m = /^(\d{1,15}):([0-9a-f]{64})$/.exec(v);
  if (!m)
    throw new InvalidArgumentError(
      'expected SEQ:SHA256 (the head keyward audit verify prints, such as 12:3f0a...)',
    );
  return { seq: Number(m[1]), hash: m[2] as string };
}

function countOption(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new InvalidArgumentError('expected a whole number of at least 1');
  return n;
}

type Shown = Omit<ReadEntry, 'line'>;

function describe(e: Shown): string {
  const b = e.body as
    | {
        actor?: { pid?: number; exe?: string };
        target?: string | null;
        decision?: string;
        reason?: string | null;
      }
    | string
    | undefined;
  // A body holds what callers controlled (an executable's name, a tool's, an ssh-add comment):
  // every field is shown printable, so none can move the cursor or forge a line of its own.
  const head = `${String(e.seq).padStart(6)}  ${printable(e.time)}  ${printable(e.type).padEnd(20)}`;
  if (b === undefined) return `${head}  (sealed)`;
  if (typeof b !== 'object' || b === null) return `${head}  ${printable(String(b))}`;
  // The program by its path, cut from the left when long (found in review: its last part alone
  // made a copy of node at ./usr/bin/ssh read as /usr/bin/ssh).
  const actor = b.actor
    ? `pid ${printable(String(b.actor.pid ?? '?'))} ${shownExe(b.actor.exe)}`
    : '';
  const reason = b.reason ? `  (${printable(String(b.reason), 400)})` : '';
  return `${head}  ${printable(String(b.decision ?? '')).padEnd(5)}  ${printable(String(b.target ?? '-'))}  ${actor}${reason}`;
}

/** How much of a caller's program path a line of audit tail shows (its end). */
const EXE_SHOWN = 80;

/** A caller's program path, printable, its last EXE_SHOWN - 3 characters after `...` if longer. */
function shownExe(exe: unknown): string {
  const p = printable(String(exe ?? '?'));
  return p.length > EXE_SHOWN ? `...${p.slice(-(EXE_SHOWN - 3))}` : p;
}

/**
 * The audit log through a running agent (docs/CLI.md, "With an agent running"): it holds the
 * vault, so nothing is derived here; the policy decides (kind audit) and the read is recorded.
 * Undefined when no agent runs, or when a passphrase file is given: then the vault is opened
 * here, and nothing is taken on the word of whatever answers on the agent's socket (a process
 * of the user's can listen there while no agent runs: found in review, a tampered log passed).
 * A locked agent refuses (exit 5), as for read and list.
 */
async function viaAgent<T extends object>(
  cmd: Command,
  meta: Record<string, unknown>,
): Promise<T | undefined> {
  const sock = await agentToAsk(cmd);
  return sock === undefined ? undefined : jsonBody<T>(await call(sock, 'audit', meta));
}

/** The running agent's socket, or undefined when none runs or a passphrase file is given. */
async function agentToAsk(cmd: Command): Promise<string | undefined> {
  if (passphraseFile(cmd) !== undefined) return undefined;
  const sock = agentSocket();
  return (await agentStatus(sock)) ? sock : undefined;
}

function withOptionalVault<T>(
  cmd: Command,
  io: Io,
  sealed: boolean,
  fn: (v: Vault | undefined) => T,
): T {
  if (sealed || !vaultExists(paths()) || !canUnlock(cmd)) {
    if (!sealed)
      note(io, 'no passphrase source (terminal or --passphrase-file): bodies stay sealed');
    return fn(undefined);
  }
  return useVault(paths(), lenientAuth(cmd, io), 'read', fn);
}

export function registerAuditCommands(program: Command, io: Io): void {
  const audit = program
    .command('audit')
    .description('the tamper-evident audit log')
    // Before init there is no log to read, check or repair: say so (exit 3).
    .hook('preAction', () => requireVault(paths()));

  audit
    .command('init')
    .description(
      'add an audit log to a vault made without one, or rebuild a lost state file from the vault',
    )
    .action(function (this: Command) {
      const a = lenientAuth(this, io);
      const r = useVault(paths(), a, 'write', (v) => initOrRepair(keywardHome(), v));
      a.audit.flush();
      io.stdout(r === 'present' ? 'The audit log is already set up.\n' : `Audit log ${r}.\n`);
    });

  audit
    .command('verify')
    .description(
      'check the chain, every MAC and the sealed checkpoint; exit 8 at the first bad entry',
    )
    .option('--path <file>', 'verify one segment file on its own')
    .option(
      '--key-file <file>',
      'use an exported audit key instead of the vault (checks MACs, not the checkpoint)',
    )
    .option('--chain-only', 'check only the hash chain (no passphrase needed)')
    .option(
      '--against <file>',
      "also compare with a copy shipped off the machine (the collector's file: RFC 5424 lines, or journalctl -o json)",
    )
    .action(async function (this: Command) {
      const o = this.opts<{
        path?: string;
        keyFile?: string;
        chainOnly?: boolean;
        against?: string;
      }>();
      // The copy is compared with the home's log: with --path it would seem to be compared
      // with that file, and pass or fail for another log than the one named.
      if (o.against !== undefined && o.path !== undefined)
        throw new UsageError(
          'USAGE',
          "--against compares the copy with this home's log: not with --path",
          { hint: 'run the two apart: audit verify --path FILE, and audit verify --against COPY' },
        );
      if (o.against !== undefined) againstCopy(io, o.against);
      const file = o.path === undefined ? undefined : path.resolve(o.path);
      if (file !== undefined && !fs.existsSync(file))
        throw new UsageError('USAGE', `no such file: ${o.path}`);
      const req = {
        home: keywardHome(),
        file,
        keyFile: o.keyFile,
        onProgress: progress(io, 'verifying'),
      };
      if (o.keyFile === undefined && o.chainOnly !== true && file === undefined) {
        const r = await viaAgent<
          VerifyResult & { checkpointChecked: boolean; acknowledgementsChecked?: boolean }
        >(this, { op: 'verify' });
        if (r) {
          reportAgents(io, req.home, verifyLog(req), r);
          return;
        }
      }
      const withVault =
        o.keyFile === undefined && o.chainOnly !== true && vaultExists(paths()) && canUnlock(this);
      if (o.keyFile === undefined && o.chainOnly !== true && !withVault) {
        note(io, 'no passphrase source (terminal or --passphrase-file): checking the chain only');
      }
      const r = withVault
        ? useVault(paths(), lenientAuth(this, io), 'read', (vault) => verifyLog({ ...req, vault }))
        : verifyLog(req);
      report(io, r, [
        r.checkpointChecked
          ? 'checkpoint sealed in the vault matches'
          : 'checkpoint not checked (needs the vault)',
        ...acksLine(r),
      ]);
    });

  audit
    .command('acknowledge')
    .description(
      'after you have looked at recorded breaks (audit.gap): record that, and seal the log as it is now (asks the passphrase)',
    )
    .requiredOption(
      '--head <seq:sha256>',
      'the head `keyward audit verify` showed you: nothing is acknowledged unless the log still extends it',
      headOption,
    )
    .action(function (this: Command) {
      const { head } = this.opts<{ head: { seq: number; hash: string } }>();
      const a = auth(this, io);
      const gaps = useVault(paths(), a, 'write', (v) => {
        const covered = acknowledge(keywardHome(), v, head);
        v.save();
        return covered;
      });
      io.stdout(
        gaps.length > 0
          ? `acknowledged ${gaps.length} recorded break(s) (audit.gap at seq ${gaps.join(', ')}); the log is sealed as it is now\n`
          : 'no recorded break to acknowledge; the log is sealed as it is now\n',
      );
    });

  audit
    .command('tail')
    .description('the last entries; bodies (who, what, why) are opened with the vault')
    .option('-n <count>', 'how many entries', countOption, 20)
    .option('--json', 'one JSON object per line')
    .option('--follow', 'keep printing new entries')
    .option('--sealed', 'do not unlock: time and type only')
    .action(async function (this: Command) {
      const o = this.opts<{ n: number; json?: boolean; follow?: boolean; sealed?: boolean }>();
      const home = keywardHome();
      const print = (e: Shown) =>
        io.stdout(
          o.json
            ? `${jsonText({ seq: e.seq, time: e.time, type: e.type, epoch: e.epoch, hash: e.hash, body: e.body })}\n`
            : `${describe(e)}\n`,
        );
      let last = 0;
      const opened = o.sealed
        ? undefined
        : await viaAgent<{ entries: Shown[]; cut?: boolean }>(this, { op: 'tail', count: o.n });
      if (opened) {
        if (opened.cut)
          note(
            io,
            `the last ${opened.entries.length} entries: more would not fit in one reply (keyward audit export --decrypt gives them all)`,
          );
        for (const e of opened.entries) print(e);
        last = opened.entries.at(-1)?.seq ?? 0;
      } else {
        withOptionalVault(this, io, o.sealed === true, (v) => {
          const shown = readEntries(home, v, undefined, { last: o.n });
          for (const e of shown) print(e);
          last = shown.at(-1)?.seq ?? 0;
        });
      }
      if (!o.follow) return;
      // Follow: sealed view of new entries (bodies would need the vault open indefinitely).
      for (;;) {
        await new Promise((r) => setTimeout(r, 500));
        for (const e of readEntries(home).filter((x) => x.seq > last)) {
          print(e);
          last = e.seq;
        }
      }
    });

  audit
    .command('export')
    .description('the log as JSON lines: sealed as stored (verifiable elsewhere), or --decrypt')
    .option('--since <time>', 'entries at or after this time', sinceOption)
    .option('--format <format>', 'jsonl (the only format)', 'jsonl')
    .option('--decrypt', 'open the bodies with the vault')
    .action(async function (this: Command) {
      const o = this.opts<{ since?: number; format: string; decrypt?: boolean }>();
      if (o.format !== 'jsonl')
        throw new UsageError('USAGE', `unknown format ${o.format}`, { hint: 'use --format jsonl' });
      const keep = (e: Shown) => o.since === undefined || Date.parse(e.time) >= o.since;
      if (!o.decrypt) {
        for (const e of readEntries(keywardHome(), undefined, progress(io, 'exporting')).filter(
          keep,
        ))
          io.stdout(`${e.line}\n`);
        return;
      }
      const out = (e: Shown) =>
        io.stdout(
          `${jsonText({ seq: e.seq, time: e.time, type: e.type, epoch: e.epoch, hash: e.hash, body: e.body })}\n`,
        );
      // Through a running agent a page at a time, up to where the log ended when the export
      // began: its own reads (audit.read) don't keep it going. With a passphrase file, here
      // (as viaAgent says).
      const sock = await agentToAsk(this);
      if (sock !== undefined) {
        const end = readEntries(keywardHome()).at(-1)?.seq ?? 0;
        for (let after = 0; after < end;) {
          const { entries } = jsonBody<{ entries: Shown[] }>(
            await call(sock, 'audit', { op: 'entries', after }),
          );
          if (entries.length === 0) break;
          for (const e of entries) if (e.seq <= end && keep(e)) out(e);
          after = entries.at(-1)?.seq ?? end;
        }
        return;
      }
      useVault(paths(), lenientAuth(this, io), 'read', (v) => {
        for (const e of readEntries(keywardHome(), v, progress(io, 'exporting')).filter(keep))
          out(e);
      });
    });

  const key = audit
    .command('key')
    .description("the audit verification key (the seed of every epoch's MAC key)");
  key
    .command('export')
    .description(
      'print the audit key as hex, to keep off this machine (verify later with --key-file)',
    )
    .option('--qr', 'draw it as a QR code on the terminal instead')
    .action(function (this: Command) {
      const a = auth(this, io);
      const qr = this.opts<{ qr?: boolean }>().qr === true;
      useVault(paths(), a, 'read', (v) => {
        const form = qr ? 'qr' : 'hex';
        a.audit.record({ type: 'audit.key_exported', decision: 'allow', details: { form } });
        if (qr) writeSeedQr(v, 1);
        else writeSeedHex(v, 1);
      });
      note(io, 'keep this key off this machine: with it anyone can verify, and so forge, this log');
    });

  audit
    .command('rekey')
    .description('new encryption key for the bodies of new entries (old bodies still open)')
    .action(function (this: Command) {
      const n = useVault(paths(), auth(this, io), 'write', (v) => rekeyBox(keywardHome(), v));
      io.stdout(
        `Audit bodies now sealed to a new key (${n} older key(s) kept to open older entries).\n`,
      );
    });
}
