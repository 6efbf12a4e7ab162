//! One session per WebSocket connection: `/yjs/{room}` (binary y-websocket frames) or
//! `/rooms/{room}/ws` (the chat stream's JSON text frames). It owns the socket's concerns
//! only (frame reassembly and size limits, decoding, heartbeat and keepalive, the close
//! handshake) and forwards each decoded message to its room. It holds no document or
//! stream state.
//!
//! The HTTP edge checks the upgrade request and hands over the bare TCP stream
//! ([`SessionPlan::start`], in [`plan`]), which the session takes to the thread
//! [`placement`] picks. A session is a plain task ([`task`]), not an actor: rooms are
//! the actors, and a session's only inbox is the channel its room sends to (an actor's
//! context and mailbox would double what an idle connection costs). Its handlers here
//! never wait; reading and writing frames is in [`socket`]. A y-websocket session joins
//! its room when it starts; a chat session when its client sends `join`. Leave is sent
//! when the session begins to close or stops, so a session can never be forgotten by its
//! room. Flow control (message rate, unread outbox bytes) is in [`flow`], its arithmetic
//! in [`limits`]; a chat client's requests (`join`, `refresh`) are in [`chat`].

mod chat;
mod clock;
mod flow;
mod framing;
mod limits;
pub mod placement;
mod plan;
pub use plan::SessionPlan;
mod socket;
pub mod sse;
mod task;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use actix_http::ws::{self, Frame, Item};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tracing::{debug, info, warn};

use crate::auth::Access;
use crate::metrics;
use crate::protocol::close::{self, Close};
use crate::protocol::ysync::{DecodeError, Message as SyncMessage};
use crate::registry::{send_to_room, Registry};
use crate::room::{
    Join, Leave, Outbound, Outbox, Receive, Room, RoomAddr, RoomError, RoomName, SessionId,
    HARD_FACTOR,
};
use chat::ChatSide;
use limits::{InFlight, TokenBucket};
use placement::Seat;
use socket::{FrameWriter, Pause, ReadError};

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
    /// Past it the client is throttled (not read until its tokens refill), never closed.
    pub max_messages_per_sec: u32,
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Which protocol the socket speaks.
enum Protocol {
    /// y-websocket: binary frames, joined on start.
    Yjs,
    /// The chat stream: JSON text frames, joined on the client's `join` (boxed: it is
    /// the larger side, and most sessions are y-websocket ones).
    Chat(Box<ChatSide>),
}

/// A session: the state its task ([`Session::run`]) works on. Its handlers never wait:
/// what an actor would schedule on its context (a timer, a flush, a stop) they note in
/// fields, which the task's loop acts on.
struct Session {
    id: SessionId,
    room_name: RoomName,
    access: Access,
    registry: Arc<Addr<Registry>>,
    room: Option<RoomAddr>,
    /// The room's answer to a join under way: nothing else is handled until it comes
    /// (frames and messages wait), so nothing reaches a room the session is not in.
    joining: Option<Joining>,
    /// Where the room will send this session's frames, until a join hands it over.
    sender: Option<Outbox>,
    config: Arc<SessionConfig>,
    last_heard: Instant,
    /// Something went to the client since the last heartbeat tick (a y-websocket client
    /// that got nothing for a tick is sent a keepalive frame). A flag, not a time: this
    /// is set on every delivery, and a clock read per delivery showed in profiles.
    sent_since_tick: bool,
    /// When the token expires: the session closes (4010).
    expires_at: Option<Instant>,
    /// When to look at the client's unread bytes again (they were over the limit).
    slow_check_at: Option<Instant>,
    /// When the message-rate bucket holds a token again (reading is paused until then).
    refill_at: Option<Instant>,
    /// When a close handshake under way is given up and the connection dropped.
    close_by: Option<Instant>,
    /// A fragmented message being reassembled (boxed: rare, and every session has the
    /// field).
    partial: Option<Box<BytesMut>>,
    /// Bytes sent and not yet read by the client.
    in_flight: InFlight,
    /// The message-rate limit, if any.
    rate: Option<TokenBucket>,
    /// When reading was last paused for the message rate.
    last_throttled: Option<Instant>,
    /// Live sessions on this node (for the connection limit).
    connections: Arc<AtomicUsize>,
    protocol: Protocol,
    /// Its place in its room's session count, given back when the session ends.
    _seat: Option<Seat>,
    /// Frames queued for the client.
    writer: FrameWriter,
    /// A flush of the queued frames is scheduled (after the messages now being handled).
    flush_scheduled: bool,
    /// The socket is full; a flush runs when it can take more.
    awaiting_writable: bool,
    /// A close frame was sent or received: nothing more is read or sent but the close.
    closing: bool,
    /// Stop as soon as the queued frames are written (the close handshake is done).
    stop_when_flushed: bool,
    /// The session is over: its task ends after this turn.
    stopped: bool,
}

