/**
 * The SSH agent socket: OpenSSH's agent protocol in front of keyward's keys (docs/PROTOCOL.md,
 * "SSH agent"). Vault keys are loaded into secure memory while the agent is unlocked; keys added
 * with ssh-add live in secure memory only, as with ssh-agent, until removed, expired or locked.
 * Every signature, whichever key, goes through the agent's one path: identity, policy, approval,
 * a durable audit record, then the signature.
 */
import type net from 'node:net';
import type { Actor, AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import {
  loadKey,
  SigningKey,
  SshReader,
  sshString,
  typeLabel,
  u32,
  vaultKeyNames,
} from '../keys/index.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import { quote } from '../lib/text.js';
import type { Vault } from '../vault/index.js';
import type { ProcessIdentity } from './identity.js';
import { closePeer, type Peer } from './peer.js';
import { certifiedType, readCertifiedKey } from './ssh-cert.js';
import { describeSignData, message, SSH } from './ssh.js';
import { armExpiry, capTo, keyOf, readConstraints, type Held } from './ssh-held.js';
import { confirmReason, SESSION_BIND, SessionBindings } from './ssh-bind.js';
import { serveSshConnection } from './ssh-conn.js';

/** Keys ssh-add may hold at once: each is guarded secure memory. */
const MAX_ADDED_KEYS = 256;

type Who = Peer;

/** What the agent lends the SSH service: its one authorization path and its state. */
export interface SshHost {
  peer(socket: net.Socket): Who | undefined;
  /** The open vault (re-read when it changed); throws AGENT_LOCKED when locked. */
  vault(): Vault;
  isUnlocked(): boolean;
  /** Whether v is still the open vault: no lock, and no new unlock, since it was taken. */
  stillOpen(v: Vault): boolean;
  /** Changes whenever the agent locks, unlocks or re-reads the vault. */
  generation(): number;
  /** fresh: read the policy in force again first (else the one the last request read). */
  limits(fresh?: boolean): { maxSignatures: number | undefined; keyLifetimeMs: number | undefined };
  authorize(
    who: Who,
    req: { target: string; what: string; grantScope: string; confirmEachUse: string | undefined },
  ): Promise<{ rule: string | undefined }>;
  record(r: AuditRecord): Promise<unknown>;
  actor(id: ProcessIdentity): Actor;
  /** Takes a use of the unlock window (false: its max_uses are spent). */
  take(): boolean;
  counted(): void;
  lock(reason: string, by: ProcessIdentity): Promise<void>;
  /** Unlocks with the vault passphrase; throws when it is wrong. */
  unlock(passphrase: SecureBuffer, by: ProcessIdentity): Promise<void>;
}

/** What a connection of ssh's that bound no session may not ask (ssh-bind.ts). */
const RELAY_REFUSED = new Set<number>([SSH.REMOVE_IDENTITY, SSH.REMOVE_ALL_IDENTITIES, SSH.UNLOCK]);

/** What a connection that serves a forwarded agent may not ask (ssh-bind.ts). */
const FORWARDED_REFUSED = new Set<number>([
  SSH.ADD_IDENTITY,
  SSH.ADD_ID_CONSTRAINED,
  SSH.REMOVE_IDENTITY,
  SSH.REMOVE_ALL_IDENTITIES,
  SSH.UNLOCK,
]);

export class SshAgentService {
  private readonly added = new Map<string, Held>();
  private vaultKeys = new Map<string, Held>();
  private vaultGeneration = -1;
  private signatures = 0;
  private readonly sockets = new Set<net.Socket>();
  private readonly bindings = new SessionBindings();

  constructor(private readonly host: SshHost) {}

  accept(socket: net.Socket): void {
    const who = this.host.peer(socket);
    if (!who) return;
    this.sockets.add(socket);
    serveSshConnection(
      socket,
      who,
      (msg) => this.handle(who, msg),
      () => {
        this.sockets.delete(socket);
        closePeer(who);
      },
    );
  }

  /** Closes every connection (stop). */
  closeAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  /** Wipes every key held in memory (lock, stop). */
  wipeAll(): void {
    for (const h of this.added.values()) this.drop(h);
    this.added.clear();
    for (const h of this.vaultKeys.values()) h.key.wipe();
    this.vaultKeys.clear();
    this.vaultGeneration = -1;
    this.signatures = 0;
  }

  private drop(h: Held): void {
    clearTimeout(h.timer);
    h.key.wipe();
  }

  /** The vault's keys in secure memory, loaded once per unlock (and again when the vault changes). */
  private loadedVaultKeys(): Map<string, Held> {
    const v = this.host.vault();
    if (this.vaultGeneration !== this.host.generation()) {
      for (const h of this.vaultKeys.values()) h.key.wipe();
      this.vaultKeys = new Map();
      for (const name of vaultKeyNames(v)) {
        const key = loadKey(v, name);
        if (!key) continue;
        // Held for the unlock: an ECDSA key is parsed once, into OpenSSL's secure heap.
        key.holdParsed();
        this.vaultKeys.set(keyOf(key.publicBlob), {
          key,
          comment: name,
          target: name,
          source: 'vault',
          confirm: false,
        });
      }
      this.vaultGeneration = this.host.generation();
      // A key ssh-added and then put into the vault is the vault's now: its policy decides, not
      // the ssh-add one's (an added key was looked up first). So is a certificate of it, which
      // signs with the same key: listed under ssh-add, it goes (ssh-add lists it again, as the
      // vault's key). A certificate listed as a vault key's goes when that key leaves the vault.
      for (const [id, h] of [...this.added]) {
        const v = this.vaultKeys.get(keyOf(h.key.publicBlob));
        if (v ? h.source !== 'vault' || h.target !== v.target : h.source === 'vault') {
          this.drop(h);
          this.added.delete(id);
        }
      }
    }
    return this.vaultKeys;
  }

  private identities(): Held[] {
    if (!this.host.isUnlocked()) return [];
    return [...this.loadedVaultKeys().values(), ...this.live()];
  }

  /**
   * Whether an added key's lifetime is not over by the wall clock (its timer runs on the
   * monotonic clock, which stands still while the machine sleeps); one that is over ends now.
   */
  private alive(id: string, h: Held): boolean {
    if (h.expiresAt === undefined || Date.now() < h.expiresAt) return true;
    void this.expire(id, h);
    return false;
  }

  /** The added keys still alive. */
  private live(): Held[] {
    return [...this.added].filter(([id, h]) => this.alive(id, h)).map(([, h]) => h);
  }

  private async handle(who: Who, msg: SecureBuffer): Promise<Buffer> {
    const r = new SshReader(msg);
    const type = r.byte();
    // A far host, through an agent forwarded to it, changes nothing here: it neither adds nor
    // removes keys, nor tries the vault's passphrase (ssh-bind.ts). Locking stays anyone's.
    if (FORWARDED_REFUSED.has(type) && this.bindings.forwardedTo(who) !== undefined)
      return message(SSH.FAILURE);
    // ssh removes no key and unlocks nothing for itself: a connection of ssh's that bound no
    // session relays another's (ssh -R). It may add (AddKeysToAgent connects without a bind).
    if (RELAY_REFUSED.has(type) && this.bindings.unboundSsh(who)) return message(SSH.FAILURE);
    switch (type) {
      case SSH.REQUEST_IDENTITIES: {
        // A locked agent, like a locked ssh-agent, has no identities to show.
        const ids = this.identities();
        return message(
          SSH.IDENTITIES_ANSWER,
          u32(ids.length),
          ...ids.map((h) =>
            Buffer.concat([sshString(h.blob ?? h.key.publicBlob), sshString(h.comment)]),
          ),
        );
      }
      case SSH.SIGN_REQUEST:
        return this.sign(who, r);
      case SSH.ADD_IDENTITY:
      case SSH.ADD_ID_CONSTRAINED:
        return this.add(who, r, type === SSH.ADD_ID_CONSTRAINED);
      case SSH.REMOVE_IDENTITY:
        return this.remove(who, r.string());
      case SSH.REMOVE_ALL_IDENTITIES: {
        const n = this.added.size;
        for (const h of this.added.values()) this.drop(h);
        this.added.clear();
        await this.host.record({
          type: 'key.remove',
          decision: 'info',
          target: 'ssh-add:*',
          actor: this.host.actor(who.id),
          details: { source: 'ssh-add', removed: n, reason: 'ssh-add -D' },
        });
        return message(SSH.SUCCESS);
      }
      case SSH.LOCK: {
        if (!this.host.isUnlocked()) return message(SSH.FAILURE);
        // The lock password is not kept: keyward's lock wipes keys, and unlocking takes the
        // vault passphrase.
        await this.host.lock('ssh-add -x', who.id);
        return message(SSH.SUCCESS);
      }
      case SSH.UNLOCK: {
        if (this.host.isUnlocked()) return message(SSH.FAILURE);
        const given = r.string();
        const pass = secureAlloc(given.length);
        pass.set(given);
        try {
          await this.host.unlock(pass, who.id);
          return message(SSH.SUCCESS);
        } catch {
          return message(SSH.FAILURE);
        } finally {
          secureFree(pass);
        }
      }
      case SSH.EXTENSION: {
        const name = r.text();
        // "query" lists the extensions an agent supports: SUCCESS, then one string per name to
        // the end of the message, with no count (draft-miller-ssh-agent, "query"; asyncssh and
        // paramiko read it so; a count before the names read as a string of length 1 to them).
        if (name === 'query')
          return message(SSH.SUCCESS, sshString('query'), sshString(SESSION_BIND));
        if (name === SESSION_BIND)
          return message(this.bindings.bind(who, r) ? SSH.SUCCESS : SSH.FAILURE);
        return message(SSH.FAILURE);
      }
      default:
        // Smartcard requests and anything unknown.
        return message(SSH.FAILURE);
    }
  }

  private async add(who: Who, r: SshReader, constrained: boolean): Promise<Buffer> {
    if (!this.host.isUnlocked()) return message(SSH.FAILURE);
    // The window the key is added to: a lock (which wipes every added key) and a new unlock
    // while this waits must not carry the key into the new window.
    const window = this.host.vault();
    // A certificate (ssh-add sends KEY-cert.pub after KEY) is listed under its own blob.
    const cert = certifiedType(r.peekText()) ? readCertifiedKey(r.text(), r) : undefined;
    const key = cert?.key ?? SigningKey.read(r);
    const blob = cert?.blob ?? key.publicBlob;
    let held: Held | undefined;
    try {
      const comment = r.text();
      const { lifetimeS, confirm } = readConstraints(r, constrained);
      const id = keyOf(blob);
      // By the key, whatever it is listed as: a certificate signs with the key it certifies.
      const keyId = keyOf(key.publicBlob);
      const vaultKey = this.loadedVaultKeys().get(keyId);
      if (vaultKey && !cert) throw new KeywardError('USAGE', 'the key is in the vault');
      const full = () => !this.added.has(id) && this.added.size >= MAX_ADDED_KEYS;
      if (full()) throw new KeywardError('USAGE', 'too many keys added');
      await key.selfTestAsync();
      const cap = this.host.limits(true).keyLifetimeMs;
      const lifetimeMs = Math.min(
        lifetimeS === undefined || lifetimeS === 0 ? Infinity : lifetimeS * 1000,
        cap ?? Infinity,
      );
      // A certificate of a vault key is that key's, to its policy and in its prompts.
      held = {
        key,
        ...(cert ? { blob } : {}),
        comment: vaultKey ? vaultKey.comment : comment,
        target: vaultKey ? vaultKey.target : `ssh-add:${comment}`,
        source: vaultKey ? 'vault' : 'ssh-add',
        confirm,
        addedAt: Date.now(),
        ...(Number.isFinite(lifetimeMs) ? { expiresAt: Date.now() + lifetimeMs } : {}),
      };
      await this.host.record({
        type: 'key.add',
        decision: 'allow',
        target: held.target,
        actor: this.host.actor(who.id),
        details: {
          source: 'ssh-add',
          keyType: key.type,
          fingerprint: key.fingerprint,
          certificate: cert !== undefined,
          confirm,
          lifetimeS: Number.isFinite(lifetimeMs) ? Math.round(lifetimeMs / 1000) : null,
        },
      });
      if (!this.host.stillOpen(window)) throw new KeywardError('AGENT_LOCKED', 'locked meanwhile');
      // Checked again: adds that waited together above can't all pass the check made before.
      if (full()) throw new KeywardError('USAGE', 'too many keys added');
      // The vault may have changed meanwhile (the key imported, or removed): checked again.
      if (this.loadedVaultKeys().get(keyId)?.target !== vaultKey?.target)
        throw new KeywardError('USAGE', 'the vault changed meanwhile: add the key again');
      // A policy loaded while the record was written capped the keys listed then, not this one.
      capTo(held, this.host.limits().keyLifetimeMs);
      const old = this.added.get(id);
      if (old) this.drop(old);
      key.holdParsed();
      this.added.set(id, held);
      // Once listed: a lifetime already over ends it at once (expire finds it).
      const h = held;
      if (h.expiresAt !== undefined) armExpiry(h, () => void this.expire(id, h));
      return message(SSH.SUCCESS);
    } catch (e) {
      if (!held || this.added.get(keyOf(blob)) !== held) key.wipe();
      throw e;
    }
  }

  /** A policy's key_lifetime, applied to the keys added before it: none outlives it. */
  capLifetimes(capMs: number | undefined): void {
    for (const [id, h] of this.added)
      if (capTo(h, capMs)) armExpiry(h, () => void this.expire(id, h));
  }

  private async expire(id: string, h: Held): Promise<void> {
    if (this.added.get(id) !== h) return;
    this.added.delete(id);
    this.drop(h);
    await this.host
      .record({
        type: 'key.remove',
        decision: 'info',
        target: h.target,
        details: { source: 'ssh-add', fingerprint: h.key.fingerprint, reason: 'lifetime expired' },
      })
      .catch(() => undefined);
  }

  private async remove(who: Who, blob: Buffer): Promise<Buffer> {
    const id = keyOf(blob);
    const h = this.added.get(id);
    // Vault keys are not deleted from a socket any same-user process can reach: that takes
    // `keyward key rm` and the passphrase.
    if (!h) return message(SSH.FAILURE);
    const fingerprint = h.key.fingerprint;
    this.added.delete(id);
    this.drop(h);
    await this.host.record({
      type: 'key.remove',
      decision: 'info',
      target: h.target,
      actor: this.host.actor(who.id),
      details: { source: 'ssh-add', fingerprint, reason: 'ssh-add -d' },
    });
    return message(SSH.SUCCESS);
  }

  private async sign(who: Who, r: SshReader): Promise<Buffer> {
    const blob = r.string();
    const data = Buffer.from(r.string());
    const flags = r.remaining >= 4 ? r.u32() : 0;
    if (!this.host.isUnlocked()) return message(SSH.FAILURE);
    const id = keyOf(blob);
    // The vault's keys first: loading them drops what became the vault's (a certificate too).
    const vaultKeys = this.loadedVaultKeys();
    const added = this.added.get(id);
    const held = vaultKeys.get(id) ?? (added && this.alive(id, added) ? added : undefined);
    if (!held) return message(SSH.FAILURE);
    const alg = held.key.algorithm(flags);
    const what = describeSignData(data);
    const fp = held.key.fingerprint;
    const login = what.details['kind'] === 'ssh-login';
    const hostKey = what.details['hostKey'];
    const relayed = this.bindings.relayed(
      who,
      login ? data.subarray(4, 4 + data.readUInt32BE(0)) : undefined,
      login && typeof hostKey === 'string' ? hostKey : undefined,
    );
    const forwardedTo = this.bindings.forwardedTo(who);
    // An ssh-add comment is whatever the caller sent: quoted, like every caller-controlled part.
    const label = `${held.source === 'vault' ? 'the key' : 'the ssh-add key'} ${quote(held.comment)} (${typeLabel(held.key.type)} ${fp})`;
    if (alg === undefined) {
      await this.host.record({
        type: 'key.sign',
        decision: 'deny',
        target: held.target,
        actor: this.host.actor(who.id),
        reason: 'SHA-1 RSA signatures (ssh-rsa) are refused',
      });
      return message(SSH.FAILURE);
    }
    const max = this.host.limits().maxSignatures;
    if (max !== undefined && this.signatures >= max) return message(SSH.FAILURE);
    const { rule } = await this.host.authorize(who, {
      target: held.target,
      what: `sign with ${label}: ${what.text}${relayed === undefined ? '' : `, through ${relayed}`}`,
      // The key is part of what was shown: ssh-added keys share a target when they share a
      // comment (ssh-keygen's default is user@host).
      grantScope: JSON.stringify([fp, what.scope]),
      confirmEachUse: confirmReason(held.confirm, relayed),
    });
    // The key may have been removed, expired or wiped (lock) while a person decided.
    if (held.key.wiped || !this.host.isUnlocked()) return message(SSH.FAILURE);
    // The limits checked again, and taken, in one synchronous step: requests that waited in
    // authorize together can't all pass the check made before it (a policy may have lowered them).
    const maxNow = this.host.limits().maxSignatures;
    if (maxNow !== undefined && this.signatures >= maxNow) return message(SSH.FAILURE);
    // A signature that would be refused a place on the thread pool (too many wait already) is
    // refused here, before it takes a use or records an allow (found in review: a flood took
    // uses, and left allow records for signatures never made). Nothing awaits from here to
    // signAsync's queue for an RSA key, the only kind that queues: the answer holds.
    if (held.key.signingQueueFull) {
      await this.host.record({
        type: 'key.sign',
        decision: 'deny',
        target: held.target,
        actor: this.host.actor(who.id),
        reason: 'too many signatures are waiting',
        details: { algorithm: alg, fingerprint: fp, source: held.source },
      });
      return message(SSH.FAILURE);
    }
    if (!this.host.take()) return message(SSH.FAILURE);
    this.signatures += 1;
    // The record is written at the next turn and fsynced there on this thread while fsyncs are
    // fast (audit/group.ts), else on the thread pool while the signature is computed here; an
    // RSA signature is computed on the thread pool meanwhile (Key.signAsync). The signature
    // leaves only once the record is durable (as a release does).
    const durable = this.host.record({
      target: held.target,
      actor: this.host.actor(who.id),
      type: 'key.sign',
      decision: 'allow',
      details: {
        rule: rule ?? null,
        algorithm: alg,
        fingerprint: fp,
        source: held.source,
        ...what.details,
        ...(forwardedTo === undefined ? {} : { forwardedTo }),
        ...(relayed !== undefined && forwardedTo === undefined ? { relayed: true } : {}),
      },
    });
    // Handled from the start: a failed write must reach the await below, not crash the agent as
    // an unhandled rejection while the signature is computed.
    durable.catch(() => undefined);
    // A turn later, after the batch: signed at once, each signature would delay the batch its
    // record is in, and fewer requests would share an fsync (docs/PERFORMANCE.md, 2026-12-07,
    // fifteenth session: both rows at concurrency 8 were lower).
    if (held.key.type !== 'ssh-rsa') await new Promise((r) => setImmediate(r));
    let signature: Buffer;
    try {
      signature = await held.key.signAsync(data, flags);
    } catch (e) {
      await durable.catch(() => undefined);
      await this.host
        .record({
          type: 'key.sign',
          decision: 'error',
          target: held.target,
          // Whose signature it was, and of which key: it follows that request's allow record.
          actor: this.host.actor(who.id),
          reason: e instanceof Error ? e.message : 'signing failed',
          details: { algorithm: alg, fingerprint: fp, source: held.source },
        })
        .catch(() => undefined);
      throw e;
    }
    await durable;
    // Locked while the record was made durable: the unlock that allowed it is over.
    if (held.key.wiped || !this.host.isUnlocked()) return message(SSH.FAILURE);
    this.host.counted();
    if (maxNow !== undefined && this.signatures >= maxNow)
      setImmediate(() => void this.host.lock('maximum signatures per unlock reached', who.id));
    return message(SSH.SIGN_RESPONSE, sshString(signature));
  }
}
