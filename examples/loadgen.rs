//! Load generator for Tandem (grows with the performance issue). Every loop is bounded in
//! count and time; results are one JSON line on stdout.
//!
//! Modes:
//! - `rooms`: open ROOMS × SESSIONS idle, synced y-websocket sessions (which answer pings,
//!   as browsers do) and report the server's RSS growth per room (needs the server's PID, read from /proc);
//! - `trace`: replay a real editing trace (automerge-paper.json.gz) through the server from
//!   a writer while an observer receives it; report the time until the observer holds the
//!   trace's final text, the server's CPU time for it, and — measured in the same run — the
//!   floor: applying the same updates to a `yrs` document in-process.
//!
//! - `amplify`: COUNT concurrent sessions each send one tiny update whose declared lengths
//!   ask a naive decoder for gigabytes; report the server's RSS before, after and at peak;
//! - `slow-readers`: READERS sessions stop reading while a writer streams MB megabytes;
//!   report the server's peak RSS and how many readers were cut as too slow.
//! - `churn`: CYCLES short y-websocket sessions (connect, sync, close cleanly), CONCURRENCY
//!   at a time, over ROOMS rooms; report the server's RSS before, after the cycles and
//!   after every room has been evicted (run the server with a short `--room-idle-secs`),
//!   to tell a leak (grows with cycles) from allocator retention (plateaus).
//!
//! - `stream-fanout`: one publisher, SUBSCRIBERS chat subscribers (WebSocket or SSE) in one
//!   room; the publisher sends COUNT messages one at a time (each after the previous ack);
//!   report publish→receive latency percentiles over every delivery, and publish→ack;
//! - `stream-throughput`: PUBLISHERS connections publish COUNT messages in all to one room,
//!   WINDOW unacknowledged each; report acknowledged messages per second. Run it against a
//!   server with the default durable flush and one with `--flush interval:MS` to compare.
//!
//! `--proto hocuspocus` (with `rooms`, `trace`, `fanout`, `saturate`, `conns`) speaks
//! Hocuspocus's protocol instead of y-websocket's: one WebSocket at ws://HOST:PORT/ that
//! carries the document name at the head of every frame, joined with an Auth message.
//!
//! ```text
//! cargo run --release --example loadgen -- saturate --url ws://127.0.0.1:1234 \
//!     --proto hocuspocus --p99-ms 100
//! cargo run --release --example loadgen -- stream-fanout --url ws://127.0.0.1:4321 \
//!     --subscribers 1000 --transport sse
//! cargo run --release --example loadgen -- rooms --url ws://127.0.0.1:4321 --pid PID
//! cargo run --release --example loadgen -- churn --url ws://127.0.0.1:4321/yjs --pid PID \
//!     --cycles 20000 --rooms 100 --evict-wait-secs 30
//! cargo run --release --example loadgen -- trace --url ws://127.0.0.1:4321 --pid PID \
//!     --file ../shared/data/automerge-paper.json.gz
//! ```

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_codec::Framed;
use actix_http::ws::{CloseCode, Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use bytes::Bytes;
use clap::{Parser, Subcommand};

#[path = "support/procfs.rs"]
mod procfs;
#[path = "support/trace.rs"]
mod trace;
use futures_util::{SinkExt, StreamExt};
use procfs::{anon_rss_kib, cpu_secs, peak_rss_kib, rss_kib};
use tandem::protocol::lib0::{self, Reader};
use tandem::protocol::ysync::Message;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// The servers' Yjs protocol (`rooms`, `trace`, `fanout`, `saturate`, `conns`; the other
    /// modes speak y-websocket only).
    #[arg(long, global = true, value_enum, default_value_t = Proto::YWebsocket)]
    proto: Proto,
}

/// How a client reaches a Yjs room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Proto {
    /// y-websocket: one WebSocket per room at URL/ROOM, one message per frame (Tandem, the
    /// reference server, the bare relay).
    YWebsocket,
    /// Hocuspocus: WebSockets at URL/ (any path); every frame starts with the document
    /// name, and a document is joined with an Auth message before its sync.
    Hocuspocus,
}

