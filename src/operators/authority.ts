/**
 * Which operator may approve which request (docs/OPERATORS.md, "Who may approve what"): a group
 * the operator is in must be one the rule names (approve.groups) and, where the policy has a
 * group_policy_map, one the map gives that rule; the machine's own user (operators.self) never
 * approves its own user's requests unless the rule says allow_self.
 */
import picomatch from 'picomatch';
import type { OperatorIdentity } from './types.js';

/** What a rule asks of its operators (policy's approve section, mode operator). */
export interface OperatorNeed {
  groups: readonly string[];
  count: number;
  allowSelf: boolean;
}

/** policy.yaml's operators section, as far as deciding needs it. */
export interface OperatorRules {
  group_policy_map?: Record<string, string[]> | undefined;
  self: readonly string[];
}

export type Authority = { groups: string[] } | { refused: string };

const list = (xs: readonly string[]) =>
  xs.length === 0 ? '(none)' : xs.slice(0, 8).join(', ') + (xs.length > 8 ? ', ...' : '');

/** The operator's groups that let it approve a request of rule `rule`, or why none does. */
export function authorityOf(
  op: OperatorIdentity,
  rule: string,
  need: OperatorNeed,
  rules: OperatorRules | undefined,
): Authority {
  if (!need.allowSelf && (rules?.self ?? []).includes(op.id))
    return {
      refused: `operator ${op.id} is this machine's own user (operators.self), and rule ${rule} does not allow_self`,
    };
  let groups = op.groups.filter((g) => need.groups.includes(g));
  if (groups.length === 0)
    return {
      refused: `operator ${op.id} is in none of the groups rule ${rule} asks for (${list(need.groups)}); its groups: ${list(op.groups)}`,
    };
  const map = rules?.group_policy_map;
  if (map) {
    groups = groups.filter((g) =>
      (Object.hasOwn(map, g) ? (map[g] ?? []) : []).some((p) =>
        picomatch(p, { nonegate: true, noextglob: true })(rule),
      ),
    );
    if (groups.length === 0)
      return {
        refused: `group_policy_map gives none of operator ${op.id}'s groups the rule ${rule}`,
      };
  }
  return { groups };
}
