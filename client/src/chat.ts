/**
 * `TandemChat`: the chat stream of one room (`docs/PROTOCOL.md`), joined and kept joined.
 * It reconnects with backoff and jitter and resumes from the last message it delivered,
 * so the app sees every message once and in order; publishes carry an id and are sent
 * again after a reconnect until acknowledged (the server deduplicates them); a token
 * function is asked for a fresh token before the current one expires (sent as
 * `refresh`). Where a WebSocket cannot be opened although the server answers HTTP (some
 * proxies), it falls back to Server-Sent Events for receiving and HTTP for publishing.
 *
 * @module tandem-client/chat
 */

import { backoffDelay, type BackoffOptions } from './backoff.js';
import { Emitter } from './events.js';
import {
  assertRoomName,
  CloseCode,
  PROTOCOL_VERSION,
  type Ack,
  type ChatMember,
  type ChatMessage,
  type Joined,
  type Page,
  type Typing,
} from './protocol.js';
import { readEventStream, SseHttpError } from './sse.js';
import { TokenKeeper, type TokenSource } from './token.js';
import { endpointUrl, toHttpUrl } from './url.js';
import { OPEN, webSocketImpl, type WebSocketConstructor, type WebSocketLike } from './websocket.js';

export type { Ack, ChatMember, ChatMessage, Joined, Page, Typing } from './protocol.js';

/** How the client talks to the server. */
export type ChatTransport = 'websocket' | 'sse';

/** Events a {@link TandemChat} emits. */
export interface ChatEvents {
  /** A message, delivered once and in `seq` order (replayed ones first). */
  message: (message: ChatMessage) => void;
  /** Joined (or re-joined) the room. */
  joined: (joined: Joined) => void;
  /**
   * The server could not recover the messages missed since the last one delivered (the
   * stream was trimmed or rebuilt): reload your view. The `message` events that follow
   * are the latest page.
   */
  reset: (joined: Joined) => void;
  /** A member joined or left. */
  presence: (event: 'join' | 'leave', member: ChatMember) => void;
  /** A member's typing status changed (`null` once cleared or expired). */
  typing: (typing: Typing) => void;
  /** Connection state. */
  status: (status: 'connecting' | 'connected' | 'disconnected') => void;
  /** The client switched transports (to `sse` when WebSockets are refused). */
  transport: (transport: ChatTransport) => void;
  /** An `error` event not tied to a publish or history request, or a close reason. */
  error: (error: Error) => void;
}

