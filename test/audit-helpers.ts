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

/**
 * The line-by-line walk from a file's end that src/audit/tail.ts had before scanBackFor and
 * scanBackLines (64 KiB chunks, a string per line), kept as the reference they are compared with:
 * visit gets each complete line, last first, until it returns true.
 */
export function scanBack(file: string, visit: (line: string) => boolean): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return false;
  }
  // The newline that ends the line before the last one of b (never a negative offset, which
  // would count from the end).
  const before = (b: Buffer) => (b.length >= 2 ? b.lastIndexOf(0x0a, b.length - 2) : -1);
  const text = (b: Buffer) => {
    const t = b.toString('utf8');
    return t.endsWith('\n') ? t.slice(0, -1) : t;
  };
  try {
    let end = fs.fstatSync(fd).size;
    let carry = Buffer.alloc(0);
    const CHUNK = 64 * 1024;
    while (end > 0) {
      const start = Math.max(0, end - CHUNK);
      const chunk = Buffer.alloc(end - start);
      fs.readSync(fd, chunk, 0, chunk.length, start);
      let buf = Buffer.concat([chunk, carry]);
      // A line is whole once the newline before it is in: or at the very start of the file.
      for (let nl = before(buf); nl >= 0; nl = before(buf)) {
        const line = text(buf.subarray(nl + 1));
        if (line && visit(line)) return true;
        buf = buf.subarray(0, nl + 1);
      }
      if (start === 0) {
        const line = text(buf);
        return line !== '' && visit(line);
      }
      carry = buf;
      end = start;
    }
    return false;
  } finally {
    fs.closeSync(fd);
  }
}
