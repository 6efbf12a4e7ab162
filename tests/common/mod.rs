//! Shared harness for the end-to-end tests: start the real `tandem` binary on a loopback
//! port with a fresh sled directory, and talk to it as a raw y-websocket client would.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use actix_codec::Framed;
use actix_http::ws::{CloseCode, Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tandem::protocol::ysync::Message;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub mod chat;
pub mod pg;
pub mod raw;

#[path = "../../examples/support/procfs.rs"]
mod procfs;
#[allow(unused_imports)] // not every test binary measures memory
pub use procfs::rss_kib;

/// A running `tandem serve` child process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    args: Vec<String>,
    /// The PostgreSQL schema the server stores in, when the suite runs on PostgreSQL
    /// (kept across restarts, dropped with the last server that uses it).
    schema: Option<std::sync::Arc<pg::Schema>>,
    /// Where the server's log (stderr) goes when a test reads it; else the test's stderr.
    log: Option<PathBuf>,
}

/// `TANDEM_TEST_STORE=postgres` runs every end-to-end test that starts a server on sled
/// on PostgreSQL instead (a schema per server, kept across its restarts); `.ci/run` runs
/// the suite both ways.
fn suite_on_postgres() -> Option<String> {
    let wanted = std::env::var("TANDEM_TEST_STORE").is_ok_and(|s| s == "postgres");
    wanted.then(|| {
        std::env::var(pg::URL_VAR)
            .unwrap_or_else(|_| panic!("TANDEM_TEST_STORE=postgres needs {}", pg::URL_VAR))
    })
}

impl Server {
    /// Starts the binary on a port the kernel picks (port 0, read back from the line the
    /// server prints, so parallel tests never race for a port) with `data_dir`, plus
    /// `extra` flags, and waits until `/healthz` answers.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_on(0, data_dir, extra)
    }

    /// Like [`Server::start`] on a given port (0: the kernel picks).
    pub fn start_on(port: u16, data_dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut schema = None;
        if let Some(url) = suite_on_postgres() {
            if !args.iter().any(|a| a == "--postgres-url") {
                // One schema per data directory, as sled has one database there: a test
                // that starts a new server on the same directory finds its data.
                static SCHEMAS: std::sync::Mutex<
                    Option<std::collections::HashMap<PathBuf, std::sync::Arc<pg::Schema>>>,
                > = std::sync::Mutex::new(None);
                let mut schemas = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
                let made = schemas
                    .get_or_insert_with(Default::default)
                    .entry(data_dir.to_owned())
                    .or_insert_with(|| std::sync::Arc::new(pg::Schema::new(&url, "suite")))
                    .clone();
                args.extend(made.flags());
                schema = Some(made);
            }
        }
        Self::launch(port, data_dir, args, schema, None)
    }

    /// Like [`Server::start`], with the server's log appended to `log` (see
    /// [`Server::log_text`]) instead of the test's stderr.
    pub fn start_logged(data_dir: &Path, extra: &[&str], log: &Path) -> Server {
        let args = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(0, data_dir, args, None, Some(log.to_owned()))
    }

    /// What the server has logged so far (only for [`Server::start_logged`]).
    pub fn log_text(&self) -> String {
        let log = self
            .log
            .as_ref()
            .expect("the server was started with a log");
        std::fs::read_to_string(log).unwrap_or_default()
    }

    fn launch(
        port: u16,
        data_dir: &Path,
        args: Vec<String>,
        schema: Option<std::sync::Arc<pg::Schema>>,
        log: Option<PathBuf>,
    ) -> Server {
        // `TANDEM_TEST_BIN` runs the suite against another build (a release binary, or an
        // older one to measure what a change bought).
        let bin = std::env::var_os("TANDEM_TEST_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_tandem")),
            PathBuf::from,
        );
        let mut command = Command::new(bin);
        // Only the flags given here configure the server, whatever the caller's environment.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TANDEM_")) {
            command.env_remove(key);
        }
        let child = command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(&args)
            .env(
                "TANDEM_LOG",
                std::env::var("TANDEM_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(match &log {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("open the server's log"),
                ),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("spawn the tandem binary");
        let mut child = child;
        let port = bound_port(&mut child);
        let server = Server {
            child,
            port,
            data_dir: data_dir.to_owned(),
            args,
            schema,
            log,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "tandem did not become healthy on port {} within 20 s",
            self.port
        );
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `ws://127.0.0.1:PORT/yjs/{room}`.
    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://127.0.0.1:{}/yjs/{room}", self.port)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit()
    }

    /// Sends SIGTERM (the server begins its ordered shutdown).
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    /// Waits (at most 15 s) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for tandem") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tandem did not exit within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same binary again on the same port and data directory.
    pub fn restart(&self) -> Server {
        Server::launch(
            self.port,
            &self.data_dir,
            self.args.clone(),
            self.schema.clone(),
            self.log.clone(),
        )
    }
}

