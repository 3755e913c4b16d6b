/**
 * The vault's records in memory, and vault.kw's record log (format 2) on disk: reading it all
 * (open, with every frame authenticated), reading only what a write needs (the last frame and
 * the records it touches), appending a save, and rewriting the file (compaction, a new header,
 * the migration from format 1). docs/FORMAT.md is the specification.
 *
 * Values stay sealed here (their boxes); only vault.ts opens them (with record-values.ts and
 * refresh.ts). Names and times are not secret.
 */
import type { IntegrityError } from '../errors.js';
import { writeFileAtomic, type FileId } from '../lib/files.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import { blake2b256, open, openInto, type Rng } from './crypto.js';
import { corruptError, recordAd, type Slot } from './format.js';
import {
  BOX_OVERHEAD,
  decodeMeta,
  frameAd,
  frameAt,
  KIND_DELETE,
  KIND_PUT,
  NAME_TAG_BYTES,
  parseLog,
  type FrameView,
  type LogLayout,
  type Meta,
} from './log-format.js';
import {
  appendFrames,
  encodeFrames,
  encodeRewrite,
  nameTag,
  stillNamed,
  type Disk,
  type Pending,
} from './records-write.js';

export { nameTag } from './records-write.js';

/** One live record. */
export interface Entry {
  name: string;
  /** 16 random bytes, new at every write of the value: bound into the value box's AD. */
  id: Buffer;
  created: number;
  updated: number;
  /** nonce || ciphertext of the value, under the secrets key */
  box: Buffer;
}

export const sizeOf = (e: Entry): number => e.box.length - BOX_OVERHEAD;

/** What the records need from the open vault: its id and its subkeys. */
export interface RecordKeys {
  vaultId: Buffer;
  index(): SecureBuffer;
  secrets(): SecureBuffer;
  tag(): SecureBuffer;
}

/** A file's bytes and where its frames are: what lookups read from. */
interface Source {
  bytes: Buffer;
  layout: LogLayout;
}

/** A meta record is at most 2 + 128 (name) + 32 + 4 bytes: one scratch serves every frame. */
const META_SCRATCH = 256;
/** Compact when dead frames pass both this and the number of live records. */
const COMPACT_MIN_DEAD = 1024;

function frameFailed(i: number): IntegrityError {
  return corruptError(`vault record ${i + 1} failed authentication (tampered or damaged)`);
}

const byName = (a: Entry, b: Entry) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

export class Records {
  /** name -> entry, or null for a name known to be absent (a partial read). */
  private map = new Map<string, Entry | null>();
  /** Every live record is in map (an open, a rewrite), or only those looked up (a writer). */
  private complete = true;
  private pending: Pending[] = [];
  /** Changes since the source was read (saved or not): a full read puts them back on top. */
  private since: Pending[] = [];
  /** Committed frames in the file (including this process's appends). */
  private frames = 0;
  private liveCount = 0;
  /** BLAKE2b-256 of the last frame's body (or the header's sum): what the next frame chains to. */
  private last: Buffer = Buffer.alloc(32);
  private source: Source | undefined;
  /** A partial read: frames from this one to the end of the source are authenticated. */
  private checkedFrom = 0;
  /** A partial read: the frame each name's record was found in. */
  private readonly foundAt = new Map<string, number>();
  private disk: Disk | undefined;
  /** The next save rewrites the file (a format 1 file, a new header, a rekey). */
  private rewriteDue = true;

  private constructor(
    private readonly keys: RecordKeys,
    /** The file's generation: its base plus its frames. */
    public generation: bigint,
  ) {}

  /** A vault not yet written. */
  static empty(keys: RecordKeys): Records {
    return new Records(keys, 0n);
  }

  /** Records read from a format 1 file: all of them; the next save rewrites in format 2. */
  static fromV1(keys: RecordKeys, generation: bigint, entries: Entry[]): Records {
    const r = new Records(keys, generation);
    for (const e of entries) r.map.set(e.name, e);
    r.liveCount = entries.length;
    return r;
  }

  /**
   * Records of a format 2 file. 'all' authenticates every frame (an open); 'lazy' only the last,
   * and reads records as they are asked for (a writer, whose cost must not grow with the vault).
   */
  static fromLog(
    keys: RecordKeys,
    bytes: Buffer,
    stat: FileId,
    mode: 'all' | 'lazy',
    layout = parseLog(bytes),
  ): Records {
    const r = new Records(keys, layout.header.base + BigInt(layout.starts.length));
    r.adopt({ bytes, layout }, stat, mode);
    return r;
  }

