//! One actor per WebSocket connection: `/yjs/{room}` (binary y-websocket frames) or
//! `/rooms/{room}/ws` (the chat stream's JSON text frames). It owns the socket's concerns
//! only (frame reassembly and size limits, decoding, heartbeat and keepalive, the close
//! handshake) and forwards each decoded message to its room. It holds no document or
//! stream state.
//!
//! The HTTP edge checks the upgrade request and hands over the bare TCP stream
//! ([`SessionPlan::start`]); reading and writing frames is in [`socket`]. A y-websocket
//! session joins its room from `started`; a chat session when its client sends `join`.
//! Leave is sent when the session begins to close or stops, so a session can never be
//! forgotten by its room. Flow control (message rate, unread outbox bytes) is in [`limits`].

mod limits;
mod socket;
pub mod sse;

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use actix_http::ws::{self, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::auth::Access;
use crate::metrics;
use crate::protocol::close::{self, Close};
use crate::protocol::ysync::{DecodeError, Message as SyncMessage};
use crate::registry::{send_to_room, Registry};
use crate::room::{
    ChatJoin, ChatRequest, Join, Leave, Outbound, Outbox, Receive, Room, RoomError, RoomName,
    SessionId, HARD_FACTOR, SLOW_GRACE,
};
use crate::stream::wire::{self, ErrorCode, Request};
use crate::stream::ResumeFrom;
use limits::{InFlight, TokenBucket};
use socket::{FrameReader, FrameWriter, ReadGate};

/// How long a closing session waits for its client's close frame (or for the socket to
/// take the last frames) before it drops the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes waiting in the write queue above which the client's frames are not read: what a
/// client makes the server send waits for it to read (TCP backpressure).
const PAUSE_READING_AT: usize = 64 * 1024;

/// Send a ping carrying the sent-bytes count at least this often (in bytes), so the
/// unread-bytes measure stays fresh while a session streams.
const MIN_PROBE_BYTES: u64 = 16 * 1024;

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
    /// Close a session whose client has this many sent bytes not yet read ("too slow").
    pub max_outbox_bytes: u64,
    /// Messages per second a client may send (burst: two seconds' worth); 0 = no limit.
    pub max_messages_per_sec: u32,
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Which protocol the socket speaks.
enum Protocol {
    /// y-websocket: binary frames, joined on start.
    Yjs,
    /// The chat stream: JSON text frames, joined on the client's `join`.
    Chat {
        /// The token's subject.
        subject: Option<String>,
        /// The token's public presence info.
        info: Option<Value>,
        /// Whether a `join` was accepted (or is under way).
        joined: bool,
    },
}

/// Everything a session needs but its socket: made by the HTTP edge while it checks the
/// upgrade request, started on the socket once the handshake response is written.
pub struct SessionPlan {
    room_name: RoomName,
    access: Access,
    registry: Addr<Registry>,
    config: SessionConfig,
    connections: Arc<AtomicUsize>,
    shutdown: watch::Receiver<bool>,
    refuse: Option<Close>,
    protocol: Protocol,
}

impl SessionPlan {
    /// A y-websocket session for `room_name`; it joins the room when started, and closes
    /// with "going away" when `shutdown` turns true.
    pub fn new(
        room_name: RoomName,
        access: Access,
        registry: Addr<Registry>,
        config: SessionConfig,
        connections: Arc<AtomicUsize>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            room_name,
            access,
            registry,
            config,
            connections,
            shutdown,
            refuse: None,
            protocol: Protocol::Yjs,
        }
    }

    /// Makes the session close with `close` right after the upgrade (the node is full).
    pub fn refusing(mut self, close: Close) -> Self {
        self.refuse = Some(close);
        self
    }

    /// Makes this a chat-stream session (JSON text frames, joined on `join`).
    pub fn chat(mut self, subject: Option<String>, info: Option<Value>) -> Self {
        self.protocol = Protocol::Chat {
            subject,
            info,
            joined: false,
        };
        self
    }

    /// Starts the session on `io`, the upgraded connection; `pending` holds bytes the
    /// client sent right behind its handshake request.
    pub fn start(self, io: TcpStream, pending: &[u8]) -> Addr<Session> {
        let io = Rc::new(io);
        let gate = Rc::new(ReadGate::default());
        let reader = FrameReader::new(
            Rc::clone(&io),
            Rc::clone(&gate),
            pending,
            self.config.max_message_bytes,
        );
        let mut shutdown = self.shutdown;
        let now = Instant::now();
        let rate = (self.config.max_messages_per_sec > 0).then(|| {
            let per_sec = f64::from(self.config.max_messages_per_sec);
            TokenBucket::new(per_sec, (2.0 * per_sec).max(10.0), now)
        });
        Session::create(move |ctx| {
            ctx.add_stream(reader);
            // Shutdown reaches every session, joined to a room or not.
            let going_away = async move { shutdown.wait_for(|&down| down).await.is_ok() };
            ctx.spawn(
                fut::wrap_future::<_, Session>(going_away).map(|down, session, ctx| {
                    if down {
                        session.close(ctx, close::GOING_AWAY, "");
                    }
                }),
            );
            Session {
                id: SessionId(NEXT_SESSION.fetch_add(1, Ordering::Relaxed)),
                room_name: self.room_name,
                access: self.access,
                registry: self.registry,
                room: None,
                config: self.config,
                last_heard: now,
                last_sent: now,
                partial: None,
                in_flight: InFlight::default(),
                outbox: None,
                rate,
                connections: self.connections,
                refuse: self.refuse,
                protocol: self.protocol,
                writer: FrameWriter::new(io),
                gate,
                flush_scheduled: false,
                awaiting_writable: false,
                closing: false,
                stop_when_flushed: false,
            }
        })
    }
}

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
    /// Bytes sent and not yet read by the client.
    in_flight: InFlight,
    /// Where the room sends this session's frames (set when it joins).
    outbox: Option<Outbox>,
    /// The message-rate limit, if any.
    rate: Option<TokenBucket>,
    /// Live sessions on this node (for the connection limit).
    connections: Arc<AtomicUsize>,
    /// If set, the session closes with this as soon as it starts (node over a limit).
    refuse: Option<Close>,
    protocol: Protocol,
    /// Frames queued for the client.
    writer: FrameWriter,
    /// Pauses reading the client's frames while the write queue is long.
    gate: Rc<ReadGate>,
    /// A flush of the queued frames is scheduled (after the messages now being handled).
    flush_scheduled: bool,
    /// The socket is full; a flush runs when it can take more.
    awaiting_writable: bool,
    /// A close frame was sent or received: nothing more is read or sent but the close.
    closing: bool,
    /// Stop as soon as the queued frames are written (the close handshake is done).
    stop_when_flushed: bool,
}

