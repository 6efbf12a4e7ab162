// Measures the demo page on loopback in Chromium: the time from navigation start to an
// editable, synced document (the provider's first sync, with the chat joined), over
// several fresh page loads, against a baseline from the same run: loading a tiny page
// from the same server. Prints the bundle sizes too.
// Usage: TANDEM_BIN=../target/release/tandem node demo/measure.mjs [LOADS]
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';
import { clientDir, removeDir, startServer, uniqueRoom } from '../test/server.mjs';

const loads = Number(process.argv[2] ?? 7);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

for (const name of ['app.js', 'app.css', 'index.html']) {
  const bytes = fs.readFileSync(path.join(clientDir, 'demo', 'dist', name));
  console.log(`${name}: ${bytes.length} bytes minified, ${zlib.gzipSync(bytes, { level: 9 }).length} gzipped`);
}

const server = await startServer();
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const synced = [];
  const baseline = [];
  for (let i = 0; i < loads; i += 1) {
    // A fresh profile each time: nothing cached.
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${server.url}/healthz`);
    baseline.push(await page.evaluate(() => performance.getEntriesByType('navigation')[0].loadEventEnd));
    await page.goto(`${server.url}/r/${uniqueRoom('measure')}`);
    await page.waitForFunction(() => window.tandem?.syncedAfterMs !== undefined && window.tandem.chat.isJoined);
    synced.push(await page.evaluate(() => window.tandem.syncedAfterMs));
    await context.close();
  }
  const s = median(synced);
  const b = median(baseline);
  console.log(`page load to an editable synced document: median ${s.toFixed(0)} ms over ${loads} loads (all: ${synced.map((x) => x.toFixed(0)).join(', ')})`);
  console.log(`baseline, a tiny page from the same server: median ${b.toFixed(1)} ms; ratio ${(s / b).toFixed(1)}x`);
} finally {
  await browser.close();
  await server.kill();
  removeDir(server.dataDir);
}
