/**
 * A run's streams (docs/RUN.md): the child's stdout and stderr to the connection, masked; the
 * client's stdin, signals and terminal size to the child; the exit, and a `run.exit` record per
 * secret, when the child is gone. run-service.ts authorizes and starts; this file relays.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import tty from 'node:tty';
import type { Actor, AuditRecord } from '../audit/index.js';
import { KeywardError } from '../errors.js';
import { closeFd, dupFd } from '../lib/libc.js';
import { setWindowSize } from '../lib/process.js';
import { secureFree, zero, type SecureBuffer } from '../lib/secure.js';
import { Masker } from '../run/index.js';
import type { ProcessIdentity } from './identity.js';
import { frameHead, RUN_SIGNALS, str, STREAM, writeFrame, type Frame } from './protocol.js';
import type { RunRequestSpec, Wanted } from './run-request.js';
import type { RunConn } from './run-types.js';

/** Output the client hasn't taken yet before the child's output is paused. */
const HIGH_WATER = 1 << 20;
/** What a signal frame may ask for: what the client forwards, and a window resize. */
/** SIGPIPE: the client's reader went away (`keyward run ... | head`). */
// SIGKILL: a caller's time limit (mcp serve's timeout_seconds) ends a command that ignores SIGTERM.
const SIGNALS = new Set<string>([...RUN_SIGNALS, 'SIGWINCH', 'SIGPIPE', 'SIGKILL']);

export interface RelayHost {
  /** The running children (agent stop ends them). */
  children: Set<ChildProcess>;
  record(r: AuditRecord): Promise<unknown>;
  actor(id: ProcessIdentity): Actor;
}

