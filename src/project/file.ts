/**
 * A sealed project file's text (docs/PROJECT-FILES.md, "The file"): names readable, each value
 * encrypted on its own under a subkey of the file's data key and bound to the file and its name,
 * the data key wrapped to the recipients as an age file (age.ts), and the whole file
 * authenticated under another subkey. The text is attacker-controlled input: every line is
 * matched against the one shape keyward writes, and anything else is PROJECT_TAMPERED.
 */
import { IntegrityError, UsageError } from '../errors.js';
import {
  randomBytes,
  secureAlloc,
  secureEqual,
  secureFree,
  securePooled,
  secureRandom,
  secureRelease,
  type SecureBuffer,
} from '../lib/secure.js';
import { sodium } from '../lib/sodium.js';
import { ageDecrypt, ageEncrypt, decodeRecipient, stanzaKinds } from './age.js';

export const FIRST_LINE =
  '# keyward sealed project file: safe to commit; its values open only through keyward (docs/PROJECT-FILES.md)';
const VERSION_LINE = 'keyward-project: 1';
const CONTEXT = Buffer.from('kwproj01', 'ascii');
const VALUE_KEY = 1;
const MAC_KEY = 2;
const DATA_KEY_BYTES = 32;
const ID_BYTES = 16;
const NONCE = 24;
const TAG = 16;
const AAD_PREFIX = Buffer.from('keyward-project 1\n', 'ascii');
/** A value's most bytes (an environment variable's, with room): 64 KiB. */
export const MAX_VALUE = 64 * 1024;
export const MAX_ENTRIES = 1000;
const MAX_RECIPIENTS = 256;
/**
 * Names a sealed file never sets: each changes what a program loads or runs, which certificates
 * it trusts, or the proxy all its traffic goes through (a file anyone can seal to you must not
 * run code in your command). Known names and whole families (`*_OPTS`, `*_OPTIONS`, `*FLAGS`,
 * `*CONF*`, `*_HOOK*`, `*_INIT`, `*_WRAPPER`...): a list can't be complete, and
 * docs/PROJECT-FILES.md says so. Case-insensitive: `http_proxy` is read as much as `HTTP_PROXY`.
 */
const RESERVED = new RegExp(
  `^(${[
    // the shell and the dynamic loader
    'PATH|HOME|SHELL|IFS|PS[0-4]|PROMPT_COMMAND|CDPATH|ENV|BASH_ENV|BASH_FUNC_\\w*|ZDOTDIR|INPUTRC',
    'LD_\\w+|DYLD_\\w+|GCONV_PATH|LOCPATH|NLSPATH|HOSTALIASES|RES_OPTIONS|MALLOC_\\w+|GLIBC_TUNABLES|TMPDIR',
    // interpreters, runtimes and build tools that load code from a variable
    'NODE_\\w+|NPM_CONFIG_\\w+|YARN_\\w+|PYTHON\\w*|PIP_\\w+|PERL\\w*|RUBY\\w*|GEM_\\w+|BUNDLE_\\w+|PHPRC|PHP_INI_\\w+',
    'LUA_\\w+|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|JDK_JAVA_OPTIONS|CLASSPATH|MAVEN_\\w+|GRADLE_\\w+|M2_HOME',
    'DOTNET_\\w+|COMPLUS_\\w+|CORECLR_\\w+|RUSTC\\w*|RUSTFLAGS|RUSTDOCFLAGS|CARGO_\\w+',
    'GOFLAGS|GOPROXY|GOPATH|GOROOT|GOTOOLCHAIN|GOENV|GOBIN|GONOSUMDB|GOPRIVATE|GOINSECURE',
    'GIT_\\w+|SSH_\\w+|GNUPGHOME|KEYWARD_\\w+|XDG_\\w+|KUBECONFIG|DOCKER_\\w+',
    'EDITOR|VISUAL|PAGER|BROWSER|LESS\\w*|MANPAGER|MANOPT',
    // compilers and build tools, which make, autotools, node-gyp, cgo and pip run as commands
    'CC|CXX|CPP|LD|AR|AS|NM|RANLIB|STRIP|OBJCOPY|OBJDUMP|FC|F77|MAKE|MAKEFILES|MFLAGS',
    'CMAKE_\\w+|CCACHE_\\w+|DISTCC_\\w+|PKG_CONFIG\\w*|CPATH|C_INCLUDE_PATH|CPLUS_INCLUDE_PATH|LIBRARY_PATH',
    // programs other tools run, and editors' and tools' own start-up code
    '\\w*ASKPASS|\\w*PAGER|SUDO_EDITOR|KUBE_EDITOR|HGEDITOR|SVN_EDITOR|CVSEDITOR|GH_EDITOR|FCEDIT',
    'RSYNC_RSH|CVS_RSH|SVN_SSH|VIMINIT|EXINIT|MYVIMRC|HGRCPATH|AWKPATH|R_PROFILE\\w*|R_LIBS\\w*|R_ENVIRON\\w*',
    'PUPPETEER_EXECUTABLE_PATH|PLAYWRIGHT_BROWSERS_PATH|CHROME_PATH|CHROME_BIN|ELECTRON_RUN_AS_NODE|SHELLOPTS|BASHOPTS',
    // trust and traffic
    'OPENSSL_\\w+|SSLKEYLOGFILE|SSL_CERT_\\w+|\\w*CA_BUNDLE|\\w*CA_CERTS?|\\w*CAINFO|\\w*CAPATH',
    'HTTPS?_PROXY|ALL_PROXY|NO_PROXY|FTP_PROXY',
    // families
    '\\w*_OPTS|\\w*_OPTIONS|\\w*FLAGS|\\w*CONF\\w*|\\w*_HOOKS?|\\w*_HOOK_\\w+|\\w*_INIT|\\w*_WRAPPER|\\w*_PRELOAD|\\w*_PLUGINS?',
  ].join('|')})$`,
  'i',
);

