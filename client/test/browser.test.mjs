// The chat stream from a real browser (Debian's Chromium driven by playwright-core):
// TandemChat over the browser's own WebSocket, and the browser's EventSource resuming
// with Last-Event-ID across a server restart, with cross-origin fetch publishes (CORS).
// Skips, saying why, where /usr/bin/chromium is missing.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import * as esbuild from 'esbuild';
import { clientDir, freePort, removeDir, startServer, uniqueRoom } from './server.mjs';

const CHROMIUM = '/usr/bin/chromium';
const skip = fs.existsSync(CHROMIUM)
  ? false
  : `no Chromium at ${CHROMIUM}: browser tests skipped (install it with: apt-get install -y chromium)`;

let server;
let page;
let browser;
let site;
let siteUrl;

/** A tiny static site (the page's own origin, distinct from the server's). */
function serveSite(port) {
  // The chat client as one browser module (it imports its siblings).
  const chatJs = esbuild.buildSync({
    entryPoints: [path.join(clientDir, 'src', 'chat.ts')],
    bundle: true,
    format: 'esm',
    write: false,
  }).outputFiles[0].contents;
  const s = http.createServer((req, res) => {
    if (req.url === '/chat.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(chatJs);
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><title>tandem browser test</title>');
    }
  });
  return new Promise((resolve) => s.listen(port, '127.0.0.1', () => resolve(s)));
}

before(async () => {
  if (skip) return;
  const port = await freePort();
  siteUrl = `http://127.0.0.1:${port}`;
  site = await serveSite(port);
  server = await startServer({ env: { TANDEM_CORS_ORIGINS: siteUrl } });
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  page = await browser.newPage();
  await page.goto(siteUrl);
});

after(async () => {
  await browser?.close();
  site?.close();
  if (server) {
    await server.kill();
    removeDir(server.dataDir);
  }
});

test('TandemChat works over the browser WebSocket', { skip, timeout: 30_000 }, async () => {
  const room = uniqueRoom('browser-ws');
  const result = await page.evaluate(
    async ({ url, room }) => {
      const { TandemChat } = await import('/chat.js');
      const a = new TandemChat(url, room);
      const b = new TandemChat(url, room);
      const seen = [];
      b.on('message', (m) => seen.push([m.seq, m.body.n]));
      const joined = (chat) => new Promise((resolve) => chat.on('joined', resolve));
      await Promise.all([joined(a), joined(b)]);
      const acks = [];
      for (const n of [1, 2, 3]) acks.push((await a.publish({ n })).seq);
      const deadline = Date.now() + 10_000;
      while (seen.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const presence = a.presence.size;
      a.close();
      b.close();
      return { acks, seen, presence };
    },
    { url: server.url, room },
  );
  assert.deepEqual(result.acks, [1, 2, 3]);
  assert.deepEqual(result.seen, [[1, 1], [2, 2], [3, 3]]);
  assert.equal(result.presence, 2);
});

test('EventSource resumes with Last-Event-ID across a server restart', { skip, timeout: 60_000 }, async () => {
  const room = uniqueRoom('browser-sse');
  const publish = (n) =>
    page.evaluate(
      async ({ url, room, n }) => {
        const response = await fetch(`${url}/rooms/${room}/messages`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'idempotency-key': `k${n}` },
          body: JSON.stringify({ n }),
        });
        return (await response.json()).seq;
      },
      { url: server.url, room, n },
    );
  await page.evaluate(
    ({ url, room }) => {
      window.received = [];
      window.source = new EventSource(`${url}/rooms/${room}/events?since=0`);
      window.source.addEventListener('message', (e) => window.received.push(Number(e.lastEventId)));
    },
    { url: server.url, room },
  );
  const receivedCount = (n) =>
    page.waitForFunction((n) => window.received.length >= n, n, { timeout: 20_000 });
  for (const n of [1, 2, 3]) assert.equal(await publish(n), n);
  await receivedCount(3);

  // Restart the server on the same port and data: the browser reconnects by itself and
  // sends Last-Event-ID: 3.
  const { port, dataDir } = server;
  await server.stop();
  server = await startServer({ port, dataDir, env: { TANDEM_CORS_ORIGINS: siteUrl } });
  for (const n of [4, 5]) assert.equal(await publish(n), n);
  await receivedCount(5);
  assert.equal(await publish(6), 6);
  await receivedCount(6);
  const received = await page.evaluate(() => {
    window.source.close();
    return window.received;
  });
  assert.deepEqual(received, [1, 2, 3, 4, 5, 6], 'every message once, in order');
});
