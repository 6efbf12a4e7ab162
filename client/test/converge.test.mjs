// Convergence: several stock y-websocket clients editing one Y.Text
// concurrently through the server must end with identical text, a late
// joiner and the HTTP state endpoint must agree, HTTP-posted updates must
// reach connected clients, and the text must survive a graceful restart.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import * as Y from 'yjs';
import { TandemProvider, fetchJson, fetchState, postUpdate } from '../dist/index.js';
import { connectProvider, destroyProvider, removeDir, startServer, uniqueRoom, waitFor, waitSynced } from './server.mjs';

const CLIENTS = 5;
const INSERTS_PER_CLIENT = 20;

const servers = [];
const providers = [];
let dataDir;

after(async () => {
  for (const p of providers) destroyProvider(p);
  for (const s of servers) await s.kill();
  if (dataDir) removeDir(dataDir);
});

function track(provider) {
  providers.push(provider);
  return provider;
}

/**
 * Positions between whole fragments. Everyone inserts only there, so no
 * fragment is ever split and each must appear intact in the merged text.
 */
function fragmentBoundaries(text) {
  const positions = [0];
  for (let i = 0; i < text.length; i++) if (text[i] === ']') positions.push(i + 1);
  return positions;
}

function describeTexts(texts, fragments) {
  return texts
    .map((t, i) => {
      const missing = fragments.filter((f) => !t.includes(f));
      return `client ${i}: length ${t.length}, missing ${missing.length} fragment(s)${missing.length ? ` e.g. ${missing.slice(0, 3).join(' ')}` : ''}`;
    })
    .join('\n');
}

test('concurrent stock clients converge, persist and survive a restart', { timeout: 120_000 }, async () => {
  const server = await startServer();
  servers.push(server);
  dataDir = server.dataDir;
  const room = uniqueRoom('converge');

  // K stock providers, each with its own document.
  const docs = Array.from({ length: CLIENTS }, () => new Y.Doc());
  const clients = docs.map((doc) => track(connectProvider(server.wsUrl, room, doc)));
  await Promise.all(clients.map((p, i) => waitSynced(p, 10_000, `client ${i}`)));

  // Concurrent edits: distinct fragments at random fragment boundaries, with
  // small random pauses so edits interleave with incoming remote updates.
  const fragments = [];
  await Promise.all(
    docs.map(async (doc, c) => {
      const text = doc.getText('text');
      for (let j = 0; j < INSERTS_PER_CLIENT; j++) {
        const fragment = `[c${c}-${j}]`;
        fragments.push(fragment);
        const boundaries = fragmentBoundaries(text.toString());
        text.insert(boundaries[Math.floor(Math.random() * boundaries.length)], fragment);
        await sleep(Math.random() * 15);
      }
    }),
  );

  const texts = () => docs.map((d) => d.getText('text').toString());
  const expectedLength = fragments.reduce((n, f) => n + f.length, 0);
  await waitFor(
    () => {
      const t = texts();
      return t.every((s) => s === t[0]) && t[0].length === expectedLength && fragments.every((f) => t[0].includes(f));
    },
    { timeout: 20_000, message: () => `all ${CLIENTS} texts equal and complete\n${describeTexts(texts(), fragments)}` },
  );
  const converged = texts()[0];
  for (const f of fragments) {
    assert.equal(converged.split(f).length - 1, 1, `fragment ${f} must appear exactly once`);
  }

  // A late joiner receives the whole document from the server.
  const lateDoc = new Y.Doc();
  const late = track(connectProvider(server.wsUrl, room, lateDoc));
  await waitSynced(late, 10_000, 'late joiner');
  assert.equal(lateDoc.getText('text').toString(), converged, 'late joiner text differs from the converged text');

  // The server's own view agrees.
  const json = await fetchJson(server.url, room);
  assert.equal(json.text, converged, 'GET /rooms/{room}/state?format=json text differs from the converged text');

  // An update posted over HTTP reaches every connected client. Build it on
  // top of the server's binary state so we know the exact expected text.
  const httpDoc = new Y.Doc();
  Y.applyUpdate(httpDoc, await fetchState(server.url, room));
  assert.equal(httpDoc.getText('text').toString(), converged, 'GET /rooms/{room}/state does not decode to the converged text');
  const before = Y.encodeStateVector(httpDoc);
  httpDoc.getText('text').insert(converged.length, '[http]');
  await postUpdate(server.url, room, Y.encodeStateAsUpdate(httpDoc, before));
  const afterPost = converged + '[http]';
  const everyone = [...docs, lateDoc];
  await waitFor(() => everyone.every((d) => d.getText('text').toString() === afterPost), {
    timeout: 10_000,
    message: () => `all connected clients to see the POSTed update ("…[http]" at the end); got lengths ${everyone.map((d) => d.getText('text').length).join(', ')} (want ${afterPost.length})`,
  });

  // Graceful shutdown with clients still connected: SIGTERM must exit 0.
  const stopStarted = Date.now();
  const exit = await server.stop('SIGTERM', 20_000);
  assert.deepEqual(exit, { code: 0, signal: null }, `server exit after SIGTERM (took ${Date.now() - stopStarted} ms); output:\n${server.output()}`);
  for (const p of providers.splice(0)) destroyProvider(p);

  // Restart on the same data dir; a fresh client (via the package helper)
  // must see the text intact.
  const restarted = await startServer({ dataDir });
  servers.push(restarted);
  const freshDoc = new Y.Doc();
  const fresh = new TandemProvider(restarted.url, room, freshDoc);
  try {
    await fresh.whenSynced(10_000);
  } finally {
    fresh.destroy();
  }
  assert.equal(freshDoc.getText('text').toString(), afterPost, 'text after restart differs from the text before shutdown');
  assert.equal((await fetchJson(restarted.url, room)).text, afterPost, 'state JSON after restart differs');
});