/** Why a sealed file may not set `name`, or undefined when it may. */
export function reservedName(name: string): string | undefined {
  return RESERVED.test(name)
    ? `${name} may change what a program loads or runs, what it trusts or where its traffic goes: a sealed file never sets it`
    : undefined;
}
const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
/** A project's name: what policy targets say (`project:NAME/VAR`); vault-name parts, at most 100. */
const PROJECT_RE = /^(?=.{1,100}$)[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)*$/;

export interface ProjectFile {
  /** The project it belongs to, as sealed (under the MAC): policy targets are `project:NAME/VAR`. */
  project: string;
  id: Buffer;
  recipients: string[];
  /** The data key's age file. */
  keyFile: Buffer;
  /** Names in file order, each with its sealed value (nonce || ciphertext || tag). */
  entries: Array<{ name: string; sealed: Buffer }>;
  /** The bytes the MAC covers (everything before the mac line), and the MAC. */
  signed: Buffer;
  mac: Buffer;
}

function tampered(why: string): IntegrityError {
  return new IntegrityError('PROJECT_TAMPERED', `the sealed project file is damaged: ${why}`);
}

export function checkName(name: string): string {
  if (!NAME_RE.test(name))
    throw new UsageError(
      'INVALID_NAME',
      `${JSON.stringify(name.slice(0, 130))} is not a name a project file takes: letters, digits and _, not starting with a digit (at most 128)`,
    );
  return name;
}

/** The project name, checked: INVALID_NAME says what a project name may be. */
export function checkProjectName(name: string): string {
  if (!PROJECT_RE.test(name))
    throw new UsageError(
      'INVALID_NAME',
      `${JSON.stringify(name.slice(0, 110))} is not a project name: parts of letters, digits, . _ - separated by /, each starting with a letter or digit (at most 100 characters), e.g. github.com/acme/api`,
    );
  return name;
}

/** The subkey `which` of a data key, in secure memory. */
function subkey(dataKey: SecureBuffer, which: number): SecureBuffer {
  const k = securePooled(32);
  sodium.crypto_kdf_derive_from_key(k, which, CONTEXT, dataKey);
  return k;
}

const aad = (id: Buffer, name: string) =>
  Buffer.concat([AAD_PREFIX, id, Buffer.from(name, 'ascii')]);
const b64url = (b: Uint8Array) => Buffer.from(b).toString('base64url');

/**
 * The text of a new sealed file: every value encrypted under a new data key, which is wrapped to
 * every recipient (`age1...`). Values are read, not freed.
 */
