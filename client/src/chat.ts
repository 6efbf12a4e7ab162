/**
 * The chat stream client: a WebSocket to `/rooms/{room}/ws` speaking the JSON
 * protocol of `docs/PROTOCOL.md`, that reconnects by itself and resumes from
 * the last message it delivered, so the app sees every message once, in
 * order. Publishes carry an id and are re-sent after a reconnect until
 * acknowledged: the server's idempotency makes that safe.
 *
 * @module tandem-client/chat
 */

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

/** A page of history. */
export interface Page {
  epoch: string;
  first_seq: number;
  last_seq: number;
  recovered: boolean;
  messages: ChatMessage[];
}

/** Events a {@link TandemChat} emits. */
export interface ChatEvents {
  /** A message, delivered once and in `seq` order (replayed ones first). */
  message: (message: ChatMessage) => void;
  /** Joined (or re-joined) the room. */
  joined: (joined: Joined) => void;
  /**
   * The server could not recover the messages missed since the last one
   * delivered (the stream was trimmed or rebuilt): reload your view. The
   * `message` events that follow are the latest page.
   */
  reset: (joined: Joined) => void;
  /** A member joined or left. */
  presence: (event: 'join' | 'leave', member: ChatMember) => void;
  /** A member's typing status changed (`null` once cleared or expired). */
  typing: (member: { conn: string; subject: string; status: string | null }) => void;
  /** Connection state. */
  status: (status: 'connecting' | 'connected' | 'disconnected') => void;
  /** An `error` event not tied to a publish or history request, or a close reason. */
  error: (error: Error) => void;
}

/** Options for {@link TandemChat}. */
export interface ChatOptions {
  /** A JWT, sent as `?token=` (browsers cannot set WebSocket headers). */
  token?: string;
  /** Resume from here instead of joining live (e.g. a position saved by the app). */
  resume?: { epoch?: string; since: number };
  /** WebSocket implementation; defaults to `globalThis.WebSocket`. */
  WebSocketPolyfill?: new (url: string) => WebSocket;
  /** First reconnect delay; doubles up to `maxDelayMs`. */
  minDelayMs?: number;
  /** Longest reconnect delay. */
  maxDelayMs?: number;
}

/** A failed publish, history request or connection. */
export class ChatError extends Error {
  constructor(
    /** The protocol's error code (`bad_request`, `read_only`, …). */
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = 'ChatError';
  }
}

interface PendingPublish {
  frame: string;
  resolve: (ack: Ack) => void;
  reject: (error: Error) => void;
}

interface PendingHistory {
  frame: string;
  resolve: (page: Page) => void;
  reject: (error: Error) => void;
}

type Listeners = { [K in keyof ChatEvents]: Set<ChatEvents[K]> };

