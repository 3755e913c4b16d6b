/**
 * `keyward completion bash|zsh|fish`: shell completion for commands, subcommands and options,
 * generated from the same command tree `--help` prints, so the two can't disagree. Secret and
 * key names are not completed: listing them would open the vault or ask the agent.
 */
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import type { Io } from './report.js';

interface Node {
  /** Words from the program to here, e.g. "secret set" ("" for the program). */
  path: string;
  subcommands: string[];
  options: string[];
  /** Options that take a value (their argument completes as a file name). */
  valued: string[];
  description: string;
}

/** Every command of the tree, depth first (aliases and the implicit help command left out). */
export function commandTree(program: Command): Node[] {
  const out: Node[] = [];
  const walk = (c: Command, path: string) => {
    const options = c.options.flatMap((o) => [o.long, o.short].filter((f): f is string => !!f));
    const valued = c.options
      .filter((o) => o.required || o.optional)
      .flatMap((o) => [o.long, o.short].filter((f): f is string => !!f));
    const subs = c.commands.filter((s) => s.name() !== 'help');
    out.push({
      path,
      subcommands: subs.map((s) => s.name()),
      options: [...options, '--help'],
      valued,
      description: c.description(),
    });
    for (const s of subs) walk(s, path ? `${path} ${s.name()}` : s.name());
  };
  walk(program, '');
  return out;
}

/** A word list for a shell script: names and flags only ([A-Za-z0-9-]), so nothing to quote. */
function words(list: readonly string[]): string {
  for (const w of list) {
    if (!/^[A-Za-z0-9-]+$/.test(w)) throw new Error(`not a completion word: ${w}`);
  }
  return list.join(' ');
}

export function bashCompletion(tree: readonly Node[]): string {
  const cases = (pick: (n: Node) => readonly string[]) =>
    tree.map((n) => `    "${n.path}") echo "${words(pick(n))}" ;;`).join('\n');
  return `# keyward completion for bash (keyward completion bash); generated from keyward's commands.
# Load it with:  source <(keyward completion bash)
_keyward_subcommands() {
  case "$1" in
${cases((n) => n.subcommands)}
  esac
}
_keyward_options() {
  case "$1" in
${cases((n) => n.options)}
  esac
}
_keyward_valued() {
  case "$1" in
${cases((n) => n.valued)}
  esac
}
_keyward() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} path="" w i
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    [[ $w == -* ]] && continue
    if [[ " $(_keyward_subcommands "$path") " == *" $w "* ]]; then path="\${path:+$path }$w"; fi
  done
  if [[ $prev == -* && " $(_keyward_valued "$path") $(_keyward_valued "") " == *" $prev "* ]]; then
    COMPREPLY=($(compgen -f -- "$cur"))
  elif [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$(_keyward_options "$path")" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$(_keyward_subcommands "$path")" -- "$cur"))
  fi
}
complete -o default -F _keyward keyward
`;
}

/** zsh runs the bash function through its bash completion layer. */
export function zshCompletion(tree: readonly Node[]): string {
  return `#compdef keyward
# keyward completion for zsh (keyward completion zsh); generated from keyward's commands.
# Load it with:  source <(keyward completion zsh)
autoload -U +X bashcompinit && bashcompinit
${bashCompletion(tree)}`;
}

export function fishCompletion(tree: readonly Node[]): string {
  const lines = [
    "# keyward completion for fish (keyward completion fish); generated from keyward's commands.",
    '# Load it with:  keyward completion fish | source',
    'complete -c keyward -f',
  ];
  const quoteFish = (s: string) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
  for (const n of tree) {
    const at = n.path.split(' ').filter(Boolean);
    // fish sees the words typed so far: at the program, no subcommand yet; deeper, the last one.
    const cond =
      at.length === 0
        ? `'not __fish_seen_subcommand_from ${words(tree[0]?.subcommands ?? [])}'`
        : `'__fish_seen_subcommand_from ${words([at.at(-1) ?? ''])}'`;
    for (const s of n.subcommands) {
      const d = tree.find((x) => x.path === (n.path ? `${n.path} ${s}` : s))?.description ?? '';
      lines.push(`complete -c keyward -n ${cond} -a ${words([s])} -d ${quoteFish(d)}`);
    }
    for (const o of n.options.filter((x) => x.startsWith('--'))) {
      const takes = n.valued.includes(o) ? ' -r -F' : '';
      lines.push(`complete -c keyward -n ${cond} -l ${words([o.slice(2)])}${takes}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

export function registerCompletionCommand(program: Command, io: Io): void {
  program
    .command('completion')
    .argument('<shell>', 'bash, zsh or fish')
    .description('print shell completion for keyward (e.g. source <(keyward completion bash))')
    .action(async (shell: string) => {
      const make = { bash: bashCompletion, zsh: zshCompletion, fish: fishCompletion }[shell];
      if (!make)
        throw new UsageError('USAGE', `no completion for the shell ${shell}`, {
          hint: 'keyward completion bash, zsh or fish',
        });
      // The whole tree, every command group loaded, as `keyward --help` has it.
      const { buildProgram } = await import('./main.js');
      const full = await buildProgram({ stdout: () => undefined, stderr: () => undefined }, []);
      io.stdout(make(commandTree(full)));
    });
}
