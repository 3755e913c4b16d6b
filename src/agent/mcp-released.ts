/**
 * The released values the MCP gateway's leak scans look for (docs/MCP.md, "Leak blocking"), with
 * their masking forms, kept in secure memory between scans: each vault name released (its value
 * now), each value released from a sealed project file, and each released value that a rotation
 * or a removal took out of the vault since (kept until the agent stops, sealed with the vault's
 * key while it is locked).
 */
import { secureFree, secureTake, type SecureBuffer } from '../lib/secure.js';
import { maskingForms } from '../run/index.js';
import type { Replaced, Vault } from '../vault/index.js';
import { SCAN_MIN_BYTES } from './leak-scan.js';
import type { ProjectRelease } from './project-releases.js';

/** What the kept values come from: the agent's releases. */
export interface ReleasedHost {
  /** Names released since the agent started: the vault's values a scan looks for. */
  released(): Iterable<string>;
  /** Values released from sealed project files: looked for too. */
  projectReleased(): Iterable<ProjectRelease>;
  /** Whether this record of the name (its id) was released, not only the name. */
  releasedRecord(name: string, id: string): boolean;
}

/** A released value a scan looks for: its name, what its forms are kept by, and the value. */
export interface Watched {
  key: string;
  name: string;
  id: string;
  reveal(): SecureBuffer;
}

/** Replaced values (rotated or removed since released) looked for at most, and their bytes. */
export const MAX_REPLACED = 256;
export const MAX_REPLACED_BYTES = 8 * 1024 * 1024;

/** What a replaced value is sealed under at a lock: bound to its name and record. */
const sealLabel = (name: string, id: string): string => `mcp replaced\0${name}\0${id}`;

export class ReleasedValues {
  /**
   * Each released value with its masking forms, built at its first scan and kept (secure memory)
   * while it stays released and its record unchanged: a scan costs no decryption and no
   * encoding. Wiped when the agent locks (forget) or the name is no longer released.
   */
  private readonly forms = new Map<
    string,
    { id: string; value: SecureBuffer | undefined; forms: SecureBuffer[] }
  >();

  /**
   * Released values the vault no longer holds (replaced): their name, the id of the record they
   * were and their length, by their key in `forms` (which holds the value, and its forms once a
   * scan built them). Oldest first; at most MAX_REPLACED, of MAX_REPLACED_BYTES in all.
   */
  private readonly replacedValues = new Map<string, { name: string; id: string; bytes: number }>();

  /**
   * The replaced values sealed with the vault's key at the last lock (ciphertext, not secret),
   * opened again by the first scan after an unlock of the same vault: a `keyward lock`, which
   * needs no authentication, must not make the scans forget them.
   */
  private sealed = new Map<string, { name: string; id: string; box: Buffer }>();

  constructor(private readonly host: ReleasedHost) {}

  /**
   * Wipes every kept value and form (the agent locks). The replaced values are sealed with v's
   * key first (v: the vault still open), to be looked for again after the next unlock.
   */
  forget(v?: Vault): void {
    if (v) {
      // Sealed at an earlier lock and not opened since (no scan): opened with the rest, so the
      // bounds hold for all of them, and sealed again below.
      if (this.sealed.size > 0) this.reopen(v);
      for (const [key, { name, id }] of this.replacedValues) {
        const value = this.forms.get(key)?.value;
        if (!value) continue;
        try {
          this.sealed.set(key, { name, id, box: v.sealState(sealLabel(name, id), value) });
        } catch {
          // Not sealed, so not looked for after the unlock; the lock goes on.
        }
      }
    }
    for (const k of this.forms.values()) wipe(k);
    this.forms.clear();
    this.replacedValues.clear();
  }