let nextId = 0;
/** A message id unique enough for idempotency: random prefix + counter. */
function newId(): string {
  nextId += 1;
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}-${nextId}`;
}

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
/** How long to wait before re-sending a request refused as `rate_limited`. */
const RATE_LIMIT_RETRY_MS = 100;

export class TandemChat {
  /** The stream's epoch, once joined. */
  epoch: string | undefined;
  /** The highest `seq` delivered to the app. */
  lastSeq = 0;
  /** This connection's id (changes on reconnect). */
  conn: string | undefined;
  /** The presence list, by connection id. */
  readonly presence = new Map<string, ChatMember>();

  private url: string;
  private readonly WebSocketImpl: new (url: string) => WebSocket;
  private readonly listeners: Listeners = {
    message: new Set(),
    joined: new Set(),
    reset: new Set(),
    presence: new Set(),
    typing: new Set(),
    status: new Set(),
    error: new Set(),
  };
  private socket: WebSocket | undefined;
  private joined = false;
  private closed = false;
  private resumeFrom: { epoch?: string; since: number } | undefined;
  private delay: number;
  private readonly publishes = new Map<string, PendingPublish>();
  private readonly histories = new Map<string, PendingHistory>();

  constructor(
    serverUrl: string,
    readonly room: string,
    private readonly opts: ChatOptions = {},
  ) {
    const base = new URL(serverUrl);
    base.protocol = base.protocol === 'https:' || base.protocol === 'wss:' ? 'wss:' : 'ws:';
    const path = base.pathname.replace(/\/+$/, '');
    const token = opts.token ? `?token=${encodeURIComponent(opts.token)}` : '';
    this.url = `${base.protocol}//${base.host}${path}/rooms/${encodeURIComponent(room)}/ws${token}`;
    const impl = opts.WebSocketPolyfill ?? (globalThis.WebSocket as unknown as ChatOptions['WebSocketPolyfill']);
    if (!impl) throw new Error('no WebSocket implementation: pass opts.WebSocketPolyfill (e.g. the `ws` package)');
    this.WebSocketImpl = impl;
    this.resumeFrom = opts.resume;
    this.delay = opts.minDelayMs ?? 100;
    this.connect();
  }

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof ChatEvents>(event: K, listener: ChatEvents[K]): () => void {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }

  private emit<K extends keyof ChatEvents>(event: K, ...args: Parameters<ChatEvents[K]>): void {
    for (const listener of this.listeners[event]) {
      (listener as (...a: Parameters<ChatEvents[K]>) => void)(...args);
    }
  }

  /**
   * Publishes `body`; resolves with the ack once the message is durable. The
   * publish survives reconnects (it is re-sent with the same id, which the
   * server deduplicates).
   */
  publish(body: unknown, id: string = newId()): Promise<Ack> {
    return new Promise((resolve, reject) => {
      const frame = JSON.stringify({ type: 'publish', id, body });
      this.publishes.set(id, { frame, resolve, reject });
      if (this.joined) this.socket?.send(frame);
    });
  }

  /**
   * Replaces the token before it expires: the open connection keeps going under the new
   * one (the server answers `refreshed`, or an `unauthorized` error event), and
   * reconnects use it. Without a refresh the server closes the connection (4010) at the
   * old token's expiry.
   */
  refresh(token: string): void {
    const url = new URL(this.url);
    url.searchParams.set('token', token);
    this.url = url.toString();
    if (this.socket?.readyState === 1) this.socket.send(JSON.stringify({ type: 'refresh', token }));
  }

  /** Sets (or with `null` clears) this connection's typing status. */
  typing(status: string | null): void {
    if (this.joined) this.socket?.send(JSON.stringify({ type: 'typing', status }));
  }

  /** A page of history: `before` (newest below it) or `after` (oldest above it) a seq. */
  history(query: { before?: number; after?: number; limit?: number } = {}): Promise<Page> {
    return new Promise((resolve, reject) => {
      const req = newId();
      const frame = JSON.stringify({ type: 'history', req, ...query });
      this.histories.set(req, { frame, resolve, reject });
      if (this.joined) this.socket?.send(frame);
    });
  }

  /** Closes the connection for good; pending publishes are rejected. */
  close(): void {
    this.closed = true;
    this.socket?.close(1000);
    const error = new ChatError('closed', 'the chat connection was closed');
    for (const p of this.publishes.values()) p.reject(error);
    for (const h of this.histories.values()) h.reject(error);
    this.publishes.clear();
    this.histories.clear();
  }

  private connect(): void {
    if (this.closed) return;
    this.emit('status', 'connecting');
    const socket = new this.WebSocketImpl(this.url);
    this.socket = socket;
    socket.onopen = () => {
      const join: Record<string, unknown> = { type: 'join', v: 1 };
      if (this.resumeFrom) {
        join.since = this.resumeFrom.since;
        if (this.resumeFrom.epoch) join.epoch = this.resumeFrom.epoch;
      }
      socket.send(JSON.stringify(join));
    };
    socket.onmessage = (event: MessageEvent) => this.onEvent(JSON.parse(String(event.data)));
    socket.onclose = (event: CloseEvent) => {
      if (this.socket !== socket) return;
      this.joined = false;
      this.socket = undefined;
      this.presence.clear();
      this.emit('status', 'disconnected');
      if (event.code !== 1000 && event.code !== 1005 && event.reason) {
        this.emit('error', new ChatError(`close_${event.code}`, event.reason));
      }
      if (this.closed) return;
      const delay = this.delay;
      this.delay = Math.min(this.delay * 2, this.opts.maxDelayMs ?? 5_000);
      setTimeout(() => this.connect(), delay);
    };
    socket.onerror = () => {
      // A close event follows; reconnecting is handled there.
    };
  }

  private onEvent(event: { type: string } & Record<string, unknown>): void {
    switch (event.type) {
      case 'joined': {
        const joined = event as unknown as Joined;
        const hadPosition = this.resumeFrom !== undefined;
        this.joined = true;
        this.delay = this.opts.minDelayMs ?? 100;
        this.epoch = joined.epoch;
        this.conn = joined.conn;
        this.presence.clear();
        for (const member of joined.presence) this.presence.set(member.conn, member);
        if (!joined.recovered && hadPosition) {
          // The replay that follows is the latest page, not a continuation.
          this.lastSeq = 0;
          this.emit('reset', joined);
        }
        // From now on, every reconnect resumes from what was delivered.
        this.resumeFrom = { epoch: joined.epoch, since: this.lastSeq };
        if (!hadPosition) this.lastSeq = joined.last_seq;
        this.resumeFrom.since = this.lastSeq;
        this.emit('status', 'connected');
        this.emit('joined', joined);
        for (const p of this.publishes.values()) this.socket?.send(p.frame);
        for (const h of this.histories.values()) this.socket?.send(h.frame);
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
        const typing = event as unknown as { conn: string; subject: string; status: string | null };
        const member = this.presence.get(typing.conn);
        if (member) member.status = typing.status ?? undefined;
        this.emit('typing', typing);
        break;
      }
      case 'error': {
        const id = event.id as string | undefined;
        const error = new ChatError(String(event.code), String(event.message));
        const publish = id === undefined ? undefined : this.publishes.get(id);
        const history = id === undefined ? undefined : this.histories.get(id);
        const pending = publish ?? history;
        if (pending && event.code === 'rate_limited') {
          // Over the connection's message rate: the server has paused reading it for one
          // refill; send the same frame (same id, so never twice) again a little later.
          setTimeout(() => {
            const still = id !== undefined && (this.publishes.has(id) || this.histories.has(id));
            if (still && this.joined) this.socket?.send(pending.frame);
          }, RATE_LIMIT_RETRY_MS);
        } else if (publish && id !== undefined) {
          this.publishes.delete(id);
          publish.reject(error);
        } else if (history && id !== undefined) {
          this.histories.delete(id);
          history.reject(error);
        } else {
          this.emit('error', error);
        }
        break;
      }
      default:
        break;
    }
  }
}

