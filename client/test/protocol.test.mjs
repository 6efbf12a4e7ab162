// The client's protocol file agrees with the server: its close codes with
// src/protocol/close.rs, its chat requests, events, error and close codes with the tables
// of docs/PROTOCOL.md, and its room-name rule with what a running server accepts.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { CHAT_ERRORS, CHAT_EVENTS, CHAT_REQUESTS, CloseCode, isValidRoomName } from '../dist/index.js';
import { clientDir, removeDir, startServer } from './server.mjs';

const repo = path.resolve(clientDir, '..');
const protocolMd = fs.readFileSync(path.join(repo, 'docs/PROTOCOL.md'), 'utf8');
const closeRs = fs.readFileSync(path.join(repo, 'src/protocol/close.rs'), 'utf8');

/** The first column of the table under the heading `heading`, backticks removed. */
function firstColumn(heading) {
  const start = protocolMd.indexOf(`\n${heading}\n`);
  assert.ok(start >= 0, `PROTOCOL.md has a "${heading}" section`);
  const rest = protocolMd.slice(start + heading.length + 2);
  const lines = rest.split('\n');
  const rows = [];
  let inTable = false;
  for (const line of lines) {
    if (line.startsWith('|')) {
      inTable = true;
      const cell = line.split('|')[1].trim();
      if (/^-+$/.test(cell) || cell === 'type' || cell === 'code') continue;
      rows.push(cell.replace(/`/g, ''));
    } else if (inTable) {
      break;
    }
  }
  return rows;
}

const sorted = (xs) => [...xs].sort();

test('chat requests, events and error codes match docs/PROTOCOL.md', () => {
  assert.deepEqual(sorted(firstColumn('### Client → server')), sorted(CHAT_REQUESTS));
  assert.deepEqual(sorted(firstColumn('### Server → client')), sorted(CHAT_EVENTS));
  assert.deepEqual(sorted(firstColumn('### Error codes (`error` event; the connection stays open)')), sorted(CHAT_ERRORS));
});

test('close codes match src/protocol/close.rs and docs/PROTOCOL.md', () => {
  const client = new Set(Object.values(CloseCode));
  const server = new Set([...closeRs.matchAll(/code: (\d{4}),/g)].map((m) => Number(m[1])));
  assert.ok(server.size >= 10, 'close.rs parsed');
  // Every code the server sends has a name here, and every name here (but 1000, which
  // clients send) is a code the server sends.
  assert.deepEqual(sorted([...server]), sorted([...client].filter((c) => c !== CloseCode.NORMAL)));
  const documented = firstColumn('### Close codes').map(Number);
  assert.ok(documented.length >= 8, 'PROTOCOL.md close codes parsed');
  for (const code of documented) assert.ok(client.has(code), `documented close code ${code} is in CloseCode`);
  // Names agree where both sides name the code the same way.
  for (const [, name, code] of closeRs.matchAll(/pub const (\w+): Close = Close \{\s*code: (\d+)/g)) {
    if (name in CloseCode) assert.equal(CloseCode[name], Number(code), `CloseCode.${name}`);
  }
});

let server;
after(async () => {
  if (server) {
    await server.kill();
    removeDir(server.dataDir);
  }
});

test('room names: the client accepts exactly what the server accepts', { timeout: 30_000 }, async () => {
  server = await startServer();
  const names = [
    'a', 'notes', 'team:42', 'a.b', 'x_y-z', 'A-Z.0:9', ':leading-colon', 'trailing.', 'a..b',
    '.hidden', '..', '.', 'has space', 'slash%2Fx', 'ümlaut', 'emoji😀', 'tab\t', 'semi;colon', 'q?x', 'hash#x',
    'x'.repeat(128), 'x'.repeat(129), '',
  ];
  for (const name of names) {
    // A raw request: `fetch` would resolve `/route/..` to `/`.
    const status = await new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: server.port, path: `/route/${encodeURIComponent(name)}` }, (res) => {
        res.resume();
        resolve(res.statusCode);
      }).on('error', reject);
    });
    assert.ok(status === 200 || status === 400, `${JSON.stringify(name)}: ${status}`);
    assert.equal(isValidRoomName(name), status === 200, `room name ${JSON.stringify(name)}: server ${status}`);
  }
});