  private adopt(src: Source, stat: FileId, mode: 'all' | 'lazy'): void {
    const h = src.layout.header;
    this.disk = {
      dev: stat.dev,
      ino: stat.ino,
      size: src.bytes.length,
      end: src.layout.end,
      base: h.base,
      sum: h.sum,
    };
    this.rewriteDue = false;
    this.pending = [];
    this.since = [];
    this.map = new Map();
    this.generation = h.base + BigInt(src.layout.starts.length);
    if (mode === 'all') {
      this.source = undefined;
      this.complete = true;
      this.last = this.readFrames(src, 0, h.sum, false);
      this.frames = src.layout.starts.length;
      this.liveCount = this.map.size;
    } else {
      this.source = src;
      this.complete = false;
      this.readLast(src);
    }
  }

  /** The prev hash of frame i: the body hash of frame i-1, or the header's sum. */
  private prevOf(src: Source, i: number): Buffer {
    const s = src.layout.starts[i - 1];
    return s === undefined ? src.layout.header.sum : blake2b256(frameAt(src.bytes, s).body);
  }

  /**
   * Authenticates frame i (chained to prev) and returns it with its meta. The tag must be the
   * name's: a frame filed under another name's tag is a forgery or a bug.
   */
  private openFrame(src: Source, i: number, prev: Buffer, scratch: SecureBuffer) {
    const start = src.layout.starts[i];
    if (start === undefined) throw frameFailed(i);
    const view = frameAt(src.bytes, start);
    const seq = src.layout.header.base + BigInt(i) + 1n;
    if (view.metaBox.length - BOX_OVERHEAD > scratch.length) throw frameFailed(i);
    const ad = frameAd(this.keys.vaultId, seq, prev, view.fixed);
    const len = openInto(this.keys.index(), view.metaBox, ad, scratch);
    if (len === undefined) throw frameFailed(i);
    let meta: Meta;
    try {
      meta = decodeMeta(view.kind, Buffer.from(scratch.subarray(0, len)));
    } finally {
      scratch.fill(0);
    }
    // eslint-disable-next-line no-restricted-syntax -- tags are published in the file
    if (!nameTag(this.keys.tag(), meta.name).equals(view.tag)) {
      throw corruptError(`vault record ${i + 1} is filed under another name`);
    }
    return { view, meta };
  }

  private entryOf(view: FrameView, meta: Meta, copy: boolean): Entry {
    return {
      name: meta.name,
      id: meta.id ?? Buffer.alloc(16),
      created: meta.created ?? meta.at,
      updated: meta.at,
      box: copy ? Buffer.from(view.valueBox) : view.valueBox,
    };
  }

  /** A value box must open: checked for the last frame, which no later frame's chain covers. */
  private checkValue(e: Entry, i: number): void {
    const plain = open(this.keys.secrets(), e.box, recordAd(this.keys.vaultId, e.id, e.name));
    if (!plain) throw frameFailed(i);
    secureFree(plain);
  }

  /**
   * Applies frames from `from` on to the map, authenticating each; the map must be complete.
   * Returns the last frame's hash.
   */
  private readFrames(src: Source, from: number, prev: Buffer, copy: boolean): Buffer {
    const n = src.layout.starts.length;
    const scratch = secureAlloc(META_SCRATCH);
    try {
      for (let i = from; i < n; i++) {
        const { view, meta } = this.openFrame(src, i, prev, scratch);
        if (view.kind === KIND_PUT) {
          const e = this.entryOf(view, meta, copy);
          this.map.set(meta.name, e);
          if (i === n - 1) this.checkValue(e, i);
        } else if (view.kind === KIND_DELETE && !this.map.delete(meta.name)) {
          throw corruptError(`vault record ${i + 1} removes a name that is not there`);
        }
        if (meta.live !== this.map.size) {
          throw corruptError(
            `vault record ${i + 1} counts ${meta.live} records, not ${this.map.size}`,
          );
        }
        prev = blake2b256(view.body);
      }
    } finally {
      secureFree(scratch);
    }
    return prev;
  }

  /** A writer's read: the last frame only (the chain's end, and the live count). */
  private readLast(src: Source): void {
    const n = src.layout.starts.length;
    this.frames = n;
    this.checkedFrom = n - 1;
    const scratch = secureAlloc(META_SCRATCH);
    try {
      const { view, meta } = this.openFrame(src, n - 1, this.prevOf(src, n - 1), scratch);
      if (view.kind === KIND_PUT) {
        const e = this.entryOf(view, meta, false);
        this.checkValue(e, n - 1);
        this.map.set(meta.name, e);
      } else if (view.kind === KIND_DELETE) this.map.set(meta.name, null);
      this.liveCount = meta.live;
      this.last = blake2b256(view.body);
    } finally {
      secureFree(scratch);
    }
  }

