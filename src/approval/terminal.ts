/**
 * The agent's own terminal as an approval channel (`keyward agent run` in the foreground). A
 * person types a short random challenge shown with the prompt: a script that answers "yes", or
 * input typed before the prompt appeared, never passes. Prompts are asked one at a time.
 */
import { randomInt } from 'node:crypto';

// No 0/o, 1/l/i: a person reads these off a screen.
const ALPHABET = 'abcdefghjkmnpqrstuvwxyz23456789';

export interface TerminalIo {
  input: NodeJS.ReadableStream;
  write: (s: string) => void;
}

export class TerminalChannel {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly io: TerminalIo) {}

  /**
   * Resolves true only when the person types this prompt's challenge before timeoutMs. A prompt
   * whose request ends first (`ended`) is not asked, or is taken back, and resolves false.
   */
  ask(prompt: string, timeoutMs: number, ended?: AbortSignal): Promise<boolean> {
    const turn = this.queue.then(() => this.askNow(prompt, timeoutMs, ended));
    this.queue = turn.catch(() => undefined);
    return turn;
  }

  private askNow(prompt: string, timeoutMs: number, ended?: AbortSignal): Promise<boolean> {
    if (ended?.aborted) return Promise.resolve(false);
    const challenge = Array.from({ length: 4 }, () => ALPHABET[randomInt(ALPHABET.length)]).join(
      '',
    );
    return new Promise((resolve) => {
      let buf = '';
      const done = (ok: boolean, note: string) => {
        clearTimeout(timer);
        ended?.removeEventListener('abort', onEnded);
        this.io.input.removeListener('data', onData);
        this.io.write(`${note}\n`);
        resolve(ok);
      };
      const onEnded = () =>
        done(
          false,
          'keyward: that request has ended (it was decided elsewhere, or its requester left): no longer asked.',
        );
      const onData = (d: Buffer | string) => {
        buf += d.toString();
        const nl = buf.search(/[\r\n]/);
        if (nl === -1) return;
        const answer = buf.slice(0, nl).trim();
        done(
          answer === challenge,
          answer === challenge
            ? 'keyward: allowed.'
            : 'keyward: denied (that was not the challenge).',
        );
      };
      const timer = setTimeout(() => done(false, 'keyward: no answer in time: denied.'), timeoutMs);
      this.io.write(
        `\n${prompt}\nkeyward: to allow, type ${challenge} and Enter (anything else denies): `,
      );
      this.io.input.on('data', onData);
      ended?.addEventListener('abort', onEnded, { once: true });
    });
  }
}
