// The client package against a real server: the chat stream resumes across cut
// connections with no gap and no duplicate, publishes are retried idempotently, tokens are
// refreshed before they expire (no 4010 ever), the chat falls back to SSE + HTTP where
// WebSockets are refused, the provider reconnects after a restart, and reconnect delays
// have jitter and a cap.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import * as Y from 'yjs';
import { TandemChat, TandemProvider, TokenKeeper, backoffDelay, fetchJson, fetchMessages, postMessage, tokenExpiresAt } from '../dist/index.js';
import { noWebSocketProxy, removeDir, signToken, startServer, tcpProxy, uniqueRoom, waitFor } from './server.mjs';

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function server(env = {}) {
  const s = await startServer({ env });
  cleanups.push(async () => {
    await s.kill();
    removeDir(s.dataDir);
  });
  return s;
}

const opts = { WebSocketPolyfill: WebSocket };

test('backoff: full jitter under an exponential ceiling, capped', () => {
  // The ceiling doubles from the base and stops at the cap.
  const top = (attempt) => backoffDelay(attempt, { baseMs: 100, capMs: 5_000, random: () => 0.999999 });
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 20, 1000].map(top), [99, 199, 399, 799, 1599, 3199, 4999, 4999, 4999]);
  assert.equal(backoffDelay(7, { random: () => 0 }), 0, 'full jitter reaches zero');
  // With the real random source: spread over the whole range, never above the cap.
  const samples = Array.from({ length: 2_000 }, () => backoffDelay(12, { baseMs: 250, capMs: 10_000 }));
  assert.ok(Math.max(...samples) < 10_000, 'never above the cap');
  assert.ok(new Set(samples).size > 1_000, 'delays differ from client to client');
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  assert.ok(mean > 4_000 && mean < 6_000, `mean ${mean} is about half the cap`);
  assert.ok(samples.some((d) => d < 1_000) && samples.some((d) => d > 9_000), 'spread across the range');
});

test('token keeper: asks again after a failure, reads exp, refreshes before it', { timeout: 20_000 }, async () => {
  let calls = 0;
  const flaky = new TokenKeeper(() => {
    calls += 1;
    if (calls === 1) throw new Error('not logged in yet'); // thrown, not rejected
    return 'token-2';
  });
  await assert.rejects(flaky.get(), /not logged in yet/);
  assert.equal(await flaky.get(), 'token-2', 'the function is asked again');
  flaky.stop();

  const secret = 'x'.repeat(16);
  const exp = Math.floor(Date.now() / 1000) + 2;
  assert.equal(tokenExpiresAt(signToken(secret, { exp })), exp * 1000);
  assert.equal(tokenExpiresAt('not a jwt'), undefined);
  const refreshed = [];
  let n = 0;
  const keeper = new TokenKeeper(
    () => signToken(secret, { n: (n += 1), exp: Math.floor(Date.now() / 1000) + 3 }),
    (token) => refreshed.push(token),
  );
  const first = await keeper.get();
  await waitFor(() => refreshed.length >= 1, { timeout: 5_000, message: () => 'a refresh before expiry' });
  assert.ok(Date.now() < tokenExpiresAt(first), 'refreshed before the first token expired');
  assert.notEqual(refreshed[0], first);
  keeper.stop();
});

test('chat: resume across cut connections delivers every message once, in order', { timeout: 60_000 }, async () => {
  const s = await server();
  const proxy = await tcpProxy(s.port);
  cleanups.push(() => proxy.close());
  const room = uniqueRoom('resume');
  const reader = new TandemChat(proxy.url, room, { ...opts, backoff: { baseMs: 50, capMs: 300 } });
  cleanups.push(() => reader.close());
  const seen = [];
  reader.on('message', (m) => seen.push(m.seq));
  let joins = 0;
  reader.on('joined', () => (joins += 1));
  await waitFor(() => joins === 1, { message: () => 'first join' });

  const TOTAL = 60;
  for (let n = 1; n <= TOTAL; n += 1) {
    const ack = await postMessage(s.url, room, { n }, { idempotencyKey: `m${n}` });
    assert.equal(ack.seq, n);
    if (n % 15 === 0) proxy.cut(); // the reader's connection drops mid-stream, three times
    await sleep(10);
  }
  await waitFor(() => seen.length >= TOTAL, { timeout: 20_000, message: () => `all ${TOTAL} messages (have ${seen.length})` });
  await sleep(200);
  assert.deepEqual(seen, Array.from({ length: TOTAL }, (_, i) => i + 1), 'no gap, no duplicate, in order');
  assert.ok(joins >= 4, `the reader rejoined after each cut (joins: ${joins})`);
});