  /**
   * The live record of name, or undefined. A partial read looks it up in the file by its name
   * tag, newest first. Tags are authenticated only as part of their own frame, so when the value
   * will be used (`latest`), every frame after the one found is authenticated too: otherwise a
   * changed tag could hide a newer version and hand out an older one (a record a writer reads,
   * changes and writes back would be rolled back, and the file would then verify). Whether a
   * name exists, and when it was created, need no such check: hiding a record's every frame or a
   * removal changes the live count, which the next full read refuses.
   */
  get(name: string, latest = false): Entry | undefined {
    const known = this.map.get(name);
    if (known !== undefined || this.complete) {
      const at = this.foundAt.get(name);
      if (latest && known && at !== undefined && this.source) this.checkAfter(this.source, at);
      return known ?? undefined;
    }
    const src = this.source;
    if (!src) return undefined;
    const tag = nameTag(this.keys.tag(), name);
    const scratch = secureAlloc(META_SCRATCH);
    try {
      const { bytes } = src;
      const { starts } = src.layout;
      const head = tag.readUInt32BE(0);
      for (let i = starts.length - 1; i >= 0; i--) {
        const s = (starts[i] ?? 0) + 5;
        // The first four bytes in JS, the rest only when they match: the scan runs over every
        // frame of the file for a new name, and a native compare per frame costs ten times more.
        if (bytes.readUInt32BE(s) !== head) continue;
        if (bytes.compare(tag, 0, NAME_TAG_BYTES, s, s + NAME_TAG_BYTES) !== 0) continue;
        const { view, meta } = this.openFrame(src, i, this.prevOf(src, i), scratch);
        if (meta.name !== name) continue;
        const e = view.kind === KIND_PUT ? this.entryOf(view, meta, false) : null;
        this.map.set(name, e);
        if (e) this.foundAt.set(name, i);
        if (e && latest) this.checkAfter(src, i);
        return e ?? undefined;
      }
    } finally {
      secureFree(scratch);
    }
    this.map.set(name, null);
    return undefined;
  }

  /** Authenticates every frame after frame i not authenticated yet (their tags with them). */
  private checkAfter(src: Source, i: number): void {
    if (i + 1 >= this.checkedFrom) return;
    const scratch = secureAlloc(META_SCRATCH);
    try {
      let prev = this.prevOf(src, i + 1);
      for (let j = i + 1; j < this.checkedFrom; j++) {
        const { view } = this.openFrame(src, j, prev, scratch);
        prev = blake2b256(view.body);
      }
    } finally {
      secureFree(scratch);
    }
    this.checkedFrom = i + 1;
  }

  /** Every live record, sorted by name (a partial read reads the whole file first). */
  all(): Entry[] {
    this.readEverything();
    const out: Entry[] = [];
    for (const e of this.map.values()) if (e) out.push(e);
    return out.sort(byName);
  }

  private readEverything(): void {
    if (this.complete) return;
    const src = this.source;
    this.map = new Map();
    if (src) this.readFrames(src, 0, src.layout.header.sum, false);
    // What this process changed since it read the file (saved or not) goes back on top.
    for (const p of this.since) {
      if (p.entry) this.map.set(p.name, p.entry);
      else this.map.delete(p.name);
    }
    this.liveCount = this.map.size;
    this.complete = true;
    this.source = undefined;
    this.since = [];
  }

  put(e: Entry): void {
    if (!this.get(e.name)) this.liveCount++;
    this.map.set(e.name, e);
    this.change({ kind: KIND_PUT, name: e.name, entry: e, at: e.updated, live: this.liveCount });
  }

  /** Removes name; false when it isn't there. */
  delete(name: string, at: number): boolean {
    if (!this.get(name)) return false;
    if (this.complete) this.map.delete(name);
    else this.map.set(name, null);
    this.liveCount--;
    this.change({ kind: KIND_DELETE, name, at, live: this.liveCount });
    return true;
  }

  private change(p: Pending): void {
    this.pending.push(p);
    if (!this.complete) this.since.push(p);
  }