function messagesUrl(serverUrl: string, room: string, query = ''): string {
  const base = new URL(serverUrl);
  base.protocol = base.protocol === 'https:' || base.protocol === 'wss:' ? 'https:' : 'http:';
  const path = base.pathname.replace(/\/+$/, '');
  return `${base.protocol}//${base.host}${path}/rooms/${encodeURIComponent(room)}/messages${query}`;
}

async function jsonOrThrow<T>(response: Response, method: string, url: string): Promise<T> {
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${url} failed: ${response.status}: ${text}`);
  return JSON.parse(text) as T;
}

/**
 * Publishes over HTTP (`POST /rooms/{room}/messages`); resolves with the ack
 * once the message is durable. Retrying with the same `idempotencyKey` is safe.
 */
export async function postMessage(
  serverUrl: string,
  room: string,
  body: unknown,
  opts: { idempotencyKey?: string; token?: string } = {},
): Promise<Ack> {
  const url = messagesUrl(serverUrl, room);
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (opts.idempotencyKey) headers['idempotency-key'] = opts.idempotencyKey;
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(body) });
  return jsonOrThrow<Ack>(response, 'POST', url);
}

/**
 * Reads messages over HTTP (`GET /rooms/{room}/messages`): after `since`
 * (the latest page without it); with `waitSecs`, long-polls until a newer
 * message arrives.
 */
export async function fetchMessages(
  serverUrl: string,
  room: string,
  query: { since?: number; epoch?: string; limit?: number; waitSecs?: number; token?: string } = {},
): Promise<Page> {
  const params = new URLSearchParams();
  if (query.since !== undefined) params.set('since', String(query.since));
  if (query.epoch !== undefined) params.set('epoch', query.epoch);
  if (query.limit !== undefined) params.set('limit', String(query.limit));
  if (query.waitSecs !== undefined) params.set('wait', String(query.waitSecs));
  const search = params.toString();
  const url = messagesUrl(serverUrl, room, search ? `?${search}` : '');
  const headers: Record<string, string> = {};
  if (query.token) headers.authorization = `Bearer ${query.token}`;
  return jsonOrThrow<Page>(await fetch(url, { headers }), 'GET', url);
}