impl Session {
    fn is_chat(&self) -> bool {
        matches!(self.protocol, Protocol::Chat(_))
    }

    /// Sends one frame, counting it, and probes the client's progress when due.
    fn send_frame(&mut self, frame: Bytes) {
        self.in_flight.sent(frame.len());
        self.queue(ws::Message::Binary(frame));
        self.sent();
    }

    /// Sends one text frame (a chat event), counting it like [`Self::send_frame`].
    fn send_text(&mut self, text: ByteString) {
        self.in_flight.sent(text.len());
        self.queue(ws::Message::Text(text));
        self.sent();
    }

    /// After a send: note that something went out this tick, probe the client's progress
    /// when due, and make sure the outbox rule is looked at again on time if the client is
    /// behind.
    fn sent(&mut self) {
        self.sent_since_tick = true;
        let every = (self.config.max_outbox_bytes / 8).max(MIN_PROBE_BYTES);
        if let Some(probe) = self.in_flight.probe_due(every, Instant::now) {
            self.queue(ws::Message::Ping(Bytes::copy_from_slice(&probe)));
        }
        self.schedule_slow_check();
    }

    /// Queues a frame; the task flushes everything queued once it has handled what is
    /// ready (one write for a burst, not one per frame).
    fn queue(&mut self, message: ws::Message) {
        let bound = self.write_bound();
        if self.writer.queued() > bound {
            // A backstop: the unread-bytes check and paused reading should cut a client
            // long before its queue gets here.
            if !self.stopped {
                info!(room = %self.room_name, session = self.id.0, bound, "dropping session: write queue over its bound");
                metrics::get().slow_consumers.inc();
                self.stopped = true;
            }
            return;
        }
        self.writer.queue(message);
        if self.writer.queued() > PAUSE_READING_AT {
            self.writer.gate().pause(Pause::Backlog);
        }
        self.flush_scheduled = true;
    }

