/**
 * The project name `seal` gives a file when `--project` is not said (docs/PROJECT-FILES.md,
 * "The project name"): the repository's `origin` remote as host/path (`github.com/acme/api`),
 * else the repository's directory name, else the file's directory name. Read from `.git/config`
 * as text: no git is run, so a repository's own configuration (hooks, fsmonitor) runs nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { checkProjectName } from './file.js';

/** The enclosing repository's top directory and its config file, if FILE's directory is in one. */
function repositoryOf(dir: string): { top: string; config: string | undefined } | undefined {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    const git = path.join(d, '.git');
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(git);
    } catch {
      st = undefined;
    }
    if (st?.isDirectory()) return { top: d, config: path.join(git, 'config') };
    // A worktree or submodule (`.git` is a file): its name, not its remote.
    if (st?.isFile()) return { top: d, config: undefined };
    if (path.dirname(d) === d) return undefined;
  }
}

/**
 * The url of `[remote "origin"]` in a git config's text; undefined when the text is anything
 * but plain (a continued line, a quoted or commented value, an include, two urls): keyward does
 * not guess what git would read, and a name it can't be sure of is no name.
 */
export function originUrl(config: string): string | undefined {
  let inOrigin = false;
  const urls: string[] = [];
  for (const raw of config.split('\n')) {
    const line = raw.trim();
    if (line.endsWith('\\') || /^\[include/i.test(line)) return undefined;
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    if (line.startsWith('[')) {
      inOrigin = /^\[[Rr][Ee][Mm][Oo][Tt][Ee]\s+"origin"\]$/.test(line);
      continue;
    }
    if (!inOrigin) continue;
    const m = /^url\s*=\s*(.*)$/i.exec(line);
    if (!m) continue;
    const value = m[1] ?? '';
    if (!/^[^\s"'#;\\]+$/.test(value)) return undefined;
    urls.push(value);
  }
  return urls.length === 1 ? urls[0] : undefined;
}

/**
 * A remote's url as host/path: `git@github.com:acme/api.git`, `https://user@github.com/acme/api`
 * and `ssh://git@github.com:22/acme/api.git` are all `github.com/acme/api`. Undefined when what
 * is left is not a project name.
 */
export function nameFromUrl(url: string): string | undefined {
  let s = url.trim();
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(s);
  if (scheme) s = s.slice(scheme[0].length);
  else if (/^[^/:]+:/.test(s))
    s = s.replace(':', '/'); // scp-like: host:path
  else return undefined; // a local path: no host to name it by
  s = s.replace(/^[^@/]*@/, ''); // user (and password)
  s = s.replace(/^([^/:]+):\d+\//, '$1/'); // port
  s = s.replace(/^([^/:]+):/, '$1/');
  s = s.replace(/\/+$/, '').replace(/\.git$/, '');
  const [host = '', ...rest] = s.split('/');
  const name = [host.toLowerCase(), ...rest].join('/');
  try {
    return checkProjectName(name);
  } catch {
    return undefined;
  }
}

/** The name for a file sealed from FILE (see the top of this file); undefined when none fits. */
export function defaultProjectName(file: string): string | undefined {
  const dir = path.dirname(path.resolve(file));
  const repo = repositoryOf(dir);
  if (repo?.config) {
    let text: string | undefined;
    try {
      text = fs.readFileSync(repo.config, 'utf8');
    } catch {
      text = undefined;
    }
    const url = text === undefined ? undefined : originUrl(text);
    const byUrl = url === undefined ? undefined : nameFromUrl(url);
    if (byUrl) return byUrl;
  }
  try {
    return checkProjectName(path.basename(repo?.top ?? dir));
  } catch {
    return undefined;
  }
}
