//! Chat-stream test clients: the JSON protocol over `/rooms/{room}/ws`, an SSE subscriber,
//! and HS256 tokens, shared by every test that talks to the chat stream.

use std::time::{Duration, Instant};

use actix_codec::Framed;
use actix_http::ws::{CloseCode, Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use super::{Server, WAIT};

/// A chat client over `/rooms/{room}/ws`, speaking the JSON protocol.
pub struct Chat {
    /// The WebSocket, for tests that send raw frames.
    pub socket: Framed<BoxedSocket, Codec>,
    /// Events read but not yet taken by a matching `next_of`.
    backlog: Vec<Value>,
}

impl Chat {
    pub async fn connect(server: &Server, room: &str, bearer: Option<&str>) -> Chat {
        let url = format!("ws://127.0.0.1:{}/rooms/{room}/ws", server.port);
        let mut request = awc::Client::new().ws(url).max_frame_size(64 << 20);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let (_, socket) = request.connect().await.expect("chat WebSocket connect");
        Chat {
            socket,
            backlog: Vec::new(),
        }
    }

    /// Connects and joins; returns the client and its `joined` event.
    pub async fn join(server: &Server, room: &str, join: Value) -> (Chat, Value) {
        Self::join_as(server, room, join, None).await
    }

    pub async fn join_as(
        server: &Server,
        room: &str,
        mut join: Value,
        bearer: Option<&str>,
    ) -> (Chat, Value) {
        let mut chat = Self::connect(server, room, bearer).await;
        join["type"] = json!("join");
        chat.send(&join).await;
        let joined = chat.next_of("joined").await;
        (chat, joined)
    }

    pub async fn send(&mut self, value: &Value) {
        self.socket
            .send(WsMessage::Text(value.to_string().into()))
            .await
            .expect("send text");
    }

    /// The next event (or a `{"type":"closed"}` pseudo-event), answering pings.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match frame {
                None | Some(Err(_)) => return Some(json!({"type": "closed", "code": 1006})),
                Some(Ok(Frame::Text(text))) => {
                    return Some(serde_json::from_slice(&text).expect("events are JSON"))
                }
                Some(Ok(Frame::Close(reason))) => {
                    let code = reason.map_or(1005, |r| u16::from(r.code));
                    return Some(json!({"type": "closed", "code": code}));
                }
                Some(Ok(Frame::Ping(payload))) => {
                    let _ = self.socket.send(WsMessage::Pong(payload)).await;
                }
                Some(Ok(Frame::Binary(_))) => panic!("a chat session got a binary frame"),
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await.expect("no event in time")
    }

    /// The next event of type `kind`; others are kept for later.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        if let Some(at) = self.backlog.iter().position(|e| e["type"] == kind) {
            return self.backlog.remove(at);
        }
        let deadline = Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            assert!(Instant::now() < deadline, "no {kind} event in time");
            let event = self.recv_raw().await;
            if event["type"] == kind {
                self.backlog.splice(0..0, skipped);
                return event;
            }
            assert_ne!(event["type"], "closed", "closed while waiting for {kind}");
            skipped.push(event);
        }
    }

    pub async fn recv_raw(&mut self) -> Value {
        let backlog = std::mem::take(&mut self.backlog);
        let event = self.recv().await;
        self.backlog = backlog;
        event
    }

    /// Publishes and waits for the ack.
    pub async fn publish(&mut self, id: Option<&str>, body: Value) -> Value {
        let mut request = json!({"type": "publish", "body": body});
        if let Some(id) = id {
            request["id"] = json!(id);
        }
        self.send(&request).await;
        self.next_of("ack").await
    }

    /// The next `n` message events' seqs.
    pub async fn messages(&mut self, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            let event = self.next_of("message").await;
            seqs.push(event["seq"].as_u64().unwrap());
        }
        seqs
    }

    /// Asserts nothing of type `kind` arrives within `quiet`.
    pub async fn expect_no(&mut self, kind: &str, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Some(event) = self
            .recv_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            assert_ne!(event["type"], kind, "unexpected {event}");
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .socket
            .send(WsMessage::Close(Some(CloseCode::Normal.into())))
            .await;
    }
}

/// An SSE subscriber on `/rooms/{room}/events`.
pub struct Sse {
    response: awc::ClientResponse,
    buffer: String,
}

/// One parsed SSE event.
#[derive(Debug)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

impl Sse {
    pub async fn open(server: &Server, path: &str, last_event_id: Option<u64>) -> Sse {
        let mut request = awc::Client::new()
            .get(server.url(path))
            .timeout(Duration::from_secs(120));
        if let Some(id) = last_event_id {
            request = request.insert_header(("Last-Event-ID", id.to_string()));
        }
        let response = request.send().await.expect("SSE GET");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments are skipped, counted in `comments`).
    pub async fn next(&mut self, comments: &mut usize) -> SseEvent {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut is_comment = true;
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.parse().unwrap());
                    } else if let Some(name) = line.strip_prefix("event: ") {
                        event.event = name.to_owned();
                        is_comment = false;
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        event.data = serde_json::from_str(data).unwrap();
                    }
                }
                if is_comment {
                    *comments += 1;
                    continue;
                }
                return event;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.next())
                .await
                .expect("no SSE event in time")
                .expect("SSE stream ended")
                .expect("SSE read");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    pub async fn next_of(&mut self, kind: &str) -> SseEvent {
        let mut comments = 0;
        loop {
            let event = self.next(&mut comments).await;
            if event.event == kind {
                return event;
            }
        }
    }
}

/// An HS256 token with `claims` and an `exp` `secs` from now.
pub fn hs256(secret: &str, mut claims: Value, secs: u64) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["exp"] = json!(now + secs);
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
