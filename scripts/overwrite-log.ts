/**
 * A raw log written the agent's way since 2026-12-07 (docs/AUDIT.md, "The journal"): lines
 * written over a preallocated file of zeros, wrapping at its end, then fdatasynced by the caller
 * through `fd`. What the bench's limits and floors write with (bench.ts, bench-sign.ts,
 * sign-floor.ts, mcp-floor.ts).
 */
import fs from 'node:fs';

export interface OverwriteLog {
  fd: number;
  /** Writes data at the next place (from the start again when it would pass the end). */
  write(data: Buffer): void;
}

export function overwriteLog(file: string, bytes = 8 << 20): OverwriteLog {
  const fd = fs.openSync(file, 'w+', 0o600);
  fs.writeSync(fd, Buffer.alloc(bytes), 0, bytes, 0);
  fs.fsyncSync(fd);
  let pos = 0;
  return {
    fd,
    write(data) {
      if (pos + data.length > bytes) pos = 0;
      fs.writeSync(fd, data, 0, data.length, pos);
      pos += data.length;
    },
  };
}
