// A cluster with stock clients: three `tandem serve` nodes on loopback sharing one
// PostgreSQL schema; stock y-websocket providers, each connected to a different node,
// edit one room and converge (the non-owners relay their sessions to the owner).
// Skipped, saying so, where TANDEM_TEST_POSTGRES_URL is unset.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import WebSocket from 'ws';
import * as Y from 'yjs';
import { TandemProvider, fetchJson } from '../dist/index.js';
import { connectProvider, destroyProvider, removeDir, startServer, uniqueRoom, waitFor, waitSynced } from './server.mjs';

const pgUrl = process.env.TANDEM_TEST_POSTGRES_URL;
const servers = [];
const providers = [];
// Named like the Rust tests' schemas (t_TAG_PID_N_RANDOM), so a sweep of a dead test
// process's schemas finds it too.
const schema = `t_nodecluster_${process.pid}_0_${Math.floor(Math.random() * 65536)}`;

after(async () => {
  for (const p of providers) destroyProvider(p);
  for (const s of servers) {
    await s.kill();
    removeDir(s.dataDir);
  }
  if (pgUrl) {
    try {
      execFileSync('psql', ['-q', pgUrl, '-c', `DROP SCHEMA IF EXISTS ${schema} CASCADE`], { stdio: 'ignore' });
    } catch {
      // psql missing: the Rust suite's sweep drops it once this process is gone
    }
  }
});

/** A UDP port free a moment ago (for gossip). */
function udpPort() {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    socket.on('error', reject);
    socket.bind(0, '127.0.0.1', () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}

async function metric(server, name) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

test('stock providers on three nodes of a cluster converge', { timeout: 120_000, skip: pgUrl ? false : 'TANDEM_TEST_POSTGRES_URL is not set (no PostgreSQL for a cluster)' }, async () => {
  const gossip = [await udpPort(), await udpPort(), await udpPort()];
  const seeds = gossip.map((p) => `127.0.0.1:${p}`).join(',');
  for (let i = 0; i < 3; i++) {
    servers.push(
      await startServer({
        env: {
          TANDEM_POSTGRES_URL: pgUrl,
          TANDEM_POSTGRES_SCHEMA: schema,
          TANDEM_NODE_ID: `node-${i}`,
          TANDEM_GOSSIP_LISTEN: `127.0.0.1:${gossip[i]}`,
          TANDEM_SEEDS: seeds,
          TANDEM_CLUSTER_ID: schema,
        },
      }),
    );
  }
  // Every node sees all three, with the same ring (a node that has heard of a member but
  // not yet its URL may still place rooms on a smaller ring).
  let views = [];
  await waitFor(
    async () => {
      views = await Promise.all(servers.map(async (server) => (await fetch(`${server.url}/cluster`)).json()));
      const versions = new Set(views.map((v) => v.ring_version));
      return views.every((v) => v.members.length === 3 && v.members.every((m) => m.url)) && versions.size === 1;
    },
    { timeout: 30_000, message: () => `three nodes to agree on one ring: ${JSON.stringify(views)}` },
  );
  const room = uniqueRoom('cluster');
  const docs = servers.map(() => new Y.Doc());
  const clients = docs.map((doc, i) => {
    const provider = connectProvider(servers[i].wsUrl, room, doc);
    providers.push(provider);
    return provider;
  });
  await Promise.all(clients.map((p, i) => waitSynced(p, 15_000, `client on node ${i}`)));
  docs.forEach((doc, i) => doc.getText('t').insert(0, `[node ${i}]`));
  const texts = () => docs.map((d) => d.getText('t').toString());
  await waitFor(
    () => texts().every((t) => t === texts()[0] && [0, 1, 2].every((i) => t.includes(`[node ${i}]`))),
    { timeout: 15_000, message: () => `convergence: ${JSON.stringify(texts())}` },
  );
  // Two of the three sessions were relayed to the owner.
  let relayed = 0;
  for (const server of servers) relayed += await metric(server, 'tandem_proxied_sessions');
  assert.equal(relayed, 2, 'two sessions relayed through non-owners');
  const route = await (await fetch(`${servers[0].url}/route/${room}`)).json();
  assert.match(route.owner.id, /^node-[012]$/);
});

test('TandemProvider asks the route and connects to the owner, not through a relay', { timeout: 60_000, skip: pgUrl ? false : 'TANDEM_TEST_POSTGRES_URL is not set (no PostgreSQL for a cluster)' }, async () => {
  assert.equal(servers.length, 3, 'runs after the cluster test above started three nodes');
  const room = uniqueRoom('routed');
  const route = await (await fetch(`${servers[0].url}/route/${room}`)).json();
  const owner = servers.find((s) => route.owner.url.endsWith(`:${s.port}`));
  const other = servers.find((s) => s !== owner);
  assert.ok(owner && other, `owner ${route.owner.url} is one of the nodes`);
  const relayedBefore = await metric(other, 'tandem_proxied_sessions');
  const doc = new Y.Doc();
  const provider = new TandemProvider(other.url, room, doc, { WebSocketPolyfill: WebSocket });
  try {
    await provider.whenSynced(15_000);
    assert.equal(provider.url, `ws://127.0.0.1:${owner.port}/yjs/${room}`, 'connected to the owner directly');
    assert.equal(await metric(other, 'tandem_proxied_sessions'), relayedBefore, 'nothing relayed');
    doc.getText('t').insert(0, 'routed');
    await waitFor(async () => (await fetchJson(other.url, room).catch(() => ({}))).t === 'routed', {
      message: () => 'the edit to be readable through any node',
    });
  } finally {
    provider.destroy();
  }
});
