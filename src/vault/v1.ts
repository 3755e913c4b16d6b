/**
 * The encrypted index of a version 1 vault (docs/FORMAT.md, "Index"): read once, to migrate.
 */
import { secureFree, type SecureBuffer } from '../lib/secure.js';
import { deriveSubkey, open } from './crypto.js';
import { corruptError, type ParsedVault } from './format.js';
import type { Entry } from './records.js';

interface IndexEntry {
  name: string;
  id: string;
  created: string;
  updated: string;
  size: number;
}

function parseIndex(plain: SecureBuffer): IndexEntry[] {
  // The index holds names and metadata, never secret values: turning it into a string is allowed.
  let doc: unknown;
  try {
    doc = JSON.parse(plain.toString('utf8'));
  } catch {
    throw corruptError('vault index is not valid JSON');
  }
  const entries = (doc as { entries?: unknown } | null)?.entries;
  if (!Array.isArray(entries)) throw corruptError('vault index has no entry list');
  return entries.map((e: unknown) => {
    const x = e as Partial<IndexEntry> | null;
    if (
      typeof x?.name !== 'string' ||
      typeof x.id !== 'string' ||
      !/^[0-9a-f]{32}$/.test(x.id) ||
      typeof x.created !== 'string' ||
      typeof x.updated !== 'string' ||
      typeof x.size !== 'number'
    ) {
      throw corruptError('vault index has a malformed entry');
    }
    return { name: x.name, id: x.id, created: x.created, updated: x.updated, size: x.size };
  });
}

/** Decrypts and parses the index under dk, and checks it names as many entries as there are records. */
export function readIndex(dk: SecureBuffer, p: ParsedVault): Entry[] {
  const indexKey = deriveSubkey(dk, 'index');
  const plain = open(indexKey, p.indexRecord, p.header);
  secureFree(indexKey);
  if (!plain) throw corruptError('vault index failed authentication (tampered or damaged)');
  let entries: IndexEntry[];
  try {
    entries = parseIndex(plain);
  } finally {
    secureFree(plain);
  }
  if (entries.length !== p.records.length) {
    throw corruptError(
      `vault index lists ${entries.length} entries but the file has ${p.records.length}`,
    );
  }
  return entries.map((e, i) => {
    const box = p.records[i] ?? Buffer.alloc(0);
    const created = Date.parse(e.created);
    const updated = Date.parse(e.updated);
    if (!Number.isFinite(created) || !Number.isFinite(updated) || box.length - 40 !== e.size) {
      throw corruptError(`vault index entry ${i + 1} does not match its record`);
    }
    return { name: e.name, id: Buffer.from(e.id, 'hex'), created, updated, box };
  });
}
