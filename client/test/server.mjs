// Shared helpers for the end-to-end tests: spawn a real `tandem serve`
// process, wait for it to be healthy, stop it, and connect stock providers.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { WebsocketProvider } from 'y-websocket';
import WebSocket from 'ws';

export const clientDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Path of the server binary: $TANDEM_BIN, else ../target/debug/tandem. */
export function serverBinary() {
  const bin = process.env.TANDEM_BIN
    ? path.resolve(process.env.TANDEM_BIN)
    : path.resolve(clientDir, '../target/debug/tandem');
  if (!fs.existsSync(bin)) {
    throw new Error(`tandem binary not found at ${bin}: run \`cargo build\` or set TANDEM_BIN`);
  }
  return bin;
}

/** A port that was free a moment ago (bind to 0, read it, release it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** A fresh, empty data directory; remove it with `removeDir`. */
export function makeDataDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-test-'));
}

export function removeDir(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** Polls `predicate` until it returns a truthy value; throws `message()` after `timeout` ms. */
export async function waitFor(predicate, { timeout = 10_000, interval = 50, message = () => 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) {
      const text = typeof message === 'function' ? message() : message;
      throw new Error(`timed out after ${timeout} ms waiting for: ${text}`);
    }
    await sleep(interval);
  }
}

/**
 * Starts `tandem serve` on a free (or the given) port and data dir and waits
 * until GET /healthz answers 200. The returned handle's `stop()` sends SIGTERM
 * and resolves with the exit code; `kill()` is the unconditional cleanup for
 * `after` hooks. Server output is kept so failures can show it.
 */
export async function startServer({ dataDir, port, readyTimeout = 20_000, env = {} } = {}) {
  const bin = serverBinary();
  // Port 0 unless given: the kernel picks, and the server says which (no race for a port
  // between parallel test processes).
  port ??= 0;
  dataDir ??= makeDataDir();
  const proc = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir], {
    env: { ...process.env, TANDEM_LOG: process.env.TANDEM_LOG ?? 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });

  // Keep the tail of the server's output for error messages.
  let output = '';
  const keep = (chunk) => {
    output = (output + chunk.toString()).slice(-16_384);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);

  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal }));
  });
  let exitInfo = null;
  exited.then((info) => {
    exitInfo = info;
  });
  const spawnError = new Promise((_, reject) => proc.on('error', reject));
  spawnError.catch(() => {});

  // The server prints "tandem listening on http://ADDR" once it is bound.
  const deadline = Date.now() + readyTimeout;
  while (!/tandem listening on http:\/\/\S+:(\d+)/.test(output)) {
    if (exitInfo) {
      throw new Error(`server exited early (${JSON.stringify(exitInfo)}) before listening; output:\n${output}`);
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`server did not say where it listens within ${readyTimeout} ms; output:\n${output}`);
    }
    await Promise.race([spawnError, sleep(25)]);
  }
  port = Number(/tandem listening on http:\/\/\S+:(\d+)/.exec(output)[1]);
  const listen = `127.0.0.1:${port}`;
  const url = `http://${listen}`;
  const server = {
    port,
    dataDir,
    url,
    wsUrl: `ws://${listen}/yjs`,
    proc,
    output: () => output,
    /** Sends `signal` and waits (bounded) for the process to exit. */
    async stop(signal = 'SIGTERM', timeout = 20_000) {
      if (exitInfo) return exitInfo;
      proc.kill(signal);
      // Cancel the deadline afterwards: a pending timer would keep the test process alive.
      const deadline = new AbortController();
      const timer = sleep(timeout, null, { signal: deadline.signal }).catch(() => null);
      const info = await Promise.race([exited, timer]);
      deadline.abort();
      if (!info) {
        proc.kill('SIGKILL');
        await exited;
        throw new Error(`server did not exit within ${timeout} ms of ${signal}; output:\n${output}`);
      }
      return info;
    },
    /** Cleanup for `after` hooks: SIGKILL if still running. Never throws. */
    async kill() {
      if (exitInfo) return;
      proc.kill('SIGKILL');
      await exited;
    },
  };

  // Readiness: poll /healthz until 200, the process dies, or the deadline passes.
  for (;;) {
    await Promise.race([spawnError, sleep(0)]);
    if (exitInfo) {
      throw new Error(`server exited early (${JSON.stringify(exitInfo)}) before becoming healthy; output:\n${output}`);
    }
    try {
      const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status === 200) return server;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await server.kill();
      throw new Error(`server not healthy at ${url}/healthz within ${readyTimeout} ms; output:\n${output}`);
    }
    await sleep(100);
  }
}

/**
 * A stock y-websocket provider with the `ws` polyfill. BroadcastChannel is
 * disabled: in one Node process it would sync same-room providers directly,
 * bypassing (and so hiding bugs in) the server.
 */
export function connectProvider(wsUrl, room, doc, opts = {}) {
  return new WebsocketProvider(wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true, ...opts });
}

/**
 * Tears a provider down completely. `provider.destroy()` leaves the
 * awareness instance (and its 3 s timer) alive until its Y.Doc is destroyed,
 * which would keep the test process from exiting.
 */
export function destroyProvider(provider) {
  provider.destroy();
  provider.doc.destroy();
}

/** Resolves when `provider` is synced; rejects with a clear message after `timeout`. */
export function waitSynced(provider, timeout = 10_000, label = provider.roomname) {
  return waitFor(() => provider.synced, {
    timeout,
    interval: 20,
    message: () => `provider ${label} (${provider.url}) to sync; wsconnected=${provider.wsconnected}`,
  });
}

/** A room name unique to this run, so tests never share state. */
export function uniqueRoom(prefix) {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** An HS256 JWT for `claims`, signed with `secret` (as the server's --jwt-secret checks it). */
export function signToken(secret, claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  const signature = crypto.createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${signature}`;
}

/**
 * A TCP proxy on a loopback port in front of `targetPort`, for cutting connections
 * without stopping the server. `cut()` destroys every proxied connection;
 * `dropDownstream(true)` keeps forwarding what clients send but throws away what the
 * server answers (an ack that never arrives).
 */
export async function tcpProxy(targetPort) {
  const sockets = new Set();
  let drop = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    client.on('data', (chunk) => upstream.write(chunk));
    upstream.on('data', (chunk) => {
      if (!drop) client.write(chunk);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('close', close);
    upstream.on('close', close);
    client.on('error', close);
    upstream.on('error', close);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    url: `http://127.0.0.1:${port}`,
    dropDownstream(value) {
      drop = value;
    },
    cut() {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * An HTTP proxy in front of `targetUrl` that refuses every WebSocket upgrade with 403 (as
 * some corporate proxies do) and forwards everything else, streaming the answers.
 */
export async function noWebSocketProxy(targetUrl) {
  const target = new URL(targetUrl);
  let refused = 0;
  const server = http.createServer((req, res) => {
    const upstream = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    req.pipe(upstream);
    res.on('close', () => upstream.destroy());
  });
  server.on('upgrade', (_req, socket) => {
    refused += 1;
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    refused: () => refused,
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