/** Options for {@link TandemChat}. */
export interface ChatOptions {
  /** A JWT, or a function returning one (called again before each expires). */
  token?: TokenSource;
  /** Resume from here instead of joining live (e.g. a position saved by the app). */
  resume?: { epoch?: string; since: number };
  /** `auto` (default): WebSocket, falling back to SSE + HTTP when it is refused. */
  transport?: 'auto' | ChatTransport;
  /** In `auto`, WebSocket attempts refused (while HTTP works) before falling back (default 2). */
  fallbackAfter?: number;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** WebSocket implementation (default: the platform's, else the `ws` package). */
  WebSocketPolyfill?: WebSocketConstructor;
}

/** A failed publish, history request or connection. */
export class ChatError extends Error {
  constructor(
    /** The protocol's error code (`bad_request`, `read_only`, …), or `close_N`, `closed`. */
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = 'ChatError';
  }
}

interface PendingPublish {
  body: unknown;
  frame: string;
  posting: boolean;
  resolve: (ack: Ack) => void;
  reject: (error: Error) => void;
}

interface PendingHistory {
  query: HistoryQuery;
  frame: string;
  resolve: (page: Page) => void;
  reject: (error: Error) => void;
}

/** Which page of history: `before` (newest below it) or `after` (oldest above it) a seq. */
export interface HistoryQuery {
  before?: number;
  after?: number;
  limit?: number;
}

/** How long to wait before re-sending a request refused as `rate_limited`. */
const RATE_LIMIT_RETRY_MS = 100;

let nextId = 0;
/** A message id unique enough for idempotency: time, randomness and a counter. */
export function newMessageId(): string {
  nextId += 1;
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}-${nextId}`;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A chat connection to one room that stays joined across disconnects.
 *
 * ```ts
 * const chat = new TandemChat('https://tandem.example', 'team-42', { token });
 * chat.on('message', (m) => render(m));
 * chat.on('reset', () => clearView());
 * const ack = await chat.publish({ text: 'hi' });
 * ```
 */
export class TandemChat extends Emitter<ChatEvents> {
  /** The stream's epoch, once joined. */
  epoch: string | undefined;
  /** The highest `seq` delivered to the app. */
  lastSeq = 0;
  /** The oldest stored `seq`, as of the last join. */
  firstSeq = 0;
  /** This connection's id (changes on reconnect). */
  conn: string | undefined;
  /** The presence list, by connection id. */
  readonly presence = new Map<string, ChatMember>();
  /** The transport in use. */
  transport: ChatTransport;
  /** Connection state. */
  status: 'connecting' | 'connected' | 'disconnected' = 'disconnected';

  private readonly base: string;
  private readonly tokens: TokenKeeper;
  private socket: WebSocketLike | undefined;
  private stream: AbortController | undefined;
  private joined = false;
  private closedForGood = false;
  private everOpened = false;
  private refusals = 0;
  private attempt = 0;
  private resumeFrom: { epoch?: string; since: number } | undefined;
  private readonly publishes = new Map<string, PendingPublish>();
  private readonly histories = new Map<string, PendingHistory>();
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  /** How often each request was refused for the rate or an unavailable store. */
  private readonly retries = new Map<string, number>();
  /** The client fell back to SSE by itself (so it tries WebSockets again now and then). */
  private fellBack = false;

  constructor(
    serverUrl: string,
    readonly room: string,
    private readonly opts: ChatOptions = {},
  ) {
    super();
    assertRoomName(room);
    this.base = toHttpUrl(serverUrl);
    this.transport = opts.transport === 'sse' ? 'sse' : 'websocket';
    if (opts.resume) {
      this.resumeFrom = { epoch: opts.resume.epoch, since: opts.resume.since };
      this.epoch = opts.resume.epoch;
      this.lastSeq = opts.resume.since;
    }
    this.tokens = new TokenKeeper(
      opts.token,
      (token) => this.tokenRefreshed(token),
      (error) => this.emit('error', error),
    );
    void this.connect();
  }

  /** Whether requests can be sent now. */
  get isJoined(): boolean {
    return this.joined;
  }

  /**
   * Publishes `body`; resolves with the ack once the message is durable. The publish
   * survives reconnects (it is sent again with the same id, which the server
   * deduplicates), so an app may also retry with the same `id` itself.
   */
  publish(body: unknown, id: string = newMessageId()): Promise<Ack> {
    if (this.closedForGood) return Promise.reject(new ChatError('closed', 'the chat connection was closed'));
    const existing = this.publishes.get(id);
    if (existing) {
      return new Promise((resolve, reject) => {
        const { resolve: r0, reject: j0 } = existing;
        existing.resolve = (ack) => (r0(ack), resolve(ack));
        existing.reject = (error) => (j0(error), reject(error));
      });
    }
    return new Promise((resolve, reject) => {
      const frame = JSON.stringify({ type: 'publish', id, body });
      this.publishes.set(id, { body, frame, posting: false, resolve, reject });
      if (this.joined) this.sendPublish(id);
    });
  }

  /** Sets (or with `null` clears) this connection's typing status (WebSocket only). */
  typing(status: string | null): void {
    if (this.joined && this.transport === 'websocket') this.sendFrame(JSON.stringify({ type: 'typing', status }));
  }

  /** A page of history, oldest first. */
  history(query: HistoryQuery = {}): Promise<Page> {
    if (this.closedForGood) return Promise.reject(new ChatError('closed', 'the chat connection was closed'));
    return new Promise((resolve, reject) => {
      const req = newMessageId();
      const frame = JSON.stringify({ type: 'history', req, ...query });
      this.histories.set(req, { query, frame, resolve, reject });
      if (this.joined) this.sendHistory(req);
    });
  }

  /**
   * Replaces the token now (a token function is refreshed by itself): the connection
   * keeps going under the new one, and reconnects use it.
   */
  refresh(token: string): void {
    this.tokenRefreshed(token, true);
  }

  /** Closes the connection for good; pending publishes and history requests are rejected. */
  close(): void {
    this.closedForGood = true;
    this.tokens.stop();
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.socket?.close(CloseCode.NORMAL);
    this.stream?.abort();
    const error = new ChatError('closed', 'the chat connection was closed');
    for (const p of this.publishes.values()) p.reject(error);
    for (const h of this.histories.values()) h.reject(error);
    this.publishes.clear();
    this.histories.clear();
    this.setStatus('disconnected');
  }

  private manualToken: string | undefined;

  private tokenRefreshed(token: string, manual = false): void {
    // The latest token wins, whether the app or the token function gave it.
    this.manualToken = manual ? token : undefined;
    if (this.transport === 'websocket') {
      if (this.socket?.readyState === OPEN) this.sendFrame(JSON.stringify({ type: 'refresh', token }));
    } else if (this.stream) {
      // An event stream cannot take a new token: reopen it (resuming, so nothing is missed).
      this.stream.abort();
    }
  }

  private async currentToken(): Promise<string | undefined> {
    return this.manualToken ?? (await this.tokens.get());
  }

  private setStatus(status: 'connecting' | 'connected' | 'disconnected'): void {
    if (this.status === status) return;
    this.status = status;
    this.emit('status', status);
  }

  private async connect(): Promise<void> {
    if (this.closedForGood) return;
    this.setStatus('connecting');
    if (this.transport === 'sse') return this.connectSse();
    let socket: WebSocketLike;
    try {
      const [token, WebSocketImpl] = await Promise.all([this.currentToken(), webSocketImpl(this.opts.WebSocketPolyfill)]);
      if (this.closedForGood) return;
      socket = new WebSocketImpl(endpointUrl(this.base, 'ws', 'rooms/{room}/ws', this.room, { token }));
    } catch (error) {
      this.emit('error', error instanceof Error ? error : new Error(String(error)));
      return this.reconnectLater(backoffDelay(this.attempt++, this.opts.backoff));
    }
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.everOpened = true;
      if (this.fellBack) {
        this.fellBack = false;
        this.emit('transport', 'websocket');
      }
      const join: Record<string, unknown> = { type: 'join', v: PROTOCOL_VERSION };
      if (this.resumeFrom) {
        join.since = this.resumeFrom.since;
        if (this.resumeFrom.epoch !== undefined) join.epoch = this.resumeFrom.epoch;
      }
      socket.send(JSON.stringify(join));
    };
    socket.onmessage = (event) => {
      if (this.socket !== socket || this.closedForGood) return;
      let parsed: { type: string } & Record<string, unknown>;
      try {
        parsed = JSON.parse(String(event.data)) as { type: string } & Record<string, unknown>;
      } catch {
        this.emit('error', new ChatError('bad_frame', 'the server sent a frame that is not JSON'));
        return;
      }
      this.onEvent(parsed);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      if (!opened) void this.refusedOrDown();
      else this.lost(event.code, event.reason);
    };
    socket.onerror = () => {
      // A close event follows; reconnecting is handled there.
    };
  }

  /**
   * A WebSocket that never opened: the server is down, or something between refuses
   * upgrades. If the server answers plain HTTP, count a refusal; enough of them (and no
   * WebSocket ever opened) switch to SSE.
   */
  private async refusedOrDown(): Promise<void> {
    if (this.closedForGood) return;
    if (this.opts.transport === undefined || this.opts.transport === 'auto') {
      const answers = await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(3_000) }).then(
        (r) => (void r.body?.cancel(), r.ok),
        () => false,
      );
      if (answers && !this.everOpened) this.refusals += 1;
      if (this.refusals >= (this.opts.fallbackAfter ?? 2)) {
        this.transport = 'sse';
        this.fellBack = true;
        this.emit('transport', 'sse');
        this.attempt = 0;
      }
    }
    this.lost(0, '');
  }

  private async connectSse(): Promise<void> {
    const abort = new AbortController();
    this.stream = abort;
    let closeEvent: { code: number; reason: string } | undefined;
    try {
      const token = await this.currentToken();
      const url = endpointUrl(this.base, 'http', 'rooms/{room}/events', this.room, {
        since: this.resumeFrom?.since,
        epoch: this.resumeFrom?.epoch,
      });
      const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
      await readEventStream(
        url,
        headers,
        (event) => {
          const data = JSON.parse(event.data) as { type: string } & Record<string, unknown>;
          if (event.event === 'close') closeEvent = { code: Number(data.code), reason: String(data.reason ?? '') };
          else this.onEvent(data);
        },
        abort.signal,
      );
    } catch (error) {
      if (this.stream === abort && !abort.signal.aborted) {
        if (error instanceof SseHttpError && (error.status === 401 || error.status === 403)) {
          this.emit('error', new ChatError('unauthorized', error.message));
        }
      }
    }
    if (this.stream !== abort) return;
    this.stream = undefined;
    const refreshing = abort.signal.aborted && !this.closedForGood;
    if (this.fellBack && !refreshing) {
      // Whatever refused WebSockets may have stopped: try one once more (one more refusal
      // comes back to SSE).
      this.transport = 'websocket';
      this.refusals = (this.opts.fallbackAfter ?? 2) - 1;
    }
    this.lost(closeEvent?.code ?? 0, closeEvent?.reason ?? '', refreshing);
  }

  /** The connection ended: forget what belonged to it, then reconnect. */
  private lost(code: number, reason: string, immediately = false): void {
    this.joined = false;
    this.presence.clear();
    this.setStatus('disconnected');
    if (code !== 0 && code !== CloseCode.NORMAL && code !== 1005 && reason) {
      this.emit('error', new ChatError(`close_${code}`, reason));
    }
    if (this.closedForGood) return;
    if (code === CloseCode.TOKEN_EXPIRED) {
      this.tokens.invalidate();
      this.manualToken = undefined;
      immediately = true;
    }
    const delay = immediately ? 0 : backoffDelay(this.attempt++, this.opts.backoff);
    this.reconnectLater(delay);
  }

  private reconnectLater(delay: number): void {
    if (this.closedForGood) return;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.connect();
    }, delay);
  }

  private sendFrame(frame: string): void {
    if (this.socket?.readyState === OPEN) this.socket.send(frame);
  }

  private sendPublish(id: string): void {
    const pending = this.publishes.get(id);
    if (!pending) return;
    if (this.transport === 'websocket') this.sendFrame(pending.frame);
    else if (!pending.posting) void this.postUntilAcked(id, pending);
  }

  private sendHistory(req: string): void {
    const pending = this.histories.get(req);
    if (!pending) return;
    if (this.transport === 'websocket') {
      this.sendFrame(pending.frame);
      return;
    }
    this.histories.delete(req);
    this.historyOverHttp(pending.query).then(pending.resolve, pending.reject);
  }

  /** SSE mode: `POST /rooms/{room}/messages` with the id as idempotency key, until acked. */
  private async postUntilAcked(id: string, pending: PendingPublish): Promise<void> {
    pending.posting = true;
    for (let attempt = 0; this.publishes.get(id) === pending; attempt += 1) {
      try {
        const token = await this.currentToken();
        const headers: Record<string, string> = { 'content-type': 'application/json', 'idempotency-key': id };
        if (token) headers.authorization = `Bearer ${token}`;
        const url = endpointUrl(this.base, 'http', 'rooms/{room}/messages', this.room);
        const response = await fetch(url, {
          method: 'POST',
          headers,
          body: JSON.stringify(pending.body),
          signal: AbortSignal.timeout(20_000),
        });
        const text = await response.text();
        if (response.ok) {
          const ack = JSON.parse(text) as Ack;
          this.publishes.delete(id);
          pending.resolve(ack);
          return;
        }
        if (![429, 502, 503, 504].includes(response.status)) {
          this.publishes.delete(id);
          pending.reject(new ChatError(httpErrorCode(response.status), errorReason(text)));
          return;
        }
      } catch {
        // network failure: retry with the same key
      }
      await sleep(backoffDelay(attempt, this.opts.backoff));
    }
  }

  /** SSE mode: history over `GET /rooms/{room}/messages` (seqs are gap-free, so `before` is a range). */
  private async historyOverHttp(query: HistoryQuery): Promise<Page> {
    const limit = query.limit ?? 50;
    let since: number | undefined = query.after;
    if (query.before !== undefined) since = Math.max(0, this.firstSeq - 1, query.before - limit - 1);
    let page = await this.readPage(since, limit);
    if (!page.recovered && since !== undefined && page.first_seq > 0 && since < page.first_seq - 1) {
      // Below the retained window: the server answered the latest page; like the
      // WebSocket's history, answer from the oldest stored message instead.
      page = { ...(await this.readPage(page.first_seq - 1, limit)), recovered: false };
    }
    if (query.before !== undefined) {
      const before = query.before;
      page.messages = page.messages.filter((m) => m.seq < before).slice(-limit);
    }
    return page;
  }

  private async readPage(since: number | undefined, limit: number): Promise<Page> {
    const token = await this.currentToken();
    const url = endpointUrl(this.base, 'http', 'rooms/{room}/messages', this.room, {
      since,
      limit,
      epoch: since === undefined ? undefined : this.epoch,
    });
    const response = await fetch(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    const text = await response.text();
    if (!response.ok) throw new ChatError(httpErrorCode(response.status), errorReason(text));
    return JSON.parse(text) as Page;
  }

  private onEvent(event: { type: string } & Record<string, unknown>): void {
    switch (event.type) {
      case 'joined': {
        const joined = event as unknown as Joined;
        const hadPosition = this.resumeFrom !== undefined;
        this.joined = true;
        this.attempt = 0;
        this.epoch = joined.epoch;
        this.conn = joined.conn;
        this.firstSeq = joined.first_seq;
        this.presence.clear();
        for (const member of joined.presence) this.presence.set(member.conn, member);
        if (!joined.recovered && hadPosition) {
          // The replay that follows is the latest page, not a continuation.
          this.lastSeq = 0;
          this.emit('reset', joined);
        }
        if (!hadPosition) this.lastSeq = joined.last_seq;
        // From now on, every reconnect resumes from what was delivered.
        this.resumeFrom = { epoch: joined.epoch, since: this.lastSeq };
        this.setStatus('connected');
        this.emit('joined', joined);
        for (const id of this.publishes.keys()) this.sendPublish(id);
        for (const req of [...this.histories.keys()]) this.sendHistory(req);
        break;
      }
      case 'message': {
        const message = event as unknown as ChatMessage;
        if (message.seq <= this.lastSeq) return; // already delivered
        this.lastSeq = message.seq;
        if (this.resumeFrom) this.resumeFrom.since = message.seq;
        this.emit('message', message);
        break;
      }
      case 'ack': {
        const ack = event as unknown as Ack;
        const pending = ack.id === undefined ? undefined : this.publishes.get(ack.id);
        if (pending && ack.id !== undefined) {
          this.publishes.delete(ack.id);
          this.retries.delete(ack.id);
          pending.resolve(ack);
        }
        break;
      }
      case 'history': {
        const req = event.req as string | undefined;
        const pending = req === undefined ? undefined : this.histories.get(req);
        if (pending && req !== undefined) {
          this.histories.delete(req);
          pending.resolve(event as unknown as Page);
        }
        break;
      }
      case 'presence': {
        const member = event.member as ChatMember;
        if (event.event === 'join') this.presence.set(member.conn, member);
        else this.presence.delete(member.conn);
        this.emit('presence', event.event as 'join' | 'leave', member);
        break;
      }
      case 'typing': {
        const typing = event as unknown as Typing;
        const member = this.presence.get(typing.conn);
        if (member) member.status = typing.status ?? undefined;
        this.emit('typing', typing);
        break;
      }
      case 'error':
        this.onError(event);
        break;
      default:
        break; // `refreshed`, and fields or events a newer server adds
    }
  }

  private onError(event: Record<string, unknown>): void {
    const id = event.id as string | undefined;
    const error = new ChatError(String(event.code), String(event.message));
    const publish = id === undefined ? undefined : this.publishes.get(id);
    const history = id === undefined ? undefined : this.histories.get(id);
    const pending = publish ?? history;
    if (pending && id !== undefined && (event.code === 'rate_limited' || event.code === 'unavailable')) {
      // Over the connection's message rate (the server paused reading it for one refill),
      // or the store failed for a moment: send the same frame (same id, so never twice)
      // again a little later, backing off while it keeps failing.
      const tries = (this.retries.get(id) ?? 0) + 1;
      this.retries.set(id, tries);
      const delay = RATE_LIMIT_RETRY_MS + backoffDelay(tries, this.opts.backoff);
      setTimeout(() => {
        const still = this.publishes.has(id) || this.histories.has(id);
        if (still && this.joined) this.sendFrame(pending.frame);
        else this.retries.delete(id);
      }, delay);
    } else if (publish && id !== undefined) {
      this.publishes.delete(id);
      publish.reject(error);
    } else if (history && id !== undefined) {
      this.histories.delete(id);
      history.reject(error);
    } else {
      this.emit('error', error);
    }
  }
}

function httpErrorCode(status: number): string {
  switch (status) {
    case 400:
      return 'bad_request';
    case 401:
      return 'unauthorized';
    case 403:
      return 'read_only';
    case 413:
      return 'body_too_large';
    default:
      return `http_${status}`;
  }
}

function errorReason(text: string): string {
  try {
    return (JSON.parse(text) as { error?: string }).error ?? text;
  } catch {
    return text;
  }
}

async function jsonOrThrow<T>(response: Response, method: string, url: string): Promise<T> {
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${url} failed: ${response.status}: ${errorReason(text)}`);
  return JSON.parse(text) as T;
}

