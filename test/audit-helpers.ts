import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AuditLog, listSegments, type AuditOptions } from '../src/audit/index.js';
import { boxKeypair } from '../src/audit/keys.js';
import { randomBytes, secureTake, type SecureBuffer } from '../src/lib/secure.js';

/** A log in a private temp home, with its seed (which a real log keeps in the vault). */
export function makeLog(options: AuditOptions = {}): {
  home: string;
  log: AuditLog;
  seed: SecureBuffer;
  dir: string;
} {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-audit-'));
  fs.chmodSync(home, 0o700);
  const seed = secureTake(randomBytes(32));
  const log = new AuditLog(home, options);
  log.create(seed, boxKeypair().publicKey);
  return { home, log, seed, dir: log.paths.dir };
}

export function fill(log: AuditLog, count: number, batch = 50): void {
  for (let i = 0; i < count; i += batch) {
    const n = Math.min(batch, count - i);
    log.append(
      Array.from({ length: n }, (_, j) => ({
        type: 'secret.read' as const,
        target: `t/${i + j}`,
        decision: 'allow' as const,
      })),
    );
  }
}

/** A copy of a log directory's segments that a test may mutate. */
export function copySegments(dir: string): string[] {
  const to = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-audit-copy-'));
  return listSegments(dir).map((f) => {
    const dest = path.join(to, path.basename(f));
    fs.copyFileSync(f, dest);
    return dest;
  });
}

export function lines(file: string): string[] {
  return fs.readFileSync(file, 'utf8').slice(0, -1).split('\n');
}

export function writeLines(file: string, ls: string[]): void {
  fs.writeFileSync(file, ls.length === 0 ? '' : `${ls.join('\n')}\n`);
}
