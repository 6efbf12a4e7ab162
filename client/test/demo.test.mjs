// The demo page `tandem serve` shows at `/`, in a real browser (Debian's Chromium driven
// by playwright-core): two people edit at once and converge, see each other's cursors and
// names, chat, see each other typing and leaving; a page whose server restarts loses
// nothing; read-only tokens get a read-only editor. Writes a side-by-side screenshot to
// client/test-output/. Skips, saying why, where /usr/bin/chromium is missing.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fetchJson, fetchMessages } from '../dist/index.js';
import { clientDir, removeDir, signToken, startServer, uniqueRoom } from './server.mjs';

const CHROMIUM = '/usr/bin/chromium';
const skip = fs.existsSync(CHROMIUM)
  ? false
  : `no Chromium at ${CHROMIUM}: browser tests skipped (install it with: apt-get install -y chromium)`;
const outputDir = path.join(clientDir, 'test-output');

let browser;
const servers = [];
before(async () => {
  if (skip) return;
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});
after(async () => {
  await browser?.close();
  for (const s of servers) {
    await s.kill();
    removeDir(s.dataDir);
  }
});

/** A page for a person called `name` (their own browser profile, so their own storage). */
async function personPage(name, color) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  await context.addInitScript(
    ([n, c]) => {
      if (!localStorage.getItem('tandem.name')) {
        localStorage.setItem('tandem.name', n);
        localStorage.setItem('tandem.color', c);
      }
    },
    [name, color],
  );
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.errors = errors;
  return page;
}

const synced = (page) => page.waitForFunction(() => window.tandem?.provider.synced && window.tandem.chat.isJoined, null, { timeout: 20_000 });
const editorText = (page) => page.evaluate(() => window.tandem.view.state.doc.toString());

test('two people edit, see cursors, chat, type and leave', { skip, timeout: 120_000 }, async () => {
  const server = await startServer();
  servers.push(server);
  const room = uniqueRoom('demo');
  const ada = await personPage('Ada Lovelace', '#e11d48');
  const bob = await personPage('Bob Kahn', '#2563eb');
  await Promise.all([ada.goto(`${server.url}/r/${room}`), bob.goto(`${server.url}/?room=${room}`)]);
  await Promise.all([synced(ada), synced(bob)]);
  const loadToSynced = await ada.evaluate(() => window.tandem.syncedAfterMs);
  console.log(`# page load to an editable synced document: ${loadToSynced.toFixed(0)} ms (since navigation start)`);

  // Both type at the same time.
  await Promise.all([ada.click('.cm-content'), bob.click('.cm-content')]);
  const adaText = 'Ada writes the first line. ';
  const bobText = 'Bob adds his part. ';
  await Promise.all([ada.keyboard.type(adaText, { delay: 15 }), bob.keyboard.type(bobText, { delay: 15 })]);
  await ada.waitForFunction(
    ([a, b]) => {
      const t = window.tandem.view.state.doc.toString();
      return t.includes(a) && t.includes(b);
    },
    [adaText, bobText],
    { timeout: 20_000 },
  );
  await bob.waitForFunction((t) => window.tandem.view.state.doc.toString() === t, await editorText(ada), { timeout: 20_000 });
  assert.equal(await editorText(ada), await editorText(bob), 'both editors end with the same text');
  assert.equal((await fetchJson(server.url, room)).codemirror, await editorText(ada), 'the server holds the same text');

  // Each sees the other's cursor, labelled with the other's name.
  await ada.waitForSelector('.cm-ySelectionInfo:text-is("Bob Kahn")', { state: 'attached', timeout: 20_000 });
  await bob.waitForSelector('.cm-ySelectionInfo:text-is("Ada Lovelace")', { state: 'attached', timeout: 20_000 });

  // Presence: each lists both.
  for (const page of [ada, bob]) {
    await page.waitForFunction(() => document.querySelectorAll('#presence-list li').length === 2, null, { timeout: 20_000 });
  }
  assert.deepEqual(await ada.$$eval('#presence-list li .name', (els) => els.map((e) => e.textContent)), ['Ada Lovelace', 'Bob Kahn']);

  // A chat message from Ada appears at Bob's with her name.
  await ada.fill('#chat-input', 'Hello Bob, the outline is up.');
  await ada.press('#chat-input', 'Enter');
  const line = bob.locator('#messages .message', { hasText: 'Hello Bob, the outline is up.' });
  await line.waitFor({ timeout: 20_000 });
  assert.equal(await line.locator('.sender').textContent(), 'Ada Lovelace');

  // Bob typing shows at Ada's.
  await bob.click('#chat-input');
  await bob.keyboard.type('Looks great', { delay: 20 });
  await ada.waitForFunction(() => document.querySelector('#typing').textContent === 'Bob Kahn is typing…', null, { timeout: 20_000 });
  await ada.waitForSelector('#presence-list li[data-name="Bob Kahn"] .typing', { timeout: 20_000 });
  await bob.press('#chat-input', 'Enter');
  await ada.locator('#messages .message', { hasText: 'Looks great' }).waitFor({ timeout: 20_000 });
  await ada.waitForFunction(() => document.querySelector('#typing').textContent === '', null, { timeout: 20_000 });

  // The picture a person would see: both windows side by side.
  fs.mkdirSync(outputDir, { recursive: true });
  await bob.click('.cm-content');
  await bob.keyboard.press('End');
  await ada.click('#chat-input');
  const shots = await Promise.all([ada.screenshot(), bob.screenshot()]);
  const canvas = await browser.newPage({ viewport: { width: 2220, height: 740 } });
  await canvas.setContent(
    `<body style="margin:0;background:#cbd5e1;display:flex;gap:20px;padding:10px">${shots
      .map((s) => `<img src="data:image/png;base64,${s.toString('base64')}" width="1100" height="720">`)
      .join('')}</body>`,
  );
  const screenshot = path.join(outputDir, 'demo-two-users.png');
  await canvas.screenshot({ path: screenshot });
  await canvas.close();
  console.log(`# screenshot: ${screenshot}`);

  // Bob closes his window: he leaves Ada's presence list.
  await bob.context().close();
  await ada.waitForFunction(() => !document.querySelector('#presence-list li[data-name="Bob Kahn"]'), null, { timeout: 20_000 });
  assert.equal(await ada.locator('#presence-list li').count(), 1);
  assert.deepEqual(ada.errors, [], 'no page errors');
  await ada.context().close();
});

