/**
 * `TandemProvider`: keeps a Yjs document and its awareness in sync with a room over the
 * y-websocket protocol (sync step 1/2, updates, awareness), and stays connected: it
 * reconnects with exponential backoff and full jitter, fetches a fresh token before the
 * current one expires (and reconnects with it, as the y-websocket protocol has no
 * refresh), and in a cluster connects to the room's owner (`GET /route/{room}`), moving
 * with the room when the server closes with 4011 "room moved". Any node also relays to
 * the owner, so a failed route only costs a hop.
 *
 * @module tandem-client/provider
 */

import * as Y from 'yjs';
import * as encoding from 'lib0/encoding';
import * as decoding from 'lib0/decoding';
import * as syncProtocol from 'y-protocols/sync';
import * as awarenessProtocol from 'y-protocols/awareness';
import * as authProtocol from 'y-protocols/auth';

import { backoffDelay, type BackoffOptions } from './backoff.js';
import { Emitter } from './events.js';
import { assertRoomName, CloseCode } from './protocol.js';
import { TokenKeeper, type TokenSource } from './token.js';
import { endpointUrl, toHttpUrl } from './url.js';
import { OPEN, webSocketImpl, type WebSocketConstructor, type WebSocketLike } from './websocket.js';

const MESSAGE_SYNC = 0;
const MESSAGE_AWARENESS = 1;
const MESSAGE_AUTH = 2;
const MESSAGE_QUERY_AWARENESS = 3;
/** Silence after which a connection counts as dead. */
const SILENCE_LIMIT_MS = 30_000;

/** Connection state. */
export type ConnectionStatus = 'connecting' | 'connected' | 'disconnected';

/** Events a {@link TandemProvider} emits. */
export interface ProviderEvents {
  /** The connection state changed. */
  status: (event: { status: ConnectionStatus }) => void;
  /** The document is (`true`) or is no longer (`false`) in sync with the server. */
  sync: (synced: boolean) => void;
  /** Same as `sync` (y-websocket's name for it). */
  synced: (synced: boolean) => void;
  /** The socket closed, with the server's code and reason. */
  'connection-close': (event: { code: number; reason: string }) => void;
  /** Connecting failed before a socket existed (token function, routing). */
  'connection-error': (error: Error) => void;
  /** The server refused an update (a read-only token). */
  'permission-denied': (reason: string) => void;
}

/** Options for {@link TandemProvider}. */
export interface ProviderOptions {
  /** A JWT, or a function returning one (called again before each expires). */
  token?: TokenSource;
  /** An awareness instance to use (default: a new one for the document). */
  awareness?: awarenessProtocol.Awareness;
  /** Connect at once (default `true`); otherwise call `connect()`. */
  connect?: boolean;
  /** Ask `GET /route/{room}` for the owner and follow "room moved" (default `true`). */
  routing?: boolean;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** WebSocket implementation (default: the platform's, else the `ws` package). */
  WebSocketPolyfill?: WebSocketConstructor;
}

/** The owner URL named by a 4011 close's reason ("room moved: now served by URL"). */
export function movedTo(reason: string): string | undefined {
  return /now served by (\S+)/.exec(reason)?.[1];
}

/**
 * A Yjs provider for one room of a Tandem server.
 *
 * ```ts
 * const provider = new TandemProvider('https://tandem.example', 'notes', doc, { token: getToken });
 * provider.on('sync', (synced) => synced && console.log('up to date'));
 * ```
 */
export class TandemProvider extends Emitter<ProviderEvents> {
  readonly awareness: awarenessProtocol.Awareness;
  /** Connection state. */
  status: ConnectionStatus = 'disconnected';
  /** Whether the document is in sync with the server. */
  synced = false;
  /** The URL of the current or last socket (without its token). */
  url: string | undefined;

  private readonly base: string;
  private readonly tokens: TokenKeeper;
  private socket: WebSocketLike | undefined;
  private wanted = false;
  private attempt = 0;
  private generation = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** Where the room lives, when routing found out; `null`: the server is not clustered. */
  private owner: string | undefined | null;
  /** The owner's URL could not be connected to: use the given server, which relays. */
  private ownerUnreachable = false;
  /** The local awareness state, while it is withdrawn (disconnected, page hidden). */
  private withdrawn: Record<string, unknown> | null = null;
  private lastMessageAt = 0;
  private liveness: ReturnType<typeof setInterval> | undefined;
  private readonly onPageHide = (): void => this.withdrawAwareness('page hidden');
  private readonly onPageShow = (): void => this.restoreAwareness();

  constructor(
    serverUrl: string,
    readonly room: string,
    readonly doc: Y.Doc,
    private readonly opts: ProviderOptions = {},
  ) {
    super();
    assertRoomName(room);
    this.base = toHttpUrl(serverUrl);
    this.awareness = opts.awareness ?? new awarenessProtocol.Awareness(doc);
    this.tokens = new TokenKeeper(
      opts.token,
      () => this.reconnectNow(),
      (error) => this.emit('connection-error', error),
    );
    doc.on('update', this.onDocUpdate);
    this.awareness.on('update', this.onAwarenessUpdate);
    if (typeof addEventListener === 'function') {
      addEventListener('pagehide', this.onPageHide);
      addEventListener('pageshow', this.onPageShow);
    }
    if (opts.connect ?? true) this.connect();
  }

