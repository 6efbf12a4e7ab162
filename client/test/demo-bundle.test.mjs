// The demo page the server embeds is the one its sources build to: a fresh esbuild build
// of client/demo equals the committed demo/dist byte for byte, and the running server
// serves exactly those bytes (gzipped or not, with an ETag that revalidates).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import http from 'node:http';
import { clientDir, removeDir, startServer } from './server.mjs';

const FILES = { 'index.html': '/', 'app.js': '/demo/app.js', 'app.css': '/demo/app.css' };
const fresh = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-demo-build-'));
let server;
after(async () => {
  removeDir(fresh);
  if (server) {
    await server.kill();
    removeDir(server.dataDir);
  }
});

/** GET with exact headers (fetch would add and undo compression by itself). */
function get(port, urlPath, headers = {}) {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: urlPath, headers }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      })
      .on('error', reject);
  });
}

test('the committed demo/dist equals a fresh build of client/demo', { timeout: 120_000 }, () => {
  execFileSync(process.execPath, [path.join(clientDir, 'demo', 'build.mjs'), fresh], { stdio: 'pipe' });
  for (const name of Object.keys(FILES)) {
    const built = fs.readFileSync(path.join(fresh, name));
    const committed = fs.readFileSync(path.join(clientDir, 'demo', 'dist', name));
    assert.ok(built.equals(committed), `demo/dist/${name} is stale: run \`npm run build:demo\` in client/ and commit it`);
  }
});

test('the server serves the fresh build at /, /r/{room} and /demo/*', { timeout: 60_000 }, async () => {
  server = await startServer();
  for (const [name, urlPath] of Object.entries(FILES)) {
    const built = fs.readFileSync(path.join(fresh, name));
    const plain = await get(server.port, urlPath);
    assert.equal(plain.status, 200, urlPath);
    assert.ok(plain.body.equals(built), `${urlPath} serves the built ${name}`);
    const gzipped = await get(server.port, urlPath, { 'accept-encoding': 'gzip, br' });
    assert.equal(gzipped.headers['content-encoding'], 'gzip');
    assert.ok(zlib.gunzipSync(gzipped.body).equals(built), `${urlPath} gzipped`);
    const again = await get(server.port, urlPath, { 'if-none-match': plain.headers.etag });
    assert.equal(again.status, 304, `${urlPath} revalidates by ETag`);
  }
  const room = await get(server.port, '/r/some-room');
  assert.ok(room.body.equals(fs.readFileSync(path.join(fresh, 'index.html'))));
  assert.match(room.headers['content-security-policy'], /default-src 'self'/);
});