#[derive(Subcommand)]
enum Mode {
    /// Idle rooms with synced sessions (answering pings); RSS per room.
    Rooms {
        /// WebSocket base of the rooms: ws://HOST:PORT/yjs for Tandem, ws://HOST:PORT for
        /// the reference y-websocket server.
        #[arg(long, default_value = "ws://127.0.0.1:4321/yjs")]
        url: String,
        /// The server's process id (for RSS).
        #[arg(long)]
        pid: u32,
        #[command(flatten)]
        plan: RoomsPlan,
    },
    /// Concurrent decode-amplification frames; RSS before/after/peak.
    Amplify {
        /// WebSocket base of the rooms: ws://HOST:PORT/yjs for Tandem, ws://HOST:PORT for
        /// the reference y-websocket server.
        #[arg(long, default_value = "ws://127.0.0.1:4321/yjs")]
        url: String,
        /// The server's process id (for RSS).
        #[arg(long)]
        pid: u32,
        /// Concurrent hostile sessions.
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// Sessions that stop reading while a writer streams; peak RSS.
    SlowReaders {
        /// WebSocket base of the rooms: ws://HOST:PORT/yjs for Tandem, ws://HOST:PORT for
        /// the reference y-websocket server.
        #[arg(long, default_value = "ws://127.0.0.1:4321/yjs")]
        url: String,
        /// The server's process id (for RSS).
        #[arg(long)]
        pid: u32,
        /// Sessions that never read.
        #[arg(long, default_value_t = 50)]
        readers: usize,
        /// Megabytes the writer streams (in 4 KiB edits).
        #[arg(long, default_value_t = 10)]
        mb: usize,
    },
    /// Connect/disconnect cycles over a few rooms; RSS before, after, and after eviction.
    Churn {
        /// WebSocket base of the rooms (see `rooms`); `/metrics` is read from the same
        /// host. The server should run with a short `--room-idle-secs` (e.g. 2).
        #[arg(long, default_value = "ws://127.0.0.1:4321/yjs")]
        url: String,
        /// The server's process id (for RSS).
        #[arg(long)]
        pid: u32,
        /// Sessions to open and close, in all.
        #[arg(long, default_value_t = 2000)]
        cycles: usize,
        /// Rooms the cycles go round (`churn-{i % rooms}`).
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Sessions open at once.
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
        /// At most this long to wait for `tandem_rooms_active` to reach 0 after the cycles.
        #[arg(long, default_value_t = 30.0)]
        evict_wait_secs: f64,
        /// Each session also sends one small update (so the rooms' documents, and the
        /// store, grow with the cycles); without it a session only syncs.
        #[arg(long)]
        edit: bool,
        /// Stop starting cycles after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
    /// One writer → many readers of a Yjs room, open loop at a fixed rate.
    Fanout {
        /// WebSocket base of the rooms (see `rooms`).
        #[arg(long, default_value = "ws://127.0.0.1:4321/yjs")]
        url: String,
        /// Readers in the room.
        #[arg(long, default_value_t = 1000)]
        readers: usize,
        /// Updates per second the writer sends, on schedule.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Seconds the writer sends for.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Every other reader connects here instead (a cluster node that does not own the
        /// room, so its sessions are relayed): latencies are reported for both halves.
        #[arg(long)]
        proxied_url: Option<String>,
        /// The room (default: one named after this process).
        #[arg(long)]
        room: Option<String>,
    },
    /// Fan-out at rising rates until p99 passes `--p99-ms` or an update is missed.
    Saturate {
        /// WebSocket base of the rooms (see `rooms`).
        #[arg(long, default_value = "ws://127.0.0.1:4321/yjs")]
        url: String,
        #[command(flatten)]
        plan: SaturatePlan,
    },
    /// As many idle WebSocket connections as asked; server RSS per connection.
    Conns {
        /// WebSocket base of the rooms (see `rooms`).
        #[arg(long, default_value = "ws://127.0.0.1:4321/yjs")]
        url: String,
        /// The server's process id (for RSS).
        #[arg(long)]
        pid: u32,
        /// Connections to open (spread over 127.0.0.1..=127.0.0.N source addresses). The
        /// server needs a file descriptor per connection: keep under its `ulimit -n`.
        #[arg(long, default_value_t = 19_500)]
        count: usize,
        /// Connections per room.
        #[arg(long, default_value_t = 100)]
        per_room: usize,
    },
    /// A room with a long history: time to activate it (load + first sync) after eviction.
    Activation {
        /// WebSocket base of the rooms (see `rooms`); the server must run with a short
        /// `--room-idle-secs` so the room is evicted between writing and reading.
        #[arg(long, default_value = "ws://127.0.0.1:4321/yjs")]
        url: String,
        /// The trace the updates come from.
        #[arg(long, default_value = "../shared/data/automerge-paper.json.gz")]
        file: PathBuf,
        /// Updates to write (the trace's first transactions).
        #[arg(long, default_value_t = 100_000)]
        updates: usize,
        /// Seconds to wait for the room's eviction before timing its activation.
        #[arg(long, default_value_t = 3.0)]
        idle_wait_secs: f64,
    },
    /// One publisher, many chat subscribers: delivery latency.
    StreamFanout {
        /// Server base URL (ws://HOST:PORT).
        #[arg(long, default_value = "ws://127.0.0.1:4321")]
        url: String,
        /// Subscribers in the room.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Messages to publish.
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// How subscribers connect.
        #[arg(long, value_enum, default_value_t = Transport::Ws)]
        transport: Transport,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Many publishers into one room: acknowledged messages per second.
    StreamThroughput {
        /// Server base URL (ws://HOST:PORT).
        #[arg(long, default_value = "ws://127.0.0.1:4321")]
        url: String,
        /// Publishing connections.
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        /// Messages in all.
        #[arg(long, default_value_t = 50_000)]
        count: usize,
        /// Unacknowledged messages per publisher.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Replay an editing trace through the server.
    Trace {
        /// WebSocket base of the rooms: ws://HOST:PORT/yjs for Tandem, ws://HOST:PORT for
        /// the reference y-websocket server.
        #[arg(long, default_value = "ws://127.0.0.1:4321/yjs")]
        url: String,
        /// The server's process id (for CPU time).
        #[arg(long)]
        pid: u32,
        /// The trace (gzipped JSON with txns[].patches[] = [pos, del, insert]).
        #[arg(long, default_value = "../shared/data/automerge-paper.json.gz")]
        file: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        /// Replay only the first N transactions (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
}

/// How stream subscribers connect.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Transport {
    /// `GET /rooms/{room}/ws`.
    Ws,
    /// `GET /rooms/{room}/events`.
    Sse,
}

type Socket = Framed<BoxedSocket, Codec>;

/// A client in one Yjs room: its WebSocket and, with Hocuspocus, the document name that
/// leads each frame. Derefs to the WebSocket, for raw frames.
struct Peer {
    socket: Socket,
    /// Hocuspocus: the document name as a lib0 var-string (varuint length, UTF-8 bytes).
    address: Option<Bytes>,
}

impl Deref for Peer {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        &self.socket
    }
}

impl DerefMut for Peer {
    fn deref_mut(&mut self) -> &mut Socket {
        &mut self.socket
    }
}

// Hocuspocus's outer message types (`MessageType` in @hocuspocus/server) that a client
// receives; 0, 1 and 3 are y-websocket's, and sync sub-types are y-protocols' (0, 1, 2).
/// Sync (`MessageType.Sync`).
const HP_SYNC: u64 = 0;
/// Awareness (`MessageType.Awareness`).
const HP_AWARENESS: u64 = 1;
/// Auth (`MessageType.Auth`), followed by an `AuthMessageType` (@hocuspocus/common).
const HP_AUTH: u64 = 2;
/// The answer to a client's SyncStep1 sent as a reply (`MessageType.SyncReply`).
const HP_SYNC_REPLY: u64 = 4;
/// The server closes this document's connection (`MessageType.CLOSE`).
const HP_CLOSE: u64 = 7;
/// `AuthMessageType.Token`: client → server, followed by the token as a var-string.
const HP_AUTH_TOKEN: u64 = 0;
/// `AuthMessageType.PermissionDenied`: server → client, followed by the reason.
const HP_AUTH_PERMISSION_DENIED: u64 = 1;

/// The frame that joins `room` on a Hocuspocus connection: the document name, Auth, Token,
/// and a token (any string is accepted when the server has no `onAuthenticate` hook).
fn hocuspocus_auth(room: &str) -> Bytes {
    let mut out = Vec::with_capacity(room.len() + 12);
    lib0::write_var_bytes(&mut out, room.as_bytes());
    lib0::write_var_u64(&mut out, HP_AUTH);
    lib0::write_var_u64(&mut out, HP_AUTH_TOKEN);
    lib0::write_var_bytes(&mut out, b"loadgen");
    out.into()
}

/// A Hocuspocus frame as a y-websocket message: Ok(None) for what a y-websocket client
/// would not see (Authenticated, SyncStatus, …), Err(()) when the server refuses or closes
/// the document.
fn hocuspocus_decode(frame: &Bytes) -> Result<Option<Message>, ()> {
    let mut reader = Reader::new(frame);
    reader.read_var_bytes().map_err(drop)?; // the document name
    let at = frame.len() - reader.remaining();
    match reader.read_var_u64().map_err(drop)? {
        // The rest is a y-websocket message, its type included.
        HP_SYNC | HP_AWARENESS => Message::decode(&frame.slice(at..)).map(Some).map_err(drop),
        HP_SYNC_REPLY => {
            let mut message = vec![HP_SYNC as u8];
            message.extend_from_slice(&frame[frame.len() - reader.remaining()..]);
            Message::decode(&message.into()).map(Some).map_err(drop)
        }
        HP_AUTH => match reader.read_var_u64().map_err(drop)? {
            HP_AUTH_PERMISSION_DENIED => Err(()),
            _ => Ok(None),
        },
        HP_CLOSE => Err(()),
        _ => Ok(None),
    }
}

async fn connect(url: &str, room: &str, proto: Proto) -> Peer {
    let target = match proto {
        Proto::YWebsocket => format!("{url}/{room}"),
        Proto::Hocuspocus => format!("{}/", url.trim_end_matches('/')),
    };
    let (_, socket) = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
        .ws(target.as_str())
        .max_frame_size(64 << 20)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {target}: {e}"));
    let mut peer = Peer {
        socket,
        address: None,
    };
    if proto == Proto::Hocuspocus {
        let mut address = Vec::with_capacity(room.len() + 2);
        lib0::write_var_bytes(&mut address, room.as_bytes());
        peer.address = Some(address.into());
        // The server queues what follows until the document is authenticated.
        peer.send(WsMessage::Binary(hocuspocus_auth(room)))
            .await
            .expect("send auth");
    }
    peer
}

/// Next y-websocket message, answering pings; None when the socket ends or `limit` passes.
async fn next_message(peer: &mut Peer, limit: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, peer.socket.next())
            .await
            .ok()??
        {
            Ok(Frame::Binary(bytes)) if peer.address.is_none() => {
                return Message::decode(&bytes).ok()
            }
            Ok(Frame::Binary(bytes)) => match hocuspocus_decode(&bytes) {
                Ok(Some(message)) => return Some(message),
                Ok(None) => {}
                Err(()) => return None,
            },
            Ok(Frame::Ping(p)) => {
                let _ = peer.socket.send(WsMessage::Pong(p)).await;
            }
            Ok(Frame::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(peer: &mut Peer, message: &Message) {
    let frame = match &peer.address {
        None => message.encode(),
        Some(address) => {
            let message = message.encode();
            let mut frame = Vec::with_capacity(address.len() + message.len());
            frame.extend_from_slice(address);
            frame.extend_from_slice(&message);
            frame.into()
        }
    };
    peer.socket
        .send(WsMessage::Binary(frame))
        .await
        .expect("send");
}

/// Completes the handshake of an empty client: answer SyncStep1, send ours, await SyncStep2.
async fn handshake(socket: &mut Peer, doc: &Doc) {
    send(socket, &Message::SyncStep1(Bytes::from_static(&[0]))).await;
    let (mut answered, mut synced) = (false, false);
    while !(answered && synced) {
        match next_message(socket, Duration::from_secs(30)).await {
            Some(Message::SyncStep1(_)) => {
                send(socket, &Message::SyncStep2(Bytes::from_static(&[0, 0]))).await;
                answered = true;
            }
            Some(Message::SyncStep2(u)) => {
                apply(doc, &u);
                synced = true;
            }
            Some(_) => {}
            None => panic!("handshake failed"),
        }
    }
}

/// Applies the updates an observer receives until its document holds `target`; returns
/// how many update messages that took (a server may merge updates that arrive together).
async fn follow(socket: &mut Peer, doc: &Doc, target: &StateVector, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut messages = 0;
    while doc.transact().state_vector() != *target {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_message(socket, left).await {
            Some(Message::Update(update)) => {
                apply(doc, &update);
                messages += 1;
            }
            Some(_) => {}
            None => panic!("observer stopped after {messages} update messages"),
        }
    }
    messages
}

/// What `rooms` opens and how long it waits before reading RSS.
#[derive(clap::Args)]
struct RoomsPlan {
    /// Rooms to open.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Sessions per room.
    #[arg(long, default_value_t = 2)]
    sessions: usize,
    /// Characters of text the room's first session writes (one insert, which every
    /// other session receives before the next room opens), as real rooms hold content.
    #[arg(long, default_value_t = 0)]
    text_chars: usize,
    /// Seconds to wait after the last room opened before reading RSS (a server may
    /// compact what rooms hold once they are idle: Tandem freezes unused documents
    /// after `--doc-freeze-secs`).
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// Rooms opened (and kept open) before the measured ones. A fresh process pays
    /// once for what its first rooms touch (code pages, thread stacks, allocator
    /// arenas); with warm-up rooms, `kib_per_room` is what one more room costs, and
    /// `kib_per_room_from_start` still counts every room from the fresh process
    /// (`anon_kib_per_room_from_start`: the same in anonymous memory, without code pages).
    #[arg(long, default_value_t = 0)]
    warmup_rooms: usize,
}

fn apply(doc: &Doc, update: &[u8]) {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).expect("update decodes"))
        .expect("update applies");
}

async fn rooms(url: String, pid: u32, plan: RoomsPlan, proto: Proto) {
    let RoomsPlan {
        rooms,
        sessions,
        text_chars,
        settle_secs,
        warmup_rooms,
    } = plan;
    let settle = Duration::from_secs_f64(settle_secs);
    let at_start = rss_kib(pid);
    let anon_at_start = anon_rss_kib(pid);
    let mut before = at_start;
    let run = format!("idle{}", std::process::id());
    let text: String = "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(text_chars)
        .collect();
    let mut open = Vec::with_capacity((warmup_rooms + rooms) * sessions);
    let mut started = Instant::now();
    for r in 0..warmup_rooms + rooms {
        if r == warmup_rooms && r > 0 {
            tokio::time::sleep(settle).await;
            before = rss_kib(pid);
            started = Instant::now();
        }
        let mut room = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let doc = Doc::new();
            let mut socket = connect(&url, &format!("{run}-{r}"), proto).await;
            handshake(&mut socket, &doc).await;
            room.push((socket, doc));
        }
        if !text.is_empty() {
            let update = {
                let doc = &room[0].1;
                let shared = doc.get_or_insert_text("text");
                let mut txn = doc.transact_mut();
                shared.insert(&mut txn, 0, &text);
                txn.encode_update_v1()
            };
            let target = room[0].1.transact().state_vector();
            send(&mut room[0].0, &Message::Update(update.into())).await;
            for (socket, doc) in room.iter_mut().skip(1) {
                follow(socket, doc, &target, Duration::from_secs(30)).await;
            }
        }
        // Idle clients stay live as a browser's do: they answer the server's pings.
        open.extend(room.into_iter().map(|(mut peer, _)| {
            actix_rt::spawn(async move {
                while next_message(&mut peer, Duration::from_secs(3600))
                    .await
                    .is_some()
                {}
            })
        }));
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let after = rss_kib(pid);
    let anon_after = anon_rss_kib(pid);
    let per_room = (after.saturating_sub(before)) as f64 / rooms as f64;
    let all_rooms = (warmup_rooms + rooms) as f64;
    let from_start = (after.saturating_sub(at_start)) as f64 / all_rooms;
    // The same without file-backed pages: the first room pages in ~1.2 MiB of the
    // server's code, which is shared and not memory any room holds.
    let anon_from_start = (anon_after.saturating_sub(anon_at_start)) as f64 / all_rooms;
    println!(
        "{}",
        serde_json::json!({
            "mode": "rooms", "rooms": rooms, "sessions_per_room": sessions,
            "text_chars": text_chars, "settle_secs": settle.as_secs_f64(),
            "warmup_rooms": warmup_rooms, "rss_at_start_kib": at_start,
            "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_room": per_room, "kib_per_room_from_start": from_start,
            "anon_kib_per_room_from_start": anon_from_start,
            "kib_per_connection": per_room / sessions as f64,
            "connect_secs": connect_secs,
        })
    );
    for client in open {
        client.abort();
    }
}

async fn amplify(url: String, pid: u32, count: usize) {
    let before = rss_kib(pid);
    let peak_before = peak_rss_kib(pid);
    // An Update whose payload is the 4-byte prefix that declares ~1e9 clients.
    let frame = Message::Update(Bytes::from_static(&[0xfe, 0xc9, 0x9a, 0x3b])).encode();
    let room = format!("amp{}", std::process::id());
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        sockets.push(connect(&url, &room, Proto::YWebsocket).await);
    }
    let started = Instant::now();
    let sends = sockets
        .iter_mut()
        .map(|s| s.send(WsMessage::Binary(frame.clone())));
    futures_util::future::join_all(sends).await;
    let mut closed = 0;
    for socket in &mut sockets {
        while next_message(socket, Duration::from_secs(30))
            .await
            .is_some()
        {}
        closed += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = rss_kib(pid);
    println!(
        "{}",
        serde_json::json!({
            "mode": "amplify", "frames": count, "frame_bytes": frame.len(), "closed": closed,
            "rss_before_kib": before, "rss_after_kib": after,
            "peak_rss_before_kib": peak_before, "peak_rss_after_kib": peak_rss_kib(pid),
            "secs": secs,
        })
    );
}

async fn slow_readers(url: String, pid: u32, readers: usize, mb: usize) {
    let room = format!("slow{}", std::process::id());
    let mut silent = Vec::with_capacity(readers);
    for _ in 0..readers {
        let mut socket = connect(&url, &room, Proto::YWebsocket).await;
        handshake(&mut socket, &Doc::new()).await;
        silent.push(socket); // never read again
    }
    let doc = Doc::new();
    let mut writer = connect(&url, &room, Proto::YWebsocket).await;
    handshake(&mut writer, &doc).await;
    let before = rss_kib(pid);
    let chunk = "z".repeat(4096);
    let edits = mb * 256;
    let text = doc.get_or_insert_text("text");
    let started = Instant::now();
    let mut peak = before;
    for i in 0..edits {
        let update = {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, &chunk);
            txn.encode_update_v1()
        };
        send(&mut writer, &Message::Update(update.into())).await;
        if i % 64 == 0 {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    peak = peak.max(rss_kib(pid));
    let after = rss_kib(pid);
    // Count the silent sessions the server cut: their streams end with a close.
    let mut cut = 0;
    for socket in &mut silent {
        let mut closed = false;
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .ok()
            .flatten()
        {
            if matches!(frame, Ok(Frame::Close(_)) | Err(_)) {
                closed = true;
                break;
            }
        }
        cut += usize::from(closed);
    }
    println!(
        "{}",
        serde_json::json!({
            "mode": "slow-readers", "readers": readers, "streamed_mb": mb,
            "rss_before_kib": before, "rss_peak_sampled_kib": peak, "rss_after_kib": after,
            "readers_cut": cut, "stream_secs": started.elapsed().as_secs_f64(),
        })
    );
}

/// What a `churn` run does.
struct ChurnPlan {
    cycles: usize,
    rooms: usize,
    concurrency: usize,
    evict_wait: Duration,
    edit: bool,
    timeout: Duration,
}

/// One churn cycle, as a stock y-websocket client: join `room` (SyncStep1 → SyncStep2),
/// optionally send one small update, then close cleanly (our close frame, then the
/// server's).
async fn churn_cycle(url: &str, room: &str, edit: bool, n: usize) {
    let doc = Doc::new();
    let mut socket = connect(url, room, Proto::YWebsocket).await;
    handshake(&mut socket, &doc).await;
    if edit {
        let update = {
            let text = doc.get_or_insert_text("text");
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, &format!("c{n} "));
            txn.encode_update_v1()
        };
        send(&mut socket, &Message::Update(update.into())).await;
    }
    socket
        .send(WsMessage::Close(Some(CloseCode::Normal.into())))
        .await
        .expect("send close");
    // Until the server's close frame (or the end of the stream), skipping what it still sends.
    for _ in 0..1000 {
        if next_message(&mut socket, Duration::from_secs(10))
            .await
            .is_none()
        {
            break;
        }
    }
}

/// The http://HOST:PORT a ws://HOST:PORT/... URL names.
fn http_origin(url: &str) -> String {
    let rest = url.strip_prefix("ws://").expect("a ws:// URL");
    format!("http://{}", rest.split('/').next().unwrap_or(rest))
}

/// One unlabelled metric of the server's `/metrics` (None if it or the endpoint is missing).
async fn metric(http: &str, name: &str) -> Option<f64> {
    let mut response = awc::Client::new()
        .get(format!("{http}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let body = response.body().await.ok()?;
    std::str::from_utf8(&body)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls the gauge `name` until it reads 0 or `limit` passes (the whole of `limit` when the
/// gauge is missing); returns its last reading.
async fn wait_for_zero(http: &str, name: &str, limit: Duration) -> Option<f64> {
    let deadline = Instant::now() + limit;
    loop {
        let value = metric(http, name).await;
        let left = deadline.saturating_duration_since(Instant::now());
        if value == Some(0.0) || left.is_zero() {
            return value;
        }
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
    }
}

async fn churn(url: String, pid: u32, plan: ChurnPlan) {
    let http = http_origin(&url);
    let baseline = rss_kib(pid);
    let started = Instant::now();
    let deadline = started + plan.timeout;
    let next = Arc::new(AtomicUsize::new(0));
    let (cycles, rooms, edit) = (plan.cycles, plan.rooms.max(1), plan.edit);
    let mut workers = Vec::with_capacity(plan.concurrency);
    for _ in 0..plan.concurrency.max(1) {
        let (url, next) = (url.clone(), Arc::clone(&next));
        workers.push(actix_rt::spawn(async move {
            let mut done = 0usize;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cycles {
                    break;
                }
                let room = format!("churn-{}", i % rooms);
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, churn_cycle(&url, &room, edit, i)).await {
                    Ok(()) => done += 1,
                    Err(_) => break,
                }
            }
            done
        }));
    }
    let mut done = 0;
    for worker in workers {
        done += worker.await.expect("churn worker");
    }
    let cycles_secs = started.elapsed().as_secs_f64();
    // Every session gone from the server, then the RSS the cycles left.
    let connections = wait_for_zero(&http, "tandem_connections", Duration::from_secs(10)).await;
    let after_cycles = rss_kib(pid);
    let evict_started = Instant::now();
    let rooms_active = wait_for_zero(&http, "tandem_rooms_active", plan.evict_wait).await;
    let evict_secs = evict_started.elapsed().as_secs_f64();
    // A stopped room flushes the store after it stops: give that a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_eviction = rss_kib(pid);
    println!(
        "{}",
        serde_json::json!({
            "mode": "churn", "cycles": done, "cycles_requested": cycles, "rooms": rooms,
            "concurrency": plan.concurrency, "edit": edit,
            "rss_baseline_kib": baseline, "rss_after_cycles_kib": after_cycles,
            "rss_after_eviction_kib": after_eviction, "peak_rss_kib": peak_rss_kib(pid),
            "connections_after_cycles": connections, "rooms_active_after_wait": rooms_active,
            "activations": metric(&http, "tandem_room_activations_total").await,
            "evictions": metric(&http, "tandem_room_evictions_total").await,
            "cycles_secs": cycles_secs, "evict_secs": evict_secs,
            "elapsed_secs": started.elapsed().as_secs_f64(),
        })
    );
}

/// The state vector of a document holding all of `updates`.
fn final_state(updates: &[Vec<u8>]) -> StateVector {
    let doc = Doc::new();
    for update in updates {
        apply(&doc, update);
    }
    let state = doc.transact().state_vector();
    state
}

/// The trace as one v1 update per transaction, and the text it ends with.
fn trace_updates(file: &Path, limit: usize) -> (Vec<Vec<u8>>, String) {
    trace::load(file, limit).unwrap_or_else(|e| panic!("the trace {}: {e}", file.display()))
}

async fn activation(url: String, file: PathBuf, updates: usize, idle_wait_secs: f64) {
    let (log, end) = trace_updates(&file, updates);
    let room = format!("activation{}", std::process::id());
    let total = log.len();
    let target = final_state(&log);
    // Write the history; the observer's receipt of the last update means it is all durable
    // (Tandem broadcasts only after the flush).
    let mut observer = connect(&url, &room, Proto::YWebsocket).await;
    handshake(&mut observer, &Doc::new()).await;
    let mut writer = connect(&url, &room, Proto::YWebsocket).await;
    handshake(&mut writer, &Doc::new()).await;
    let write_started = Instant::now();
    let sender = actix_rt::spawn(async move {
        for update in log {
            send(&mut writer, &Message::Update(update.into())).await;
        }
        writer
    });
    follow(
        &mut observer,
        &Doc::new(),
        &target,
        Duration::from_secs(120),
    )
    .await;
    let write_secs = write_started.elapsed().as_secs_f64();
    drop(sender.await);
    drop(observer);
    tokio::time::sleep(Duration::from_secs_f64(idle_wait_secs)).await;
    // Activation: connect, and time until the SyncStep2 holding the whole document arrives.
    let doc = Doc::new();
    let started = Instant::now();
    let mut reader = connect(&url, &room, Proto::YWebsocket).await;
    handshake(&mut reader, &doc).await;
    let activation_ms = started.elapsed().as_secs_f64() * 1e3;
    let text = doc.get_or_insert_text("text").get_string(&doc.transact());
    println!(
        "{}",
        serde_json::json!({
            "mode": "activation", "updates": total, "write_secs": write_secs,
            "activation_and_sync_ms": activation_ms, "content_matches": text == end,
        })
    );
    assert_eq!(text, end, "the reloaded room differs from what was written");
}

async fn trace(
    url: String,
    pid: u32,
    file: PathBuf,
    timeout_secs: u64,
    limit: usize,
    proto: Proto,
) {
    let (updates, end) = trace_updates(&file, limit);
    let bytes: usize = updates.iter().map(Vec::len).sum();

    // The floor: the same updates applied to a document in-process.
    let floor_started = Instant::now();
    let floor_doc = Doc::new();
    for update in &updates {
        apply(&floor_doc, update);
    }
    let floor_secs = floor_started.elapsed().as_secs_f64();
    assert_eq!(
        floor_doc
            .get_or_insert_text("text")
            .get_string(&floor_doc.transact()),
        end
    );

    let target = floor_doc.transact().state_vector();

    let room = format!("trace{}", std::process::id());
    let mut observers = Vec::new();
    for _ in 0..2 {
        let doc = Doc::new();
        let mut socket = connect(&url, &room, proto).await;
        handshake(&mut socket, &doc).await;
        observers.push((socket, doc));
    }
    let mut writer = connect(&url, &room, proto).await;
    handshake(&mut writer, &Doc::new()).await;

    let cpu_before = cpu_secs(pid);
    let started = Instant::now();
    let total = updates.len();
    let sender = actix_rt::spawn(async move {
        for update in updates {
            send(&mut writer, &Message::Update(update.into())).await;
        }
        writer
    });
    let limit = Duration::from_secs(timeout_secs);
    let follows = observers
        .iter_mut()
        .map(|(socket, doc)| follow(socket, doc, &target, limit));
    let messages = futures_util::future::join_all(follows).await;
    let through_secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu_before;
    let _writer = sender.await;
    let ok = observers
        .iter()
        .all(|(_, doc)| doc.get_or_insert_text("text").get_string(&doc.transact()) == end);
    println!(
        "{}",
        serde_json::json!({
            "mode": "trace", "updates": total, "update_bytes": bytes,
            "floor_secs": floor_secs, "through_server_secs": through_secs,
            "server_cpu_secs": cpu,
            "wall_ratio_vs_floor": through_secs / floor_secs,
            "server_cpu_ratio_vs_floor": cpu / floor_secs,
            "observers_match_end_content": ok,
            "messages_per_observer": messages,
        })
    );
    assert!(ok, "an observer's text differs from endContent");
}

/// The marker a fan-out update carries: `~` + 8 hex digits of its number + 16 of its
/// scheduled send time (µs since the run's origin) + `~`, found in the raw update bytes
/// without decoding them.
fn marker(n: usize, t_us: u64) -> String {
    format!("~{n:08x}{t_us:016x}~")
}

/// Calls `each(n, t_us)` for every marker in a frame and returns how many it found: a
/// server may merge several updates into one (Tandem does when they arrive faster than
/// it releases them). This runs once per delivered update on the load generator's one
/// thread, so it is kept cheap: `memchr` to the next `~`, hex parsed in place.
fn for_each_marker(frame: &[u8], mut each: impl FnMut(usize, u64)) -> usize {
    let mut found = 0;
    let mut at = 0;
    while let Some(offset) = memchr::memchr(b'~', &frame[at..]) {
        let start = at + offset;
        let Some(w) = frame.get(start..start + 26) else {
            break;
        };
        let parsed = (w[25] == b'~')
            .then(|| parse_hex(&w[1..9]).zip(parse_hex(&w[9..25])))
            .flatten();
        match parsed {
            Some((n, t)) => {
                each(n as usize, t);
                found += 1;
                at = start + 26;
            }
            None => at = start + 1,
        }
    }
    found
}

/// The value of ASCII hex digits, if they all are.
fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        Some(acc << 4 | u64::from((d as char).to_digit(16)?))
    })
}

/// What one fan-out run measured.
struct FanoutResult {
    latency: hdrhistogram::Histogram<u64>,
    /// The readers that connected to the writer's node, and the relayed ones (when some are).
    direct: hdrhistogram::Histogram<u64>,
    proxied: hdrhistogram::Histogram<u64>,
    delivered: u64,
    /// Data frames the readers received (a server may merge updates into one frame).
    frames: u64,
    expected: u64,
    readers_missing: usize,
    secs: f64,
    connect_secs: f64,
}

/// One fan-out run: `readers` readers, one writer sending `count` updates at `rate`/s on
/// schedule; every reader records each update's latency from its scheduled send time.
async fn run_fanout(
    url: &str,
    room: &str,
    readers: usize,
    rate: f64,
    count: usize,
    proxied_url: Option<&str>,
    proto: Proto,
) -> FanoutResult {
    let origin = Instant::now();
    let mut tasks = Vec::with_capacity(readers);
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel::<()>();
    let send_secs = count as f64 / rate;
    let deadline = origin + Duration::from_secs_f64(60.0 + send_secs * 2.0);
    let histogram =
        || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    // Latencies of the direct and of the relayed readers. One pair that every reader
    // records into (they all run on this thread) rather than one per reader: a thousand
    // histograms of ~0.5 MB each made every record a cache miss.
    let recorded = Rc::new(RefCell::new([histogram(), histogram()]));
    for i in 0..readers {
        let proxied = proxied_url.is_some() && i % 2 == 1;
        let url = if proxied {
            proxied_url.unwrap_or(url)
        } else {
            url
        };
        let (url, room, ready) = (url.to_owned(), room.to_owned(), ready_tx.clone());
        let recorded = recorded.clone();
        tasks.push(actix_rt::spawn(async move {
            let doc = Doc::new();
            let mut socket = connect(&url, &room, proto).await;
            handshake(&mut socket, &doc).await;
            let _ = ready.send(());
            let mut seen = vec![false; count];
            let (mut got, mut frames) = (0, 0u64);
            while got < count {
                let left = deadline.saturating_duration_since(Instant::now());
                let frame = match tokio::time::timeout(left, socket.next()).await {
                    Ok(Some(Ok(Frame::Binary(frame)))) => frame,
                    Ok(Some(Ok(Frame::Ping(p)))) => {
                        let _ = socket.send(WsMessage::Pong(p)).await;
                        continue;
                    }
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                };
                // Every update in a frame arrived now: one clock read per frame.
                let now = origin.elapsed().as_micros() as u64;
                let mut recorded = recorded.borrow_mut();
                let latency = &mut recorded[usize::from(proxied)];
                let found = for_each_marker(&frame, |n, t| {
                    if n < count && !seen[n] {
                        seen[n] = true;
                        got += 1;
                        latency.saturating_record(now.saturating_sub(t).max(1));
                    }
                });
                frames += u64::from(found > 0);
            }
            (got, frames, origin.elapsed())
        }));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(ready_tx);
    for _ in 0..readers {
        // A reader that failed to connect (its panic says why) never reports: stop then
        // instead of waiting for it forever.
        match tokio::time::timeout(Duration::from_secs(60), ready.recv()).await {
            Ok(Some(())) => {}
            _ => panic!("a reader did not connect and sync within 60 s ({url}/{room})"),
        }
    }
    let connect_secs = origin.elapsed().as_secs_f64();
    let doc = Doc::new();
    let mut writer = connect(url, room, proto).await;
    handshake(&mut writer, &doc).await;
    let text = doc.get_or_insert_text("text");
    // Open loop: update n is due at start + n/rate whatever happened before; if the writer
    // falls behind, it sends at once, and the delay counts in the latency.
    let start = Instant::now();
    let start_us = start.duration_since(origin).as_micros() as u64;
    for n in 0..count {
        let due_us = start_us + (n as f64 * 1e6 / rate) as u64;
        let due = origin + Duration::from_micros(due_us);
        tokio::time::sleep_until(due.into()).await;
        let update = {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, &marker(n, due_us));
            txn.encode_update_v1()
        };
        send(&mut writer, &Message::Update(update.into())).await;
    }
    let (mut delivered, mut frames, mut readers_missing, mut last) =
        (0u64, 0u64, 0usize, Duration::ZERO);
    for task in tasks {
        let (got, reader_frames, done) = task.await.expect("reader task");
        frames += reader_frames;
        delivered += got as u64;
        readers_missing += usize::from(got < count);
        last = last.max(done);
    }
    let [direct, relayed] = recorded.borrow().clone();
    let mut latency = direct.clone();
    latency.add(&relayed).expect("merge histograms");
    FanoutResult {
        latency,
        direct,
        proxied: relayed,
        delivered,
        frames,
        expected: (readers * count) as u64,
        readers_missing,
        secs: (last.saturating_sub(start.duration_since(origin))).as_secs_f64(),
        connect_secs,
    }
}

fn fanout_json(r: &FanoutResult, readers: usize, rate: f64) -> serde_json::Value {
    let ms = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({
        "readers": readers, "rate": rate, "delivered": r.delivered, "expected": r.expected,
        "readers_missing": r.readers_missing,
        "delivered_per_sec": r.delivered as f64 / r.secs.max(1e-9),
        "frames_per_sec": r.frames as f64 / r.secs.max(1e-9),
        "updates_per_frame": r.delivered as f64 / r.frames.max(1) as f64,
        "min_ms": r.latency.min() as f64 / 1000.0, "p1_ms": ms(0.01),
        "p50_ms": ms(0.50), "p95_ms": ms(0.95), "p99_ms": ms(0.99),
        "max_ms": r.latency.max() as f64 / 1000.0, "connect_secs": r.connect_secs,
    })
}

async fn fanout(
    url: String,
    readers: usize,
    rate: f64,
    secs: f64,
    proxied_url: Option<String>,
    room: Option<String>,
    proto: Proto,
) {
    let room = room.unwrap_or_else(|| format!("fanout{}", std::process::id()));
    let count = (rate * secs).round().max(1.0) as usize;
    let result = run_fanout(
        &url,
        &room,
        readers,
        rate,
        count,
        proxied_url.as_deref(),
        proto,
    )
    .await;
    let mut json = fanout_json(&result, readers, rate);
    json["mode"] = "fanout".into();
    if proxied_url.is_some() {
        let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        json["direct"] = serde_json::json!({
            "readers": readers.div_ceil(2),
            "p50_ms": ms(&result.direct, 0.5), "p99_ms": ms(&result.direct, 0.99),
        });
        json["proxied"] = serde_json::json!({
            "readers": readers / 2,
            "p50_ms": ms(&result.proxied, 0.5), "p99_ms": ms(&result.proxied, 0.99),
        });
    }
    println!("{json}");
}

/// What `saturate` runs: steps doubling from `start_rate` until one fails.
#[derive(clap::Args)]
struct SaturatePlan {
    /// Readers in the room.
    #[arg(long, default_value_t = 1000)]
    readers: usize,
    /// First rate (updates/s); each step multiplies it by `--step-factor`.
    #[arg(long, default_value_t = 25.0)]
    start_rate: f64,
    /// What each step multiplies the rate by (more than 1, at most 10). The default
    /// doubles it, which makes every ceiling a power of two times `--start-rate`; 1.25
    /// finds it within a quarter, in more steps.
    #[arg(long, default_value_t = 2.0, value_parser = step_factor)]
    step_factor: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    /// A step fails when its p99 exceeds this.
    #[arg(long, default_value_t = 500.0)]
    p99_ms: f64,
    /// At most this many steps.
    #[arg(long, default_value_t = 8)]
    max_steps: usize,
    /// The server's process id: each step also reports the cores it used.
    #[arg(long)]
    pid: Option<u32>,
}

/// `--step-factor`: a number in (1, 10].
fn step_factor(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(factor) if factor > 1.0 && factor <= 10.0 => Ok(factor),
        Ok(_) => Err("the step factor must be more than 1 and at most 10".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn saturate(url: String, plan: SaturatePlan, proto: Proto) {
    let SaturatePlan {
        readers,
        start_rate,
        step_factor,
        step_secs,
        p99_ms,
        max_steps,
        pid,
    } = plan;
    let mut rate = start_rate;
    let mut best: Option<serde_json::Value> = None;
    let mut steps = Vec::new();
    for step in 0..max_steps {
        let room = format!("saturate{}-{step}", std::process::id());
        let count = (rate * step_secs).round().max(1.0) as usize;
        let cpu_before = pid.map(cpu_secs);
        let result = run_fanout(&url, &room, readers, rate, count, None, proto).await;
        let mut json = fanout_json(&result, readers, rate);
        if let (Some(pid), Some(before)) = (pid, cpu_before) {
            // Over the whole step (readers connecting too), per second of sending.
            json["server_cores"] = ((cpu_secs(pid) - before) / result.secs.max(1e-9)).into();
        }
        let p99 = json["p99_ms"].as_f64().unwrap_or(f64::MAX);
        let ok = result.readers_missing == 0 && p99 <= p99_ms;
        eprintln!(
            "saturate: rate {rate}/s → {json} ({})",
            if ok { "sustained" } else { "failed" }
        );
        steps.push(json.clone());
        if !ok {
            break;
        }
        best = Some(json);
        rate *= step_factor;
    }
    println!(
        "{}",
        serde_json::json!({
            "mode": "saturate", "readers": readers, "p99_bound_ms": p99_ms, "step_factor": step_factor,
            "sustained_delivered_per_sec": best.as_ref().map_or(0.0, |b| b["delivered_per_sec"].as_f64().unwrap_or(0.0)),
            "sustained_rate": best.as_ref().map_or(0.0, |b| b["rate"].as_f64().unwrap_or(0.0)),
            "steps": steps,
        })
    );
}

/// Opens an idle WebSocket by hand from `source` (so many source addresses can be used),
/// returning the raw stream once the server has answered 101 and `hello` (if any) has
/// been sent as one binary frame.
async fn raw_ws(
    host: std::net::SocketAddr,
    source: std::net::IpAddr,
    path: &str,
    hello: Option<&[u8]>,
) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(host).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("closed during the handshake"));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    if let Some(payload) = hello {
        // FIN + binary; masked (as a client must) with the key 0, which leaves the payload
        // as it is.
        let mut frame = vec![0x82];
        match u16::try_from(payload.len()) {
            Ok(n) if n < 126 => frame.push(0x80 | n as u8),
            Ok(n) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&n.to_be_bytes());
            }
            Err(_) => return Err(std::io::Error::other("hello frame too long")),
        }
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload);
        stream.write_all(&frame).await?;
    }
    Ok(stream)
}