/// The port in the server's "listening on" line; its stdout is drained afterwards so the
/// server never blocks on a full pipe.
fn bound_port(child: &mut Child) -> u16 {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("the server's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("tandem listening on http://") {
                if let (Some(tx), Some(port)) = (tx.take(), addr.rsplit(':').next()) {
                    let _ = tx.send(port.trim().parse::<u16>());
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(port)) => port,
        Ok(Err(e)) => panic!("the server printed an unreadable port: {e}"),
        Err(_) => {
            let _ = child.kill();
            panic!("the server did not say where it listens within 20 s (did it start?)");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one Prometheus sample (`name` exactly, no labels) from `/metrics`.
pub async fn metric(server: &Server, name: &str) -> f64 {
    let body = http_get(server, "/metrics").await.1;
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("metric {name} not found"))
}

/// Polls `GET /rooms/{room}/state` until its `text` equals `expected` (bounded by [`WAIT`]).
/// A WebSocket update and an HTTP request reach the room by different paths, so a test
/// that just sent an update must wait for it rather than assume it has landed.
pub async fn wait_for_text(server: &Server, room: &str, expected: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, state) = http_get(server, &format!("/rooms/{room}/state")).await;
        if status == 200 && text_of_state(&state) == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "room {room} never held {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET → (status, body).
pub async fn http_get(server: &Server, path: &str) -> (u16, Bytes) {
    http_get_as(server, path, None).await
}

/// GET with an optional bearer token → (status, body).
pub async fn http_get_as(server: &Server, path: &str, bearer: Option<&str>) -> (u16, Bytes) {
    let mut request = awc::Client::new().get(server.url(path));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.expect("GET");
    let body = response.body().limit(64 << 20).await.expect("body");
    (response.status().as_u16(), body)
}

/// POST bytes → (status, body).
pub async fn http_post(server: &Server, path: &str, body: Vec<u8>) -> (u16, Bytes) {
    http_post_as(server, path, body, None).await
}

/// POST bytes with an optional bearer token → (status, body).
pub async fn http_post_as(
    server: &Server,
    path: &str,
    body: Vec<u8>,
    bearer: Option<&str>,
) -> (u16, Bytes) {
    let mut request = awc::Client::new().post(server.url(path));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let mut response = request.send_body(body).await.expect("POST");
    let body = response.body().await.expect("body");
    (response.status().as_u16(), body)
}

/// What a raw client saw arrive.
#[derive(Debug)]
pub enum Received {
    /// A decoded y-websocket message (keepalives included).
    Message(Message),
    /// The server closed with this code and reason.
    Closed(u16, String),
    /// The server sent y-protocols' "permission denied" with this reason.
    Denied(String),
}

/// A raw y-websocket client with its own yrs document.
pub struct YClient {
    socket: Framed<BoxedSocket, Codec>,
    pub doc: Doc,
}

impl YClient {
    /// Connects to `room` without the sync handshake.
    pub async fn connect(server: &Server, room: &str) -> YClient {
        Self::try_connect(server, room)
            .await
            .expect("WebSocket connect")
    }

    /// Connects, returning the HTTP error if the upgrade is refused.
    pub async fn try_connect(server: &Server, room: &str) -> Result<YClient, String> {
        Self::try_connect_url(&server.ws_url(room), None).await
    }

    /// Connects to a full URL, optionally with an `Authorization: Bearer` token; on refusal
    /// returns the error (for a refused upgrade: "status NNN").
    pub async fn try_connect_url(url: &str, bearer: Option<&str>) -> Result<YClient, String> {
        let mut request = awc::Client::new().ws(url).max_frame_size(64 << 20);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let (_, socket) = request.connect().await.map_err(|e| match e {
            awc::error::WsClientError::InvalidResponseStatus(status) => {
                format!("status {}", status.as_u16())
            }
            other => other.to_string(),
        })?;
        Ok(YClient {
            socket,
            doc: Doc::new(),
        })
    }

    /// Connects and completes the sync handshake (answers the server's SyncStep1, sends
    /// ours and applies the SyncStep2).
    pub async fn synced(server: &Server, room: &str) -> YClient {
        let mut client = Self::connect(server, room).await;
        client.sync().await;
        client
    }

    /// The sync handshake on an open connection.
    pub async fn sync(&mut self) {
        let sv = self.doc.transact().state_vector().encode_v1();
        self.send(&Message::SyncStep1(sv.into())).await;
        let mut answered = false;
        let mut applied = false;
        let deadline = Instant::now() + WAIT;
        while !(answered && applied) {
            assert!(Instant::now() < deadline, "sync handshake timed out");
            match self.recv().await {
                Received::Message(Message::SyncStep1(sv)) => {
                    let sv = StateVector::decode_v1(&sv).unwrap();
                    let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                    self.send(&Message::SyncStep2(diff.into())).await;
                    answered = true;
                }
                Received::Message(Message::SyncStep2(update)) => {
                    self.apply(&update);
                    applied = true;
                }
                Received::Message(Message::Update(update)) => self.apply(&update),
                Received::Message(_) => {}
                Received::Closed(code, reason) => panic!("closed during sync: {code} {reason}"),
                Received::Denied(reason) => panic!("denied during sync: {reason}"),
            }
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Message) {
        self.send_raw(message.encode()).await;
    }

    /// Sends one binary frame as is.
    pub async fn send_raw(&mut self, frame: Bytes) {
        self.socket
            .send(WsMessage::Binary(frame))
            .await
            .expect("send frame");
    }

    /// Sends one frame; false if the connection is gone.
    pub async fn try_send(&mut self, message: &Message) -> bool {
        self.socket
            .send(WsMessage::Binary(message.encode()))
            .await
            .is_ok()
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(WsMessage::Text(text.to_owned().into()))
            .await
            .expect("send text");
    }

    /// Waits (bounded) for the next message or close; answers pings.
    pub async fn recv(&mut self) -> Received {
        self.recv_within(WAIT)
            .await
            .expect("nothing arrived in time")
    }

    /// Waits at most `limit` for the next message or close.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match frame {
                None => return Some(Received::Closed(1006, "stream ended".into())),
                Some(Err(e)) => return Some(Received::Closed(1006, e.to_string())),
                Some(Ok(Frame::Binary(bytes))) if bytes.first() == Some(&2) => {
                    // [2 = auth, 0 = denied, reason as var string]
                    let reason = String::from_utf8_lossy(bytes.get(3..).unwrap_or_default());
                    return Some(Received::Denied(reason.into_owned()));
                }
                Some(Ok(Frame::Binary(bytes))) => {
                    let message = Message::decode(&bytes).expect("server sent a valid message");
                    return Some(Received::Message(message));
                }
                Some(Ok(Frame::Close(reason))) => {
                    let (code, text) = reason
                        .map(|r| (u16::from(r.code), r.description.unwrap_or_default()))
                        .unwrap_or((1005, String::new()));
                    return Some(Received::Closed(code, text));
                }
                Some(Ok(Frame::Ping(payload))) => {
                    let _ = self.socket.send(WsMessage::Pong(payload)).await;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Waits for the server to close the connection; returns the code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            if let Received::Closed(code, reason) = self.recv().await {
                return (code, reason);
            }
        }
    }

    /// Waits for the next document update (skipping awareness and keepalives) and applies it.
    pub async fn next_update(&mut self) -> Vec<u8> {
        loop {
            match self.recv().await {
                Received::Message(Message::Update(u))
                | Received::Message(Message::SyncStep2(u)) => {
                    self.apply(&u);
                    return u.to_vec();
                }
                Received::Message(_) | Received::Denied(_) => {}
                Received::Closed(code, reason) => panic!("closed while waiting: {code} {reason}"),
            }
        }
    }

    /// Applies an update to the local document.
    pub fn apply(&self, update: &[u8]) {
        self.doc
            .transact_mut()
            .apply_update(Update::decode_v1(update).expect("server update decodes"))
            .expect("server update applies");
    }

    /// Appends `s` to the local `text` and sends the resulting update.
    pub async fn append(&mut self, s: &str) -> Vec<u8> {
        let update = local_append(&self.doc, s);
        self.send(&Message::Update(update.clone().into())).await;
        update
    }

    /// The local `text`.
    pub fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("text");
        let txn = self.doc.transact();
        text.get_string(&txn)
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self
            .socket
            .send(WsMessage::Close(Some(CloseCode::Normal.into())))
            .await;
    }
}

/// Appends `s` to `doc`'s `text` and returns the update that made.
pub fn local_append(doc: &Doc, s: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text("text");
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, s);
    txn.encode_update_v1()
}

/// The `text` of a v1 state update.
pub fn text_of_state(state: &[u8]) -> String {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("text");
    doc.transact_mut()
        .apply_update(Update::decode_v1(state).expect("state decodes"))
        .expect("state applies");
    let txn = doc.transact();
    text.get_string(&txn)
}
