/**
 * tandem-client: small helpers for talking to a Tandem collaboration server.
 *
 * Tandem speaks the standard y-websocket sync + awareness protocol on
 * `/yjs/{room}`, so the stock `WebsocketProvider` from `y-websocket` is the
 * client; this module only adds URL handling, a WebSocket implementation for
 * Node, and typed wrappers around Tandem's HTTP room endpoints.
 *
 * @module tandem-client
 */

import type * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';

/** Options accepted by the stock `WebsocketProvider` constructor. */
export type WebsocketProviderOptions = NonNullable<ConstructorParameters<typeof WebsocketProvider>[3]>;

/** A WebSocket constructor as y-websocket expects it (the DOM shape). */
export type WebSocketConstructor = NonNullable<WebsocketProviderOptions['WebSocketPolyfill']>;

/** Options for {@link tandemProvider}: the stock provider options, unchanged. */
export interface TandemProviderOptions extends WebsocketProviderOptions {
  /**
   * WebSocket implementation to use. Defaults to `globalThis.WebSocket`
   * (browsers, Node >= 22) or, where that is missing (Node 20), the `ws`
   * package, which must then be installed.
   */
  WebSocketPolyfill?: WebSocketConstructor;
}

/** Room names the server accepts: 1..128 characters of `[A-Za-z0-9._-]`. */
const ROOM_NAME = /^[A-Za-z0-9._-]{1,128}$/;

/**
 * Node 20 has no global WebSocket, and the provider must be handed a
 * constructor synchronously, so the `ws` fallback is resolved once at module
 * load (top-level await). The specifier is kept in a variable so browser
 * bundlers do not try to bundle `ws`; the import only runs when needed.
 */
const wsModuleName = 'ws';
const fallbackWebSocket: WebSocketConstructor | undefined =
  typeof globalThis.WebSocket === 'undefined'
    ? await import(/* webpackIgnore: true */ /* @vite-ignore */ wsModuleName).then(
        (m: { default?: unknown; WebSocket?: unknown }) => (m.default ?? m.WebSocket) as WebSocketConstructor,
        () => undefined, // `ws` not installed: reported when a provider is actually requested
      )
    : undefined;

/** Returns true if `room` is a room name the server accepts. */
export function isValidRoomName(room: string): boolean {
  return ROOM_NAME.test(room);
}

function assertRoomName(room: string): void {
  if (!isValidRoomName(room)) {
    throw new TypeError(`invalid room name ${JSON.stringify(room)}: expected 1..128 characters of [A-Za-z0-9._-]`);
  }
}

/**
 * Parses a server base URL and strips trailing slashes from its path, keeping
 * any path prefix (e.g. a reverse-proxy mount point) but dropping query and hash.
 */
function parseBase(serverUrl: string): { protocol: string; rest: string } {
  let url: URL;
  try {
    url = new URL(serverUrl);
  } catch {
    throw new TypeError(`invalid server URL ${JSON.stringify(serverUrl)}`);
  }
  const path = url.pathname.replace(/\/+$/, '');
  return { protocol: url.protocol, rest: `//${url.host}${path}` };
}

/**
 * The WebSocket base URL for a server: `http://h:p` → `ws://h:p/yjs`,
 * `https://…` → `wss://…/yjs`; `ws(s)://` bases keep their scheme.
 * The provider appends `/{room}` to this.
 */
export function toWebSocketUrl(serverUrl: string): string {
  const { protocol, rest } = parseBase(serverUrl);
  const scheme = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' }[protocol];
  if (scheme === undefined) {
    throw new TypeError(`unsupported server URL scheme ${protocol} (expected http, https, ws or wss)`);
  }
  return `${scheme}${rest}/yjs`;
}

/**
 * The HTTP base URL for a server (the inverse mapping of
 * {@link toWebSocketUrl}, without the `/yjs` suffix).
 */
export function toHttpUrl(serverUrl: string): string {
  const { protocol, rest } = parseBase(serverUrl);
  const scheme = { 'http:': 'http:', 'https:': 'https:', 'ws:': 'http:', 'wss:': 'https:' }[protocol];
  if (scheme === undefined) {
    throw new TypeError(`unsupported server URL scheme ${protocol} (expected http, https, ws or wss)`);
  }
  return `${scheme}${rest}`;
}

