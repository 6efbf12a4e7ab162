/**
 * Server URLs: the base a user gives (`http(s)://` or `ws(s)://`, with an optional path
 * prefix for a reverse-proxy mount) and the endpoint URLs built from it.
 *
 * @module tandem-client/url
 */

import { assertRoomName } from './protocol.js';

/** Splits a base URL into its scheme and `//host/prefix` (no trailing slash, query or hash). */
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

const HTTP = { 'http:': 'http:', 'https:': 'https:', 'ws:': 'http:', 'wss:': 'https:' } as Record<string, string>;
const WS = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' } as Record<string, string>;

function withScheme(serverUrl: string, table: Record<string, string>): string {
  const { protocol, rest } = parseBase(serverUrl);
  const scheme = table[protocol];
  if (scheme === undefined) {
    throw new TypeError(`unsupported server URL scheme ${protocol} (expected http, https, ws or wss)`);
  }
  return `${scheme}${rest}`;
}

/** The HTTP base of a server: `ws://h:p/x/` → `http://h:p/x`. */
export function toHttpUrl(serverUrl: string): string {
  return withScheme(serverUrl, HTTP);
}

/** The WebSocket base of a server: `https://h/x` → `wss://h/x`. */
export function toWsUrl(serverUrl: string): string {
  return withScheme(serverUrl, WS);
}

/**
 * The URL of a room endpoint, e.g. `roomUrl(base, 'r', 'ws', 'rooms/{room}/ws', {token})`.
 * `path` contains `{room}`; undefined query values are left out.
 */
export function endpointUrl(
  base: string,
  scheme: 'http' | 'ws',
  path: string,
  room: string,
  query: Record<string, string | number | undefined> = {},
): string {
  assertRoomName(room);
  const root = scheme === 'ws' ? toWsUrl(base) : toHttpUrl(base);
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined) params.set(key, String(value));
  }
  const search = params.toString();
  return `${root}/${path.replace('{room}', encodeURIComponent(room))}${search ? `?${search}` : ''}`;
}
