// The chat side panel: the latest page on open, older pages as you scroll up, live
// messages, typing indicators, and an outbox: a message you send shows at once as
// "sending", survives reconnects and reloads (it is kept in localStorage until the server
// acknowledges it), and is sent again with the same id, which the server deduplicates.
import { ChatError, newMessageId, type ChatMessage, type TandemChat, type Typing } from '../../src/index.js';
import { initials, safeColor, safeName, type Identity } from './session.js';

interface Body {
  text: string;
  name?: string;
  color?: string;
}

interface Unsent {
  id: string;
  body: Body;
}

const PAGE = 50;
/** Refusals that sending again cannot fix: the message leaves the outbox. */
const PERMANENT = new Set(['read_only', 'body_too_large', 'bad_request', 'unauthorized']);
const TYPING_REPEAT_MS = 2_000;

export class ChatPanel {
  private readonly shown = new Map<number, HTMLElement>();
  private readonly pending = new Map<string, HTMLElement>();
  private oldest = Infinity;
  private newest = 0;
  private loadingOlder = false;
  private loaded = false;
  private typingSentAt = 0;
  private readonly typists = new Map<string, { name: string; expiry: ReturnType<typeof setTimeout> }>();
  private readonly outboxKey: string;

  constructor(
    private readonly chat: TandemChat,
    room: string,
    private readonly me: () => Identity,
    private readonly nameOf: (typing: Typing) => string,
    private readonly list: HTMLElement,
    private readonly historyStatus: HTMLElement,
    private readonly typingLine: HTMLElement,
    private readonly form: HTMLFormElement,
    private readonly input: HTMLTextAreaElement,
  ) {
    this.outboxKey = `tandem.outbox.${room}`;
    chat.on('joined', () => {
      // Typing events missed while away never come: start again from the presence list.
      this.clearTypists();
      for (const m of chat.presence.values()) {
        if (m.status) this.onTyping({ conn: m.conn, subject: m.subject, status: m.status });
      }
      void this.loadLatest();
    });
    chat.on('status', (status) => status === 'disconnected' && this.clearTypists());
    chat.on('reset', () => this.clear());
    chat.on('message', (m) => this.show(m));
    chat.on('typing', (t) => this.onTyping(t));
    chat.on('presence', (event, member) => {
      if (event === 'leave') this.onTyping({ conn: member.conn, subject: member.subject, status: null });
    });
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.send();
    });
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send();
      }
    });
    input.addEventListener('input', () => {
      this.autosize();
      const now = Date.now();
      if (input.value.trim() === '') {
        this.stopTyping();
      } else if (now - this.typingSentAt > TYPING_REPEAT_MS) {
        this.typingSentAt = now;
        chat.typing('typing');
      }
    });
    input.addEventListener('blur', () => this.stopTyping());
    list.addEventListener('scroll', () => {
      if (list.scrollTop < 80) void this.loadOlder();
    });
    // Messages a previous visit could not send: send them again (same ids).
    for (const unsent of this.readOutbox()) this.publish(unsent);
  }

  /** Read-only tokens cannot publish. */
  setReadOnly(readOnly: boolean): void {
    this.input.disabled = readOnly;
    (this.form.querySelector('button') as HTMLButtonElement).disabled = readOnly;
    this.input.placeholder = readOnly ? 'Read-only: you cannot send messages' : 'Write a message';
  }

  private send(): void {
    const text = this.input.value.trim();
    if (!text) return;
    const { name, color } = this.me();
    const unsent: Unsent = { id: newMessageId(), body: { text, name, color } };
    this.writeOutbox([...this.readOutbox(), unsent]);
    this.input.value = '';
    this.autosize();
    this.stopTyping();
    this.publish(unsent);
  }

  private publish(unsent: Unsent): void {
    if (!this.pending.has(unsent.id)) {
      const el = this.render(unsent.body, undefined, undefined);
      el.classList.add('sending');
      el.dataset.id = unsent.id;
      this.pending.set(unsent.id, el);
      this.list.append(el);
      this.scrollToEnd();
    }
    this.chat.publish(unsent.body, unsent.id).then(
      (ack) => {
        this.forget(unsent.id);
        // Durable now; the stream's copy replaces this one when it arrives.
        const el = this.pending.get(unsent.id);
        el?.classList.remove('sending');
        if (el) el.dataset.seq = String(ack.seq);
      },
      (error: Error) => {
        const el = this.pending.get(unsent.id);
        el?.classList.replace('sending', 'failed');
        el?.setAttribute('title', error.message);
        // Kept (and sent again on the next visit) unless the server will never take it.
        if (error instanceof ChatError && PERMANENT.has(error.code)) this.forget(unsent.id);
      },
    );
  }

  private forget(id: string): void {
    this.writeOutbox(this.readOutbox().filter((u) => u.id !== id));
  }

  private readOutbox(): Unsent[] {
    try {
      return (JSON.parse(localStorage.getItem(this.outboxKey) ?? '[]') as Unsent[]).filter((u) => u && u.id && u.body);
    } catch {
      return [];
    }
  }

  private writeOutbox(outbox: Unsent[]): void {
    if (outbox.length) localStorage.setItem(this.outboxKey, JSON.stringify(outbox));
    else localStorage.removeItem(this.outboxKey);
  }

  private stopTyping(): void {
    if (this.typingSentAt === 0) return;
    this.typingSentAt = 0;
    this.chat.typing(null);
  }

  private async loadLatest(): Promise<void> {
    if (this.loaded) return; // a rejoin resumes: the missed messages arrive as events
    this.loaded = true;
    try {
      const page = await this.chat.history({ limit: PAGE });
      for (const m of page.messages) this.show(m, false);
      this.updateHistoryStatus(page.first_seq);
      this.scrollToEnd();
    } catch (error) {
      this.loaded = false;
      this.historyStatus.textContent = `Could not load history: ${(error as Error).message}`;
    }
  }

  private async loadOlder(): Promise<void> {
    if (this.loadingOlder || !this.loaded || this.oldest === Infinity || this.oldest <= this.chat.firstSeq) return;
    this.loadingOlder = true;
    this.historyStatus.textContent = 'Loading earlier messages…';
    const before = this.list.scrollHeight;
    try {
      const page = await this.chat.history({ before: this.oldest, limit: PAGE });
      if (page.epoch !== this.chat.epoch) return; // the stream was rebuilt meanwhile
      if (page.messages.length === 0) this.oldest = this.chat.firstSeq; // nothing older is kept
      for (const m of page.messages) this.show(m, false);
      this.updateHistoryStatus(page.first_seq);
      // Keep what the reader was looking at in place.
      this.list.scrollTop += this.list.scrollHeight - before;
    } catch (error) {
      this.historyStatus.textContent = `Could not load earlier messages: ${(error as Error).message}`;
    } finally {
      this.loadingOlder = false;
    }
  }

  private updateHistoryStatus(firstSeq: number): void {
    const more = this.oldest !== Infinity && this.oldest > firstSeq;
    this.historyStatus.textContent = this.shown.size === 0 ? 'No messages yet. Say hello!' : more ? 'Scroll up for earlier messages' : 'Beginning of the conversation';
  }

  private clear(): void {
    for (const el of this.shown.values()) el.remove();
    this.shown.clear();
    this.oldest = Infinity;
    this.newest = 0;
    this.loaded = false;
  }

  /** Puts a message in its place by seq (replacing its "sending" copy, if it is ours). */
  private show(message: ChatMessage, live = true): void {
    if (this.shown.has(message.seq)) return;
    const body = (message.body ?? {}) as Record<string, unknown>;
    const text = typeof body.text === 'string' ? body.text : JSON.stringify(message.body);
    const el = this.render(
      { text, name: safeName(body.name, message.sender), color: safeColor(body.color) },
      message.sender,
      message.ts,
    );
    el.dataset.seq = String(message.seq);
    const mine = message.id !== undefined ? this.pending.get(message.id) : undefined;
    if (mine) {
      this.pending.delete(message.id as string);
      mine.remove();
    }
    const atEnd = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    // Live messages come last (the common case: no search); history pages go in their place.
    const next = message.seq > this.newest ? undefined : this.firstShownAfter(message.seq);
    const firstPending = this.pending.values().next().value as HTMLElement | undefined;
    this.list.insertBefore(el, next ?? firstPending ?? null);
    this.shown.set(message.seq, el);
    this.newest = Math.max(this.newest, message.seq);
    this.oldest = Math.min(this.oldest, message.seq);
    if (live && (atEnd || mine)) this.scrollToEnd();
    if (live) this.updateHistoryStatus(this.chat.firstSeq);
  }

  /** The shown message with the smallest seq above `seq`, if any. */
  private firstShownAfter(seq: number): HTMLElement | undefined {
    let best: [number, HTMLElement] | undefined;
    for (const entry of this.shown) if (entry[0] > seq && (!best || entry[0] < best[0])) best = entry;
    return best?.[1];
  }

  private render(body: Body, sender: string | undefined, ts: number | undefined): HTMLElement {
    const name = body.name || sender || 'someone';
    const el = document.createElement('div');
    el.className = 'message';
    const avatar = document.createElement('span');
    avatar.className = 'avatar';
    avatar.style.background = body.color ?? '#64748b';
    avatar.textContent = initials(name);
    const head = document.createElement('div');
    head.className = 'head';
    const who = document.createElement('span');
    who.className = 'sender';
    who.textContent = name;
    const when = document.createElement('time');
    when.textContent = ts === undefined ? 'sending…' : new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    if (ts !== undefined) when.dateTime = new Date(ts).toISOString();
    head.append(who, when);
    const text = document.createElement('div');
    text.className = 'text';
    text.textContent = body.text;
    const content = document.createElement('div');
    content.className = 'content';
    content.append(head, text);
    el.append(avatar, content);
    return el;
  }

  private onTyping(typing: Typing & { ttl_ms?: number }): void {
    if (typing.conn === this.chat.conn) return;
    const old = this.typists.get(typing.conn);
    if (old) clearTimeout(old.expiry);
    this.typists.delete(typing.conn);
    if (typing.status) {
      // The server clears it after its TTL; should that event be missed, expire it here.
      const ttl = typeof typing.ttl_ms === 'number' ? typing.ttl_ms : 5_000;
      const expiry = setTimeout(() => this.onTyping({ ...typing, status: null }), ttl + 1_000);
      this.typists.set(typing.conn, { name: this.nameOf(typing), expiry });
    }
    this.renderTypists();
  }

  private clearTypists(): void {
    for (const t of this.typists.values()) clearTimeout(t.expiry);
    this.typists.clear();
    this.renderTypists();
  }

  private renderTypists(): void {
    const names = [...this.typists.values()].map((t) => t.name);
    this.typingLine.textContent =
      names.length === 0 ? '' : names.length === 1 ? `${names[0]} is typing…` : `${names.slice(0, -1).join(', ')} and ${names.at(-1)} are typing…`;
  }

  private scrollToEnd(): void {
    this.list.scrollTop = this.list.scrollHeight;
  }

  private autosize(): void {
    this.input.style.height = 'auto';
    this.input.style.height = `${Math.min(this.input.scrollHeight, 160)}px`;
  }
}
