//! Starting a session: the [`SessionPlan`] the HTTP edge fills in while it checks the
//! upgrade request (room, grant, protocol, the thread [`placement`](super::placement)
//! picks), and its `start`, which moves the upgraded socket to that thread if need be and
//! spawns the session's task there. Nothing here reads or writes a frame.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Addr, ArbiterHandle};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::warn;

use super::chat::ChatSide;
use super::limits::{InFlight, TokenBucket};
use super::placement::{Place, Seat, SessionThreads};
use super::socket::{Connection, FrameReader, FrameWriter};
use super::{clock, task, Protocol, Session, SessionConfig, NEXT_SESSION};
use crate::auth::{Access, Authenticator, Grant};
use crate::metrics;
use crate::protocol::close::{self, Close};
use crate::registry::Registry;
use crate::room::{RoomName, SessionId};

/// Everything a session needs but its socket: made by the HTTP edge while it checks the
/// upgrade request, started on the socket once the handshake response is written.
pub struct SessionPlan {
    room_name: RoomName,
    access: Access,
    /// Verifies a chat client's `refresh` token.
    auth: Arc<Authenticator>,
    /// How long the session may live on its token (None: the server is open).
    expires_in: Option<Duration>,
    registry: Arc<Addr<Registry>>,
    config: Arc<SessionConfig>,
    connections: Arc<AtomicUsize>,
    shutdown: watch::Receiver<bool>,
    refuse: Option<Close>,
    protocol: Protocol,
    /// The session's place in its room's count ([`placement`]), held for its life.
    seat: Option<Seat>,
    /// Its room's thread, when it should move there to start.
    move_to: Option<ArbiterHandle>,
}

impl SessionPlan {
    /// A y-websocket session for `room_name` under `grant`; it joins the room when
    /// started, closes with "going away" when `shutdown` turns true, and with "token
    /// expired" when the grant runs out.
    pub fn new(
        room_name: RoomName,
        grant: &Grant,
        auth: Arc<Authenticator>,
        registry: Arc<Addr<Registry>>,
        config: Arc<SessionConfig>,
        connections: Arc<AtomicUsize>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            room_name,
            access: grant.access,
            auth,
            expires_in: grant.remaining(),
            registry,
            config,
            connections,
            shutdown,
            refuse: None,
            protocol: Protocol::Yjs,
            seat: None,
            move_to: None,
        }
    }

    /// Runs the session on the thread `threads` picks for it ([`placement`]).
    pub fn placed(mut self, threads: &Arc<SessionThreads>) -> Self {
        let (seat, place) = threads.seat(&self.room_name);
        self.seat = seat;
        self.move_to = match place {
            Place::Here => None,
            Place::Move(thread) => Some(thread),
        };
        self
    }

    /// Makes the session close with `close` right after the upgrade (the node is full).
    pub fn refusing(mut self, close: Close) -> Self {
        self.refuse = Some(close);
        self
    }

    /// Makes this a chat-stream session (JSON text frames, joined on `join`).
    pub fn chat(mut self, subject: Option<String>, info: Option<Value>) -> Self {
        self.protocol = Protocol::Chat(Box::new(ChatSide {
            auth: Arc::clone(&self.auth),
            subject,
            info,
            joined: false,
        }));
        self
    }

    /// Starts the session on `io`, the upgraded connection; `pending` holds bytes the
    /// client sent right behind its handshake request.
    pub fn start(mut self, io: TcpStream, pending: &[u8]) {
        let Some(thread) = self.move_to.take().filter(ArbiterHandle::alive) else {
            // Nowhere to move (or the room's thread has just stopped): start here.
            return self.start_here(io, pending);
        };
        // Off this thread's poller, onto the room's: the socket stays open and
        // non-blocking, and nothing is read from it in between.
        let io = match io.into_std() {
            Ok(io) => io,
            Err(e) => {
                warn!(room = %self.room_name, error = %e, "could not hand a session's socket to its room's thread");
                return;
            }
        };
        let pending = pending.to_vec();
        let room = self.room_name.clone();
        let spawned = thread.spawn(async move {
            match TcpStream::from_std(io) {
                Ok(io) => {
                    metrics::get().sessions_moved.inc();
                    self.start_here(io, &pending);
                }
                Err(e) => {
                    warn!(room = %self.room_name, error = %e, "could not take a session's socket on its room's thread");
                }
            }
        });
        if !spawned {
            warn!(room = %room, "a session's room thread has stopped; its connection is dropped");
        }
    }

    /// Starts the session on this thread.
    fn start_here(self, io: TcpStream, pending: &[u8]) {
        let connection = Connection::new(io);
        let reader = FrameReader::new(
            Rc::clone(&connection),
            pending,
            self.config.max_message_bytes,
        );
        let now = Instant::now();
        let rate = (self.config.max_messages_per_sec > 0).then(|| {
            let per_sec = f64::from(self.config.max_messages_per_sec);
            TokenBucket::new(per_sec, (2.0 * per_sec).max(10.0), now)
        });
        let id = SessionId(NEXT_SESSION.fetch_add(1, Ordering::Relaxed));
        // The thread's clock ticks the heartbeat and brings the shutdown to every session,
        // joined to a room or not.
        let signals = Rc::new(clock::Signals::default());
        let every = self.config.heartbeat_interval;
        let refuse = match clock::join(id, Rc::downgrade(&signals), every, &self.shutdown) {
            true => self.refuse,
            false => Some(close::GOING_AWAY),
        };
        let (sender, inbox) = crate::room::outbox(self.config.max_outbox_bytes);
        let session = Session {
            id,
            room_name: self.room_name,
            access: self.access,
            registry: self.registry,
            room: None,
            joining: None,
            sender: Some(sender),
            config: self.config,
            last_heard: now,
            sent_since_tick: true,
            expires_at: self.expires_in.map(|left| now + left),
            slow_check_at: None,
            refill_at: None,
            close_by: None,
            partial: None,
            in_flight: InFlight::default(),
            rate,
            last_throttled: None,
            connections: self.connections,
            protocol: self.protocol,
            _seat: self.seat,
            writer: FrameWriter::new(connection),
            flush_scheduled: false,
            awaiting_writable: false,
            closing: false,
            stop_when_flushed: false,
            stopped: false,
        };
        actix::spawn(task::Task::new(session, refuse, reader, inbox, signals));
    }
}
