/**
 * `keyward doctor`: checks of the host that decide how safe keyward can be here. Each check says
 * what it found and what to do; a `fail` means keyward itself would refuse to run.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { coreLimit, ENOPROTOOPT, peerPidfdProbe } from '../lib/libc.js';
import { permissionProblem } from '../lib/files.js';
import { yamaPtraceScope } from '../lib/process.js';
import { printable } from '../lib/text.js';
import { askpassProblem } from '../approval/index.js';
import { vaultPaths } from '../vault/index.js';

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface Check {
  id: string;
  status: CheckStatus;
  message: string;
  hint?: string;
}

function readProc(p: string): string | undefined {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return undefined;
  }
}

function privateCheck(id: string, p: string, kind: 'dir' | 'file'): Check {
  if (!fs.existsSync(p)) return { id, status: 'ok', message: `${p} does not exist yet` };
  const problem = permissionProblem(p, kind);
  if (problem === undefined) return { id, status: 'ok', message: `${p} is private to you` };
  return {
    id,
    status: 'fail',
    message: `${p}: ${problem}`,
    hint: `chmod ${kind === 'dir' ? '700' : '600'} '${p}' if the change was yours`,
  };
}

function leftoverTemps(home: string): Check {
  let names: string[] = [];
  try {
    names = fs.readdirSync(home).filter((n) => n.includes('.tmp-'));
  } catch {
    // no home yet
  }
  return names.length === 0
    ? { id: 'temp-files', status: 'ok', message: 'no interrupted writes left behind' }
    : {
        id: 'temp-files',
        status: 'warn',
        message: `${names.length} temp file(s) from an interrupted write in ${home}`,
        hint: 'the next write removes them (they hold only ciphertext)',
      };
}

function coreDumps(): Check[] {
  const { hard } = coreLimit();
  const pattern = readProc('/proc/sys/kernel/core_pattern')?.trim() ?? '';
  const checks: Check[] = [
    {
      id: 'core-limit',
      status: hard === 0n ? 'ok' : 'warn',
      message:
        hard === 0n
          ? 'core dumps are off (hard limit 0)'
          : 'core dumps are allowed by the shell limit; keyward turns them off for its own processes',
      ...(hard === 0n ? {} : { hint: 'to be thorough: ulimit -c 0 in your shell profile' }),
    },
  ];
  if (pattern.startsWith('|')) {
    checks.push({
      id: 'core-pattern',
      status: 'warn',
      message: `crash dumps go to a handler (${pattern.split(' ')[0]}); keyward's processes are non-dumpable`,
    });
  }
  return checks;
}

function ptrace(): Check {
  const scope = yamaPtraceScope();
  if (scope === undefined) {
    return {
      id: 'ptrace-scope',
      status: 'warn',
      message:
        'the kernel has no Yama ptrace restriction: same-user processes may debug each other',
      hint: 'keyward makes its processes non-dumpable, which closes ptrace and /proc/PID/mem to them',
    };
  }
  return scope === '0'
    ? {
        id: 'ptrace-scope',
        status: 'warn',
        message: 'kernel.yama.ptrace_scope is 0: any process of yours may debug any other',
        hint: 'sysctl kernel.yama.ptrace_scope=1',
      }
    : { id: 'ptrace-scope', status: 'ok', message: `kernel.yama.ptrace_scope is ${scope}` };
}

/**
 * Unprivileged user namespaces give every process of the user CAP_CHECKPOINT_RESTORE in a
 * namespace of its own, enough for prctl(PR_SET_MM_MAP) to make its /proc/PID/exe name any
 * program without running it: rules on `exe`, `exe_sha256` and `ancestor` are then evidence, not
 * proof (docs/THREAT-MODEL.md, "Not protected").
 */
function userNamespaces(): Check {
  const max = readProc('/proc/sys/user/max_user_namespaces')?.trim();
  const debian = readProc('/proc/sys/kernel/unprivileged_userns_clone')?.trim();
  const apparmor = readProc('/proc/sys/kernel/apparmor_restrict_unprivileged_userns')?.trim();
  if (max === '0' || debian === '0' || apparmor === '1')
    return {
      id: 'user-namespaces',
      status: 'ok',
      message: 'unprivileged user namespaces are off or restricted',
    };
  return {
    id: 'user-namespaces',
    status: 'warn',
    message:
      'unprivileged user namespaces are on: any process of yours can make its executable look like another program (exe, exe_sha256 and ancestor rules are evidence, not proof)',
    hint: 'ask a person (decision: approve) for what matters; or sysctl user.max_user_namespaces=0 (rootless containers and some sandboxes need them)',
  };
}

/**
 * SO_PEERPIDFD (Linux 6.5) lets the agent pin the process that connected. Without it, callers
 * are unpinned: no allow rule on who they are matches them (docs/POLICY.md, "Callers"). Asked of
 * the kernel itself (a socket pair's), not read from its version: a backported option, or a
 * filter that blocks it, is what the agent will meet.
 */
export function peerPidfdCheck(errno = peerPidfdProbe(), release = os.release()): Check {
  const linux = `Linux ${printable(release, 60)}`;
  if (errno === 0)
    return {
      id: 'peer-pidfd',
      status: 'ok',
      message: `${linux} names the process that connects (SO_PEERPIDFD)`,
    };
  if (errno === ENOPROTOOPT)
    return {
      id: 'peer-pidfd',
      status: 'warn',
      message: `${linux} has no SO_PEERPIDFD: the agent can't tell that the process it reads is the one that connected, so rules allow nobody by who they are (exe, exe_sha256, ancestor, cwd, loader_vars) and nothing is remembered`,
      hint: 'Linux 6.5 or later; meanwhile such rules only ask (decision: approve) or deny',
    };
  return {
    id: 'peer-pidfd',
    status: 'fail',
    message: `SO_PEERPIDFD fails here (errno ${errno}) where ${linux} should answer it: the agent refuses every connection whose process it can't pin`,
    hint: 'a seccomp filter or security module around keyward blocks it; run the agent outside it',
  };
}