test('chat: a publish whose ack was lost is retried with its id and stored once', { timeout: 60_000 }, async () => {
  const s = await server();
  const proxy = await tcpProxy(s.port);
  cleanups.push(() => proxy.close());
  const room = uniqueRoom('idempotent');
  const chat = new TandemChat(proxy.url, room, { ...opts, backoff: { baseMs: 50, capMs: 300 } });
  cleanups.push(() => chat.close());
  await waitFor(() => chat.isJoined, { message: () => 'join' });
  await chat.publish({ text: 'first' }, 'first');

  // The server receives and stores the publish, but its ack never reaches the client.
  proxy.dropDownstream(true);
  const acked = chat.publish({ text: 'lost ack' }, 'lost-ack');
  await waitFor(async () => (await fetchMessages(s.url, room, { since: 0 })).messages.some((m) => m.id === 'lost-ack'), {
    message: () => 'the publish to be stored',
  });
  // The connection dies; the client reconnects and sends the publish again, same id.
  proxy.cut();
  proxy.dropDownstream(false);
  const ack = await acked;
  assert.equal(ack.seq, 2);
  assert.equal(ack.duplicate, true, 'the retry was recognised as the same message');
  // An app retrying by itself with the same id gets the same answer.
  const again = await chat.publish({ text: 'lost ack' }, 'lost-ack');
  assert.deepEqual([again.seq, again.duplicate], [2, true]);
  const stored = (await fetchMessages(s.url, room, { since: 0 })).messages;
  assert.deepEqual(stored.map((m) => m.id), ['first', 'lost-ack'], 'stored exactly once');
});

test('tokens from a function are refreshed before they expire: no 4010, nothing lost', { timeout: 60_000 }, async () => {
  const secret = 'a-test-secret-of-enough-bytes';
  const s = await server({ TANDEM_JWT_SECRET: secret, TANDEM_JWT_LEEWAY_SECS: '0' });
  const room = uniqueRoom('refresh');
  let minted = 0;
  // Tokens that live 3–4 s (exp has whole seconds).
  const token = async () => {
    minted += 1;
    return signToken(secret, { sub: 'ada', exp: Math.floor(Date.now() / 1000) + 4, rooms: [room], perm: 'write' });
  };
  const closes = [];
  const chat = new TandemChat(s.url, room, { ...opts, token });
  cleanups.push(() => chat.close());
  chat.on('error', (e) => closes.push(`chat ${e.message}`));
  const docA = new Y.Doc();
  const docB = new Y.Doc();
  const a = new TandemProvider(s.url, room, docA, { ...opts, token });
  const b = new TandemProvider(s.url, room, docB, { ...opts, token });
  cleanups.push(() => (a.destroy(), b.destroy()));
  for (const p of [a, b]) p.on('connection-close', (e) => e.code === 4010 && closes.push(`provider ${e.code} ${e.reason}`));
  await Promise.all([a.whenSynced(), b.whenSynced()]);
  await waitFor(() => chat.isJoined, { message: () => 'chat join' });

  // Ten seconds of edits and publishes: two or three token lifetimes.
  const acks = [];
  const until = Date.now() + 10_000;
  for (let n = 0; Date.now() < until; n += 1) {
    docA.getText('text').insert(0, 'x');
    acks.push(chat.publish({ n }));
    await sleep(200);
  }
  const done = await Promise.all(acks);
  assert.deepEqual(done.map((x) => x.seq), done.map((_, i) => i + 1), 'every publish acknowledged, in order');
  await waitFor(() => docB.getText('text').toString() === docA.getText('text').toString(), {
    message: () => 'the documents to converge',
  });
  assert.equal((await fetchJson(s.url, room, { headers: { authorization: `Bearer ${await token()}` } })).text, docA.getText('text').toString());
  assert.deepEqual(closes, [], 'no connection was closed for an expired token');
  assert.ok(minted >= 6, `tokens were refreshed (${minted} minted for three clients)`);
});