  /**
   * Released values that a re-read of the vault found replaced or removed (a rotation, a
   * `secret rm`), taken over (freed here): still looked for under their names, across locks,
   * while the agent runs. Whoever received one may hold it still, and a rotated token may still
   * be valid where it came from. Only values that were released (the record, not just the name)
   * are kept; past MAX_REPLACED or MAX_REPLACED_BYTES, the oldest is no longer looked for.
   */
  replaced(values: Replaced[]): void {
    for (const r of values) {
      const key = `replaced ${r.id}`;
      if (
        this.forms.has(key) ||
        r.value.length < SCAN_MIN_BYTES ||
        !this.host.releasedRecord(r.name, r.id)
      ) {
        secureFree(r.value);
        continue;
      }
      // Its forms are built by its first scan (formsOf), where a failure fails that scan closed.
      this.forms.set(key, { id: r.id, value: r.value, forms: [] });
      this.replacedValues.set(key, { name: r.name, id: r.id, bytes: r.value.length });
    }
    let bytes = 0;
    for (const { bytes: b } of this.replacedValues.values()) bytes += b;
    for (const [key, { bytes: b }] of this.replacedValues) {
      if (this.replacedValues.size <= MAX_REPLACED && bytes <= MAX_REPLACED_BYTES) break;
      // The newest stays, whatever its size.
      if (this.replacedValues.size === 1) break;
      const kept = this.forms.get(key);
      if (kept) wipe(kept);
      this.forms.delete(key);
      this.replacedValues.delete(key);
      bytes -= b;
    }
  }

  /** The values sealed at the last lock, opened with v's key (another vault's are dropped). */
  private reopen(v: Vault): void {
    const sealed = this.sealed;
    this.sealed = new Map();
    const opened: Replaced[] = [];
    for (const { name, id, box } of sealed.values()) {
      const value = v.openState(sealLabel(name, id), box);
      if (value) opened.push({ name, id, value });
    }
    this.replaced(opened);
  }

  /**
   * What a scan looks for: each vault name released (kept by name, changed with its record) and
   * each value released from a sealed project file (kept by file and target).
   */
  private watched(v: Vault): Watched[] {
    if (this.sealed.size > 0) this.reopen(v);
    const out: Watched[] = [];
    for (const name of this.host.released())
      if (v.has(name))
        out.push({ key: name, name, id: v.recordId(name) ?? '', reveal: () => v.reveal(name) });
    for (const p of this.host.projectReleased())
      out.push({ key: `${p.id} ${p.target}`, name: p.target, id: p.id, reveal: () => p.open(v) });
    // Kept since they were replaced (formsOf finds them by their id): nothing to reveal again.
    for (const [key, { name, id }] of this.replacedValues)
      out.push({ key, name, id, reveal: () => secureTake(Buffer.alloc(0)) });
    return out;
  }

  /** A value and its forms, from what is kept when its record is the same; else built now. */
  formsOf(w: Watched): { value: SecureBuffer | undefined; forms: SecureBuffer[] } {
    const { id } = w;
    const kept = this.forms.get(w.key);
    if (kept?.id === id) {
      // A replaced value, kept without its forms until now (replaced()).
      if (kept.value && kept.forms.length === 0) kept.forms = maskingForms(kept.value);
      return kept;
    }
    if (kept) wipe(kept);
    const value = w.reveal();
    let entry: { id: string; value: SecureBuffer | undefined; forms: SecureBuffer[] };
    if (value.length < SCAN_MIN_BYTES) {
      // Too short to look for (leak-scan.ts): not found, and not concealed either, so the
      // concealed copy can't point at one.
      secureFree(value);
      entry = { id, value: undefined, forms: [] };
    } else {
      entry = { id, value, forms: maskingForms(value) };
    }
    this.forms.set(w.key, entry);
    return entry;
  }

  /**
   * What a scan looks for now (watched), with what is kept for values no longer released wiped.
   */
  current(v: Vault): Watched[] {
    const watched = this.watched(v);
    const keys = new Set(watched.map((w) => w.key));
    for (const [key, kept] of this.forms) {
      if (!keys.has(key)) {
        wipe(kept);
        this.forms.delete(key);
      }
    }
    return watched;
  }
}

function wipe(k: { value: SecureBuffer | undefined; forms: SecureBuffer[] }): void {
  secureFree(k.value);
  for (const f of k.forms) secureFree(f);
  k.forms.length = 0;
}