async fn conns(url: String, pid: u32, count: usize, per_room: usize, proto: Proto) {
    let parsed = url
        .strip_prefix("ws://")
        .expect("a ws:// URL")
        .split_once('/')
        .map_or((url[5..].to_owned(), String::new()), |(h, p)| {
            (h.to_owned(), format!("/{p}"))
        });
    let host: std::net::SocketAddr = parsed.0.parse().expect("HOST:PORT with an IP address");
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut open = Vec::with_capacity(count);
    let mut failed = None;
    for i in 0..count {
        // 20,000 connections from one address would come close to the ephemeral-port range.
        let source =
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1 + (i / 10_000) as u8));
        let room = format!("conns{}-{}", std::process::id(), i / per_room);
        // Each connection joins its room: by its path (y-websocket), or by an Auth frame.
        let (path, hello) = match proto {
            Proto::YWebsocket => (format!("{}/{room}", parsed.1), None),
            Proto::Hocuspocus => (format!("{}/", parsed.1), Some(hocuspocus_auth(&room))),
        };
        let opened = raw_ws(host, source, &path, hello.as_deref());
        let opened = tokio::time::timeout(Duration::from_secs(5), opened)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("no answer within 5 s")));
        match opened {
            Ok(stream) => open.push(stream),
            Err(e) => {
                failed = Some(format!("connection {i}: {e}"));
                break;
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let n = open.len().max(1);
    println!(
        "{}",
        serde_json::json!({
            "mode": "conns", "requested": count, "open": open.len(), "per_room": per_room,
            "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": after.saturating_sub(before) as f64 / n as f64,
            "connect_secs": connect_secs, "stopped_by": failed,
        })
    );
}

/// A joined chat WebSocket (`/rooms/{room}/ws`).
async fn chat_join(url: &str, room: &str) -> Socket {
    let (_, mut socket) = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
        .ws(format!("{url}/rooms/{room}/ws"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}/rooms/{room}/ws: {e}"));
    let join = serde_json::json!({"type": "join"}).to_string();
    socket
        .send(WsMessage::Text(join.into()))
        .await
        .expect("send join");
    loop {
        match next_text(&mut socket, Duration::from_secs(30)).await {
            Some(event) if event["type"] == "joined" => return socket,
            Some(_) => {}
            None => panic!("join failed"),
        }
    }
}

/// The next chat event, answering pings; None when the socket ends or `limit` passes.
async fn next_text(socket: &mut Socket, limit: Duration) -> Option<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()??
        {
            Ok(Frame::Text(text)) => return serde_json::from_slice(&text).ok(),
            Ok(Frame::Ping(p)) => {
                let _ = socket.send(WsMessage::Pong(p)).await;
            }
            Ok(Frame::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The `t` (µs since `origin`) of a message event's body, if it is one.
fn sent_at(event: &serde_json::Value) -> Option<u64> {
    (event["type"] == "message")
        .then(|| event["body"]["t"].as_u64())
        .flatten()
}

/// Percentiles (µs → ms) of `samples`.
fn percentiles(samples: &mut [u64]) -> serde_json::Value {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1));
        samples.get(i).map_or(0.0, |v| *v as f64 / 1000.0)
    };
    serde_json::json!({
        "samples": samples.len(), "p50_ms": at(0.50), "p90_ms": at(0.90),
        "p99_ms": at(0.99), "max_ms": samples.last().map_or(0.0, |v| *v as f64 / 1000.0),
    })
}

/// One subscriber: receives `count` messages, recording each one's latency.
async fn subscribe(
    url: String,
    room: String,
    transport: Transport,
    origin: Instant,
    count: usize,
    deadline: Instant,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
) -> Vec<u64> {
    let mut latencies = Vec::with_capacity(count);
    let left = || deadline.saturating_duration_since(Instant::now());
    match transport {
        Transport::Ws => {
            let mut socket = chat_join(&url, &room).await;
            let _ = ready.send(());
            while latencies.len() < count {
                let Some(event) = next_text(&mut socket, left()).await else {
                    break;
                };
                if let Some(t) = sent_at(&event) {
                    latencies.push(origin.elapsed().as_micros() as u64 - t);
                }
            }
        }
        Transport::Sse => {
            let http = url.replacen("ws://", "http://", 1);
            let mut response = awc::Client::new()
                .get(format!("{http}/rooms/{room}/events"))
                .timeout(Duration::from_secs(3600))
                .send()
                .await
                .expect("SSE subscribe");
            let mut buffer = String::new();
            let mut joined = false;
            while latencies.len() < count {
                let Ok(Some(Ok(chunk))) = tokio::time::timeout(left(), response.next()).await
                else {
                    break;
                };
                buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    let event: serde_json::Value = serde_json::from_str(data).expect("JSON");
                    if event["type"] == "joined" && !joined {
                        joined = true;
                        let _ = ready.send(());
                    }
                    if let Some(t) = sent_at(&event) {
                        latencies.push(origin.elapsed().as_micros() as u64 - t);
                    }
                }
            }
        }
    }
    latencies
}

