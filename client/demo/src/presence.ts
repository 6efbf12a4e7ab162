// The "Here now" list: everyone with the document open (awareness, with their name and
// colour) and everyone on the chat stream without it (e.g. an SSE reader), each marked
// while typing.
import type { Awareness } from 'y-protocols/awareness';
import type { TandemChat } from '../../src/index.js';
import { initials, safeColor, safeName } from './session.js';

export interface Person {
  key: string;
  name: string;
  color: string;
  me: boolean;
  typing: boolean;
}

interface AwarenessState {
  user?: { name?: unknown; color?: unknown };
  chat?: unknown;
}

/** A chat member's display name: the token's `info.name`, else its subject. */
export function memberName(member: { subject: string; info?: unknown }): string {
  return safeName((member.info as { name?: unknown } | undefined)?.name, member.subject);
}

/** The name and colour a chat connection last showed in awareness. */
export type KnownPeople = Map<string, { name: string; color: string }>;

/**
 * Everyone here, you first, then by name. `known` remembers how each chat connection last
 * appeared in awareness: a person whose page closes leaves awareness and the chat stream a
 * moment apart, and in between they stay listed as themselves, not as their token's subject.
 */
export function people(awareness: Awareness, chat: TandemChat, known: KnownPeople = new Map()): Person[] {
  const list: Person[] = [];
  const linked = new Set<string>();
  for (const [client, raw] of awareness.getStates()) {
    const state = raw as AwarenessState;
    const name = safeName(state.user?.name, '');
    if (!name) continue;
    const color = safeColor(state.user?.color);
    const conn = typeof state.chat === 'string' ? state.chat : undefined;
    if (conn) {
      linked.add(conn);
      known.set(conn, { name, color });
    }
    const member = conn ? chat.presence.get(conn) : undefined;
    list.push({ key: `doc-${client}`, name, color, me: client === awareness.clientID, typing: Boolean(member?.status) });
  }
  for (const member of chat.presence.values()) {
    if (linked.has(member.conn) || member.conn === chat.conn) continue;
    const seen = known.get(member.conn);
    list.push({
      key: `chat-${member.conn}`,
      name: seen?.name ?? memberName(member),
      color: seen?.color ?? '#64748b',
      me: false,
      typing: Boolean(member.status),
    });
  }
  for (const conn of known.keys()) if (!chat.presence.has(conn)) known.delete(conn);
  return list.sort((a, b) => Number(b.me) - Number(a.me) || a.name.localeCompare(b.name));
}

/** Renders the list into `ul` and the count into `count`. */
export function renderPeople(ul: HTMLElement, count: HTMLElement, list: Person[]): void {
  ul.replaceChildren(
    ...list.map((person) => {
      const li = document.createElement('li');
      li.dataset.name = person.name;
      const avatar = document.createElement('span');
      avatar.className = 'avatar';
      avatar.style.background = person.color;
      avatar.textContent = initials(person.name);
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = person.name;
      li.append(avatar, name);
      if (person.me) li.append(Object.assign(document.createElement('span'), { className: 'tag', textContent: 'you' }));
      if (person.typing) li.append(Object.assign(document.createElement('span'), { className: 'tag typing', textContent: 'typing…' }));
      return li;
    }),
  );
  count.textContent = String(list.length);
}
