/**
 * A copy of every audit entry off this machine (docs/AUDIT.md, "Shipping"): each entry, as
 * written, goes to the system log: RFC 5424 over a syslog socket (rsyslog, syslog-ng) or
 * journald's native protocol. The system log forwards it to a collector an attacker on this
 * machine can't reach, and `keyward audit verify --against` compares the two.
 *
 * What is shipped: seq, time, type, epoch, decision, the entry's hash and prev. Never a body
 * (who, what, why stay sealed) and never a secret.
 *
 * Shipping never stops the durable append: datagrams are sent after the fsync. A datagram the
 * system log can't take is dropped and counted (`ship-dropped`), and the count itself is shipped
 * with the next entry that goes through. The agent, which releases without a passphrase, waits a
 * while for room in the system log's queue, and locks when an entry's copy is still not taken
 * (group.ts, onUnshipped): the count is a file any process of the user can remove, so a release
 * the copy lacks would be one a flood of the system log's socket and a cut of the local log could
 * hide (found in review, 2026-12-07).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readOwnFile, writeFileAtomic } from '../lib/files.js';
import {
  EAGAIN,
  sendDatagram,
  unixDatagramSocket,
  unixDatagramSocketWaiting,
} from '../lib/unix.js';
import type { AuditPaths } from './state.js';

export type ShipKind = 'none' | 'syslog' | 'journald';

export interface ShipConfig {
  kind: ShipKind;
  socket: string;
}

export const NO_SHIPPING: ShipConfig = { kind: 'none', socket: '' };

const DEFAULT_SOCKET: Record<Exclude<ShipKind, 'none'>, string> = {
  syslog: '/dev/log',
  journald: '/run/systemd/journal/socket',
};

/** From the policy's `audit:` section. */
export function shipConfigOf(audit: { ship: ShipKind; socket?: string | undefined }): ShipConfig {
  if (audit.ship === 'none') return NO_SHIPPING;
  return { kind: audit.ship, socket: audit.socket ?? DEFAULT_SOCKET[audit.ship] };
}

const shipFile = (p: AuditPaths) => path.join(p.dir, 'ship');
const droppedFile = (p: AuditPaths) => path.join(p.dir, 'ship-dropped');

/**
 * The configuration as the last `policy apply` left it for writers that can't read the policy
 * (a locked command line writer). The agent ships by the policy it holds and puts this file back
 * when it differs.
 */
export function readShipFile(p: AuditPaths): ShipConfig {
  // Asked at every append of a writer without the policy (the MCP gateway's, each call): no
  // file is the usual case, and an exception for it costs more than the rest of the check.
  let text: string;
  try {
    if (fs.statSync(shipFile(p), { throwIfNoEntry: false }) === undefined) return NO_SHIPPING;
    text = readOwnFile(shipFile(p)).toString('utf8');
  } catch {
    return NO_SHIPPING;
  }
  const m = /^(syslog|journald) (\/\S{1,106})\n?$/.exec(text);
  return m ? { kind: m[1] as ShipKind, socket: m[2] ?? '' } : NO_SHIPPING;
}

export function sameShipping(a: ShipConfig, b: ShipConfig): boolean {
  return a.kind === b.kind && (a.kind === 'none' || a.socket === b.socket);
}

export function writeShipFile(p: AuditPaths, cfg: ShipConfig): void {
  if (cfg.kind === 'none') fs.rmSync(shipFile(p), { force: true });
  else writeFileAtomic(shipFile(p), [Buffer.from(`${cfg.kind} ${cfg.socket}\n`, 'utf8')]);
}

/** One entry as shipped. */
export interface ShippedEntry {
  seq: number;
  time: string;
  type: string;
  epoch: number;
  decision: string;
  hash: string;
  prev: string;
}

/** RFC 5424 severities by decision, facility authpriv (10): keyward's log is about access. */
const SEVERITY: Record<string, number> = { allow: 6, info: 6, deny: 5, error: 4 };
const FACILITY_AUTHPRIV = 10;
/** An enterprise number for the structured data's name (RFC 5424 section 7.2.2 form). */
export const SD_ID = 'keyward@32473';

/** RFC 5424: `<PRI>1 TIME HOST keyward PID TYPE [keyward@32473 seq="" ...] MESSAGE`. */
export function formatSyslog(e: ShippedEntry, pid = process.pid): Buffer {
  const pri = FACILITY_AUTHPRIV * 8 + (SEVERITY[e.decision] ?? 6);
  const host =
    os
      .hostname()
      .replace(/[^\x21-\x7e]/g, '')
      .slice(0, 255) || '-';
  // Every value is keyward's own (digits, hex, a type of [a-z_.]): nothing to escape.
  const sd = `[${SD_ID} seq="${e.seq}" type="${e.type}" epoch="${e.epoch}" decision="${e.decision}" hash="${e.hash}" prev="${e.prev}"]`;
  const msg = `keyward audit seq=${e.seq} type=${e.type} decision=${e.decision} hash=${e.hash}`;
  return Buffer.from(`<${pri}>1 ${e.time} ${host} keyward ${pid} ${e.type} ${sd} ${msg}`, 'utf8');
}