test('chat falls back to SSE + HTTP where WebSockets are refused', { timeout: 60_000 }, async () => {
  const s = await server();
  const proxy = await noWebSocketProxy(s.url);
  cleanups.push(() => proxy.close());
  const room = uniqueRoom('fallback');
  const direct = new TandemChat(s.url, room, opts);
  cleanups.push(() => direct.close());
  await waitFor(() => direct.isJoined, { message: () => 'direct join' });

  const behind = new TandemChat(proxy.url, room, { ...opts, backoff: { baseMs: 50, capMs: 200 } });
  cleanups.push(() => behind.close());
  const transports = [];
  behind.on('transport', (t) => transports.push(t));
  const got = [];
  behind.on('message', (m) => got.push(m.body.text));
  await waitFor(() => behind.isJoined, { timeout: 15_000, message: () => `fallback join (transport ${behind.transport})` });
  assert.deepEqual(transports, ['sse']);
  assert.ok(proxy.refused() >= 2, `the proxy refused the WebSocket (${proxy.refused()} times)`);
  assert.ok(
    [...direct.presence.values()].some((m) => m.conn === behind.conn),
    'the SSE client is in the presence list',
  );

  await direct.publish({ text: 'to the SSE client' });
  await waitFor(() => got.includes('to the SSE client'), { message: () => 'a message over SSE' });
  const seenByDirect = [];
  direct.on('message', (m) => seenByDirect.push(m.body.text));
  const ack = await behind.publish({ text: 'over HTTP' }, 'http-1');
  assert.equal(ack.seq, 2);
  assert.equal((await behind.publish({ text: 'over HTTP' }, 'http-1')).duplicate, true, 'HTTP publish is idempotent');
  await waitFor(() => seenByDirect.includes('over HTTP'), { message: () => 'the HTTP publish to reach the WebSocket client' });
  const page = await behind.history({ before: 2, limit: 10 });
  assert.deepEqual(page.messages.map((m) => m.body.text), ['to the SSE client'], 'history paging over HTTP');
});

test('provider reconnects after a server restart and syncs edits made meanwhile', { timeout: 60_000 }, async () => {
  const first = await startServer();
  const room = uniqueRoom('restart');
  const doc = new Y.Doc();
  const provider = new TandemProvider(first.url, room, doc, { ...opts, backoff: { baseMs: 100, capMs: 500 } });
  cleanups.push(() => provider.destroy());
  const statuses = [];
  provider.on('status', ({ status }) => statuses.push(status));
  await provider.whenSynced();
  doc.getText('text').insert(0, 'before ');
  await waitFor(async () => (await fetchJson(first.url, room)).text === 'before ', { message: () => 'first edit stored' });
  const { port, dataDir } = first;
  await first.stop();
  cleanups.push(() => removeDir(dataDir));
  await waitFor(() => !provider.synced, { message: () => 'the provider to notice' });
  doc.getText('text').insert(7, 'while down');
  const second = await startServer({ port, dataDir });
  cleanups.push(() => second.kill());
  await provider.whenSynced(20_000);
  await waitFor(async () => (await fetchJson(second.url, room)).text === 'before while down', {
    message: () => 'the offline edit to reach the restarted server',
  });
  assert.ok(statuses.includes('disconnected') && statuses.at(-1) === 'connected', statuses.join(' → '));
});
