/**
 * tandem-client: everything an app needs to talk to a Tandem server.
 *
 * - {@link TandemProvider}: a Yjs provider for a room (sync and awareness over the
 *   y-websocket protocol) that reconnects with backoff, refreshes tokens and follows
 *   cluster routing;
 * - {@link TandemChat}: the room's chat stream with resume, acks, history, presence and
 *   typing, falling back to SSE + HTTP where WebSockets are refused;
 * - the protocol's constants and types, and the room-name rule;
 * - the document over HTTP (`fetchState`, `fetchJson`, `postUpdate`).
 *
 * Works in browsers and in Node ≥ 20 (on Node 20 install `ws`, or pass a WebSocket
 * implementation).
 *
 * @module tandem-client
 */

export { TandemProvider, movedTo, type ConnectionStatus, type ProviderEvents, type ProviderOptions } from './provider.js';
export {
  ChatError,
  TandemChat,
  fetchMessages,
  newMessageId,
  postMessage,
  type ChatEvents,
  type ChatOptions,
  type ChatTransport,
  type HistoryQuery,
} from './chat.js';
export * from './protocol.js';
export { backoffDelay, type BackoffOptions } from './backoff.js';
export { decodeToken, tokenExpiresAt, TokenKeeper, type TokenSource } from './token.js';
export { toHttpUrl, toWsUrl } from './url.js';
export { fetchJson, fetchState, postUpdate } from './document.js';
export type { WebSocketConstructor, WebSocketLike } from './websocket.js';