/** journald's native protocol: one KEY=value line per field. */
export function formatJournald(e: ShippedEntry): Buffer {
  const fields = [
    `MESSAGE=keyward audit seq=${e.seq} type=${e.type} decision=${e.decision} hash=${e.hash}`,
    `PRIORITY=${SEVERITY[e.decision] ?? 6}`,
    `SYSLOG_FACILITY=${FACILITY_AUTHPRIV}`,
    'SYSLOG_IDENTIFIER=keyward',
    `KEYWARD_SEQ=${e.seq}`,
    `KEYWARD_TIME=${e.time}`,
    `KEYWARD_TYPE=${e.type}`,
    `KEYWARD_EPOCH=${e.epoch}`,
    `KEYWARD_DECISION=${e.decision}`,
    `KEYWARD_HASH=${e.hash}`,
    `KEYWARD_PREV=${e.prev}`,
  ];
  return Buffer.from(`${fields.join('\n')}\n`, 'utf8');
}

function notice(kind: Exclude<ShipKind, 'none'>, dropped: number): Buffer {
  const text = `keyward audit: ${dropped} entries could not be shipped earlier (the system log did not take them)`;
  return kind === 'syslog'
    ? Buffer.from(
        `<${FACILITY_AUTHPRIV * 8 + 4}>1 ${new Date().toISOString()} ${os.hostname() || '-'} keyward ${process.pid} audit.dropped [${SD_ID} dropped="${dropped}"] ${text}`,
        'utf8',
      )
    : Buffer.from(
        `MESSAGE=${text}\nPRIORITY=4\nSYSLOG_IDENTIFIER=keyward\nKEYWARD_DROPPED=${dropped}\n`,
        'utf8',
      );
}

function readDropped(p: AuditPaths): number {
  try {
    const n = Number(readOwnFile(droppedFile(p)).toString('utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : 0;
  } catch {
    return 0;
  }
}

/** Sends entries to the system log; counts what it can't send. One socket per writer. */
export class Shipper {
  private fd: number | undefined;
  /** The socket whose sends wait for room (waitMs), made at the first full queue. */
  private waitFd: number | undefined;
  /** What the agent set from the policy it holds: in force over audit/ship. */
  private override: ShipConfig | undefined;

  /** waitMs: how long a datagram may wait for room in the system log's queue (0: not at all). */
  constructor(
    private readonly paths: AuditPaths,
    private readonly waitMs = 0,
  ) {}

  /** The shipping in force: what the agent set, else what the last `policy apply` left. */
  config(): ShipConfig {
    return this.override ?? readShipFile(this.paths);
  }

  /** The agent ships by its policy, whatever audit/ship says. */
  setConfig(cfg: ShipConfig): void {
    this.override = cfg;
  }

  /**
   * Sends what an append wrote, if shipping is on. Never throws: the local log holds it. Returns
   * how many of the entries the system log did not take (0 with shipping off).
   */
  shipWritten(entries: readonly ShippedEntry[] | undefined): number {
    if (!entries || entries.length === 0) return 0;
    let cfg: ShipConfig = NO_SHIPPING;
    try {
      cfg = this.config();
      return this.ship(cfg, entries);
    } catch {
      // The local log holds the entries durably; the copy is best effort.
      return cfg.kind === 'none' ? 0 : entries.length;
    }
  }

  /** Sends entries to the system log; returns how many it did not take. */
  ship(cfg: ShipConfig, entries: readonly ShippedEntry[]): number {
    if (cfg.kind === 'none' || entries.length === 0) return 0;
    const kind = cfg.kind;
    let failed = 0;
    try {
      this.fd ??= unixDatagramSocket();
    } catch {
      this.fd = undefined;
    }
    // A full queue (EAGAIN) is waited on once a batch, up to waitMs: past that, the rest of
    // the batch is not waited for.
    let mayWait = this.waitMs > 0;
    const send = (b: Buffer): number => {
      if (this.fd === undefined) return 1;
      const err = sendDatagram(this.fd, cfg.socket, b);
      if (err !== EAGAIN || !mayWait) return err;
      try {
        this.waitFd ??= unixDatagramSocketWaiting(this.waitMs);
      } catch {
        return err;
      }
      const waited = sendDatagram(this.waitFd, cfg.socket, b, this.waitMs);
      if (waited !== 0) mayWait = false;
      return waited;
    };
    const earlier = readDropped(this.paths);
    if (earlier > 0 && send(notice(kind, earlier)) === 0)
      fs.rmSync(droppedFile(this.paths), { force: true });
    for (const e of entries) {
      if (send(kind === 'syslog' ? formatSyslog(e) : formatJournald(e)) !== 0) failed += 1;
    }
    if (failed > 0) {
      try {
        // A plain write, no fsync: a count of what the system log missed must not cost the
        // appends fsyncs of their own (the entries themselves are durable in the local log).
        fs.writeFileSync(droppedFile(this.paths), `${readDropped(this.paths) + failed}\n`, {
          mode: 0o600,
        });
      } catch {
        // Counting is best effort: the entries themselves are durable in the local log.
      }
    }
    return failed;
  }
}