async fn stream_fanout(
    url: String,
    subscribers: usize,
    count: usize,
    transport: Transport,
    timeout_secs: u64,
) {
    let room = format!("fanout{}", std::process::id());
    let origin = Instant::now();
    let deadline = origin + Duration::from_secs(timeout_secs);
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let task = subscribe(
            url.clone(),
            room.clone(),
            transport,
            origin,
            count,
            deadline,
            ready_tx.clone(),
        );
        tasks.push(actix_rt::spawn(task));
        // Connect a few at a time, so the listen backlog never overflows.
        if tasks.len() % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for _ in 0..subscribers {
        ready.recv().await.expect("a subscriber failed to join");
    }
    let connect_secs = origin.elapsed().as_secs_f64();
    let mut publisher = chat_join(&url, &room).await;
    let mut acks = Vec::with_capacity(count);
    for n in 0..count {
        let t = origin.elapsed().as_micros() as u64;
        let publish = serde_json::json!({"type": "publish", "body": {"t": t, "n": n}});
        publisher
            .send(WsMessage::Text(publish.to_string().into()))
            .await
            .expect("publish");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = next_text(&mut publisher, left).await.expect("ack in time");
            if event["type"] == "ack" {
                acks.push(origin.elapsed().as_micros() as u64 - t);
                break;
            }
        }
        // Pace the publisher so the figure is latency, not a queue.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut delivered = Vec::with_capacity(subscribers * count);
    for task in tasks {
        delivered.extend(task.await.expect("subscriber task"));
    }
    let complete = delivered.len() == subscribers * count;
    println!(
        "{}",
        serde_json::json!({
            "mode": "stream-fanout", "transport": format!("{transport:?}").to_lowercase(),
            "subscribers": subscribers, "messages": count, "connect_secs": connect_secs,
            "publish_to_receive": percentiles(&mut delivered),
            "publish_to_ack": percentiles(&mut acks),
            "every_delivery_arrived": complete,
        })
    );
    assert!(complete, "some deliveries did not arrive in time");
}

