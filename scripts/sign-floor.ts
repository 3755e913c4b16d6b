/**
 * The floor of the signing agent's design, for `npm run bench` (bench-sign.ts): an SSH agent in
 * Node that does, per signature, only what the design requires of any agent that keeps rule 4
 * (a release durable in the audit log before it leaves) and nothing of keyward's own: the
 * request framed and its key found, a line of an audit entry's size written and fdatasynced
 * (group commit: the requests that arrive while one batch is written share the next; each
 * batch's fsync on the event loop's thread, as the agent's is while its disk is fast), then the
 * signature made and sent. It does
 * not identify its caller, decide by a policy, MAC, hash or seal the line, or check the log for
 * tampering: it is a lower bound. What keyward adds above it is its own cost; what the floor
 * itself misses a target by is the distance no agent of this design in Node closes here.
 *
 * It signs with its own keys of the requested type (ed25519 through libsodium, as the agent;
 * ECDSA P-256 through node:crypto); the bench's client checks only that an answer is a
 * signature response. Usage: node sign-floor.js SOCKET LOGFILE (prints "up" when listening).
 */
import { generateKeyPairSync, sign as nodeSign } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import sodium from 'sodium-native';
import { overwriteLog } from './overwrite-log.js';

const [sock, logFile] = process.argv.slice(2);
if (!sock || !logFile) {
  process.stderr.write('usage: sign-floor SOCKET LOGFILE\n');
  process.exit(2);
}

const SIGN_REQUEST = 13;
const SIGN_RESPONSE = 14;
const FAILURE = 5;
/** About the length of one of keyward's audit lines (the bench's audit part prints it). */
const LINE_BYTES = 580;

const edPublic = Buffer.alloc(sodium.crypto_sign_PUBLICKEYBYTES);
const edSecret = sodium.sodium_malloc(sodium.crypto_sign_SECRETKEYBYTES);
sodium.crypto_sign_keypair(edPublic, edSecret);
const ecdsa = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;

const str = (b: Buffer): Buffer => {
  const l = Buffer.alloc(4);
  l.writeUInt32BE(b.length);
  return Buffer.concat([l, b]);
};
const frame = (type: number, body: Buffer = Buffer.alloc(0)): Buffer =>
  str(Buffer.concat([Buffer.of(type), body]));

/** The signature blob for a key of this type over data, or undefined for another type. */
function signBlob(type: string, data: Buffer): Buffer | undefined {
  if (type === 'ssh-ed25519') {
    const sig = Buffer.alloc(sodium.crypto_sign_BYTES);
    sodium.crypto_sign_detached(sig, data, edSecret);
    return Buffer.concat([str(Buffer.from(type)), str(sig)]);
  }
  if (type === 'ecdsa-sha2-nistp256')
    return Buffer.concat([str(Buffer.from(type)), str(nodeSign('sha256', data, ecdsa))]);
  return undefined;
}

// Group commit, as the agent's: one write and one sync for the requests that came meanwhile. The
// lines go over a file of fixed size and are fdatasynced, as the agent's journal is (docs/AUDIT.md,
// "The journal"; until 2026-12-07 appended and fsynced, as the agent did then).
const log = overwriteLog(logFile);
type Pending = { line: Buffer; done: () => void };
let queue: Pending[] = [];
let running = false;
function record(line: Buffer): Promise<void> {
  return new Promise((done) => {
    queue.push({ line, done });
    if (!running) {
      running = true;
      setImmediate(drain);
    }
  });
}
function drain(): void {
  const batch = queue;
  queue = [];
  log.write(Buffer.concat(batch.map((p) => p.line)));
  // Each batch's fsync on this thread, sooner than through the pool, as the agent's while its
  // disk is fast (audit/group.ts). Until 2026-12-06 the floor sent every fsync to the pool, and
  // so sat lower than keyward's own choice; until 2026-12-07 (fifteenth session) a batch of two
  // or more went to the pool, as the agent's did. The waiters go on after this turn: what they
  // record meanwhile makes the next batch, at the next turn.
  fs.fdatasyncSync(log.fd);
  for (const p of batch) p.done();
  running = false;
}

let seq = 0;
async function answer(c: net.Socket, msg: Buffer): Promise<void> {
  if (msg[0] !== SIGN_REQUEST) {
    c.write(frame(FAILURE));
    return;
  }
  const blobLen = msg.readUInt32BE(1);
  const blob = msg.subarray(5, 5 + blobLen);
  const type = blob.subarray(4, 4 + blob.readUInt32BE(0)).toString('latin1');
  const dataLen = msg.readUInt32BE(5 + blobLen);
  const data = msg.subarray(9 + blobLen, 9 + blobLen + dataLen);
  seq += 1;
  const text = `{"seq":${seq},"type":"key.sign","target":"${type}","decision":"allow"}`;
  const line = Buffer.alloc(LINE_BYTES, 0x20);
  line.write(text);
  line[LINE_BYTES - 1] = 0x0a;
  await record(line);
  const sig = signBlob(type, data);
  c.write(sig ? frame(SIGN_RESPONSE, str(sig)) : frame(FAILURE));
}

const server = net.createServer((c) => {
  let buf: Buffer = Buffer.alloc(0);
  // One request at a time per connection, in order, as an SSH agent answers.
  let chain = Promise.resolve();
  c.on('data', (d: Buffer) => {
    buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const msg = buf.subarray(4, 4 + buf.readUInt32BE(0));
      buf = buf.subarray(4 + msg.length);
      chain = chain.then(() => answer(c, msg));
    }
  });
  c.on('error', () => c.destroy());
});
server.listen(sock, () => process.stdout.write('up'));
process.on('SIGTERM', () => {
  server.close();
  fs.rmSync(sock, { force: true });
  process.exit(0);
});
