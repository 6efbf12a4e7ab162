/**
 * Tokens: a fixed JWT or an async function that mints one, kept fresh. The keeper reads a
 * token's `exp` (without verifying it: that is the server's job) and asks for the next one
 * before it runs out, a quarter of its lifetime early (at most 30 s early).
 *
 * @module tandem-client/token
 */

/** A token, or a function that returns a fresh one (called again before each expires). */
export type TokenSource = string | (() => string | Promise<string>);

/** The claims of a JWT, decoded but not verified; `undefined` if it is not a JWT. */
export function decodeToken(token: string): Record<string, unknown> | undefined {
  const payload = token.split('.')[1];
  if (payload === undefined) return undefined;
  try {
    const base64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return claims !== null && typeof claims === 'object' ? (claims as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** When the token stops being valid, in ms since the Unix epoch, if it says. */
export function tokenExpiresAt(token: string): number | undefined {
  const exp = decodeToken(token)?.exp;
  return typeof exp === 'number' ? exp * 1000 : undefined;
}

/** How long before `expiresAt` to fetch the next token. */
function refreshDelay(expiresAt: number, now: number): number {
  const lifetime = expiresAt - now;
  const early = Math.min(30_000, lifetime / 4);
  // Never sooner than a second: a token that is already expired must not spin.
  return Math.max(1_000, lifetime - early);
}

/**
 * Holds the current token of a {@link TokenSource} and, for a function source, fetches
 * the next one before the current one expires, telling `onRefresh`.
 */
export class TokenKeeper {
  private current: string | undefined;
  private pending: Promise<string> | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stopped = false;

  constructor(
    private readonly source: TokenSource | undefined,
    private readonly onRefresh: (token: string) => void = () => {},
    private readonly onError: (error: Error) => void = () => {},
  ) {
    if (typeof source === 'string') this.current = source;
  }

  /** The current token (fetching one first if there is none); `undefined` without a source. */
  async get(): Promise<string | undefined> {
    if (this.source === undefined) return undefined;
    const expiresAt = this.current === undefined ? undefined : tokenExpiresAt(this.current);
    const expired = expiresAt !== undefined && expiresAt <= Date.now() + 1_000;
    if (this.current !== undefined && !(expired && typeof this.source === 'function')) return this.current;
    return this.fetch();
  }

  /** Forgets the current token (the server said it expired): the next `get` fetches one. */
  invalidate(): void {
    if (typeof this.source === 'function') this.current = undefined;
  }

  /** Stops the refresh timer. */
  stop(): void {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
  }

  private fetch(): Promise<string> {
    const source = this.source;
    if (typeof source !== 'function') return Promise.resolve(source ?? '');
    if (this.pending) return this.pending;
    // `then` also turns a function that throws synchronously into a rejection.
    const pending = Promise.resolve()
      .then(source)
      .then((token) => {
        if (typeof token !== 'string' || token.length === 0) {
          throw new TypeError('the token function returned no token');
        }
        this.current = token;
        this.schedule(token);
        return token;
      })
      .finally(() => {
        if (this.pending === pending) this.pending = undefined;
      });
    this.pending = pending;
    return pending;
  }

  private schedule(token: string): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    const expiresAt = tokenExpiresAt(token);
    if (expiresAt === undefined || this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.stopped) return;
      this.fetch().then(
        (next) => {
          if (!this.stopped && next !== token) this.onRefresh(next);
        },
        (error: unknown) => {
          this.onError(error instanceof Error ? error : new Error(String(error)));
          // Try again shortly; the current token may still be good for a while.
          if (!this.stopped) this.timer = setTimeout(() => this.schedule(token), 1_000);
        },
      );
    }, refreshDelay(expiresAt, Date.now()));
  }
}
