// The chat client against a real server: ordered delivery, presence, automatic
// resume across a server restart (publishes made while disconnected are sent
// once, on reconnect), and the HTTP publish / long-poll helpers.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { TandemChat, fetchMessages, postMessage } from '../dist/index.js';
import { removeDir, startServer, uniqueRoom, waitFor } from './server.mjs';

let server;
const chats = [];

after(async () => {
  for (const chat of chats) chat.close();
  if (server) {
    await server.kill();
    removeDir(server.dataDir);
  }
});

function open(room, opts = {}) {
  const chat = new TandemChat(server.url, room, { WebSocketPolyfill: WebSocket, minDelayMs: 50, ...opts });
  chats.push(chat);
  const log = { messages: [], resets: 0, joins: 0, presence: [] };
  chat.on('message', (m) => log.messages.push(m));
  chat.on('reset', () => (log.resets += 1));
  chat.on('joined', () => (log.joins += 1));
  chat.on('presence', (event, member) => log.presence.push(`${event}:${member.subject}`));
  return { chat, log };
}

test('messages arrive once, in order, across a server restart', { timeout: 60_000 }, async () => {
  server = await startServer();
  const room = uniqueRoom('chat');
  const a = open(room);
  const b = open(room);
  await waitFor(() => a.log.joins === 1 && b.log.joins === 1, { message: 'both joined' });
  await waitFor(() => a.chat.presence.size === 2, { message: 'a sees b in presence' });

  const first = await Promise.all([1, 2, 3].map((n) => a.chat.publish({ n })));
  assert.deepEqual(first.map((ack) => ack.seq).sort(), [1, 2, 3]);
  await waitFor(() => b.log.messages.length === 3, { message: 'b got 1..3' });

  // Restart the server on the same port and data: both clients reconnect and resume.
  const { port, dataDir } = server;
  await server.stop();
  const later = [4, 5, 6].map((n) => a.chat.publish({ n })); // queued while disconnected
  server = await startServer({ port, dataDir });
  const acks = await Promise.all(later);
  assert.deepEqual(acks.map((ack) => ack.seq).sort(), [4, 5, 6]);
  await waitFor(() => b.log.messages.length === 6, { message: () => `b got 1..6, has ${b.log.messages.length}` });
  assert.deepEqual(b.log.messages.map((m) => m.seq), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(a.log.messages.map((m) => m.seq), [1, 2, 3, 4, 5, 6]);
  assert.equal(b.log.resets, 0, 'the stream was recovered, not reset');
  assert.ok(b.log.joins >= 2, 'b re-joined');

  const page = await b.chat.history({ before: 4, limit: 2 });
  assert.deepEqual(page.messages.map((m) => m.seq), [2, 3]);
});

test('HTTP publish is idempotent and long-poll waits for the next message', { timeout: 30_000 }, async () => {
  server ??= await startServer();
  const room = uniqueRoom('http');
  const acks = [];
  for (let i = 0; i < 3; i += 1) acks.push(await postMessage(server.url, room, { text: 'once' }, { idempotencyKey: 'k1' }));
  assert.deepEqual(acks.map((a) => [a.seq, a.duplicate]), [[1, false], [1, true], [1, true]]);

  const waiting = fetchMessages(server.url, room, { since: 1, waitSecs: 10 });
  await new Promise((resolve) => setTimeout(resolve, 200));
  await postMessage(server.url, room, { text: 'next' });
  const page = await waiting;
  assert.equal(page.recovered, true);
  assert.deepEqual(page.messages.map((m) => [m.seq, m.body.text]), [[2, 'next']]);
});

test('publishes over the message rate are retried until acked, never lost', { timeout: 60_000 }, async () => {
  const limited = await startServer({ env: { TANDEM_MAX_MESSAGES_PER_SEC: '10' } });
  try {
    const room = uniqueRoom('rate');
    const chat = new TandemChat(limited.url, room, { WebSocketPolyfill: WebSocket, minDelayMs: 50 });
    chats.push(chat);
    const errors = [];
    chat.on('error', (e) => errors.push(e));
    await new Promise((resolve) => chat.on('joined', resolve));
    // 60 at once against 10/s with a burst of 20: most are refused as rate_limited first
    // and sent again by the client with the same id.
    const acks = await Promise.all(Array.from({ length: 60 }, (_, n) => chat.publish({ n })));
    assert.deepEqual(acks.map((a) => a.seq).sort((x, y) => x - y), Array.from({ length: 60 }, (_, i) => i + 1));
    assert.ok(acks.every((a) => !a.duplicate), 'each was published once');
    assert.deepEqual(errors, [], 'no error surfaced to the app');
    const metrics = await (await fetch(`${limited.url}/metrics`)).text();
    const throttled = Number(/^tandem_throttled_total (\d+)/m.exec(metrics)?.[1] ?? 0);
    assert.ok(throttled >= 1, `the connection was throttled (${throttled})`);
    chat.close();
  } finally {
    await limited.kill();
    removeDir(limited.dataDir);
  }
});