  /** Starts connecting (and reconnecting) until `disconnect()`. */
  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.attempt = 0;
    this.restoreAwareness();
    void this.open();
  }

  /** Closes the connection and stops reconnecting; `connect()` resumes. */
  disconnect(): void {
    this.wanted = false;
    this.generation += 1;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const socket = this.socket;
    if (socket) {
      // Tell the others we left before the socket goes (restored by `connect()`).
      this.withdrawAwareness('disconnect');
      socket.close(CloseCode.NORMAL);
      this.closed(socket, { code: CloseCode.NORMAL, reason: '' });
    }
  }

  /** Disconnects and releases everything; the document stays usable. */
  destroy(): void {
    this.disconnect();
    this.tokens.stop();
    this.doc.off('update', this.onDocUpdate);
    this.awareness.off('update', this.onAwarenessUpdate);
    if (typeof removeEventListener === 'function') {
      removeEventListener('pagehide', this.onPageHide);
      removeEventListener('pageshow', this.onPageShow);
    }
    if (!this.opts.awareness) this.awareness.destroy();
  }

  /** Others stop seeing us (leaving, or the page hidden); the state is kept to restore. */
  private withdrawAwareness(origin: string): void {
    const state = this.awareness.getLocalState();
    if (state === null) return;
    this.withdrawn = state;
    awarenessProtocol.removeAwarenessStates(this.awareness, [this.doc.clientID], origin);
  }

  private restoreAwareness(): void {
    if (this.withdrawn !== null && this.awareness.getLocalState() === null) this.awareness.setLocalState(this.withdrawn);
    this.withdrawn = null;
  }

