/**
 * The agent's side of the web console: the console server wired to the gate and the unlock
 * window, and the `console` request `keyward console` makes over the socket (docs/PROTOCOL.md):
 * - url: where the console listens (also in status);
 * - credentials: the WebAuthn credentials registered in the vault (no public key bytes);
 * - rename / revoke: change one, with the passphrase in raw (a credential is an approval factor:
 *   changing the set takes the factor the vault itself is opened with).
 */
import type { AuditRecord } from '../audit/index.js';
import type { Loaded } from '../policy/index.js';
import {
  changeCredential,
  checkCredentialName,
  ConsoleServer,
  describeCredentials,
  findCredential,
  readCredentials,
  type PinView,
} from '../console/index.js';
import { newTotp } from '../approval/index.js';
import { KeywardError } from '../errors.js';
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import {
  checkKey,
  oidcLogin,
  oidcVerifier,
  type OidcLogin,
  type PolicyOidc,
  readKeys,
  type OidcVerifier,
  type OperatorIdentity,
} from '../operators/index.js';
import type { Gate } from './gate.js';
import { liveIn } from './operator-desk.js';
import { actorOf } from './identity.js';
import {
  INSTRUCTIONS,
  pinnedEntry,
  readPinRecord,
  trustWaiting,
  waitingEntry,
  waitingNames,
  writePinRecord,
} from './mcp-pins.js';
import type { Peer } from './peer.js';
import { str, type Frame } from './protocol.js';
import type { Reply } from './release.js';
import type { UnlockWindow } from './unlock.js';

export interface ConsoleLinkHost {
  home: string;
  window: UnlockWindow;
  gate: () => Gate;
  record(r: AuditRecord): Promise<unknown>;
}

export function makeConsole(h: ConsoleLinkHost): ConsoleServer {
  return new ConsoleServer({
    home: h.home,
    vault: () => h.window.unlocked(),
    write: (fn) => h.window.write(fn),
    policy: () => policyNow(h),
    pending: () => h.gate().pending(),
    onPendingChange: (fn) => h.gate().onPendingChange(fn),
    approve: (id, factor) => h.gate().approveWith(id, undefined, factor, 'console'),
    deny: (id) => void h.gate().deny(id, 'console'),
    record: (r) => h.record(r),
    noteDenial: () => h.gate().noteDenial(),
    pins: () => pinViews(h),
    trustPin: (server, tool, sha256, passphrase) => trustPin(h, server, tool, sha256, passphrase),
    enrollTotp: (passphrase) => enrollTotp(h, passphrase),
    operatorByToken: tokenOperators(h),
    oidcLogin: signIns(h),
    operatorByKey: (key) => checkKey(h.window.unlocked(), key),
    operatorLive: (op) => liveIn(h.window, op),
    hasOperators: () =>
      h.window.loaded?.policy.operators?.oidc !== undefined ||
      readKeys(h.window.unlocked()).length > 0,
    operatorDeny: (id, op) => h.gate().desk.deny(id, op),
  });
}

/** The policy in force and the issuer it trusts; OPERATOR_REFUSED when it names none. */
function oidcInForce(h: ConsoleLinkHost): { loaded: Loaded; oidc: PolicyOidc } {
  const loaded = policyNow(h);
  const oidc = loaded?.policy.operators?.oidc;
  if (!loaded || !oidc)
    throw new KeywardError('OPERATOR_REFUSED', 'the policy in force names no identity provider', {
      hint: 'operators.oidc in policy.yaml (docs/OPERATORS.md)',
    });
  return { loaded, oidc };
}

/** The console's sign-in with the issuer the policy in force names, kept while that policy is. */
function signIns(h: ConsoleLinkHost): (redirectUri: string) => Promise<OidcLogin> {
  let held: { key: string; login: Promise<OidcLogin> } | undefined;
  return async (redirectUri) => {
    const { loaded, oidc } = oidcInForce(h);
    const key = `${loaded.sha256} ${redirectUri}`;
    if (held?.key !== key) held = { key, login: oidcLogin(oidc, redirectUri) };
    return held.login;
  };
}

/**
 * The operator an OIDC token names, by the issuer the policy in force trusts; the verifier (and
 * its cache of the issuer's keys) lives while that policy is in force. The logins it remembers
 * against replay live as long as the agent: a policy change must not let a used token open a
 * second session, and a token issued before the agent started is refused (the agent can't
 * know whether it opened one then).
 */
