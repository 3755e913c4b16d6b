/**
 * lib/watch.ts: the inotify watch that spares the agent its policy files' stats while nothing
 * changed. What it must see, what it can't (a write through a shared mapping, or through another
 * hard link of an entry whose file is not watched itself), and that any doubt answers "changed".
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { koffi } from '../src/lib/koffi.js';
import { PathWatch, WatchedStamp } from '../src/lib/watch.js';

function dirs(): { root: string; a: string; b: string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-watch-'));
  const a = path.join(root, 'a');
  const b = path.join(a, 'b');
  fs.mkdirSync(b, { recursive: true });
  fs.writeFileSync(path.join(a, 'f'), 'one\n');
  fs.writeFileSync(path.join(b, 'g'), 'two\n');
  return { root, a, b };
}

test('watch: each kind of change to a watched file or an entry of a watched directory is reported once; nothing else is', () => {
  const { root, a, b } = dirs();
  const w = PathWatch.open([a, b, path.join(a, 'f')]);
  assert.ok(w, 'inotify is available here');
  try {
    assert.equal(w.changed(), false, 'quiet after opening');
    const f = path.join(a, 'f');
    const g = path.join(b, 'g');
    const changes: [string, () => void][] = [
      ['a write', () => fs.appendFileSync(f, 'more\n')],
      ['a truncation', () => fs.truncateSync(f, 0)],
      ['chmod', () => fs.chmodSync(f, 0o600)],
      ['utimes (touch setting the time back)', () => fs.utimesSync(f, 1, 1)],
      ['a hard link made elsewhere', () => fs.linkSync(f, path.join(root, 'f-link'))],
      ['a write through that link', () => fs.appendFileSync(path.join(root, 'f-link'), 'x')],
      ['a file made', () => fs.writeFileSync(path.join(a, 'new'), 'x')],
      ['a file removed', () => fs.rmSync(path.join(a, 'new'))],
      ['another file made', () => fs.writeFileSync(path.join(a, 'y'), 'y')],
      ['and another', () => fs.writeFileSync(path.join(a, 'x0'), 'x0')],
      ['a rename within', () => fs.renameSync(path.join(a, 'y'), path.join(a, 'y2'))],
      ['a rename over an entry', () => fs.renameSync(path.join(a, 'y2'), path.join(a, 'x0'))],
      ['a rename in from outside', () => fs.writeFileSync(path.join(root, 'x'), 'x')],
      ['(then moved in)', () => fs.renameSync(path.join(root, 'x'), path.join(a, 'x'))],
      ['a write in the second directory', () => fs.writeFileSync(g, 'three\n')],
    ];
    for (const [what, change] of changes) {
      if (what.startsWith('a rename in from outside')) {
        change();
        assert.equal(w.changed(), false, 'a file made outside the watched directories');
        continue;
      }
      change();
      assert.equal(w.changed(), true, what);
      assert.equal(w.changed(), false, `${what}: reported once`);
    }
    // An entry changed through a hard link outside: seen only when the file itself is watched
    // (the agent watches each file its stamp is made of).
    fs.linkSync(g, path.join(root, 'g-link'));
    assert.equal(w.changed(), false, 'g is not watched itself: its new link is not seen');
    fs.appendFileSync(path.join(root, 'g-link'), 'x');
    assert.equal(w.changed(), false, 'nor a write through it');
    // A directory below a watched one is not watched (the caller names every directory).
    fs.mkdirSync(path.join(b, 'c'));
    assert.equal(w.changed(), true, 'the directory made in b');
    fs.writeFileSync(path.join(b, 'c', 'h'), 'x');
    assert.equal(w.changed(), false, 'an entry of an unwatched subdirectory');
    assert.ok(w.open);
  } finally {
    w.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('watch: a watched directory or file moved or removed is a change; a closed watch answers "changed" from then on; aim() follows the paths, and refuses what it cannot watch', () => {
  for (const end of ['moved', 'removed'] as const) {
    const { root, a, b } = dirs();
    const w = PathWatch.open([a, b]);
    assert.ok(w);
    try {
      if (end === 'moved') fs.renameSync(b, path.join(root, 'elsewhere'));
      if (end === 'removed') fs.rmSync(b, { recursive: true });
      assert.equal(w.changed(), true, end);
    } finally {
      w.close();
      fs.rmSync(root, { recursive: true, force: true });
    }
  }
  for (const end of ['rmSync', 'renameSync'] as const) {
    const { root, a } = dirs();
    const f = path.join(a, 'f');
    const w = PathWatch.open([f]);
    assert.ok(w);
    if (end === 'rmSync') fs.rmSync(f);
    else fs.renameSync(f, path.join(root, 'g'));
    assert.equal(w.changed(), true, end);
    w.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
  {
    const { root, a } = dirs();
    const w = PathWatch.open([a]);
    assert.ok(w);
    w.close();
    assert.equal(w.open, false);
    assert.equal(w.changed(), true, 'closed');
    assert.equal(w.changed(), true, 'and stays "changed"');
    assert.equal(w.aim([a]), false, 'a closed watch aims at nothing');
    fs.rmSync(root, { recursive: true, force: true });
  }
  // Aimed again: the old path's watch goes (its inode's changes are no longer reported).
  {
    const { root, a, b } = dirs();
    const w = PathWatch.open([a]);
    assert.ok(w);
    assert.equal(w.aim([b]), true);
    w.changed(); // the removed watch's own notice
    fs.writeFileSync(path.join(a, 'f'), 'no longer watched\n');
    assert.equal(w.changed(), false, 'a is no longer watched');
    fs.writeFileSync(path.join(b, 'g'), 'watched\n');
    assert.equal(w.changed(), true, 'b is');
    // A missing path: refused, and the watch then watches nothing.
    assert.equal(w.aim([b, path.join(root, 'missing')]), false);
    w.changed();
    fs.writeFileSync(path.join(b, 'g'), 'not watched now\n');
    assert.equal(w.changed(), false);
    // Nor a path it added in the same call before the one it could not watch.
    assert.equal(w.aim([a, path.join(root, 'missing')]), false);
    w.changed();
    fs.writeFileSync(path.join(a, 'f'), 'added, then given up\n');
    assert.equal(w.changed(), false, 'a stays unwatched');
    w.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
  const { root } = dirs();
  assert.equal(PathWatch.open([path.join(root, 'missing')]), undefined);
  fs.rmSync(root, { recursive: true, force: true });
});

test('watch: a write through a shared mapping makes no event (why the policy files are still stat-ed every so often)', () => {
  const { root, a } = dirs();
  const f = path.join(a, 'f');
  const w = PathWatch.open([a, f]);
  assert.ok(w);
  const libc = koffi.load('libc.so.6');
  const mmap = libc.func('void *mmap(void *, size_t, int, int, int, int64_t)');
  const munmap = libc.func('int munmap(void *, size_t)');
  const fd = fs.openSync(f, 'r+');
  try {
    assert.equal(w.changed(), false, 'an open is not an event');
    const before = fs.statSync(f, { bigint: true });
    const map = mmap(null, 4, 3 /* PROT_READ|PROT_WRITE */, 1 /* MAP_SHARED */, fd, 0);
    koffi.encode(map, 'uint8_t[4]', [0x4f, 0x4e, 0x45, 0x0a]); // "ONE\n" over "one\n"
    munmap(map, 4);
    assert.equal(fs.readFileSync(f, 'utf8'), 'ONE\n', 'the file changed');
    assert.equal(w.changed(), false, 'with no inotify event');
    const after = fs.statSync(f, { bigint: true });
    // What the periodic full check sees: the time the kernel gave the write.
    assert.ok(
      after.mtimeNs !== before.mtimeNs || after.ctimeNs !== before.ctimeNs,
      'the stamp moved',
    );
  } finally {
    fs.closeSync(fd);
    w.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
});