  /** Resolves once in sync (at once if already); rejects after `timeoutMs`. */
  whenSynced(timeoutMs = 10_000): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new Error(`room ${this.room} did not sync within ${timeoutMs} ms (${this.url ?? 'no socket yet'})`));
      }, timeoutMs);
      const off = this.on('sync', (synced) => {
        if (!synced) return;
        clearTimeout(timer);
        off();
        resolve();
      });
    });
  }

  private setStatus(status: ConnectionStatus): void {
    if (this.status === status) return;
    this.status = status;
    this.emit('status', { status });
  }

  private setSynced(synced: boolean): void {
    if (this.synced === synced) return;
    this.synced = synced;
    this.emit('sync', synced);
    this.emit('synced', synced);
  }

  /** Where to connect: the owner when the cluster names one, else the given server. */
  private async target(): Promise<string> {
    if (!(this.opts.routing ?? true) || this.owner === null || this.ownerUnreachable) return this.base;
    if (this.owner !== undefined) return this.owner;
    try {
      const url = endpointUrl(this.base, 'http', 'route/{room}', this.room);
      const response = await fetch(url, { signal: AbortSignal.timeout(3_000) });
      if (!response.ok) return this.base;
      const route = (await response.json()) as { owner?: { url?: string } | null };
      // A server that is not clustered answers `owner: null`: stop asking.
      this.owner = route.owner?.url ? toHttpUrl(route.owner.url) : null;
      return this.owner ?? this.base;
    } catch {
      return this.base; // routing is an optimisation: any node relays to the owner
    }
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    this.setStatus('connecting');
    let socket: WebSocketLike;
    let target: string;
    try {
      const [token, where, WebSocketImpl] = await Promise.all([
        this.tokens.get(),
        this.target(),
        webSocketImpl(this.opts.WebSocketPolyfill),
      ]);
      if (generation !== this.generation || !this.wanted) return;
      target = where;
      this.url = endpointUrl(target, 'ws', 'yjs/{room}', this.room);
      socket = new WebSocketImpl(endpointUrl(target, 'ws', 'yjs/{room}', this.room, { token }));
    } catch (error) {
      if (generation !== this.generation || !this.wanted) return;
      this.emit('connection-error', error instanceof Error ? error : new Error(String(error)));
      this.setStatus('disconnected');
      this.retry(backoffDelay(this.attempt++, this.opts.backoff));
      return;
    }
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.lastMessageAt = Date.now();
      this.watchLiveness(socket);
      this.setStatus('connected');
      const encoder = encoding.createEncoder();
      encoding.writeVarUint(encoder, MESSAGE_SYNC);
      syncProtocol.writeSyncStep1(encoder, this.doc);
      socket.send(encoding.toUint8Array(encoder));
      if (this.awareness.getLocalState() !== null) {
        this.send(socket, awarenessMessage(this.awareness, [this.doc.clientID]));
      }
    };
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      this.lastMessageAt = Date.now();
      this.receive(socket, new Uint8Array(event.data as ArrayBuffer));
    };
    socket.onclose = (event) => {
      if (!opened && target !== this.base) this.ownerUnreachable = true; // the base relays
      this.closed(socket, event);
    };
    socket.onerror = () => {
      // A close event follows.
    };
  }

  private closed(socket: WebSocketLike, event: { code: number; reason: string }): void {
    if (this.socket !== socket) return;
    this.socket = undefined;
    socket.onopen = socket.onmessage = socket.onclose = null;
    // Not null: `ws` reports an error for a socket closed while connecting, and an
    // EventEmitter error without a listener would throw.
    socket.onerror = () => {};
    if (this.liveness !== undefined) clearInterval(this.liveness);
    this.liveness = undefined;
    // Remote peers are unknown while disconnected; they will be sent again.
    const others = [...this.awareness.getStates().keys()].filter((id) => id !== this.doc.clientID);
    awarenessProtocol.removeAwarenessStates(this.awareness, others, this);
    this.setSynced(false);
    this.setStatus('disconnected');
    this.emit('connection-close', event);
    if (!this.wanted) return;
    if (event.code === CloseCode.ROOM_MOVED) {
      const next = movedTo(event.reason);
      try {
        this.owner = next ? toHttpUrl(next) : undefined;
        this.ownerUnreachable = false;
      } catch {
        this.owner = undefined; // not a URL: ask the route
      }
      this.retry(backoffDelay(0, this.opts.backoff));
    } else if (event.code === CloseCode.TOKEN_EXPIRED) {
      this.tokens.invalidate();
      this.retry(0);
    } else {
      this.retry(backoffDelay(this.attempt++, this.opts.backoff));
    }
  }

  /**
   * The server sends something at least every few seconds (awareness, keepalives); a
   * connection silent for 30 s is half-open: close it, which reconnects.
   */
  private watchLiveness(socket: WebSocketLike): void {
    if (this.liveness !== undefined) clearInterval(this.liveness);
    this.liveness = setInterval(() => {
      if (this.socket === socket && Date.now() - this.lastMessageAt > SILENCE_LIMIT_MS) {
        socket.close(CloseCode.NORMAL, 'no message in 30 s');
        this.closed(socket, { code: CloseCode.GOING_AWAY, reason: 'no message from the server in 30 s' });
      }
    }, 5_000);
  }

  private retry(delayMs: number): void {
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.wanted) void this.open();
    }, delayMs);
  }

  /** A fresh token arrived: reconnect with it now, before the old one expires. */
  private reconnectNow(): void {
    const socket = this.socket;
    if (!socket || !this.wanted) return;
    socket.close(CloseCode.NORMAL, 'token refresh');
    this.closed(socket, { code: CloseCode.NORMAL, reason: 'token refresh' });
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    void this.open();
  }

  private send(socket: WebSocketLike | undefined, message: Uint8Array): void {
    if (socket?.readyState === OPEN) socket.send(message);
  }

  private receive(socket: WebSocketLike, data: Uint8Array): void {
    const decoder = decoding.createDecoder(data);
    const encoder = encoding.createEncoder();
    const type = decoding.readVarUint(decoder);
    switch (type) {
      case MESSAGE_SYNC: {
        encoding.writeVarUint(encoder, MESSAGE_SYNC);
        const kind = syncProtocol.readSyncMessage(decoder, encoder, this.doc, this);
        if (kind === syncProtocol.messageYjsSyncStep2) {
          this.attempt = 0; // a connection that synced is a good one
          this.setSynced(true);
        }
        break;
      }
      case MESSAGE_AWARENESS:
        awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(decoder), this);
        break;
      case MESSAGE_QUERY_AWARENESS:
        this.send(socket, awarenessMessage(this.awareness, [...this.awareness.getStates().keys()]));
        break;
      case MESSAGE_AUTH:
        authProtocol.readAuthMessage(decoder, this.doc, (_doc, reason) => this.emit('permission-denied', reason));
        break;
      default:
        break;
    }
    if (encoding.length(encoder) > 1) this.send(socket, encoding.toUint8Array(encoder));
  }

  private readonly onDocUpdate = (update: Uint8Array, origin: unknown): void => {
    if (origin === this) return;
    const encoder = encoding.createEncoder();
    encoding.writeVarUint(encoder, MESSAGE_SYNC);
    syncProtocol.writeUpdate(encoder, update);
    this.send(this.socket, encoding.toUint8Array(encoder));
  };

  private readonly onAwarenessUpdate = (
    changes: { added: number[]; updated: number[]; removed: number[] },
    origin: unknown,
  ): void => {
    if (origin === this) return;
    const changed = [...changes.added, ...changes.updated, ...changes.removed];
    this.send(this.socket, awarenessMessage(this.awareness, changed));
  };
}

function awarenessMessage(awareness: awarenessProtocol.Awareness, clients: number[]): Uint8Array {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, MESSAGE_AWARENESS);
  encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(awareness, clients));
  return encoding.toUint8Array(encoder);
}