export function sealProject(
  project: string,
  entries: ReadonlyArray<{ name: string; value: SecureBuffer }>,
  recipients: readonly string[],
): string {
  checkProjectName(project);
  if (recipients.length === 0)
    throw new UsageError('USAGE', 'a sealed project file needs at least one recipient');
  if (new Set(recipients).size > MAX_RECIPIENTS)
    throw new UsageError('USAGE', `at most ${MAX_RECIPIENTS} recipients`);
  const keys = recipients.map((r) => {
    const pk = decodeRecipient(r);
    if (!pk)
      throw new UsageError(
        'USAGE',
        `${JSON.stringify(r.slice(0, 80))} is not an age recipient (age1...)`,
      );
    return pk;
  });
  if (entries.length > MAX_ENTRIES) throw new UsageError('USAGE', `at most ${MAX_ENTRIES} values`);
  const seen = new Set<string>();
  for (const e of entries) {
    checkName(e.name);
    const reserved = reservedName(e.name);
    if (reserved) throw new UsageError('INVALID_NAME', reserved);
    if (seen.has(e.name)) throw new UsageError('USAGE', `${e.name} is given twice`);
    seen.add(e.name);
    if (e.value.length > MAX_VALUE)
      throw new UsageError('INVALID_VALUE', `the value of ${e.name} is over ${MAX_VALUE} bytes`);
  }
  const dataKey = secureRandom(DATA_KEY_BYTES);
  const valueKey = subkey(dataKey, VALUE_KEY);
  const macKey = subkey(dataKey, MAC_KEY);
  try {
    const id = randomBytes(ID_BYTES);
    const lines = [
      FIRST_LINE,
      VERSION_LINE,
      `project: ${project}`,
      `id: ${b64url(id)}`,
      ...[...new Set(recipients)].map((r) => `recipient: ${r}`),
      `key: ${b64url(ageEncrypt(dataKey, keys))}`,
    ];
    for (const e of entries) {
      const nonce = randomBytes(NONCE);
      const sealed = Buffer.alloc(e.value.length + TAG);
      sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        sealed,
        e.value,
        aad(id, e.name),
        null,
        nonce,
        valueKey,
      );
      lines.push(`${e.name}=kw:${b64url(Buffer.concat([nonce, sealed]))}`);
    }
    const signed = Buffer.from(`${lines.join('\n')}\n`, 'ascii');
    const mac = Buffer.alloc(sodium.crypto_auth_BYTES);
    sodium.crypto_auth(mac, signed, macKey);
    return `${signed.toString('ascii')}mac: ${b64url(mac)}\n`;
  } finally {
    secureFree(dataKey);
    secureRelease(valueKey);
    secureRelease(macKey);
  }
}

/** The file's structure, every line checked against the shape keyward writes; no key needed. */
export function parseProject(text: Uint8Array): ProjectFile {
  const buf = Buffer.from(text.buffer, text.byteOffset, text.length);
  if (buf.length > 16 * 1024 * 1024) throw tampered('it is larger than 16 MiB');
  if (buf.some((b) => b > 0x7e || (b < 0x20 && b !== 0x0a)))
    throw tampered('it holds bytes keyward never writes (a sealed file is printable ASCII)');
  const s = buf.toString('ascii');
  if (!s.endsWith('\n')) throw tampered('its last line is cut (no newline)');
  const lines = s.slice(0, -1).split('\n');
  const at = (i: number) => lines[i] ?? '';
  if (at(0) !== FIRST_LINE || at(1) !== VERSION_LINE)
    throw tampered('it does not begin as a keyward sealed project file of version 1');
  const pm = /^project: (.*)$/.exec(at(2));
  const project = pm?.[1] ?? '';
  if (!PROJECT_RE.test(project)) throw tampered('line 3 is not its project name');
  const idm = /^id: ([A-Za-z0-9_-]{22})$/.exec(at(3));
  const id = idm ? Buffer.from(idm[1] ?? '', 'base64url') : undefined;
  if (!id || id.length !== ID_BYTES || b64url(id) !== idm?.[1])
    throw tampered('line 4 is not its id');
  let i = 4;
  // Bounded before any work per line: a file keyward never writes can't make the agent spin.
  if (lines.length > 8 + MAX_RECIPIENTS + MAX_ENTRIES)
    throw tampered(`it has more lines than a file of ${MAX_ENTRIES} values can`);
  const recipients: string[] = [];
  const seenRecipients = new Set<string>();
  for (; at(i).startsWith('recipient: '); i++) {
    const r = at(i).slice('recipient: '.length);
    if (!decodeRecipient(r) || seenRecipients.has(r) || recipients.length >= MAX_RECIPIENTS)
      throw tampered(`line ${i + 1} is not a recipient, is one given twice, or one too many`);
    seenRecipients.add(r);
    recipients.push(r);
  }
  if (recipients.length === 0) throw tampered('it names no recipient');
  const km = /^key: ([A-Za-z0-9_-]+)$/.exec(at(i));
  const keyFile = km ? Buffer.from(km[1] ?? '', 'base64url') : undefined;
  if (!keyFile || b64url(keyFile) !== km?.[1]) throw tampered(`line ${i + 1} is not its key`);
  // keyward wraps the key once for each recipient it lists, and for no one else: a recipient who
  // writes the file by hand can't add an unlisted one without taking a listed one's place (who
  // then can't open it, and is told the file was tampered with).
  const kinds = stanzaKinds(keyFile);
  if (kinds.some((k) => k !== 'X25519'))
    throw tampered('its key is wrapped for a kind of recipient keyward never writes');
  if (kinds.length !== recipients.length)
    throw tampered(
      `its key is wrapped for ${kinds.length} recipients, but it lists ${recipients.length}`,
    );
  i++;
  const entries: ProjectFile['entries'] = [];
  const seenNames = new Set<string>();
  for (; i < lines.length - 1; i++) {
    const m = /^([A-Za-z_][A-Za-z0-9_]{0,127})=kw:([A-Za-z0-9_-]+)$/.exec(at(i));
    const sealed = m ? Buffer.from(m[2] ?? '', 'base64url') : undefined;
    const name = m?.[1] ?? '';
    if (
      !sealed ||
      b64url(sealed) !== m?.[2] ||
      sealed.length < NONCE + TAG ||
      sealed.length > NONCE + TAG + MAX_VALUE
    )
      throw tampered(`line ${i + 1} is not a sealed value`);
    if (seenNames.has(name)) throw tampered(`${name} is given twice`);
    if (entries.length >= MAX_ENTRIES) throw tampered(`it holds more than ${MAX_ENTRIES} values`);
    // A file sealed by an older keyward, before the name was on the list, says so too.
    if (reservedName(name))
      throw tampered(
        `it sets ${name}, which keyward never seals (it may change what a program runs); if it is yours, seal it again without ${name}`,
      );
    seenNames.add(name);
    entries.push({ name, sealed });
  }
  const mm = /^mac: ([A-Za-z0-9_-]{43})$/.exec(at(lines.length - 1));
  const mac = mm ? Buffer.from(mm[1] ?? '', 'base64url') : undefined;
  if (!mac || mac.length !== 32 || b64url(mac) !== mm?.[1] || lines.length - 1 < i)
    throw tampered('its last line is not its MAC');
  const signed = buf.subarray(0, buf.length - `${at(lines.length - 1)}\n`.length);
  return { project, id, recipients, keyFile, entries, signed, mac };
}