/** A WatchedStamp over dir/f (and dir), counting its stats. */
function stamped(dir: string, every = 64): { w: WatchedStamp; stats: () => number } {
  let stats = 0;
  const f = path.join(dir, 'f');
  const w = new WatchedStamp(
    () => [dir, f].filter((p) => fs.existsSync(p)),
    () => {
      stats += 1;
      const st = fs.statSync(f, { throwIfNoEntry: false, bigint: true });
      return st ? `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}` : '-';
    },
    every,
  );
  return { w, stats: () => stats };
}

test('watched stamp: quiet calls stat nothing; a change is stat-ed at the next call; every Nth call stats all the same', () => {
  const { root, a } = dirs();
  const { w, stats } = stamped(a, 8);
  try {
    const first = w.get();
    assert.equal(stats(), 1);
    for (let i = 0; i < 7; i++) assert.equal(w.get(), first);
    assert.equal(stats(), 1, 'quiet: no stat');
    w.get();
    assert.equal(stats(), 2, 'the 8th quiet call stats all the same');
    fs.appendFileSync(path.join(a, 'f'), 'x');
    assert.notEqual(w.get(), first, 'the change, at the next call');
  } finally {
    w.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('watched stamp: after the file is renamed over (its old inode kept by another link), or an ancestor is renamed and replaced, the watch follows the paths, and the next change is seen at once', () => {
  // Renamed over: the directory reports the rename, and the stat that follows watches the new
  // file, not the old inode another link still keeps.
  {
    const { root, a } = dirs();
    const f = path.join(a, 'f');
    const { w } = stamped(a);
    try {
      w.get();
      fs.linkSync(f, path.join(root, 'old-link'));
      fs.writeFileSync(path.join(a, 'new'), 'new\n');
      fs.renameSync(path.join(a, 'new'), f);
      const after = w.get();
      fs.linkSync(f, path.join(root, 'new-link'));
      const linked = w.get(); // the link count moved
      assert.notEqual(linked, after);
      fs.appendFileSync(path.join(root, 'new-link'), 'through a link elsewhere\n');
      assert.notEqual(w.get(), linked, 'a write through a link outside, at the next call');
    } finally {
      w.close();
      fs.rmSync(root, { recursive: true, force: true });
    }
  }
  // An ancestor renamed and another tree put in its place: nothing the watch can report, so the
  // full check (the 4th call here) sees it, and watches the new tree from then on.
  {
    const { root, a } = dirs();
    const { w, stats } = stamped(a, 4);
    try {
      w.get();
      fs.renameSync(a, path.join(root, 'a.old'));
      fs.mkdirSync(a);
      fs.writeFileSync(path.join(a, 'f'), 'the other tree\n');
      const before = stats();
      let calls = 0;
      while (stats() === before) {
        w.get();
        calls += 1;
        assert.ok(calls <= 4, 'seen by the 4th call');
      }
      const now = w.get();
      fs.appendFileSync(path.join(a, 'f'), 'x');
      assert.notEqual(w.get(), now, "the new tree's change, at the next call");
    } finally {
      w.close();
      fs.rmSync(root, { recursive: true, force: true });
    }
  }
});

test('watched stamp: a path that appears is watched from the next call; where the kernel refuses a watch every call stats', () => {
  const { root, a } = dirs();
  fs.rmSync(path.join(a, 'f'));
  const { w, stats } = stamped(a);
  try {
    assert.equal(w.get(), '-');
    fs.writeFileSync(path.join(a, 'f'), 'appeared\n'); // an event of the directory
    const made = w.get();
    assert.notEqual(made, '-');
    fs.linkSync(path.join(a, 'f'), path.join(root, 'link'));
    const linked = w.get();
    assert.notEqual(linked, made, 'the new file is watched itself: its link count');
    fs.appendFileSync(path.join(root, 'link'), 'x');
    assert.notEqual(w.get(), linked, 'and a write through the link');
  } finally {
    w.close();
  }
  // No watch (a path that vanished between the check and the watch, the kernel's limits): every
  // call stats, as with no watch at all.
  const gone = path.join(root, 'gone');
  let n = 0;
  const w2 = new WatchedStamp(
    () => [gone],
    () => String((n += 1)),
  );
  for (let i = 0; i < 5; i++) w2.get();
  assert.equal(n, 5);
  w2.close();
  assert.ok(stats() >= 4);
  fs.rmSync(root, { recursive: true, force: true });
});

test("watched stamp: a path the stat itself finds (a history's new last entry) is watched from the next call", () => {
  const { root, a } = dirs();
  const f = path.join(a, 'f');
  let known: string | undefined;
  let stats = 0;
  const w = new WatchedStamp(
    () => [a, ...(known ? [known] : [])],
    () => {
      stats += 1;
      known = f; // as statPolicy learns the history's last entry
      const st = fs.statSync(f, { bigint: true });
      return `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    },
  );
  try {
    w.get();
    w.get();
    assert.equal(stats, 2, 'the second call watches f, so it stats again');
    const now = w.get();
    assert.equal(stats, 2);
    fs.linkSync(f, path.join(root, 'link'));
    const linked = w.get();
    assert.notEqual(linked, now, 'a link made elsewhere: f is watched itself');
    fs.appendFileSync(path.join(root, 'link'), 'x');
    assert.notEqual(w.get(), linked, 'a write through it');
  } finally {
    w.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('watched stamp: one inotify descriptor for its life, aimed again in place (closing one waits for the kernel, milliseconds, at a request)', () => {
  const inotifyFds = () =>
    fs
      .readdirSync('/proc/self/fd')
      .filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:inotify';
        } catch {
          return false;
        }
      })
      .sort();
  const before = inotifyFds();
  const { root, a } = dirs();
  const { w, stats } = stamped(a, 8);
  try {
    w.get();
    const mine = inotifyFds().filter((fd) => !before.includes(fd));
    assert.equal(mine.length, 1);
    for (let i = 0; i < 100; i++) {
      if (i % 3 === 0) fs.appendFileSync(path.join(a, 'f'), 'x');
      if (i % 7 === 0) {
        fs.writeFileSync(path.join(a, 'n'), 'n');
        fs.renameSync(path.join(a, 'n'), path.join(a, 'f'));
      }
      w.get();
    }
    assert.ok(stats() > 40);
    assert.deepEqual(
      inotifyFds().filter((fd) => !before.includes(fd)),
      mine,
      'the same descriptor',
    );
  } finally {
    w.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
});
