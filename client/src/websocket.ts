/**
 * Which WebSocket implementation to use: the one passed in, else the platform's
 * (browsers, Node ≥ 22), else the `ws` package (Node 20), loaded only when needed so that
 * browser bundles never include it.
 *
 * @module tandem-client/websocket
 */

/** The part of the DOM `WebSocket` the clients use. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** A WebSocket constructor (the DOM's, or `ws`'s). */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** `readyState` of an open socket. */
export const OPEN = 1;

let fallback: Promise<WebSocketConstructor | undefined> | undefined;

/** The implementation to use; rejects with advice when there is none. */
export async function webSocketImpl(given?: WebSocketConstructor): Promise<WebSocketConstructor> {
  if (given) return given;
  const platform = (globalThis as { WebSocket?: unknown }).WebSocket;
  if (platform) return platform as WebSocketConstructor;
  // The specifier sits in a variable so that bundlers leave the import alone.
  const name = 'ws';
  fallback ??= import(/* webpackIgnore: true */ /* @vite-ignore */ name).then(
    (m: { default?: unknown; WebSocket?: unknown }) => (m.default ?? m.WebSocket) as WebSocketConstructor,
    () => undefined,
  );
  const impl = await fallback;
  if (!impl) throw new Error('no WebSocket implementation: install the `ws` package or pass WebSocketPolyfill');
  return impl;
}
