// Who and where: the room (from `/r/NAME` or `?room=NAME`), the token (from the URL
// fragment `#token=…`), and the person's name and colour (kept in localStorage).
import { decodeToken, isValidRoomName } from '../../src/index.js';

const COLORS = ['#e11d48', '#d97706', '#16a34a', '#0891b2', '#2563eb', '#7c3aed', '#c026d3', '#ea580c', '#0d9488', '#4f46e5'];
const ADJECTIVES = ['Swift', 'Quiet', 'Bright', 'Bold', 'Calm', 'Clever', 'Keen', 'Lucky', 'Merry', 'Witty'];
const ANIMALS = ['Otter', 'Heron', 'Fox', 'Lynx', 'Panda', 'Robin', 'Koala', 'Finch', 'Seal', 'Wren'];

const pick = <T>(items: T[]): T => items[Math.floor(Math.random() * items.length)] as T;

/** The room this page is for; a new random one (and the URL says so) when none is named. */
export function currentRoom(): string {
  const fromPath = /^\/r\/([^/]+)\/?$/.exec(location.pathname)?.[1];
  const named = fromPath !== undefined ? decodeURIComponent(fromPath) : new URLSearchParams(location.search).get('room');
  if (named && isValidRoomName(named)) return named;
  const room = `${pick(ADJECTIVES)}-${pick(ANIMALS)}-${Math.floor(Math.random() * 9000 + 1000)}`.toLowerCase();
  history.replaceState(null, '', `/r/${room}${location.hash}`);
  return room;
}

/** The link that invites someone to the room (never with the token). */
export function roomLink(room: string): string {
  return `${location.origin}/r/${encodeURIComponent(room)}`;
}

/** The token from the fragment, if any. */
export function currentToken(): string | undefined {
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  return token || undefined;
}

/** Puts `token` in the fragment (it is never sent to a server). */
export function rememberToken(token: string): void {
  history.replaceState(null, '', `${location.pathname}${location.search}#token=${encodeURIComponent(token)}`);
}

/** True when the token grants reading only. */
export function isReadOnly(token: string | undefined): boolean {
  return token !== undefined && decodeToken(token)?.perm === 'read';
}

export interface Identity {
  name: string;
  color: string;
}

/** The name and colour this browser uses, made up the first time. */
export function loadIdentity(token: string | undefined): Identity {
  const info = token === undefined ? undefined : (decodeToken(token)?.info as { name?: unknown } | undefined);
  const stored = localStorage.getItem('tandem.name');
  const name = stored || (typeof info?.name === 'string' ? info.name : `${pick(ADJECTIVES)} ${pick(ANIMALS)}`);
  const color = localStorage.getItem('tandem.color') || pick(COLORS);
  saveIdentity({ name, color });
  return { name, color };
}

export function saveIdentity(identity: Identity): void {
  localStorage.setItem('tandem.name', identity.name);
  localStorage.setItem('tandem.color', identity.color);
}

/** Up to two initials of a name, for its avatar. */
export function initials(name: string): string {
  const words = name.trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? [words[0]![0], words[1]![0]] : [...(words[0] ?? '?').slice(0, 2)];
  return letters.join('').toUpperCase();
}

/** A name from someone else's data: a non-empty string of at most 40 characters, else `fallback`. */
export function safeName(value: unknown, fallback: string): string {
  return typeof value === 'string' && value.trim() !== '' ? value.trim().slice(0, 40) : fallback;
}

/** A colour from someone else's data: `#rrggbb` only (never `url(…)`), else grey. */
export function safeColor(value: unknown): string {
  return typeof value === 'string' && /^#[0-9a-f]{6}$/i.test(value) ? value : '#64748b';
}