function tracer(): Check {
  const status = readProc('/proc/self/status') ?? '';
  const m = /^TracerPid:\s*(\d+)/m.exec(status);
  const pid = m?.[1] ?? '0';
  return pid === '0'
    ? { id: 'debugger', status: 'ok', message: 'no debugger attached' }
    : { id: 'debugger', status: 'fail', message: `a debugger (pid ${pid}) is attached to keyward` };
}

function passphraseFile(env: NodeJS.ProcessEnv): Check[] {
  const f = env['KEYWARD_PASSPHRASE_FILE'];
  if (f === undefined || f === '') return [];
  const c = privateCheck('passphrase-file', path.resolve(f), 'file');
  return [
    c.status === 'ok'
      ? {
          ...c,
          status: 'warn',
          message: `${c.message}; the vault is only as safe as this file, and any process that can read it can answer a passphrase approval`,
          hint: 'prefer typing the passphrase, or the OS keyring; use mode: totp or webauthn for rules that matter',
        }
      : c,
  ];
}

export function runDoctor(home: string, env: NodeJS.ProcessEnv = process.env): Check[] {
  const p = vaultPaths(home);
  return [
    privateCheck('home-permissions', p.home, 'dir'),
    privateCheck('vault-permissions', p.file, 'file'),
    leftoverTemps(p.home),
    ...passphraseFile(env),
    ...coreDumps(),
    ptrace(),
    userNamespaces(),
    peerPidfdCheck(),
    tracer(),
  ];
}

/**
 * Whether this process, and the running agent, could be debugged: only possible when they were
 * started with --allow-debugger (bin/keyward.js refuses otherwise), and then a failed check.
 */
export function runtimeChecks(own: readonly string[], agent: unknown): Check[] {
  const checks: Check[] = [
    own.length === 0
      ? { id: 'runtime', status: 'ok', message: 'no inspector or code-loading Node option here' }
      : {
          id: 'runtime',
          status: 'fail',
          message: `this keyward process can be debugged (--allow-debugger): ${own.join('; ')}`,
          hint: 'unset NODE_OPTIONS and run without --allow-debugger',
        },
  ];
  if (Array.isArray(agent)) {
    checks.push(
      agent.length === 0
        ? { id: 'agent-runtime', status: 'ok', message: 'the agent runs without a debugger' }
        : {
            id: 'agent-runtime',
            status: 'fail',
            message: `the agent can be debugged (started with --allow-debugger): ${agent.map((a) => printable(String(a), 300)).join('; ')}`,
            hint: 'keyward agent stop, then keyward agent start from a clean shell',
          },
    );
  }
  return checks;
}

/**
 * Whether the policy files match the applied policy, as the unlocked agent (which reads the
 * vault) sees them. Drift is a warning: the applied policy is in force either way, but someone
 * changed the files (or an edit was never applied).
 */
export function policyChecks(agentPolicy: unknown): Check[] {
  if (agentPolicy === null || typeof agentPolicy !== 'object') return [];
  const drift = (agentPolicy as { drift?: unknown }).drift;
  if (!Array.isArray(drift)) return [];
  return [
    drift.length === 0
      ? { id: 'policy', status: 'ok', message: 'the policy files match the applied policy' }
      : {
          id: 'policy',
          status: 'warn',
          message: `the policy files differ from the applied policy, which stays in force: ${drift.map((d) => printable(String(d))).join('; ')}`,
          hint: 'find out who changed them; keyward policy show --verify prints what is in force',
        },
  ];
}

/**
 * How a person can approve: the askpass program this environment names (one that can't be run
 * fails, as `agent start` would refuse it) and, with an agent running, its console.
 */
export function approvalChecks(
  env: NodeJS.ProcessEnv,
  agent: Record<string, unknown> | undefined,
): Check[] {
  const name = env['KEYWARD_ASKPASS'] ? 'KEYWARD_ASKPASS' : 'SSH_ASKPASS';
  const program = env[name] || undefined;
  const checks: Check[] = [];
  if (program !== undefined) {
    const problem = askpassProblem(program, env['PATH']);
    checks.push(
      problem === undefined
        ? { id: 'askpass', status: 'ok', message: `${name}=${printable(program)} can be run` }
        : {
            id: 'askpass',
            status: 'fail',
            message: `${name}=${printable(program)}: ${problem}; agent start refuses it`,
            hint: `install it, point ${name} at an approval program, or unset it and approve in the console`,
          },
    );
  }
  if (agent) {
    // What the agent says is shown printable: a process posing as the agent can't reach the
    // terminal with an escape sequence.
    const url = typeof agent['console'] === 'string' ? printable(agent['console']) : undefined;
    checks.push(
      url
        ? { id: 'console', status: 'ok', message: `the agent's console: ${url}` }
        : {
            id: 'console',
            status: 'warn',
            message: 'the agent runs without its console (--no-console)',
            hint: 'without an askpass program or terminal, confirm requests are then denied at once',
          },
    );
  }
  return checks;
}
