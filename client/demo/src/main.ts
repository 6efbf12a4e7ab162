// The page `tandem serve` shows at `/`: a shared document (CodeMirror 6 bound to a Yjs
// text with y-codemirror.next, remote cursors named and coloured from awareness), the
// room's chat with presence and typing, a name picker, a connection indicator, a room
// picker and an invite link. Everything talks to the server that served the page.
import * as Y from 'yjs';
import { EditorView } from 'codemirror';
import { defaultKeymap } from '@codemirror/commands';
import { EditorState } from '@codemirror/state';
import { drawSelection, highlightSpecialChars, keymap, placeholder } from '@codemirror/view';
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next';
import { TandemChat, TandemProvider, isValidRoomName, roomNameProblem, type Typing } from '../../src/index.js';
import { ChatPanel } from './chat-panel.js';
import { type KnownPeople, memberName, people, renderPeople } from './presence.js';
import { currentRoom, currentToken, initials, isReadOnly, loadIdentity, rememberToken, roomLink, safeName, saveIdentity } from './session.js';

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const server = location.origin;

/** Asks the server whether this page may read the room; resolves with the refusal, if any. */
async function refusal(room: string, token: string | undefined): Promise<string | undefined> {
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  try {
    const response = await fetch(`/rooms/${encodeURIComponent(room)}/messages?limit=1`, { headers });
    if (response.status !== 401 && response.status !== 403) return undefined;
    const body = (await response.json().catch(() => ({}))) as { error?: string };
    return body.error ?? `the server answered ${response.status}`;
  } catch {
    return undefined; // unreachable: the clients will keep trying and say so
  }
}

function askForToken(reason: string): Promise<string> {
  const dialog = $<HTMLDialogElement>('token-dialog');
  $('token-reason').textContent = reason;
  // Esc would close the dialog and leave the page waiting for nothing.
  dialog.addEventListener('cancel', (e) => e.preventDefault());
  dialog.showModal();
  return new Promise((resolve) => {
    $('token-form').addEventListener('submit', () => resolve($<HTMLTextAreaElement>('token-input').value.trim()), { once: true });
  });
}

function toast(text: string): void {
  const el = $('toast');
  el.textContent = text;
  el.hidden = false;
  setTimeout(() => (el.hidden = true), 1_800);
}

async function main(): Promise<void> {
  const room = currentRoom();
  document.title = `${room} · Tandem`;
  const roomInput = $<HTMLInputElement>('room-input');
  roomInput.value = room;
  $('room-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const next = roomInput.value.trim();
    if (!isValidRoomName(next)) {
      $('room-error').textContent = roomNameProblem(next) ?? '';
      return;
    }
    location.assign(`/r/${encodeURIComponent(next)}${location.hash}`);
  });
  roomInput.addEventListener('input', () => ($('room-error').textContent = ''));

  let token = currentToken();
  for (let why = await refusal(room, token); why !== undefined; why = await refusal(room, token)) {
    token = await askForToken(token ? `The token was refused: ${why}.` : `Without a token: ${why}.`);
    rememberToken(token);
  }
  const readOnly = isReadOnly(token);

  let me = loadIdentity(token);
  const doc = new Y.Doc();
  const text = doc.getText('codemirror');
  const provider = new TandemProvider(server, room, doc, { token });
  const chat = new TandemChat(server, room, { token });
  const awareness = provider.awareness;
  const setUser = (): void => {
    awareness.setLocalStateField('user', { name: me.name, color: me.color, colorLight: `${me.color}33` });
    $('me-avatar').style.background = me.color;
    $('me-avatar').textContent = initials(me.name);
  };
  setUser();
  chat.on('joined', (joined) => awareness.setLocalStateField('chat', joined.conn));

  const nameInput = $<HTMLInputElement>('name-input');
  nameInput.value = me.name;
  nameInput.addEventListener('change', () => {
    const name = nameInput.value.trim().slice(0, 40);
    if (!name) {
      nameInput.value = me.name;
      return;
    }
    me = { ...me, name };
    saveIdentity(me);
    setUser();
  });

  const view = new EditorView({
    parent: $('editor'),
    state: EditorState.create({
      doc: text.toString(),
      extensions: [
        // Lean on purpose: a prose editor needs no syntax highlighting or folding. Undo is
        // Yjs's (only your own changes), from yCollab's undo manager.
        highlightSpecialChars(),
        drawSelection(),
        keymap.of([...yUndoManagerKeymap, ...defaultKeymap]),
        EditorView.lineWrapping,
        placeholder(readOnly ? 'Nothing here yet.' : 'Start typing. Everyone in this room sees it as you type.'),
        EditorState.readOnly.of(readOnly),
        EditorView.editable.of(!readOnly),
        yCollab(text, awareness, { undoManager: new Y.UndoManager(text) }),
      ],
    }),
  });
  $('readonly-banner').hidden = !readOnly;

  // Whose typing event is it: the awareness state linked to that chat connection, else the member.
  const nameOf = (typing: Typing): string => {
    for (const state of awareness.getStates().values()) {
      const s = state as { chat?: unknown; user?: { name?: unknown } };
      if (s.chat === typing.conn) return safeName(s.user?.name, typing.subject);
    }
    const member = chat.presence.get(typing.conn);
    return member ? memberName(member) : typing.subject;
  };
  const panel = new ChatPanel(
    chat,
    room,
    () => me,
    nameOf,
    $('messages'),
    $('history-status'),
    $('typing'),
    $<HTMLFormElement>('chat-form'),
    $<HTMLTextAreaElement>('chat-input'),
  );
  panel.setReadOnly(readOnly);

  const known: KnownPeople = new Map();
  const refreshPeople = (): void => renderPeople($('presence-list'), $('presence-count'), people(awareness, chat, known));
  awareness.on('change', refreshPeople);
  for (const event of ['joined', 'presence', 'typing', 'status'] as const) chat.on(event, refreshPeople);
  refreshPeople();

  const status = $('status');
  const showStatus = (): void => {
    const state = provider.synced && chat.status === 'connected' ? 'online' : provider.status === 'disconnected' && chat.status !== 'connected' ? 'offline' : 'connecting';
    status.dataset.state = state;
    status.querySelector('.label')!.textContent =
      state === 'online' ? (chat.transport === 'sse' ? 'Connected (SSE)' : 'Connected') : state === 'offline' ? 'Offline: your changes are kept' : 'Connecting…';
  };
  provider.on('status', showStatus);
  provider.on('sync', showStatus);
  chat.on('status', showStatus);
  showStatus();

  $('copy-link').addEventListener('click', () => {
    const link = roomLink(room);
    navigator.clipboard.writeText(link).then(
      () => toast('Link copied: send it to someone to edit together'),
      () => toast(link),
    );
  });

  const debug = { doc, text, provider, chat, view, awareness, syncedAfterMs: undefined as number | undefined };
  provider.on('sync', (synced) => {
    if (synced && debug.syncedAfterMs === undefined) debug.syncedAfterMs = performance.now(); // since navigation start
  });
  // For the browser console (and the browser tests).
  (window as unknown as { tandem: typeof debug }).tandem = debug;
}

void main();
