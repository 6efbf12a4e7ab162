//! One actor per WebSocket connection on `/yjs/{room}`: it owns the socket's concerns only
//! (frame reassembly and size limits, decoding, heartbeat and keepalive, close codes) and
//! forwards each decoded message to its room. It holds no document state, so the transport
//! could change in this one file.
//!
//! Join and leave are sent from `started` and `stopping`, so a session can never be
//! forgotten by its room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};
use tracing::{debug, info, warn};

use crate::auth::Access;
use crate::metrics;
use crate::protocol::close::{self, Close};
use crate::protocol::ysync::{DecodeError, Message as SyncMessage};
use crate::registry::{send_to_room, Registry};
use crate::room::{Join, Leave, Outbound, Receive, Room, RoomName, SessionId};

/// An awareness update with no entries: a valid message that changes nothing. Sent when a
/// session has been quiet, because the stock y-websocket client reconnects after 30 s
/// without an application message (it cannot see WebSocket pings).
const KEEPALIVE_FRAME: &[u8] = &[1, 1, 0];

/// Session knobs (from the configuration).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame or reassembled message accepted, in bytes.
    pub max_message_bytes: usize,
    /// How often to ping the client and, if nothing else was sent, send a keepalive.
    pub heartbeat_interval: Duration,
    /// Close a session from which nothing (not even a pong) arrived for this long.
    pub heartbeat_timeout: Duration,
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// The session actor.
pub struct Session {
    id: SessionId,
    room_name: RoomName,
    access: Access,
    registry: Addr<Registry>,
    room: Option<Addr<Room>>,
    config: SessionConfig,
    last_heard: Instant,
    last_sent: Instant,
    /// A fragmented message being reassembled.
    partial: Option<BytesMut>,
}

impl Session {
    /// A session for `room_name`; it joins the room when started.
    pub fn new(
        room_name: RoomName,
        access: Access,
        registry: Addr<Registry>,
        config: SessionConfig,
    ) -> Self {
        Self {
            id: SessionId(NEXT_SESSION.fetch_add(1, Ordering::Relaxed)),
            room_name,
            access,
            registry,
            room: None,
            config,
            last_heard: Instant::now(),
            last_sent: Instant::now(),
            partial: None,
        }
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, close: Close, detail: &str) {
        let mut description = if detail.is_empty() {
            close.reason.to_owned()
        } else {
            format!("{}: {detail}", close.reason)
        };
        // A close frame's payload is at most 125 bytes, 2 of them the code.
        if description.len() > 123 {
            let mut cut = 123;
            while !description.is_char_boundary(cut) {
                cut -= 1;
            }
            description.truncate(cut);
        }
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(close.code),
            description: Some(description),
        }));
        ctx.stop();
    }

    /// Decodes one whole message and hands it to the room.
    fn receive(&mut self, frame: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        metrics::get().bytes_in.inc_by(frame.len() as u64);
        let message = match SyncMessage::decode(&frame) {
            Ok(message) => message,
            Err(e) => {
                let code = match e {
                    DecodeError::UnknownMessageType(_) | DecodeError::UnknownSyncType(_) => {
                        close::UNKNOWN_MESSAGE_TYPE
                    }
                    _ => close::MALFORMED_MESSAGE,
                };
                info!(room = %self.room_name, session = self.id.0, error = %e, "closing session: bad frame");
                metrics::get().protocol_errors.inc();
                self.close(ctx, code, &e.to_string());
                return;
            }
        };
        if let Some(room) = &self.room {
            room.do_send(Receive {
                session: self.id,
                message,
                frame,
            });
        }
    }

    fn on_fragment(&mut self, item: Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (chunk, first, last) = match item {
            Item::FirstBinary(b) => (b, true, false),
            Item::FirstText(_) => {
                self.close(ctx, close::UNSUPPORTED_DATA, "");
                return;
            }
            Item::Continue(b) => (b, false, false),
            Item::Last(b) => (b, false, true),
        };
        if first {
            self.partial = Some(BytesMut::new());
        }
        let Some(buffer) = self.partial.as_mut() else {
            self.close(
                ctx,
                close::MALFORMED_MESSAGE,
                "continuation without a first frame",
            );
            return;
        };
        if buffer.len() + chunk.len() > self.config.max_message_bytes {
            self.close(ctx, close::MESSAGE_TOO_BIG, "");
            return;
        }
        buffer.extend_from_slice(&chunk);
        if last {
            let whole = self.partial.take().unwrap_or_default().freeze();
            self.receive(whole, ctx);
        }
    }

    fn heartbeat(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.last_heard.elapsed() > self.config.heartbeat_timeout {
            debug!(session = self.id.0, "heartbeat timeout");
            self.close(ctx, close::HEARTBEAT_TIMEOUT, "");
            return;
        }
        ctx.ping(b"");
        if self.last_sent.elapsed() >= self.config.heartbeat_interval {
            ctx.binary(Bytes::from_static(KEEPALIVE_FRAME));
            self.last_sent = Instant::now();
        }
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::get().connections.inc();
        ctx.run_interval(self.config.heartbeat_interval, Self::heartbeat);
        let (registry, name, id, access) = (
            self.registry.clone(),
            self.room_name.clone(),
            self.id,
            self.access,
        );
        let outbox = ctx.address().recipient::<Outbound>();
        let join = async move {
            send_to_room(&registry, &name, || Join {
                session: id,
                access,
                outbox: outbox.clone(),
            })
            .await?
        };
        // `wait` holds back the socket's frames until the room has accepted the session.
        ctx.wait(
            join.into_actor(self)
                .map(|result, session, ctx| match result {
                    Ok(room) => session.room = Some(room),
                    Err(e) => {
                        warn!(room = %session.room_name, error = %e, "could not join room");
                        session.close(ctx, close::INTERNAL_ERROR, &e.to_string());
                    }
                }),
        );
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if let Some(room) = self.room.take() {
            room.do_send(Leave { session: self.id });
        }
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::get().connections.dec();
    }
}

impl Handler<Outbound> for Session {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        match msg {
            Outbound::Frame(frame) => {
                ctx.binary(frame);
                self.last_sent = Instant::now();
            }
            Outbound::Close(close, detail) => {
                self.room = None; // the room has already forgotten this session
                self.close(ctx, close, &detail);
            }
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        let message = match item {
            Ok(message) => message,
            Err(ws::ProtocolError::Overflow) => {
                self.close(ctx, close::MESSAGE_TOO_BIG, "");
                return;
            }
            Err(e) => {
                info!(session = self.id.0, error = %e, "closing session: WebSocket protocol error");
                self.close(ctx, close::MALFORMED_MESSAGE, &e.to_string());
                return;
            }
        };
        match message {
            ws::Message::Binary(frame) => self.receive(frame, ctx),
            ws::Message::Continuation(item) => self.on_fragment(item, ctx),
            ws::Message::Text(_) => self.close(ctx, close::UNSUPPORTED_DATA, ""),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
        }
    }
}
