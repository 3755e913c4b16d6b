import os from 'node:os';
import path from 'node:path';

/** INTERFACE.md, "Places". */
export function keywardHome(env: NodeJS.ProcessEnv = process.env): string {
  const h = env['KEYWARD_HOME'];
  return path.resolve(h !== undefined && h !== '' ? h : path.join(os.homedir(), '.keyward'));
}

export function socketDir(env: NodeJS.ProcessEnv = process.env): string {
  const d = env['KEYWARD_SOCKET_DIR'];
  if (d !== undefined && d !== '') return path.resolve(d);
  const xdg = env['XDG_RUNTIME_DIR'];
  if (xdg !== undefined && xdg !== '') return path.join(path.resolve(xdg), 'keyward');
  return path.join(keywardHome(env), 'run');
}

/**
 * A path as /proc names the file of a running program (or a loop device's backing file) once
 * the file was replaced or removed, without the " (deleted)" the kernel puts after it.
 */
export function undeleted(p: string): string {
  return p.endsWith(' (deleted)') ? p.slice(0, -' (deleted)'.length) : p;
}
