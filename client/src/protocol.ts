/**
 * The wire protocol's constants and message types, in one place: the close codes of
 * `src/protocol/close.rs`, the chat stream's requests, events and error codes of
 * `docs/PROTOCOL.md`, and the room-name rule of the server's `RoomName`. A test
 * (`test/protocol.test.mjs`) reads those two files and checks that they agree with this one.
 *
 * @module tandem-client/protocol
 */

/** The chat stream's protocol version (`join.v`, `joined.v`). */
export const PROTOCOL_VERSION = 1;

/** WebSocket close codes the server sends, by name. */
export const CloseCode = {
  /** Normal closure (sent by clients). */
  NORMAL: 1000,
  /** Server shutting down, or no pong in time: reconnect and resume. */
  GOING_AWAY: 1001,
  /** The client broke the WebSocket protocol. */
  PROTOCOL_ERROR: 1002,
  /** The wrong kind of frame (binary on the chat stream, text on `/yjs`). */
  UNSUPPORTED_DATA: 1003,
  /** A frame larger than `--max-message-bytes`. */
  MESSAGE_TOO_BIG: 1009,
  /** The room failed (storage): reconnect and resume. */
  INTERNAL_ERROR: 1011,
  /** The node is at a limit or shutting down: retry later. */
  TRY_AGAIN_LATER: 1013,
  /** Text that is not UTF-8 (chat), or a y-websocket message that cannot be decoded. */
  MALFORMED_MESSAGE: 4000,
  /** A y-websocket message of an unknown type. */
  UNKNOWN_MESSAGE_TYPE: 4001,
  /** A Yjs update the document refused. */
  INVALID_UPDATE: 4002,
  /** The client read too slowly. */
  TOO_SLOW: 4008,
  /** The document grew past the server's limit. */
  DOCUMENT_TOO_LARGE: 4009,
  /** The token expired: reconnect with a fresh one. */
  TOKEN_EXPIRED: 4010,
  /** Another node or process took the room over: reconnect (the reason names the new owner). */
  ROOM_MOVED: 4011,
} as const;

/** Requests a chat client sends (`type` of a client → server frame). */
export const CHAT_REQUESTS = ['join', 'publish', 'typing', 'refresh', 'history'] as const;
/** Events the server sends on the chat stream (`type` of a server → client frame). */
export const CHAT_EVENTS = ['joined', 'message', 'ack', 'presence', 'typing', 'history', 'refreshed', 'error'] as const;
/** `code` of a chat `error` event. */
export const CHAT_ERRORS = [
  'bad_request',
  'not_joined',
  'already_joined',
  'body_too_large',
  'read_only',
  'unavailable',
  'rate_limited',
  'unauthorized',
  'internal',
] as const;

export type ChatRequestType = (typeof CHAT_REQUESTS)[number];
export type ChatEventType = (typeof CHAT_EVENTS)[number];
export type ChatErrorCode = (typeof CHAT_ERRORS)[number];

/** Longest room name, in bytes (all allowed characters are ASCII). */
export const MAX_ROOM_NAME_LEN = 128;
const ROOM_NAME = /^[A-Za-z0-9_.:-]{1,128}$/;

/**
 * Why `room` is not a name the server accepts, or `undefined` if it is one: 1–128 of
 * `A-Z a-z 0-9 _ - . :`, not starting with `.` (the server's rule, exactly).
 */
export function roomNameProblem(room: string): string | undefined {
  if (room.length === 0) return 'room name is empty';
  if (room.length > MAX_ROOM_NAME_LEN) return `room name is ${room.length} characters long; the limit is ${MAX_ROOM_NAME_LEN}`;
  if (!ROOM_NAME.test(room)) {
    const bad = [...room].find((c) => !/[A-Za-z0-9_.:-]/.test(c));
    return `room name contains ${JSON.stringify(bad)}; allowed are A-Z a-z 0-9 _ - . :`;
  }
  if (room.startsWith('.')) return "room name must not start with '.'";
  return undefined;
}

/** True if `room` is a room name the server accepts. */
export function isValidRoomName(room: string): boolean {
  return roomNameProblem(room) === undefined;
}

/** Throws a `TypeError` saying why, if `room` is not a valid room name. */
export function assertRoomName(room: string): void {
  const problem = roomNameProblem(room);
  if (problem !== undefined) throw new TypeError(`invalid room name ${JSON.stringify(room)}: ${problem}`);
}

/** A message of the room's stream. */
export interface ChatMessage {
  type: 'message';
  /** Per-room sequence number: 1, 2, 3… without gaps. */
  seq: number;
  /** Server time it was sequenced, ms since the Unix epoch. */
  ts: number;
  /** The publisher's token subject, or `anon-…`. */
  sender: string;
  /** The client message id, if one was given. */
  id?: string;
  /** The message body. */
  body: unknown;
}

/** A member of the room's presence list. */
export interface ChatMember {
  conn: string;
  subject: string;
  info?: unknown;
  status?: string;
}

/** The server's answer to `join`. */
export interface Joined {
  type: 'joined';
  v: number;
  room: string;
  epoch: string;
  conn: string;
  recovered: boolean;
  replayed: number;
  first_seq: number;
  last_seq: number;
  presence: ChatMember[];
}

/** The answer to a publish. */
export interface Ack {
  type: 'ack';
  id?: string;
  seq: number;
  duplicate: boolean;
}

/** A page of history (oldest first). */
export interface Page {
  epoch: string;
  first_seq: number;
  last_seq: number;
  recovered: boolean;
  messages: ChatMessage[];
}

/** A `typing` event. */
export interface Typing {
  conn: string;
  subject: string;
  /** `null` once cleared or expired. */
  status: string | null;
}
