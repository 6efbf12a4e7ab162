/**
 * Reconnect delays: exponential backoff with full jitter (a uniformly random delay between
 * zero and the exponential ceiling, capped), so that clients a restart disconnected all
 * at once do not come back all at once.
 *
 * @module tandem-client/backoff
 */

/** How reconnect delays grow. */
export interface BackoffOptions {
  /** The ceiling of the first retry's delay, in ms (default 250). */
  baseMs?: number;
  /** The largest ceiling, in ms (default 10,000). */
  capMs?: number;
  /** A source of uniform numbers in [0, 1) (default `Math.random`; tests pass their own). */
  random?: () => number;
}

/** The delay before retry number `attempt` (0 for the first retry after a failure), in ms. */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}): number {
  const base = opts.baseMs ?? 250;
  const cap = opts.capMs ?? 10_000;
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor((opts.random ?? Math.random)() * ceiling);
}
