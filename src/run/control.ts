/**
 * What the agent hands the exec step (exec-helper.ts) in a sealed memfd (docs/RUN.md):
 *
 *   "KWEXEC1\n"
 *   u32 flags            bit 0: make fd 0 (a pty) the controlling terminal of a new session
 *   string file          the program (looked up in PATH, as a shell would)
 *   u32 argc, argc x string
 *   u32 envc, envc x string   NAME=VALUE, the child's whole environment
 *   u32 nfds, nfds x u32      descriptors the child keeps (--fd)
 *
 * string = u32 length (big-endian) then the bytes. Environment values are written from the
 * caller's buffers as they are (secure memory for secrets): no string is ever made of them.
 */
export const CONTROL_MAGIC = Buffer.from('KWEXEC1\n');
export const FLAG_PTY = 1;

export interface EnvPiece {
  /** NAME= */
  name: string;
  /** The value's bytes (a secret: secure memory, not copied). */
  value: Uint8Array;
}

const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const str = (s: string) => {
  const b = Buffer.from(s, 'utf8');
  return [u32(b.length), b];
};

/** The pieces to write, in order; secret values are included by reference, never copied. */
export function controlPieces(o: {
  flags: number;
  file: string;
  argv: readonly string[];
  env: readonly EnvPiece[];
  fds: readonly number[];
}): Uint8Array[] {
  const pieces: Uint8Array[] = [CONTROL_MAGIC, u32(o.flags), ...str(o.file), u32(o.argv.length)];
  for (const a of o.argv) pieces.push(...str(a));
  pieces.push(u32(o.env.length));
  for (const e of o.env) {
    const name = Buffer.from(`${e.name}=`, 'utf8');
    pieces.push(u32(name.length + e.value.length), name, e.value);
  }
  pieces.push(u32(o.fds.length), ...o.fds.map(u32));
  return pieces;
}

export interface Control {
  flags: number;
  file: string;
  argv: string[];
  /** Each NAME=VALUE followed by a NUL, as views into the one buffer read (zeroed on failure). */
  env: Buffer[];
  fds: number[];
}

/** Parses the control bytes; env entries are NUL-terminated copies inside `block`. */
export function parseControl(data: Buffer, block: Buffer): Control {
  let o = 0;
  const need = (n: number) => {
    if (o + n > data.length) throw new Error('truncated control data');
  };
  const readU32 = () => {
    need(4);
    const v = data.readUInt32BE(o);
    o += 4;
    return v;
  };
  const readBytes = () => {
    const n = readU32();
    need(n);
    const b = data.subarray(o, o + n);
    o += n;
    return b;
  };
  need(CONTROL_MAGIC.length);
  if (data.compare(CONTROL_MAGIC, 0, CONTROL_MAGIC.length, 0, CONTROL_MAGIC.length) !== 0)
    throw new Error('bad control magic');
  o = CONTROL_MAGIC.length;
  const flags = readU32();
  const file = readBytes().toString('utf8');
  const argv: string[] = [];
  for (let n = readU32(); n > 0; n--) argv.push(readBytes().toString('utf8'));
  const env: Buffer[] = [];
  let b = 0;
  for (let n = readU32(); n > 0; n--) {
    const e = readBytes();
    if (b + e.length + 1 > block.length) throw new Error('control block too small');
    e.copy(block, b);
    block[b + e.length] = 0;
    env.push(block.subarray(b, b + e.length + 1));
    b += e.length + 1;
  }
  const fds: number[] = [];
  for (let n = readU32(); n > 0; n--) fds.push(readU32());
  if (o !== data.length) throw new Error('trailing control data');
  return { flags, file, argv, env, fds };
}

/**
 * The exec step's handshake (exec.ts): the byte it sends once it is hardened, and the bytes that
 * come with each descriptor the agent then passes (the last with GO).
 */
export const HARDENED = 0x68;
export const MORE = 0x66;
export const GO = 0x67;
