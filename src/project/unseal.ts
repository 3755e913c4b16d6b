/**
 * `keyward unseal`: a sealed file back to a plain .env file (docs/PROJECT-FILES.md, "Unsealing").
 * The text is built in secure memory, written atomically with mode 0600, and wiped.
 */
import { IntegrityError, UsageError } from '../errors.js';
import { encodeRecipient, publicKeyOf } from './age.js';
import { secureAlloc, secureFree, type SecureBuffer } from '../lib/secure.js';
import { sweepTempFiles, writeFileAtomic } from '../lib/files.js';
import type { Vault } from '../vault/index.js';
import { OpenedProject, parseProject } from './file.js';
import { IDENTITY_RECORD } from './identity.js';

const ESCAPES = new Map<number, string>([
  [0x0a, '\\n'],
  [0x0d, '\\r'],
  [0x09, '\\t'],
  [0x22, '\\"'],
  [0x5c, '\\\\'],
]);

/** `NAME="VALUE"\n`, escaped as seal's grammar reads it back, into secure memory. */
function envLine(name: string, value: SecureBuffer): SecureBuffer {
  let n = name.length + 4;
  for (const b of value) n += ESCAPES.has(b) ? 2 : 1;
  const out = secureAlloc(n);
  let at = out.write(`${name}="`, 0, 'ascii');
  for (const b of value) {
    const e = ESCAPES.get(b);
    if (e) at += out.write(e, at, 'ascii');
    else out[at++] = b;
  }
  out.write('"\n', at, 'ascii');
  return out;
}

/**
 * Opens `sealed` with this vault's identity and writes its values to `out` as a .env file.
 * Undefined when this vault's identity is not a recipient; PROJECT_TAMPERED for a changed file.
 */
export function unsealTo(
  v: Vault,
  sealed: Uint8Array,
  out: string,
  /** Called once the file opened, before any value is decrypted or written: the audit record. */
  before: () => void,
): { project: string; id: string; names: string[] } | undefined {
  const id = v.revealInternal(IDENTITY_RECORD);
  if (!id) return undefined;
  let opened: OpenedProject | undefined;
  const lines: SecureBuffer[] = [];
  try {
    const file = parseProject(sealed);
    opened = OpenedProject.open(file, id);
    if (!opened) {
      // Listed, yet no stanza opens with this identity: the key's wrap was changed.
      if (file.recipients.includes(encodeRecipient(publicKeyOf(id))))
        throw new IntegrityError(
          'PROJECT_TAMPERED',
          'the sealed project file is damaged: it lists this vault, but no key in it opens for it',
        );
      return undefined;
    }
    before();
    for (const name of opened.names) {
      const value = opened.value(name);
      if (!value) throw new UsageError('USAGE', `no ${name}`);
      try {
        lines.push(envLine(name, value));
      } finally {
        secureFree(value);
      }
    }
    // What an unseal killed before its rename left beside the file (every value, plain, under a
    // name no ignore rule for .env files matches): found in review.
    sweepTempFiles(out, true);
    writeFileAtomic(out, lines);
    return { project: opened.project, id: opened.id, names: opened.names };
  } finally {
    for (const l of lines) secureFree(l);
    opened?.close();
    secureFree(id);
  }
}