async fn stream_throughput(
    url: String,
    publishers: usize,
    count: usize,
    window: usize,
    timeout_secs: u64,
) {
    let room = format!("throughput{}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut sockets = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        sockets.push(chat_join(&url, &room).await);
    }
    let per = count / publishers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, mut socket) in sockets.into_iter().enumerate() {
        tasks.push(actix_rt::spawn(async move {
            let (mut sent, mut acked) = (0usize, 0usize);
            while acked < per && Instant::now() < deadline {
                while sent < per && sent - acked < window {
                    let publish = serde_json::json!({"type": "publish", "id": format!("{p}-{sent}"), "body": {"n": sent}});
                    socket.send(WsMessage::Text(publish.to_string().into())).await.expect("publish");
                    sent += 1;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match next_text(&mut socket, left).await {
                    Some(event) if event["type"] == "ack" => acked += 1,
                    Some(event) if event["type"] == "error" => panic!("publish refused: {event}"),
                    Some(_) => {}
                    None => break,
                }
            }
            acked
        }));
    }
    let mut acked = 0;
    for task in tasks {
        acked += task.await.expect("publisher task");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "mode": "stream-throughput", "publishers": publishers, "window": window,
            "acked": acked, "secs": secs, "acked_per_sec": acked as f64 / secs,
        })
    );
}

