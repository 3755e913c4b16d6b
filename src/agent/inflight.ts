/**
 * Secure memory held for requests that are still arriving, across every connection of the agent
 * (keyward frames and SSH messages). Each connection is bounded on its own (one frame at a time,
 * 16 waiting SSH requests); this bounds their sum, so a thousand connections each sending part of
 * a large frame are refused instead of held: locked memory is for secrets, not for a flood.
 */
export const IN_FLIGHT_MAX = 48 * 1024 * 1024; // two of the largest frames (a 16 MiB value), and room

/**
 * How long a frame or SSH message may take to arrive, from its first byte: trickling bytes (each
 * one resetting the idle limit) doesn't extend it, so a slow sender can't hold the budget.
 */
export const FRAME_TIMEOUT_MS = 5_000;

/** A connection that asks nothing for this long is closed (either socket). */
export const IDLE_CONNECTION_MS = 120_000;

/**
 * A connection's deadline for the frame (or SSH message) it is receiving, from that frame's first
 * byte. Told after each chunk whether a frame is still incomplete and whether the chunk completed
 * any: a chunk that completed one and began the next starts the next one's deadline.
 */
export class FrameDeadline {
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly expired: () => void) {}

  update(pending: boolean, completed: number): void {
    if (!pending || completed > 0) this.clear();
    if (pending && this.timer === undefined)
      this.timer = setTimeout(this.expired, FRAME_TIMEOUT_MS);
  }

  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/**
 * The part of the budget only a keyward frame of at most SMALL_FRAME bytes may take (`lock`,
 * `approve`, `deny`, `status` and `agent stop` are such frames, as are other small requests):
 * SSH messages queued behind a signature that waits for a person, or large frames, filled the
 * rest and kept them out (found in review).
 */
export const IN_FLIGHT_RESERVED = 8 * 1024 * 1024;
export const SMALL_FRAME = 64 * 1024;

class InFlight {
  private held = 0;

  /**
   * Takes n bytes of the budget; false (and nothing taken) when it would pass the maximum. A
   * small keyward frame (`small`) may take the reserved part; anything else stops short of it.
   */
  reserve(n: number, small = false): boolean {
    if (n <= 0) return true;
    if (this.held + n > IN_FLIGHT_MAX - (small ? 0 : IN_FLIGHT_RESERVED)) return false;
    this.held += n;
    return true;
  }

  release(n: number): void {
    this.held = Math.max(0, this.held - Math.max(0, n));
  }
}

/** The agent's one budget (a process holds one agent). */
export const inFlight = new InFlight();