impl Session {
    fn is_chat(&self) -> bool {
        matches!(self.protocol, Protocol::Chat { .. })
    }

    /// Sends one frame, counting it, and probes the client's progress when due.
    fn send_frame(&mut self, frame: Bytes, ctx: &mut Context<Self>) {
        self.in_flight.sent(frame.len());
        self.queue(ws::Message::Binary(frame), ctx);
        self.sent(ctx);
    }

    /// Sends one text frame (a chat event), counting it like [`Self::send_frame`].
    fn send_text(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        self.in_flight.sent(text.len());
        self.queue(ws::Message::Text(text), ctx);
        self.sent(ctx);
    }

    /// After a send: note the time and probe the client's progress when due.
    fn sent(&mut self, ctx: &mut Context<Self>) {
        self.last_sent = Instant::now();
        let every = (self.config.max_outbox_bytes / 8).max(MIN_PROBE_BYTES);
        if let Some(probe) = self.in_flight.probe_due(every, self.last_sent) {
            self.queue(ws::Message::Ping(Bytes::copy_from_slice(&probe)), ctx);
        }
    }

    /// Queues a frame and schedules one flush for everything queued while the current
    /// batch of messages is handled (one write for a burst, not one per frame: an actix
    /// context polls the futures spawned into it after draining its mailbox).
    fn queue(&mut self, message: ws::Message, ctx: &mut Context<Self>) {
        let bound = self.write_bound();
        if self.writer.queued() > bound {
            // A backstop: the unread-bytes check and paused reading should cut a client
            // long before its queue gets here.
            if ctx.state() == ActorState::Running {
                info!(room = %self.room_name, session = self.id.0, bound, "dropping session: write queue over its bound");
                metrics::get().slow_consumers.inc();
                ctx.stop();
            }
            return;
        }
        self.writer.queue(message);
        if self.writer.queued() > PAUSE_READING_AT {
            self.gate.pause();
        }
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.spawn(fut::ready(()).map(|(), session: &mut Self, ctx| {
                session.flush_scheduled = false;
                session.flush(ctx);
            }));
        }
    }

    /// Writes the queued frames the socket takes now, and waits for it to take the rest.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.awaiting_writable {
            return;
        }
        let written = self.writer.write_now();
        if self.writer.queued() <= PAUSE_READING_AT {
            self.gate.resume();
        }
        match written {
            Ok(true) if self.stop_when_flushed => ctx.stop(),
            Ok(true) => {}
            Ok(false) => {
                self.awaiting_writable = true;
                let writable = self.writer.writable().into_actor(self);
                ctx.spawn(writable.map(|result, session, ctx| {
                    session.awaiting_writable = false;
                    match result {
                        Ok(()) => session.flush(ctx),
                        Err(e) => session.lost(&e, ctx),
                    }
                }));
            }
            Err(e) => self.lost(&e, ctx),
        }
    }

    /// The most bytes the write queue may hold: a few outboxes' worth plus one message.
    fn write_bound(&self) -> usize {
        let outbox = self.config.max_outbox_bytes.saturating_mul(HARD_FACTOR);
        usize::try_from(outbox)
            .unwrap_or(usize::MAX)
            .saturating_add(self.config.max_message_bytes)
    }

    /// The connection failed under a write: nothing more can reach the client.
    fn lost(&mut self, error: &std::io::Error, ctx: &mut Context<Self>) {
        debug!(session = self.id.0, %error, "connection lost");
        ctx.stop();
    }

    /// Begins the close handshake: sends a close frame with `close` and `detail`, leaves
    /// the room, and stops once the client answers (or after [`CLOSE_TIMEOUT`]).
    fn close(&mut self, ctx: &mut Context<Self>, close: Close, detail: &str) {
        if self.closing {
            return;
        }
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
        self.queue(
            ws::Message::Close(Some(ws::CloseReason {
                code: ws::CloseCode::from(close.code),
                description: Some(description),
            })),
            ctx,
        );
        self.begin_closing(ctx);
    }

    /// Enters the closing state: the room is left at once, and the session stops within
    /// [`CLOSE_TIMEOUT`] even if the client never answers or never reads.
    fn begin_closing(&mut self, ctx: &mut Context<Self>) {
        self.closing = true;
        self.partial = None;
        if let Some(room) = self.room.take() {
            room.do_send(Leave { session: self.id });
        }
        ctx.run_later(CLOSE_TIMEOUT, |session, ctx| {
            debug!(session = session.id.0, "close handshake timed out");
            ctx.stop();
        });
    }

    /// The client's close frame: answered with the same code (if this side had not closed
    /// first), then the connection ends once that answer is written.
    fn on_close(&mut self, reason: Option<ws::CloseReason>, ctx: &mut Context<Self>) {
        if !self.closing {
            self.queue(ws::Message::Close(reason), ctx);
            self.begin_closing(ctx);
        }
        self.stop_when_flushed = true;
        self.flush(ctx);
    }

    /// Counts an incoming message against the rate limit; false (and closed) when over it.
    fn within_rate(&mut self, size: usize, ctx: &mut Context<Self>) -> bool {
        metrics::get().bytes_in.inc_by(size as u64);
        if let Some(rate) = &mut self.rate {
            if !rate.take(Instant::now()) {
                info!(room = %self.room_name, session = self.id.0, "closing session: over the message rate");
                metrics::get().protocol_errors.inc();
                self.close(ctx, close::RATE_LIMITED, "");
                return false;
            }
        }
        true
    }

    /// Decodes one whole binary message and hands it to the room.
    fn receive(&mut self, frame: Bytes, ctx: &mut Context<Self>) {
        if self.is_chat() {
            self.close(ctx, close::TEXT_ONLY, "the chat protocol is JSON");
            return;
        }
        if !self.within_rate(frame.len(), ctx) {
            return;
        }
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

    /// Parses one whole chat request and acts on it: `join` here, the rest in the room.
    fn receive_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if !self.within_rate(text.len(), ctx) {
            return;
        }
        let request = match Request::parse(text).and_then(Request::validated) {
            Ok(request) => request,
            Err(e) => {
                metrics::get().protocol_errors.inc();
                self.send_event(
                    wire::error(ErrorCode::BadRequest, &e.to_string(), None),
                    ctx,
                );
                return;
            }
        };
        let Protocol::Chat {
            subject,
            info,
            joined,
        } = &mut self.protocol
        else {
            return;
        };
        match request {
            Request::Join { v, epoch, since } if !*joined => {
                if v.is_some_and(|v| v != wire::VERSION) {
                    let why = format!("protocol version {} is not supported", v.unwrap_or(0));
                    self.send_event(wire::error(ErrorCode::BadRequest, &why, None), ctx);
                    return;
                }
                *joined = true;
                let resume = since.map(|since| ResumeFrom { epoch, since });
                let (subject, info) = (subject.clone(), info.clone());
                self.join_chat(subject, info, resume, ctx);
            }
            request if !*joined => {
                let id = match &request {
                    Request::Publish { id, .. } => id.clone(),
                    Request::History { req, .. } => req.clone(),
                    _ => None,
                };
                let error = wire::error(ErrorCode::NotJoined, "send join first", id.as_deref());
                self.send_event(error, ctx);
            }
            request => {
                // `room` is None only while the join is under way; `ctx.wait` holds frames
                // back until then, so a request is never dropped here.
                if let Some(room) = &self.room {
                    room.do_send(ChatRequest {
                        session: self.id,
                        request,
                    });
                }
            }
        }
    }

    /// Joins the room's chat stream.
    fn join_chat(
        &mut self,
        subject: Option<String>,
        info: Option<Value>,
        resume: Option<ResumeFrom>,
        ctx: &mut Context<Self>,
    ) {
        let (session, access) = (self.id, self.access);
        let join = move |outbox| ChatJoin {
            session,
            access,
            subject: subject.clone(),
            info: info.clone(),
            outbox,
            resume: resume.clone(),
        };
        self.join(join, ctx);
    }

    /// Sends the room the join `make` builds (given this session's outbox). `wait` holds
    /// back the socket's frames until the room has answered.
    fn join<M>(&mut self, make: impl Fn(Outbox) -> M + 'static, ctx: &mut Context<Self>)
    where
        M: Message<Result = Result<Addr<Room>, RoomError>> + Send + 'static,
        Room: Handler<M>,
        <Room as Actor>::Context: ToEnvelope<Room, M>,
    {
        let (registry, name) = (self.registry.clone(), self.room_name.clone());
        let outbox = Outbox::new(ctx.address().recipient(), self.config.max_outbox_bytes);
        self.outbox = Some(outbox.clone());
        let join = async move { send_to_room(&registry, &name, || make(outbox.clone())).await? };
        ctx.wait(
            join.into_actor(self)
                .map(|result, session, ctx| session.joined(result, ctx)),
        );
    }

    /// The room's answer to a join (y-websocket or chat).
    fn joined(&mut self, result: Result<Addr<Room>, RoomError>, ctx: &mut Context<Self>) {
        match result {
            Ok(room) => self.room = Some(room),
            Err(RoomError::Full(why)) => self.close(ctx, close::TRY_AGAIN_LATER, &why),
            Err(e) => {
                warn!(room = %self.room_name, error = %e, "could not join room");
                self.close(ctx, close::INTERNAL_ERROR, &e.to_string());
            }
        }
    }

    /// Sends a chat event (a text frame; its UTF-8 was checked when it was made).
    fn send_event(&mut self, event: wire::Event, ctx: &mut Context<Self>) {
        self.send_text(event.json, ctx);
    }

    fn on_fragment(&mut self, item: Item, ctx: &mut Context<Self>) {
        let (chunk, first, last) = match item {
            Item::FirstBinary(b) if !self.is_chat() => (b, true, false),
            Item::FirstText(b) if self.is_chat() => (b, true, false),
            Item::FirstBinary(_) | Item::FirstText(_) => {
                let close = if self.is_chat() {
                    close::TEXT_ONLY
                } else {
                    close::UNSUPPORTED_DATA
                };
                self.close(ctx, close, "");
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
            if !self.is_chat() {
                self.receive(whole, ctx);
                return;
            }
            match std::str::from_utf8(&whole) {
                Ok(text) => self.receive_text(text, ctx),
                Err(_) => self.close(ctx, close::MALFORMED_MESSAGE, "text is not UTF-8"),
            }
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        if self.last_heard.elapsed() > self.config.heartbeat_timeout {
            debug!(session = self.id.0, "heartbeat timeout");
            self.close(ctx, close::HEARTBEAT_TIMEOUT, "");
            return;
        }
        // A client that talks but leaves our pings unanswered is not reading.
        let unanswered = self
            .in_flight
            .overdue(Instant::now(), self.config.heartbeat_timeout);
        if unanswered > 0 {
            info!(
                session = self.id.0,
                unanswered, "closing session: pings unanswered"
            );
            metrics::get().slow_consumers.inc();
            self.close(ctx, close::TOO_SLOW, &format!("{unanswered} bytes unread"));
            return;
        }
        let probe = self.in_flight.probe(Instant::now());
        self.queue(ws::Message::Ping(Bytes::copy_from_slice(&probe)), ctx);
        // Chat clients see pings (browsers answer them); only y-websocket needs a frame.
        if !self.is_chat() && self.last_sent.elapsed() >= self.config.heartbeat_interval {
            self.send_frame(Bytes::from_static(KEEPALIVE_FRAME), ctx);
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::get().connections.inc();
        self.connections.fetch_add(1, Ordering::Relaxed);
        if let Some(close) = self.refuse {
            self.close(ctx, close, "");
            return;
        }
        ctx.run_interval(self.config.heartbeat_interval, Self::heartbeat);
        if self.is_chat() {
            return; // joins on the client's `join` request
        }
        let (session, access) = (self.id, self.access);
        self.join(
            move |outbox| Join {
                session,
                access,
                outbox,
            },
            ctx,
        );
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        // Still in the room only if the connection failed without a close handshake.
        if let Some(room) = self.room.take() {
            room.do_send(Leave { session: self.id });
        }
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::get().connections.dec();
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Handler<Outbound> for Session {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        if let Some(outbox) = &self.outbox {
            outbox.taken(&msg);
        }
        if self.closing {
            return; // the close frame was the last thing this client gets
        }
        if matches!(msg, Outbound::Frame(_) | Outbound::Event(_)) {
            // Cut when what the client left unread for longer than the grace is over the
            // limit, or when its unread bytes pass the hard bound whatever their age.
            let max = self.config.max_outbox_bytes;
            let unread = self.in_flight.unread();
            let overdue = self.in_flight.overdue(Instant::now(), SLOW_GRACE);
            if overdue > max || unread > max.saturating_mul(HARD_FACTOR) {
                info!(room = %self.room_name, session = self.id.0, unread, "closing session: client too slow");
                metrics::get().slow_consumers.inc();
                self.close(ctx, close::TOO_SLOW, &format!("{unread} bytes unread"));
                return;
            }
        }
        match msg {
            Outbound::Frame(frame) => self.send_frame(frame, ctx),
            Outbound::Event(event) => self.send_event(event, ctx),
            Outbound::Close(close, detail) => {
                self.room = None; // the room has already forgotten this session
                self.close(ctx, close, &detail);
            }
        }
    }
}

impl StreamHandler<Result<Frame, ProtocolError>> for Session {
    fn handle(&mut self, item: Result<Frame, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        let frame = match item {
            Ok(frame) => frame,
            Err(ProtocolError::Overflow) => {
                self.close(ctx, close::MESSAGE_TOO_BIG, "");
                return;
            }
            Err(ProtocolError::Io(e)) => {
                debug!(session = self.id.0, error = %e, "connection lost while reading");
                ctx.stop();
                return;
            }
            Err(e) => {
                info!(session = self.id.0, error = %e, "closing session: WebSocket protocol error");
                self.close(ctx, close::MALFORMED_MESSAGE, &e.to_string());
                return;
            }
        };
        if self.closing {
            // Between our close frame and the client's, everything else is dropped.
            if let Frame::Close(reason) = frame {
                self.on_close(reason, ctx);
            }
            return;
        }
        match frame {
            Frame::Binary(frame) => self.receive(frame, ctx),
            Frame::Continuation(item) => self.on_fragment(item, ctx),
            Frame::Text(text) if self.is_chat() => match std::str::from_utf8(&text) {
                Ok(text) => self.receive_text(text, ctx),
                Err(_) => self.close(ctx, close::MALFORMED_MESSAGE, "text is not UTF-8"),
            },
            Frame::Text(_) => self.close(ctx, close::UNSUPPORTED_DATA, ""),
            Frame::Ping(payload) => self.queue(ws::Message::Pong(payload), ctx),
            Frame::Pong(payload) => self.in_flight.answered(&payload),
            Frame::Close(reason) => self.on_close(reason, ctx),
        }
    }

    /// The client closed its side or sent a broken frame: nothing more will be read. The
    /// session leaves its room and stops once what is queued (a close frame, an ack) is
    /// written, or after [`CLOSE_TIMEOUT`].
    fn finished(&mut self, ctx: &mut Self::Context) {
        if !self.closing {
            self.begin_closing(ctx);
        }
        self.stop_when_flushed = true;
        self.flush(ctx);
    }
}
