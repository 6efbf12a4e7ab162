// Hocuspocus, in memory (no persistence extension), for bench/compare.sh: the strongest
// Yjs server, measured under the same loads as Tandem and the reference y-websocket server.
//
//   node bench/hocuspocus/server.mjs [PORT]     # or PORT=… ; HOST defaults to 127.0.0.1
//
// Prints one line once it listens; nothing else unless something fails. Its WebSocket is
// ws://HOST:PORT/ (any path): the document name travels inside every frame, so clients
// speak Hocuspocus's multiplexed protocol (`loadgen … --proto hocuspocus`).
import { Server } from '@hocuspocus/server'

const host = process.env.HOST || '127.0.0.1'
const port = Number(process.argv[2] || process.env.PORT || 1234)

const server = new Server({
  address: host,
  port,
  quiet: true,
  // Hocuspocus closes a connection that has sent nothing for `timeout` ms (60 s by
  // default); the benchmark's readers only listen, and Tandem runs with a 600 s
  // heartbeat timeout in the same script.
  timeout: 600_000,
  // SIGTERM ends the process at once (Node's default), as for the reference server: no
  // graceful destroy that could wait on a document.
  stopOnSignals: false,
})

await server.listen()
console.log(`hocuspocus listening on ws://${host}:${server.address.port}`)