/**
 * Publishes over HTTP (`POST /rooms/{room}/messages`); resolves with the ack once the
 * message is durable. Retrying with the same `idempotencyKey` is safe.
 */
export async function postMessage(
  serverUrl: string,
  room: string,
  body: unknown,
  opts: { idempotencyKey?: string; token?: string } = {},
): Promise<Ack> {
  const url = endpointUrl(serverUrl, 'http', 'rooms/{room}/messages', room);
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (opts.idempotencyKey) headers['idempotency-key'] = opts.idempotencyKey;
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(body) });
  return jsonOrThrow<Ack>(response, 'POST', url);
}

/**
 * Reads messages over HTTP (`GET /rooms/{room}/messages`): after `since` (the latest page
 * without it); with `waitSecs`, long-polls until a newer message arrives.
 */
export async function fetchMessages(
  serverUrl: string,
  room: string,
  query: { since?: number; epoch?: string; limit?: number; waitSecs?: number; token?: string } = {},
): Promise<Page> {
  const url = endpointUrl(serverUrl, 'http', 'rooms/{room}/messages', room, {
    since: query.since,
    epoch: query.epoch,
    limit: query.limit,
    wait: query.waitSecs,
  });
  const headers: Record<string, string> = query.token ? { authorization: `Bearer ${query.token}` } : {};
  return jsonOrThrow<Page>(await fetch(url, { headers }), 'GET', url);
}