/** A sealed file opened with one identity: its values, one at a time, until close(). */
export class OpenedProject {
  private constructor(
    readonly file: ProjectFile,
    private valueKey: SecureBuffer | undefined,
  ) {}

  /**
   * Opens `file` with an identity (a 32-byte X25519 secret): undefined when it is not one of the
   * file's recipients; PROJECT_TAMPERED when the file was changed in any way since it was sealed.
   */
  static open(file: ProjectFile, identity: SecureBuffer): OpenedProject | undefined {
    const dataKey = ageDecrypt(file.keyFile, identity);
    if (!dataKey) return undefined;
    let macKey: SecureBuffer | undefined;
    let valueKey: SecureBuffer | undefined;
    try {
      if (dataKey.length !== DATA_KEY_BYTES) throw tampered('its data key is not 32 bytes');
      macKey = subkey(dataKey, MAC_KEY);
      const mac = Buffer.alloc(sodium.crypto_auth_BYTES);
      sodium.crypto_auth(mac, file.signed, macKey);
      if (!secureEqual(mac, file.mac))
        throw tampered('its MAC does not verify (a line was changed, added, removed or moved)');
      valueKey = subkey(dataKey, VALUE_KEY);
      const opened = new OpenedProject(file, valueKey);
      valueKey = undefined;
      return opened;
    } finally {
      secureRelease(dataKey);
      secureRelease(macKey);
      secureRelease(valueKey);
    }
  }

  get project(): string {
    return this.file.project;
  }

  /** The file's id (16 bytes, new at every seal), as base64url: which version was opened. */
  get id(): string {
    return b64url(this.file.id);
  }

  get names(): string[] {
    return this.file.entries.map((e) => e.name);
  }

  /** The value of `name` in secure memory (the caller frees it), or undefined: no such name. */
  value(name: string): SecureBuffer | undefined {
    if (!this.valueKey) throw new Error('the project file was closed');
    const e = this.file.entries.find((x) => x.name === name);
    if (!e) return undefined;
    const out = secureAlloc(e.sealed.length - NONCE - TAG);
    try {
      sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out,
        null,
        e.sealed.subarray(NONCE),
        aad(this.file.id, name),
        e.sealed.subarray(0, NONCE),
        this.valueKey,
      );
      return out;
    } catch {
      secureFree(out);
      throw tampered(`the value of ${name} does not decrypt`);
    }
  }

  close(): void {
    secureRelease(this.valueKey);
    this.valueKey = undefined;
  }
}

/** Seals a plain .env file's values to recipients: the sealed file's text (file read in secure memory). */
export async function sealEnvFile(
  project: string,
  file: string,
  recipients: readonly string[],
): Promise<{ text: string; count: number }> {
  const { readEnvFile, freeEntries } = await import('./dotenv.js');
  const entries = readEnvFile(file);
  try {
    return { text: sealProject(project, entries, recipients), count: entries.length };
  } finally {
    freeEntries(entries);
  }
}