/**
 * Connects `doc` to `room` on a Tandem server with the stock y-websocket
 * provider.
 *
 * @param serverUrl base URL of the server, `http(s)://` or `ws(s)://`
 *   (e.g. `http://127.0.0.1:8080`); `/yjs` is appended.
 * @param room room name, 1..128 characters of `[A-Za-z0-9._-]`.
 * @param doc the Yjs document to keep in sync.
 * @param opts stock `WebsocketProvider` options. Note that the stock default
 *   `disableBc: false` also syncs same-named rooms through BroadcastChannel
 *   inside one process or browser; pass `disableBc: true` to go only through
 *   the server.
 * @returns the provider; listen to its `sync`/`status` events, or use
 *   {@link waitForSync}. Call `destroy()` when done.
 */
export function tandemProvider(
  serverUrl: string,
  room: string,
  doc: Y.Doc,
  opts: TandemProviderOptions = {},
): WebsocketProvider {
  assertRoomName(room);
  const WebSocketPolyfill = opts.WebSocketPolyfill ?? globalThis.WebSocket ?? fallbackWebSocket;
  if (WebSocketPolyfill === undefined) {
    throw new Error('no WebSocket implementation: install the `ws` package or pass opts.WebSocketPolyfill');
  }
  return new WebsocketProvider(toWebSocketUrl(serverUrl), room, doc, { ...opts, WebSocketPolyfill });
}

/**
 * Resolves once `provider` has completed its initial sync with the server
 * (immediately if it already has); rejects after `timeoutMs`.
 */
export function waitForSync(provider: WebsocketProvider, timeoutMs = 10_000): Promise<void> {
  if (provider.synced) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onSync = (synced: boolean): void => {
      if (!synced) return;
      clearTimeout(timer);
      provider.off('sync', onSync);
      resolve();
    };
    const timer = setTimeout(() => {
      provider.off('sync', onSync);
      reject(new Error(`room ${provider.roomname} did not sync within ${timeoutMs} ms (url ${provider.url})`));
    }, timeoutMs);
    provider.on('sync', onSync);
  });
}

function roomUrl(serverUrl: string, room: string, endpoint: 'state' | 'update', query = ''): string {
  assertRoomName(room);
  return `${toHttpUrl(serverUrl)}/rooms/${encodeURIComponent(room)}/${endpoint}${query}`;
}

/** Throws an Error carrying the method, URL, status and body of a failed response. */
async function ensureOk(response: Response, method: string, url: string): Promise<Response> {
  if (!response.ok) {
    const body = await response.text().catch(() => '<unreadable body>');
    throw new Error(`${method} ${url} failed: ${response.status} ${response.statusText}: ${body}`);
  }
  return response;
}

/**
 * Fetches the room's full document state as a Yjs (v1) update, suitable for
 * `Y.applyUpdate(doc, state)`.
 */
export async function fetchState(serverUrl: string, room: string, init?: RequestInit): Promise<Uint8Array> {
  const url = roomUrl(serverUrl, room, 'state');
  const response = await ensureOk(await fetch(url, init), 'GET', url);
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * Fetches the room's document as JSON: one key per root shared type, e.g.
 * `{"text": "hello"}` for a `Y.Text` named `text`.
 */
export async function fetchJson<T = Record<string, unknown>>(
  serverUrl: string,
  room: string,
  init?: RequestInit,
): Promise<T> {
  const url = roomUrl(serverUrl, room, 'state', '?format=json');
  const response = await ensureOk(await fetch(url, init), 'GET', url);
  return (await response.json()) as T;
}

/**
 * Applies a Yjs (v1) update to the room over HTTP, e.g. one produced by
 * `Y.encodeStateAsUpdate(doc)`. Connected providers receive it like any
 * other edit. Throws on a non-2xx response, with its status and body.
 */
export async function postUpdate(serverUrl: string, room: string, update: Uint8Array, init?: RequestInit): Promise<void> {
  const url = roomUrl(serverUrl, room, 'update');
  const headers = new Headers(init?.headers);
  headers.set('content-type', 'application/octet-stream');
  // Yjs updates are backed by plain ArrayBuffers; the cast only narrows TS's ArrayBufferLike.
  const body = update as Uint8Array<ArrayBuffer>;
  const response = await fetch(url, { ...init, method: 'POST', headers, body });
  await ensureOk(response, 'POST', url);
  // Drain the body so the connection can be reused.
  await response.arrayBuffer().catch(() => undefined);
}

export { WebsocketProvider };

export * from './chat.js';
