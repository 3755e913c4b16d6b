/**
 * The OS keyring slot against a real Secret Service: gnome-keyring in a private D-Bus session.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { asUser, chownTree, kwAs, OTHER_UID } from './as-user.js';
import { BIN, FAST_KDF, kw, makeHome, rootTests } from './helpers.js';

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

const tools = ['dbus-run-session', 'gnome-keyring-daemon', 'secret-tool'];
const missing = tools.filter((t) => !have(t));
// CI installs these (.ci/run); a developer without them is told which, rather than a silent pass.
const skip =
  missing.length > 0 && process.env['CI'] !== 'true'
    ? `needs ${missing.join(', ')} (apt-get install gnome-keyring dbus-daemon libsecret-tools)`
    : false;

/** Runs a bash script inside a fresh D-Bus session with an unlocked gnome-keyring. */
function inKeyringSession(
  script: string,
  env: NodeJS.ProcessEnv,
): { code: number | null; out: string; err: string } {
  const prelude = [
    'set -u',
    `kw() { node '${BIN}' "$@"; }`,
    // An unlocked login keyring, created with a throwaway password, in this session only.
    "printf 'test-keyring-password' | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1",
  ].join('\n');
  const r = spawnSync('dbus-run-session', ['--', 'bash', '-c', `${prelude}\n${script}`], {
    env: { ...env, XDG_DATA_HOME: `${env['HOME']}/.local/share` },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A vault made with a keyring slot, one secret in it, and the passphrase file out of sight. */
const KEYRING_VAULT = `
kw init --keyring ${FAST_KDF.join(' ')} || exit 10
unset KEYWARD_PASSPHRASE_FILE
printf 'keyring-held-value' | kw secret set kr/token || exit 11`;

test(
  'init --keyring stores a key in the Secret Service; later commands unlock with it and no passphrase',
  { skip },
  () => {
    const h = makeHome();
    const script = `${KEYRING_VAULT}
echo "READ1=$(kw read kr/token)"
# installing a policy is a person's act: the keyring (any process of the user) does not do it
kw policy show > "$HOME/p.yaml" 2>/dev/null
kw policy apply "$HOME/p.yaml" </dev/null; echo "APPLY=$?"
id=$(kw whoami --json | sed -n 's/.*"vaultId": "\\([0-9a-f]*\\)".*/\\1/p')
echo "ITEM=$(secret-tool lookup service keyward username vault-$id | wc -c)"
echo "UNLOCK=$(kw whoami | grep 'unlock by')"
# rekey needs the passphrase; the keyring slot is rewrapped, so the keyring still opens the vault
KEYWARD_PASSPHRASE_FILE='${h.passFile}' kw rekey || exit 12
echo "READ2=$(kw read kr/token)"
# the keyring loses its key: without a terminal keyward says so (exit 4); the passphrase still opens it
secret-tool clear service keyward username vault-$id
kw read kr/token; echo "LOST=$?"
echo "READ3=$(KEYWARD_PASSPHRASE_FILE='${h.passFile}' kw read kr/token)"
`;
    const r = inKeyringSession(script, h.env);
    assert.equal(r.code, 0, `${r.out}\n${r.err}`);
    assert.match(r.out, /^READ1=keyring-held-value$/m);
    assert.match(r.out, /^APPLY=2$/m, 'policy apply opened the vault with the keyring');
    assert.match(r.out, /^ITEM=32$/m, 'the keyring holds a 32-byte key for this vault');
    assert.match(r.out, /^UNLOCK=unlock by: +passphrase \(argon2id.*\), keyring$/m);
    assert.match(r.out, /^READ2=keyring-held-value$/m);
    assert.match(r.out, /^LOST=4$/m);
    assert.match(
      r.err,
      /the OS keyring has no key for this vault\nkeyward: hint: use the passphrase/,
    );
    assert.match(r.out, /^READ3=keyring-held-value$/m);
  },
);

test(
  'init --keyring without a reachable keyring fails with exit 5 and leaves no vault',
  { skip },
  () => {
    const h = makeHome();
    const env = { ...h.env, DBUS_SESSION_BUS_ADDRESS: 'unix:path=/nonexistent/bus' };
    const r = kw(['init', '--keyring', ...FAST_KDF], { env });
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.stderr, /keyward: error: the OS keyring is not available/);
    assert.equal(kw(['whoami', '--json'], { env }).stdout.includes('"initialized": false'), true);
  },
);

test(
  "found in review: without a Secret Service to take it, the key goes nowhere else: init --keyring leaves nothing in the kernel's keyring",
  { skip: skip || (!rootTests && 'needs root (setpriv to another user)') },
  () => {
    // Another user, with no D-Bus session at all: the keyring library would fall back to the
    // kernel's keyring (keyutils), and left the vault's key there though init failed.
    const h = makeHome();
    chownTree(h.dir, OTHER_UID);
    const env = { ...h.env };
    delete env['DBUS_SESSION_BUS_ADDRESS'];
    const keys = () =>
      spawnSync(asUser[0] as string, [...asUser.slice(1), 'cat', '/proc/keys'], {
        encoding: 'utf8',
      })
        .stdout.split('\n')
        .filter((l) => l.includes('@keyward'));
    const before = keys();
    const r = kwAs(['init', '--keyring', ...FAST_KDF], env);
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.stderr, /the OS keyring is not available/);
    assert.deepEqual(keys(), before, "a key left in the kernel's keyring");
  },
);

test(
  'found in review: a rekey gives the keyring a new key, so a key read before it opens no later copy of the vault',
  { skip },
  () => {
    // The attacker is any process of the user: while the keyring is unlocked it reads the item,
    // keeps it, and later puts it back (or opens a later copy of vault.kw with it offline).
    const h = makeHome();
    const script = `${KEYRING_VAULT}
id=$(kw whoami --json | sed -n 's/.*"vaultId": "\\([0-9a-f]*\\)".*/\\1/p')
secret-tool lookup service keyward username vault-$id > "$HOME/stolen.key" || exit 12
KEYWARD_PASSPHRASE_FILE='${h.passFile}' kw rekey || exit 13
echo "READ=$(kw read kr/token)"
secret-tool lookup service keyward username vault-$id > "$HOME/new.key" || exit 14
echo "NEWLEN=$(wc -c < "$HOME/new.key")"
cmp -s "$HOME/stolen.key" "$HOME/new.key"; echo "SAME=$?"
# the stolen key put back: it must not open the rekeyed vault
secret-tool store --label=keyward service keyward username vault-$id < "$HOME/stolen.key" || exit 15
kw read kr/token; echo "STOLEN=$?"
`;
    const r = inKeyringSession(script, h.env);
    assert.equal(r.code, 0, `${r.out}\n${r.err}`);
    assert.match(r.out, /^READ=keyring-held-value$/m, 'the new key opens the rekeyed vault');
    assert.match(r.out, /^NEWLEN=32$/m);
    assert.match(r.out, /^SAME=1$/m, 'rekey kept the keyring key that was read before it');
    assert.match(r.out, /^STOLEN=4$/m);
    assert.match(r.err, /the OS keyring's key does not open this vault/);
  },
);

test(
  'a rekey whose vault.kw could not be written leaves the keyring with the key the old file opens with, and one that failed after it was written gives the keyring the new key',
  { skip: skip || (!have('strace') && 'needs strace') },
  () => {
    // The new keyring key goes in only once the rekeyed file is in place: a save that fails (here
    // its rename, made to fail by strace) leaves the old file, and the old key that opens it.
    const h = makeHome();
    const script = `${KEYRING_VAULT}
KEYWARD_PASSPHRASE_FILE='${h.passFile}' strace -qq -o /dev/null -e trace=rename -e inject=rename:error=EIO:when=1 node '${BIN}' rekey; echo "REKEY=$?"
echo "READ=$(kw read kr/token)"
KEYWARD_PASSPHRASE_FILE='${h.passFile}' kw rekey || exit 13
echo "AFTER=$(kw read kr/token)"
# found in review: a save that throws after vault.kw is in place (its second rename, the audit's
# checkpoint, refused): the keyring must get the key the new file's slot opens with
KEYWARD_PASSPHRASE_FILE='${h.passFile}' strace -qq -o /dev/null -e trace=rename -e inject=rename:error=ENOSPC:when=2 node '${BIN}' rekey; echo "LATE=$?"
echo "READ2=$(kw read kr/token)"
`;
    const r = inKeyringSession(script, h.env);
    assert.equal(r.code, 0, `${r.out}\n${r.err}`);
    assert.doesNotMatch(r.out, /^REKEY=0$/m, 'the rekey failed');
    // Its first rename is the one that puts the rekeyed vault.kw in place.
    assert.match(r.err, /keyward: error: vault\.kw could not be written safely \(EIO: /);
    assert.match(
      r.out,
      /^READ=keyring-held-value$/m,
      `the keyring still opens the vault: ${r.err}`,
    );
    assert.match(
      r.out,
      /^AFTER=keyring-held-value$/m,
      'a rekey that succeeds keeps the keyring slot',
    );
    assert.match(r.out, /^LATE=5$/m, 'the checkpoint refused: AUDIT_UNAVAILABLE');
    assert.match(r.err, /keyward: error: the audit log cannot be written \(ENOSPC: /);
    assert.match(r.out, /^READ2=keyring-held-value$/m, `the keyring opens the new file: ${r.err}`);
  },
);