    /// Writes the queued frames the socket takes now, and waits for it to take the rest.
    fn flush(&mut self) {
        if self.awaiting_writable {
            return;
        }
        let written = self.writer.write_now();
        if self.writer.queued() <= PAUSE_READING_AT {
            self.writer.gate().resume(Pause::Backlog);
        }
        match written {
            Ok(true) if self.stop_when_flushed => self.stopped = true,
            Ok(true) => {}
            // The task waits for the socket to take more, then flushes again.
            Ok(false) => self.awaiting_writable = true,
            Err(e) => self.lost(&e),
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
    fn lost(&mut self, error: &std::io::Error) {
        debug!(session = self.id.0, %error, "connection lost");
        self.stopped = true;
    }

    /// Begins the close handshake: sends a close frame with `close` and `detail`, leaves
    /// the room, and stops once the client answers (or after [`CLOSE_TIMEOUT`]).
    fn close(&mut self, close: Close, detail: &str) {
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
        self.queue(ws::Message::Close(Some(ws::CloseReason {
            code: ws::CloseCode::from(close.code),
            description: Some(description),
        })));
        self.begin_closing();
    }

    /// Enters the closing state: the room is left at once, and the session stops within
    /// [`CLOSE_TIMEOUT`] even if the client never answers or never reads.
    fn begin_closing(&mut self) {
        self.closing = true;
        self.partial = None;
        if let Some(room) = self.room.take() {
            room.do_send(Leave { session: self.id });
        }
        self.close_by = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    /// The client's close frame: answered with the same code (if this side had not closed
    /// first), then the connection ends once that answer is written.
    fn on_close(&mut self, reason: Option<ws::CloseReason>) {
        if !self.closing {
            self.queue(ws::Message::Close(reason));
            self.begin_closing();
        }
        self.stop_when_flushed = true;
        self.flush();
    }

    /// Decodes one whole binary message and hands it to the room.
    fn receive(&mut self, frame: Bytes) {
        if self.is_chat() {
            self.close(close::TEXT_ONLY, "the chat protocol is JSON");
            return;
        }
        self.throttle(frame.len());
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
                self.close(code, &e.to_string());
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

    /// Closes the session (4010) `left` from now, when its token expires, replacing any
    /// earlier expiry (a chat `refresh` moves it).
    fn arm_expiry(&mut self, left: Duration) {
        self.expires_at = Some(Instant::now() + left);
    }

    /// The token expired.
    fn expire(&mut self) {
        self.expires_at = None;
        info!(room = %self.room_name, session = self.id.0, "closing session: token expired");
        metrics::get().tokens_expired.inc();
        self.close(close::TOKEN_EXPIRED, "");
    }

    /// Sends the room the join `make` builds (given this session's outbox). The task
    /// handles nothing else (frames wait) until the room has answered.
    fn join<M>(&mut self, make: impl Fn(Outbox) -> M + 'static)
    where
        M: Message<Result = Result<RoomAddr, RoomError>> + Send + 'static,
        Room: Handler<M>,
        <Room as Actor>::Context: ToEnvelope<Room, M>,
    {
        let Some(outbox) = self.sender.take() else {
            return; // joined already (a session joins once)
        };
        let (registry, name) = (Arc::clone(&self.registry), self.room_name.clone());
        self.joining = Some(Box::pin(async move {
            send_to_room(&registry, &name, || make(outbox.clone())).await?
        }));
    }

    /// The room's answer to a join (y-websocket or chat).
    fn joined(&mut self, result: Result<RoomAddr, RoomError>) {
        match result {
            Ok(room) => self.room = Some(room),
            Err(e) => {
                if !matches!(e, RoomError::Full { .. }) {
                    warn!(room = %self.room_name, error = %e, "could not join room");
                }
                self.close(e.close(), &e.public_message());
            }
        }
    }

    fn on_fragment(&mut self, item: Item) {
        let (chunk, first, last) = match item {
            Item::FirstBinary(b) if !self.is_chat() => (b, true, false),
            Item::FirstText(b) if self.is_chat() => (b, true, false),
            Item::FirstBinary(_) | Item::FirstText(_) => {
                let close = if self.is_chat() {
                    close::TEXT_ONLY
                } else {
                    close::UNSUPPORTED_DATA
                };
                self.close(close, "");
                return;
            }
            Item::Continue(b) => (b, false, false),
            Item::Last(b) => (b, false, true),
        };
        if !last {
            // Each fragment costs a token too (the whole message is counted at its end),
            // so a flood of empty fragments is slowed like any other.
            self.throttle(0);
        }
        if first {
            self.partial = Some(Box::default());
        }
        let Some(buffer) = self.partial.as_mut() else {
            self.close(
                close::MALFORMED_MESSAGE,
                "continuation without a first frame",
            );
            return;
        };
        if buffer.len() + chunk.len() > self.config.max_message_bytes {
            self.close(close::MESSAGE_TOO_BIG, "");
            return;
        }
        buffer.extend_from_slice(&chunk);
        if last {
            let whole = self.partial.take().map_or_else(Bytes::new, |b| b.freeze());
            if !self.is_chat() {
                self.receive(whole);
                return;
            }
            match std::str::from_utf8(&whole) {
                Ok(text) => self.receive_text(text),
                Err(_) => self.close(close::MALFORMED_MESSAGE, "text is not UTF-8"),
            }
        }
    }

    fn heartbeat(&mut self) {
        if self.closing {
            return;
        }
        if self.last_heard.elapsed() > self.config.heartbeat_timeout {
            debug!(session = self.id.0, "heartbeat timeout");
            self.close(close::HEARTBEAT_TIMEOUT, "");
            return;
        }
        if self.cut_if_too_slow() {
            return;
        }
        // A client that talks but leaves our pings unanswered is not reading (unless it
        // was throttled meanwhile: then its pongs wait behind its own frames).
        let timeout = self.config.heartbeat_timeout;
        let unanswered = self.in_flight.overdue(Instant::now(), timeout);
        if unanswered > 0 && !self.throttled_within(timeout) {
            self.cut_slow("pings unanswered", unanswered);
            return;
        }
        let probe = self.in_flight.probe(Instant::now());
        self.queue(ws::Message::Ping(Bytes::copy_from_slice(&probe)));
        // Chat clients see pings (browsers answer them); only y-websocket needs a frame.
        if !self.is_chat() && !self.sent_since_tick {
            self.send_frame(Bytes::from_static(KEEPALIVE_FRAME));
        }
        self.sent_since_tick = false;
    }
}

/// A join under way: the room's answer to come.
type Joining = Pin<Box<dyn Future<Output = Result<RoomAddr, RoomError>>>>;

impl Session {
    /// The session begins: it counts itself, and joins its room (y-websocket) or closes
    /// at once when it was refused.
    fn started(&mut self, refuse: Option<Close>) {
        metrics::get().connections.inc();
        self.connections.fetch_add(1, Ordering::Relaxed);
        if let Some(close) = refuse {
            self.close(close, "");
            return;
        }
        if self.is_chat() {
            return; // joins on the client's `join` request
        }
        let (session, access) = (self.id, self.access);
        self.join(move |outbox| Join {
            session,
            access,
            outbox,
        });
    }

    /// The session ends: it leaves its room if it is still in it (the connection failed
    /// without a close handshake) and stops counting itself.
    fn finish(&mut self) {
        if let Some(room) = self.room.take() {
            room.do_send(Leave { session: self.id });
        }
        clock::leave(self.id);
        metrics::get().connections.dec();
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// What the room sent: a frame or event for the client, or the room's close.
    fn on_outbound(&mut self, msg: Outbound) {
        if self.closing {
            return; // the close frame was the last thing this client gets
        }
        if matches!(
            msg,
            Outbound::Frame(_) | Outbound::Event(_) | Outbound::Events(_)
        ) && self.cut_if_too_slow()
        {
            return;
        }
        match msg {
            Outbound::Frame(frame) => self.send_frame(frame),
            Outbound::Event(event) => self.send_event(event),
            Outbound::Events(events) => {
                for event in events.iter() {
                    self.send_event(event.clone());
                }
            }
            Outbound::Close(close, detail) => {
                self.room = None; // the room has already forgotten this session
                if close == close::TOO_SLOW {
                    self.writer.discard_unsent(); // the close frame comes next
                }
                self.close(close, &detail);
            }
        }
    }

    /// A frame from the client, or why none could be read.
    fn on_frame(&mut self, item: Result<Frame, ReadError>) {
        self.last_heard = Instant::now();
        let frame = match item {
            Ok(frame) => frame,
            Err(ReadError::TooBig(e)) => {
                info!(session = self.id.0, error = %e, "closing session: message too big");
                metrics::get().protocol_errors.inc();
                self.close(close::MESSAGE_TOO_BIG, &e.to_string());
                return;
            }
            Err(ReadError::Io(e)) => {
                debug!(session = self.id.0, error = %e, "connection lost while reading");
                self.stopped = true;
                return;
            }
            Err(ReadError::Protocol(e)) => {
                info!(session = self.id.0, error = %e, "closing session: WebSocket protocol error");
                metrics::get().protocol_errors.inc();
                self.close(close::PROTOCOL_ERROR, &e);
                return;
            }
        };
        if self.closing {
            // Between our close frame and the client's, everything else is dropped.
            if let Frame::Close(reason) = frame {
                self.on_close(reason);
            }
            return;
        }
        match frame {
            Frame::Binary(frame) => self.receive(frame),
            Frame::Continuation(item) => self.on_fragment(item),
            Frame::Text(text) if self.is_chat() => match std::str::from_utf8(&text) {
                Ok(text) => self.receive_text(text),
                Err(_) => self.close(close::MALFORMED_MESSAGE, "text is not UTF-8"),
            },
            Frame::Text(_) => self.close(close::UNSUPPORTED_DATA, ""),
            Frame::Ping(payload) => {
                self.throttle(0); // a ping flood is slowed like any other
                self.queue(ws::Message::Pong(payload));
            }
            Frame::Pong(payload) => self.in_flight.answered(&payload),
            Frame::Close(reason) => self.on_close(reason),
        }
    }

    /// The client closed its side or sent a broken frame: nothing more will be read. The
    /// session leaves its room and stops once what is queued (a close frame, an ack) is
    /// written, or after [`CLOSE_TIMEOUT`].
    fn on_read_end(&mut self) {
        if !self.closing {
            self.begin_closing();
        }
        self.stop_when_flushed = true;
        self.flush();
    }
}