test('a page whose server restarts reconnects and loses no edit or unsent message', { skip, timeout: 120_000 }, async () => {
  const first = await startServer();
  servers.push(first);
  const room = uniqueRoom('demo-restart');
  const page = await personPage('Grace Hopper', '#16a34a');
  await page.goto(`${first.url}/r/${room}`);
  await synced(page);
  await page.click('.cm-content');
  await page.keyboard.type('Written before the restart. ');
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'online');

  const { port, dataDir } = first;
  await first.stop();
  await page.waitForFunction(() => document.querySelector('#status').dataset.state !== 'online', null, { timeout: 20_000 });
  // While the server is away: edit, and send a chat message (it waits, marked as sending).
  await page.keyboard.type('Written while it was down.');
  await page.fill('#chat-input', 'Sent while offline');
  await page.press('#chat-input', 'Enter');
  await page.locator('#messages .message.sending', { hasText: 'Sent while offline' }).waitFor();

  const second = await startServer({ port, dataDir });
  servers.push(second);
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'online', null, { timeout: 30_000 });
  await page.waitForFunction(() => !document.querySelector('#messages .message.sending'), null, { timeout: 20_000 });
  const expected = 'Written before the restart. Written while it was down.';
  const deadline = Date.now() + 10_000;
  while ((await fetchJson(second.url, room)).codemirror !== expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.equal((await fetchJson(second.url, room)).codemirror, expected, 'every edit reached the server');
  const stored = (await fetchMessages(second.url, room, { since: 0 })).messages.map((m) => m.body.text);
  assert.deepEqual(stored, ['Sent while offline'], 'the unsent message was sent once');
  assert.equal(await page.evaluate(() => localStorage.getItem(`tandem.outbox.${window.tandem.chat.room}`)), null, 'outbox emptied');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('auth: no token asks for one; a read-only token gives a read-only editor', { skip, timeout: 60_000 }, async () => {
  const secret = 'demo-test-secret-0123456789';
  const server = await startServer({ env: { TANDEM_JWT_SECRET: secret } });
  servers.push(server);
  const room = uniqueRoom('demo-auth');
  const exp = Math.floor(Date.now() / 1000) + 600;
  const writer = signToken(secret, { sub: 'ada', exp, rooms: [room], perm: 'write', info: { name: 'Ada' } });
  const reader = signToken(secret, { sub: 'bob', exp, rooms: [room], perm: 'read' });

  const page = await personPage('Ada', '#e11d48');
  await page.goto(`${server.url}/r/${room}`);
  await page.waitForSelector('#token-dialog[open]');
  await page.fill('#token-input', writer);
  await page.click('#token-form button');
  await synced(page);
  await page.click('.cm-content');
  await page.keyboard.type('Only writers can change this.');
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'online');

  const viewer = await personPage('Bob', '#2563eb');
  await viewer.goto(`${server.url}/r/${room}#token=${reader}`);
  await synced(viewer);
  await viewer.waitForFunction(() => window.tandem.view.state.doc.toString() === 'Only writers can change this.');
  assert.equal(await viewer.getAttribute('.cm-content', 'contenteditable'), 'false');
  assert.equal(await viewer.isVisible('#readonly-banner'), true);
  assert.equal(await viewer.isDisabled('#chat-input'), true);
  await page.context().close();
  await viewer.context().close();
});
