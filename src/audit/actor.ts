/**
 * This process as an audit actor: what the CLI records in direct mode (an agent records its
 * peers instead).
 */
import fs from 'node:fs';
import type { Actor } from './events.js';

let selfActor: Actor | undefined;

/** This process, as an actor: what the CLI in direct mode records. */
export function currentProcessActor(): Actor {
  if (!selfActor) {
    let exe: string | undefined;
    try {
      exe = fs.readlinkSync('/proc/self/exe');
    } catch {
      exe = undefined;
    }
    selfActor = {
      uid: process.getuid?.() ?? -1,
      pid: process.pid,
      ...(exe === undefined ? {} : { exe }),
      // keyward never takes a secret on its command line, so argv is safe to record.
      cmdline: process.argv.slice(1),
      cwd: process.cwd(),
    };
  }
  return selfActor;
}