  /**
   * Records of the file as it is now, read with the keys held (another process wrote it). When
   * the file is this one with frames appended, only those are read; another file (a rewrite) is
   * read in full. Every new frame is authenticated either way, and on failure this object is
   * unchanged. Refused: the same file with a frame this vault saw changed or cut off (a history
   * written over), and another file whose base does not follow this vault's generation.
   */
  refreshed(bytes: Buffer, stat: FileId, layout = parseLog(bytes)): Records {
    const src: Source = { bytes, layout };
    const d = this.disk;
    const n = layout.starts.length;
    const sameFile =
      d !== undefined &&
      stat.dev === d.dev &&
      stat.ino === d.ino &&
      layout.header.base === d.base &&
      // eslint-disable-next-line no-restricted-syntax -- public hashes of public bytes
      layout.header.sum.equals(d.sum);
    if (sameFile) {
      // The same file can only have grown: a frame this vault saw, changed or cut off and
      // written over, is a history rewritten under it (a removed secret brought back).
      // eslint-disable-next-line no-restricted-syntax -- public hashes of public bytes
      if (n < this.frames || !this.prevOf(src, this.frames).equals(this.last)) {
        throw corruptError('the vault file was cut back and written over under the open vault', {
          hint: 'check who changed vault.kw, then keyward unlock',
        });
      }
    } else if (d !== undefined && layout.header.base <= this.generation) {
      // Another file (a rewrite: compaction, passwd, rekey) starts after everything before it.
      throw corruptError('the vault file was replaced by one that does not follow it', {
        hint: 'check who replaced vault.kw, then keyward unlock',
      });
    }
    if (!sameFile || !this.complete || this.pending.length > 0 || this.rewriteDue) {
      return Records.fromLog(this.keys, bytes, stat, 'all', layout);
    }
    const before = this.map;
    this.map = new Map(before);
    try {
      this.last = this.readFrames(src, this.frames, this.last, true);
    } catch (e) {
      this.map = before;
      throw e;
    }
    this.frames = n;
    this.liveCount = this.map.size;
    this.generation = layout.header.base + BigInt(n);
    if (d) {
      d.size = bytes.length;
      d.end = layout.end;
    }
    return this;
  }

  /** Every value box replaced (a rekey): the next save rewrites the file. */
  replaceAll(entries: Entry[]): void {
    this.map = new Map(entries.map((e) => [e.name, e]));
    this.complete = true;
    this.source = undefined;
    this.liveCount = entries.length;
    this.pending = [];
    this.since = [];
    this.rewriteDue = true;
  }

  /** The header changes (a new passphrase): the next save rewrites the file. */
  headerChanged(): void {
    this.rewriteDue = true;
  }

  /**
   * Persists what changed: appends one frame per change (the last marked as the commit), or
   * rewrites the whole file when due (format 1 read, a new header, a rekey, or when dead frames
   * outnumber live records: compaction, so the file stays within about twice its live size).
   * The caller holds the vault lock.
   */
  save(file: string, header: { keyId: Buffer; slots: readonly Slot[] }, rng: Rng): void {
    const dead = this.frames + this.pending.length - this.liveCount;
    if (this.rewriteDue || !this.disk || dead > Math.max(COMPACT_MIN_DEAD, this.liveCount)) {
      this.rewrite(file, header, rng);
    } else if (this.pending.length > 0) {
      this.append(file, this.disk, rng);
    }
  }

  /** The file this process last read or wrote (inode and length), for stamps taken after. */
  written(): { ino: bigint; size: number } | undefined {
    return this.disk && { ino: this.disk.ino, size: this.disk.size };
  }

  private rewrite(file: string, h: { keyId: Buffer; slots: readonly Slot[] }, rng: Rng): void {
    const entries = this.all();
    const base = this.generation + 1n;
    const { header, sum, chunks, seq, prev } = encodeRewrite(this.keys, entries, base, h, rng);
    const st = stillNamed(file, writeFileAtomic(file, [header, ...chunks]));
    const size = chunks.reduce((n, c) => n + c.length, header.length);
    this.disk = { dev: st.dev, ino: st.ino, size, end: size, base, sum };
    this.generation = seq;
    this.frames = entries.length + 1;
    this.liveCount = entries.length;
    this.last = prev;
    this.pending = [];
    this.rewriteDue = false;
  }

  private append(file: string, disk: Disk, rng: Rng): void {
    const { chunks, seq, prev } = encodeFrames(
      this.keys,
      this.pending,
      this.generation,
      this.last,
      rng,
    );
    appendFrames(file, disk, Buffer.concat(chunks));
    this.generation = seq;
    this.frames += this.pending.length;
    this.last = prev;
    this.pending = [];
  }
}
