// Idle connections: the stock provider drops and reconnects any connection
// on which it has received no message for 30 s, and WebSocket ping frames
// do not count (they never reach `onmessage`). The server must therefore
// send protocol-level keepalive traffic so idle clients stay connected.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import * as Y from 'yjs';
import { fetchJson } from '../dist/index.js';
import { connectProvider, destroyProvider, removeDir, startServer, uniqueRoom, waitFor, waitSynced } from './server.mjs';

const IDLE_MS = 75_000;

let server;
const providers = [];

after(async () => {
  for (const p of providers) destroyProvider(p);
  if (server) {
    await server.kill();
    removeDir(server.dataDir);
  }
});

/** Records what an idle provider goes through: status changes, closes and the longest silence. */
function watch(provider) {
  const log = { statuses: [], closes: [], maxGapMs: 0 };
  provider.on('status', ({ status }) => log.statuses.push(status));
  provider.on('connection-close', (event) => log.closes.push(event ? `code ${event.code}` : 'closed by client (no message for 30 s)'));
  // wsLastMessageReceived is bumped on every message the provider receives.
  const timer = setInterval(() => {
    if (provider.wsconnected) {
      log.maxGapMs = Math.max(log.maxGapMs, Date.now() - provider.wsLastMessageReceived);
    }
  }, 250);
  log.stop = () => clearInterval(timer);
  return log;
}

test(`stock providers stay connected through ${IDLE_MS / 1000} s of idleness`, { timeout: 120_000 }, async () => {
  server = await startServer();

  // Two rooms, so neither client sees the other's traffic:
  //  - "default": stock awareness, which re-announces itself every 15 s;
  //  - "silent": no local awareness state, so the client sends nothing at
  //    all and only server-initiated traffic can keep it alive.
  const cases = [
    { name: 'default', silent: false },
    { name: 'silent', silent: true },
  ].map(({ name, silent }) => {
    const doc = new Y.Doc();
    const room = uniqueRoom(`idle-${name}`);
    const provider = connectProvider(server.wsUrl, room, doc, { connect: false });
    if (silent) provider.awareness.setLocalState(null);
    providers.push(provider);
    provider.connect();
    return { name, room, doc, provider };
  });
  await Promise.all(cases.map((c) => waitSynced(c.provider, 10_000, c.name)));

  // Watch only from here: connecting produced the expected connecting/connected events.
  for (const c of cases) c.log = watch(c.provider);
  await sleep(IDLE_MS);
  for (const c of cases) c.log.stop();

  for (const { name, provider, log } of cases) {
    const detail = `${name} client: status events ${JSON.stringify(log.statuses)}, connection-close ${JSON.stringify(log.closes)}, longest silence ${log.maxGapMs} ms`;
    assert.deepEqual(log.closes, [], `connection closed while idle (${detail})`);
    assert.deepEqual(log.statuses, [], `status changed while idle (${detail})`);
    assert.ok(provider.wsconnected && provider.synced, `not connected+synced after idling (${detail})`);
  }

  // The idle connections still work end to end.
  for (const { name, room, doc } of cases) {
    doc.getText('text').insert(0, `still-alive-${name}`);
    await waitFor(async () => (await fetchJson(server.url, room)).text === `still-alive-${name}`, {
      timeout: 5_000,
      message: () => `edit from the ${name} client after idling to reach the server`,
    });
  }
});