function tokenOperators(h: ConsoleLinkHost): (token: string) => Promise<OperatorIdentity> {
  let held: { sha256: string; v: Promise<OidcVerifier> } | undefined;
  const remembered = { used: new Map<string, number>(), rememberedSince: performance.timeOrigin };
  return async (token) => {
    const { loaded, oidc } = oidcInForce(h);
    if (held?.sha256 !== loaded.sha256)
      held = { sha256: loaded.sha256, v: oidcVerifier(oidc, remembered) };
    return (await held.v).verifyOnce(token);
  };
}

/**
 * The policy in force, read again if it changed on disk since the last request (a console
 * request is not a release: nothing else would have looked), or undefined while locked.
 */
function policyNow(h: ConsoleLinkHost): Loaded | undefined {
  if (h.window.isOpen) h.window.currentPolicy(h.window.unlocked());
  return h.window.loaded;
}

/** The passphrase, checked against the open vault; a wrong one counts as a denial. */
async function checkPassphrase(h: ConsoleLinkHost, passphrase: SecureBuffer): Promise<void> {
  try {
    if (!(await h.window.unlocked().checkPassphraseAsync(passphrase))) {
      h.gate().noteDenial();
      throw new KeywardError('VAULT_BAD_PASSPHRASE', 'wrong passphrase');
    }
  } finally {
    secureFree(passphrase);
  }
}

async function pinViews(h: ConsoleLinkHost): Promise<PinView[]> {
  const record = readPinRecord(h.window.unlocked());
  // The definitions file and the diff live with the gateway (loaded on first use).
  const { loadDefinitions, definitionOf, wordDiffParts } = await import('../mcp/index.js');
  const file = loadDefinitions(h.home);
  return Object.entries(record.servers)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([server, sp]) => ({
      server,
      pinned: [
        ...(sp.instructions ? [[INSTRUCTIONS, sp.instructions] as const] : []),
        ...Object.entries(sp.tools).sort(([a], [b]) => a.localeCompare(b)),
      ].map(([tool, pin]) => ({ tool, sha256: pin.sha256, at: pin.at })),
      waiting: waitingNames(sp).flatMap((tool) => {
        const seen = waitingEntry(sp, tool);
        if (!seen) return [];
        const was = pinnedEntry(sp, tool);
        const after = definitionOf(file, server, seen.sha256);
        const before = was ? definitionOf(file, server, was.sha256) : undefined;
        return [
          {
            tool,
            sha256: seen.sha256,
            at: seen.at,
            diff: after === undefined ? null : wordDiffParts(before ?? '', after),
          },
        ];
      }),
    }));
}

async function trustPin(
  h: ConsoleLinkHost,
  server: string,
  tool: string,
  sha256: string,
  passphrase: SecureBuffer,
): Promise<void> {
  await checkPassphrase(h, passphrase);
  const done = await h.window.write((v) => {
    const record = readPinRecord(v);
    const d = trustWaiting(record, server, tool, new Map([[tool, sha256]]));
    writePinRecord(v, record);
    return { result: d, save: true };
  });
  for (const [n, pin] of done)
    await h.record({
      type: 'mcp.call',
      target: server,
      decision: 'info',
      reason: `trusted ${n}`,
      details: { server, tool: n, event: 'trusted', hash: pin.sha256, via: 'console' },
    });
}

async function enrollTotp(h: ConsoleLinkHost, passphrase: SecureBuffer): Promise<SecureBuffer> {
  await checkPassphrase(h, passphrase);
  await h.record({ type: 'totp.enrolled', decision: 'info', details: { via: 'console' } });
  const uri = await h.window.write((v) => ({
    result: newTotp(v, `vault-${v.id.slice(0, 8)}`),
    save: true,
  }));
  // The URI alone: the page draws its QR code (a QR library here copied it into the heap).
  return uri;
}

export async function consoleRequest(h: ConsoleLinkHost, asker: Peer, f: Frame): Promise<Reply> {
  const op = str(f.meta, 'op');
  try {
    const v = h.window.unlocked();
    if (op === 'credentials')
      return { meta: { credentials: describeCredentials(readCredentials(v)) } };
    if (op !== 'rename' && op !== 'revoke')
      throw new KeywardError('USAGE', `unknown console request ${String(op)}`);
    const id = str(f.meta, 'id') ?? '';
    const name = op === 'rename' ? checkCredentialName(f.meta['name']) : '';
    findCredential(readCredentials(v), id);
    if (!f.raw || f.raw.length === 0)
      throw new KeywardError('USAGE', `to ${op} a credential, give the passphrase`);
    await checkPassphrase(h, f.raw);
    const r = await changeCredential((fn) => h.window.write(fn), id, op, name);
    await h.record({ ...r, actor: actorOf(asker.id), details: { ...r.details, via: 'cli' } });
    return { meta: { [op === 'rename' ? 'renamed' : 'revoked']: id } };
  } finally {
    secureFree(f.raw);
  }
}