fn main() {
    let cli = Cli::parse();
    let proto = cli.proto;
    let speaks_hocuspocus = matches!(
        cli.mode,
        Mode::Rooms { .. }
            | Mode::Trace { .. }
            | Mode::Fanout { .. }
            | Mode::Saturate { .. }
            | Mode::Conns { .. }
    );
    if proto == Proto::Hocuspocus && !speaks_hocuspocus {
        eprintln!("--proto hocuspocus: only rooms, trace, fanout, saturate and conns speak it");
        std::process::exit(2);
    }
    actix_rt::System::new().block_on(async move {
        match cli.mode {
            Mode::Rooms { url, pid, plan } => rooms(url, pid, plan, proto).await,
            Mode::Amplify { url, pid, count } => amplify(url, pid, count).await,
            Mode::SlowReaders {
                url,
                pid,
                readers,
                mb,
            } => slow_readers(url, pid, readers, mb).await,
            Mode::Churn {
                url,
                pid,
                cycles,
                rooms,
                concurrency,
                evict_wait_secs,
                edit,
                timeout_secs,
            } => {
                let plan = ChurnPlan {
                    cycles,
                    rooms,
                    concurrency,
                    evict_wait: Duration::from_secs_f64(evict_wait_secs),
                    edit,
                    timeout: Duration::from_secs(timeout_secs),
                };
                churn(url, pid, plan).await
            }
            Mode::Fanout {
                url,
                readers,
                rate,
                secs,
                proxied_url,
                room,
            } => fanout(url, readers, rate, secs, proxied_url, room, proto).await,
            Mode::Saturate { url, plan } => saturate(url, plan, proto).await,
            Mode::Conns {
                url,
                pid,
                count,
                per_room,
            } => conns(url, pid, count, per_room, proto).await,
            Mode::Activation {
                url,
                file,
                updates,
                idle_wait_secs,
            } => activation(url, file, updates, idle_wait_secs).await,
            Mode::StreamFanout {
                url,
                subscribers,
                count,
                transport,
                timeout_secs,
            } => stream_fanout(url, subscribers, count, transport, timeout_secs).await,
            Mode::StreamThroughput {
                url,
                publishers,
                count,
                window,
                timeout_secs,
            } => stream_throughput(url, publishers, count, window, timeout_secs).await,
            Mode::Trace {
                url,
                pid,
                file,
                timeout_secs,
                limit,
            } => trace(url, pid, file, timeout_secs, limit, proto).await,
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn markers(frame: &[u8]) -> Vec<(usize, u64)> {
        let mut found = Vec::new();
        let count = for_each_marker(frame, |n, t| found.push((n, t)));
        assert_eq!(count, found.len());
        found
    }

    #[test]
    fn finds_adjacent_markers_among_other_bytes() {
        let mut frame = b"\x01\x02~~not hex~".to_vec();
        frame.extend_from_slice(marker(7, 123_456).as_bytes());
        frame.extend_from_slice(marker(8, u64::MAX).as_bytes());
        frame.extend_from_slice(b"\x00~");
        frame.extend_from_slice(&marker(9, 1).as_bytes()[..20]);
        assert_eq!(markers(&frame), vec![(7, 123_456), (8, u64::MAX)]);
    }

    #[test]
    fn rejects_a_window_that_is_not_all_hex() {
        let mut bad = marker(1, 2).into_bytes();
        bad[5] = b'g';
        assert!(markers(&bad).is_empty());
        assert_eq!(parse_hex(b"00ff"), Some(255));
        assert_eq!(parse_hex(b"+1"), None);
    }
}
