// Awareness lifecycle: a peer's awareness state reaches the other peers, and
// when the peer goes away - politely or by dying - the server removes its
// state and tells the rest of the room. The stock client would only drop a
// silent peer by itself after 30 s, so seeing the removal within 10 s shows
// the server did it.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { once } from 'node:events';
import * as Y from 'yjs';
import { clientDir, connectProvider, destroyProvider, removeDir, startServer, uniqueRoom, waitFor, waitSynced } from './server.mjs';

const REMOVAL_TIMEOUT = 10_000;

let server;
const providers = [];
const children = [];

after(async () => {
  for (const p of providers) destroyProvider(p);
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  }
  if (server) {
    await server.kill();
    removeDir(server.dataDir);
  }
});

async function getServer() {
  server ??= await startServer();
  return server;
}

function connect(srv, room, label) {
  const provider = connectProvider(srv.wsUrl, room, new Y.Doc());
  providers.push(provider);
  return waitSynced(provider, 10_000, label).then(() => provider);
}

function states(provider) {
  return JSON.stringify(Object.fromEntries(provider.awareness.getStates()));
}

test('awareness state propagates and is removed when the peer disconnects cleanly', { timeout: 30_000 }, async () => {
  const srv = await getServer();
  const room = uniqueRoom('awareness-clean');
  const a = await connect(srv, room, 'A');
  const b = await connect(srv, room, 'B');
  const aId = a.doc.clientID;

  a.awareness.setLocalStateField('user', { name: 'a' });
  await waitFor(() => b.awareness.getStates().get(aId)?.user?.name === 'a', {
    timeout: 10_000,
    message: () => `B to see A's awareness {user:{name:'a'}} for client ${aId}; B's states: ${states(b)}`,
  });

  a.destroy();
  await waitFor(() => !b.awareness.getStates().has(aId), {
    timeout: REMOVAL_TIMEOUT,
    message: () => `B to drop A's awareness (client ${aId}) after A.destroy(); B's states: ${states(b)}`,
  });
  assert.ok(b.awareness.getStates().has(b.doc.clientID), 'B keeps its own awareness state');
});

test('awareness state is removed when the peer process is killed abruptly', { timeout: 40_000 }, async () => {
  const srv = await getServer();
  const room = uniqueRoom('awareness-kill');
  const b = await connect(srv, room, 'B');

  // The peer lives in its own process so SIGKILL cuts its TCP connection
  // without any goodbye message from the client.
  const child = spawn(process.execPath, [path.join(clientDir, 'test/fixtures/awareness-peer.mjs'), srv.wsUrl, room, 'child'], {
    cwd: clientDir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let childOut = '';
  child.stdout.on('data', (d) => (childOut += d));
  child.stderr.on('data', (d) => (childOut += d));

  const childId = await waitFor(
    () => {
      const line = childOut.split('\n').find((l) => l.startsWith('{'));
      return line ? JSON.parse(line).clientID : undefined;
    },
    { timeout: 10_000, message: () => `child peer to sync; child output: ${childOut}` },
  );
  await waitFor(() => b.awareness.getStates().get(childId)?.user?.name === 'child', {
    timeout: 10_000,
    message: () => `B to see the child's awareness for client ${childId}; B's states: ${states(b)}`,
  });

  child.kill('SIGKILL');
  await once(child, 'exit');
  const killedAt = Date.now();
  await waitFor(() => !b.awareness.getStates().has(childId), {
    timeout: REMOVAL_TIMEOUT,
    message: () => `B to drop the SIGKILLed child's awareness (client ${childId}); B's states: ${states(b)}`,
  });
  const took = Date.now() - killedAt;
  assert.ok(took < REMOVAL_TIMEOUT, `removal took ${took} ms`);
  assert.ok(b.wsconnected, 'B stays connected');
});