/** Streams between the child and the connection until the child is gone. Owns forms. */
export function relay(
  h: RelayHost,
  conn: RunConn,
  child: ChildProcess,
  forms: SecureBuffer[],
  req: RunRequestSpec,
  details: (w: Wanted) => Record<string, string | number | boolean | null>,
  master?: number,
  onEnd?: () => void,
): void {
  h.children.add(child);
  // Under a pty the child's output (stdout and stderr together) comes from the master, read by
  // a stream on a duplicate of it. The stream owns the duplicate; this function owns master
  // and closes it when the run ends.
  const streamFd = master === undefined ? undefined : dupFd(master);
  if (master !== undefined && streamFd === undefined) {
    closeFd(master);
    master = undefined;
  }
  const term = streamFd === undefined ? undefined : new tty.ReadStream(streamFd);
  term?.on('error', () => undefined);
  const toChild: NodeJS.WritableStream | undefined = term ?? child.stdin ?? undefined;
  child.stdin?.on('error', () => undefined);
  const started = Date.now();
  const s = conn.socket;
  s.setTimeout(0);
  conn.reader.many = true;
  let ended = false;
  const maskers = forms.length > 0 ? [new Masker(forms), new Masker(forms)] : undefined;
  const send = (type: number, meta: Record<string, unknown>, data?: Buffer) => {
    if (!s.destroyed) writeFrame(s, type, meta, data);
  };
  const paused = new Set<NodeJS.ReadableStream>();
  const relayChunk = (chunk: Buffer, type: number, masker?: Masker) => {
    if (ended) return zero(chunk);
    if (masker) {
      let out: Buffer;
      try {
        out = masker.push(chunk); // zeroes chunk
      } catch (e) {
        // Memory for masking that can't be locked (MEMORY_NOT_LOCKED), in a stream's handler:
        // thrown from here it would end the agent (found in review). The run ends instead,
        // its child's whole group killed, and the client told why. What the maskers hold back
        // is dropped, not flushed: it may be the start of a value whose end was in this chunk.
        zero(chunk);
        signalChild('SIGKILL');
        end(
          null,
          'SIGKILL',
          e instanceof KeywardError ? e.message : 'its output could not be masked',
          true,
        );
        return;
      }
      if (out.length > 0) {
        send(type, {}, out);
        // What passed the masker may still hold part of a value (a prefix the child printed):
        // zeroed once written, as the unmasked path's copy is.
        s.write(Buffer.alloc(0), () => zero(out));
      }
    } else {
      // --no-masking: the bytes go as they are; this copy is zeroed once written.
      send(type, {}, chunk);
      s.write(Buffer.alloc(0), () => zero(chunk));
    }
  };
  const pump = (stream: NodeJS.ReadableStream | null, type: number, masker?: Masker) => {
    stream?.on('data', (chunk: Buffer) => {
      relayChunk(chunk, type, masker);
      if (s.writableLength > HIGH_WATER && !s.destroyed) {
        stream.pause();
        paused.add(stream);
      }
    });
  };
  s.on('drain', () => {
    for (const p of paused) p.resume();
    paused.clear();
  });
  pump(term ?? child.stdout, STREAM.stdout, maskers?.[0]);
  pump(child.stderr, STREAM.stderr, maskers?.[1]);
  // stdin: the client's socket is paused while the child doesn't take what it was given, so
  // the agent never queues more than one socket read of it.
  toChild?.on('drain', () => s.resume());
  const write = (data: Uint8Array, done: () => void) => {
    if (ended || !toChild) return done();
    try {
      if (!toChild.write(data, () => done())) s.pause();
    } catch {
      done();
    }
  };
  const signalChild = (sig: NodeJS.Signals) => {
    // The child leads its own session and process group (the exec step): the whole group.
    try {
      if (child.pid !== undefined) process.kill(-child.pid, sig);
    } catch {
      try {
        child.kill(sig);
      } catch {
        // gone
      }
    }
  };
  conn.stream = (fr: Frame) => {
    const raw = fr.raw;
    if (ended) return secureFree(raw);
    if (fr.type === STREAM.stdin && raw) return write(raw, () => secureFree(raw));
    secureFree(raw);
    if (fr.type === STREAM.stdinEnd) {
      // On a terminal, end of input is ^D.
      if (term) write(Buffer.from([4]), () => undefined);
      else child.stdin?.end();
    } else if (fr.type === STREAM.resize && master !== undefined) {
      const rows = fr.meta['rows'];
      const cols = fr.meta['cols'];
      if (typeof rows === 'number' && typeof cols === 'number' && rows > 0 && cols > 0)
        setWindowSize(master, Math.min(rows, 9999), Math.min(cols, 9999));
    } else if (fr.type === STREAM.signal) {
      const sig = str(fr.meta, 'signal');
      if (sig !== undefined && SIGNALS.has(sig)) signalChild(sig as NodeJS.Signals);
    }
  };
  /** discard: what the maskers hold back is dropped, not flushed (a chunk after it was lost). */
  const end = (
    code: number | null,
    signal: NodeJS.Signals | null,
    error?: string,
    discard = false,
  ) => {
    if (ended) return;
    ended = true;
    conn.stream = (fr: Frame) => secureFree(fr.raw);
    h.children.delete(child);
    if (maskers) {
      const [o, e] = maskers;
      const tailOut = discard ? undefined : o?.flush();
      const tailErr = discard ? undefined : e?.flush();
      if (tailOut && tailOut.length > 0) send(STREAM.stdout, {}, tailOut);
      if (tailErr && tailErr.length > 0) send(STREAM.stderr, {}, tailErr);
      o?.destroy();
      e?.destroy();
    }
    for (const form of forms) secureFree(form);
    forms.length = 0;
    term?.destroy();
    if (master !== undefined) closeFd(master);
    master = undefined;
    if (error) send(STREAM.stderr, {}, Buffer.from(`keyward run: ${error}\n`));
    send(STREAM.exit, { code, signal });
    s.end();
    onEnd?.();
    for (const w of req.wanted) {
      void h
        .record({
          type: 'run.exit',
          decision: 'info',
          target: w.name,
          actor: h.actor(conn.id),
          details: { ...details(w), code, signal, durationMs: Date.now() - started },
        })
        .catch(() => undefined);
    }
  };
  child.on('error', (e: NodeJS.ErrnoException) =>
    end(e.code === 'ENOENT' ? 127 : 126, null, `cannot start: ${e.code ?? 'error'}`),
  );
  let exited: [number | null, NodeJS.Signals | null] | undefined;
  if (term) {
    // The master reads what the child wrote until every holder of the slave is gone (EIO).
    let drained = false;
    const done = () => {
      if (exited && drained) end(...exited);
    };
    // libuv takes a hang-up seen with a short read as the end, without reading again: what
    // the child wrote last may still wait in the master. Read it here (a read after the
    // hang-up returns what waits, then EIO).
    const readRest = () => {
      for (let i = 0; i < 256 && master !== undefined && !ended; i++) {
        const chunk = Buffer.alloc(16 * 1024);
        let n: number;
        try {
          n = fs.readSync(master, chunk);
        } catch {
          return; // EIO (nothing left) or EAGAIN (the slave is still open)
        }
        if (n === 0) return;
        // relayChunk zeroes what it was given, once it is masked or written.
        relayChunk(chunk.subarray(0, n), STREAM.stdout, maskers?.[0]);
      }
    };
    const onDrained = () => {
      if (!drained) readRest();
      drained = true;
      done();
    };
    term.once('end', onDrained);
    term.once('error', onDrained);
    term.once('close', onDrained);
    const programExit = (code: number | null, signal: NodeJS.Signals | null) => {
      if (exited) return;
      exited = [code, signal];
      // A grandchild that keeps the terminal open doesn't keep the run alive forever: the run
      // ends after 2 s without output. Output that keeps coming restarts the wait, and output
      // already waiting in the master when the timer fires (a loaded machine) is read first:
      // the check runs after the next poll for input.
      let heard = 0;
      let quiet: NodeJS.Timeout | undefined;
      const arm = () => {
        heard += 1;
        clearTimeout(quiet);
        quiet = setTimeout(() => {
          const before = heard;
          setImmediate(() => {
            if (heard === before && paused.size === 0) onDrained();
          });
        }, 2000);
        quiet.unref();
      };
      term.on('data', arm);
      term.once('close', () => clearTimeout(quiet));
      arm();
      done();
    };
    child.on('exit', programExit);
  } else {
    child.on('exit', (code, signal) => (exited = [code, signal]));
    child.on('close', (code, signal) => end(code, signal));
  }
  // The client went away (terminal closed, killed): hang the child up, as a terminal would,
  // let its output flow (to nowhere) so it can finish, and end the run when it exits.
  s.on('close', () => {
    if (ended) return;
    signalChild('SIGHUP');
    for (const p of paused) p.resume();
    paused.clear();
    if (exited) end(...exited);
    else child.once('exit', (code, signal) => end(code, signal));
  });
}

/** `keyward run` of a command not found: said as a shell says it, with its status (127). */
export function commandNotFound(conn: RunConn, name: string): void {
  conn.reader.many = true;
  conn.stream = (fr: Frame) => secureFree(fr.raw);
  setImmediate(() => {
    const s = conn.socket;
    if (s.destroyed) return;
    const msg = Buffer.from(`keyward run: ${JSON.stringify(name)}: command not found\n`);
    s.write(frameHead(STREAM.stderr, {}, msg.length));
    s.write(msg);
    s.write(frameHead(STREAM.exit, { code: 127, signal: null }, 0));
    s.end();
  });
}
