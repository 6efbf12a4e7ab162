/**
 * The room's document over HTTP: its state as a Yjs update or as JSON, and applying an
 * update, for scripts and back ends that do not keep a live connection.
 *
 * @module tandem-client/document
 */

import { endpointUrl } from './url.js';

/** Throws an Error carrying the method, URL, status and body of a failed response. */
async function ensureOk(response: Response, method: string, url: string): Promise<Response> {
  if (!response.ok) {
    const body = await response.text().catch(() => '<unreadable body>');
    throw new Error(`${method} ${url} failed: ${response.status} ${response.statusText}: ${body}`);
  }
  return response;
}

/** The room's full document state as a Yjs (v1) update, for `Y.applyUpdate(doc, state)`. */
export async function fetchState(serverUrl: string, room: string, init?: RequestInit): Promise<Uint8Array> {
  const url = endpointUrl(serverUrl, 'http', 'rooms/{room}/state', room);
  const response = await ensureOk(await fetch(url, init), 'GET', url);
  return new Uint8Array(await response.arrayBuffer());
}

/** The room's document as JSON: one key per root type, e.g. `{"text": "hello"}`. */
export async function fetchJson<T = Record<string, unknown>>(
  serverUrl: string,
  room: string,
  init?: RequestInit,
): Promise<T> {
  const url = endpointUrl(serverUrl, 'http', 'rooms/{room}/state', room, { format: 'json' });
  const response = await ensureOk(await fetch(url, init), 'GET', url);
  return (await response.json()) as T;
}

/**
 * Applies a Yjs (v1) update to the room, e.g. `Y.encodeStateAsUpdate(doc)`; connected
 * clients receive it like any other edit. Throws on a non-2xx response.
 */
export async function postUpdate(serverUrl: string, room: string, update: Uint8Array, init?: RequestInit): Promise<void> {
  const url = endpointUrl(serverUrl, 'http', 'rooms/{room}/update', room);
  const headers = new Headers(init?.headers);
  headers.set('content-type', 'application/octet-stream');
  const body = update as Uint8Array<ArrayBuffer>;
  const response = await fetch(url, { ...init, method: 'POST', headers, body });
  await ensureOk(response, 'POST', url);
  await response.arrayBuffer().catch(() => undefined);
}
