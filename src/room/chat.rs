//! The room's chat stream: sequencing, durability-before-delivery, idempotent publishing,
//! resume and history, presence and typing. It is part of the room actor (one mailbox, so
//! a join's replay and the live messages after it can neither overlap nor leave a gap) and
//! shares the room's durability queue: a message is appended to the store, and delivered
//! and acknowledged only once a flush covers it.
//!
//! Decisions that need no actor (resume, the idempotency window, presence, the JSON wire
//! format) live in [`crate::stream`], and the reads over the store (loading, replay,
//! history, the retention scan) in [`super::history`]; this module wires them to the room.
//! Handlers that read from the store run as atomic actor futures: the room takes no other
//! message until the read is done, so a join's replay and the live messages after it can
//! neither overlap nor leave a gap, and no thread blocks on a database round trip. It
//! never touches a socket: members are [`Recipient`]s of [`Outbound::Event`].

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::fut::{self, LocalBoxActorFuture};
use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::history::{self, PageRequest, StreamView};
use super::members::{ChatRole, Connection, Role};
use super::{
    AfterFlush, DurableReply, Outbound, Outbox, Room, RoomAddr, RoomError, SessionId, Unavailable,
};
use crate::auth::{Access, ANONYMOUS_PREFIX};
use crate::metrics;
use crate::protocol::close;
use crate::stream::wire::{self, ErrorCode, Event, Page, Request};
use crate::stream::{
    new_epoch, now_millis, Idempotency, IdempotencyKey, Member, Presence, ResumeFrom, StreamMeta,
};

pub use crate::stream::wire::MAX_PAGE;
/// Messages in a page when the client names no limit, and in the "latest page" sent to a
/// client that could not be recovered.
pub const DEFAULT_PAGE: usize = 50;
/// Most messages replayed on join; a client further behind is told it was not recovered.
pub(super) const MAX_REPLAY: usize = 10_000;

/// Chat stream knobs (from the configuration).
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Keep at most this many messages per room.
    pub retention_messages: u64,
    /// Drop messages older than this.
    pub retention_age: Duration,
    /// Largest message body accepted, in bytes of compact JSON.
    pub max_body_bytes: usize,
    /// A typing/status state expires after this long unless set again.
    pub typing_ttl: Duration,
    /// Remember this many client message ids per room for idempotent retries.
    pub idempotency_window: usize,
    /// Most bytes replayed on join (kept under the session's outbox limit).
    pub max_replay_bytes: u64,
}

/// A WebSocket or SSE connection joins the room's stream.
#[derive(Message)]
#[rtype(result = "Result<RoomAddr, RoomError>")]
pub struct ChatJoin {
    /// The connection.
    pub session: SessionId,
    /// What it may do.
    pub access: Access,
    /// The token's subject; `None` for an anonymous connection.
    pub subject: Option<String>,
    /// Public presence info from the token.
    pub info: Option<Value>,
    /// Where the room sends its events.
    pub outbox: Outbox,
    /// Where to resume from, if the client asked to.
    pub resume: Option<ResumeFrom>,
}

/// A request from a joined WebSocket member (anything but `join`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChatRequest {
    /// The member.
    pub session: SessionId,
    /// What it asked.
    pub request: Request,
}

/// Publish over HTTP; the reply (the `ack` JSON) arrives once the message is durable.
#[derive(Message)]
#[rtype(result = "Result<DurableReply, RoomError>")]
pub struct HttpPublish {
    /// The token's subject; `None` when anonymous.
    pub subject: Option<String>,
    /// The `Idempotency-Key`, if any.
    pub id: Option<String>,
    /// The message body.
    pub body: Value,
}

/// Read messages after a position over HTTP (history and long-poll).
#[derive(Message)]
#[rtype(result = "Result<ReadReply, RoomError>")]
pub struct ReadMessages {
    /// Read after this position (`None`: the latest page).
    pub from: Option<ResumeFrom>,
    /// Page size.
    pub limit: usize,
    /// If nothing is newer, answer [`ReadReply::Wait`] instead of an empty page.
    pub wait: bool,
}

/// The answer to [`ReadMessages`].
pub enum ReadReply {
    /// The page as JSON.
    Page(Bytes),
    /// Nothing newer yet: this resolves when a message is delivered (then read again).
    Wait(oneshot::Receiver<()>),
}

/// What to do with a chat event once the writes before it are durable.
pub(super) enum ChatAction {
    /// Deliver message `seq` to every member.
    Deliver { seq: u64, event: Event },
    /// Send one member an event (its ack).
    Send { to: SessionId, event: Event },
}

impl ChatAction {
    /// The member this action sends to alone (an ack's publisher).
    pub(super) fn to(&self) -> Option<SessionId> {
        match self {
            ChatAction::Send { to, .. } => Some(*to),
            ChatAction::Deliver { .. } => None,
        }
    }
}

/// A room's loaded chat stream.
pub(super) struct Chat {
    meta: StreamMeta,
    /// Highest seq delivered to members; replays and pages never go past it.
    delivered: u64,
    /// Timestamp of the oldest stored message, for retention by age.
    oldest_ts: Option<u64>,
    /// Messages up to here are removed from the store. Retention by count moves
    /// `meta.first_seq` on every publish but deletes in batches (one delete per message
    /// made publishing 4× slower); readers never see below `meta.first_seq`.
    removed_upto: u64,
    idempotency: Idempotency,
    presence: Presence<SessionId>,
    /// Long-polls waiting for the next delivered message.
    waiters: Vec<oneshot::Sender<()>>,
    /// `oldest_ts` is unknown since a trim: the retention scan finds it again.
    oldest_unknown: bool,
    /// A retention scan is under way.
    scanning: bool,
}

impl Chat {
    /// Whether the stream keeps the room active.
    pub(super) fn is_idle(&self) -> bool {
        self.waiters.iter().all(|w| w.is_closed()) && !self.scanning
    }

    fn view(&self) -> StreamView {
        StreamView {
            meta: self.meta.clone(),
            delivered: self.delivered,
        }
    }
}

/// An actor future of the room's.
type RoomFuture<T> = LocalBoxActorFuture<Room, T>;

fn done<T: 'static>(value: T) -> RoomFuture<T> {
    Box::pin(fut::ready(value))
}

/// This connection's id as clients see it: unique across restarts of the process.
fn conn_id(session: SessionId) -> String {
    static NODE: OnceLock<String> = OnceLock::new();
    let node = NODE.get_or_init(|| new_epoch()[8..].to_owned());
    format!("{node}-{}", session.0)
}

impl Room {
    /// An actor future that resolves once the chat stream is loaded (or created): at once
    /// if it is. Run it atomically (`ctx.wait`, [`AtomicResponse`]): the stream's first
    /// load must finish before anything else touches it.
    fn chat_loaded(&mut self) -> RoomFuture<Result<(), RoomError>> {
        if self.chat.is_some() {
            return done(Ok(()));
        }
        let config = self.config.stream.clone();
        let load = history::load(
            Arc::clone(&self.store),
            self.name.clone(),
            config.clone(),
            now_millis(),
        );
        Box::pin(load.into_actor(self).map(move |loaded, room, ctx| {
            let loaded = loaded?;
            if room.chat.is_some() {
                return Ok(());
            }
            if room.stopping {
                return Err(RoomError::Unavailable(Unavailable::Stopping));
            }
            if loaded.created {
                if let Err(e) = room
                    .store
                    .create_stream(&room.name, room.epoch, &loaded.meta.epoch)
                {
                    room.fail(e.clone(), "creating the chat stream", ctx);
                    return Err(e.into());
                }
                room.commits.record_write();
            }
            room.chat = Some(Box::new(Chat {
                delivered: loaded.meta.last_seq,
                meta: loaded.meta,
                oldest_ts: loaded.oldest_ts,
                removed_upto: loaded.removed_upto,
                idempotency: loaded.idempotency,
                presence: Presence::new(config.typing_ttl),
                waiters: Vec::new(),
                oldest_unknown: false,
                scanning: false,
            }));
            // Messages may have aged out while the room was inactive.
            if let Some(upto) = loaded.expired_upto {
                room.trim_to(upto, ctx);
            }
            Ok(())
        }))
    }

    /// The loaded chat stream (see [`Room::chat_loaded`]).
    fn chat(&mut self) -> Result<&mut Chat, RoomError> {
        self.chat
            .as_deref_mut()
            .ok_or(RoomError::Unavailable(Unavailable::Failed))
    }

    /// Assigns the next seq, stores the message and queues its delivery; the returned seq
    /// and whether it is a retry of an earlier publish (then nothing new is stored).
    fn publish(
        &mut self,
        sender: &str,
        key_subject: &str,
        id: Option<&str>,
        body: &Value,
        ctx: &mut Context<Self>,
    ) -> Result<(u64, bool), RoomError> {
        let limit = self.config.stream.max_body_bytes;
        let size = serde_json::to_vec(body).map_or(usize::MAX, |b| b.len());
        if size > limit {
            return Err(RoomError::BodyTooLarge { limit });
        }
        let key: Option<IdempotencyKey> = id.map(|id| (key_subject.to_owned(), id.to_owned()));
        let chat = self.chat()?;
        if let Some(seq) = key.as_ref().and_then(|k| chat.idempotency.get(k)) {
            metrics::get().chat_duplicates.inc();
            return Ok((seq, true));
        }
        let seq = chat.meta.last_seq + 1;
        let ts = now_millis();
        let record = wire::message_record(seq, ts, sender, id, body);
        if let Err(e) =
            self.store
                .append_message(&self.name, self.epoch, seq, record.as_bytes().to_vec())
        {
            self.fail(e.clone(), "appending a message", ctx);
            return Err(e.into());
        }
        self.commits.record_write();
        let retention = self.config.stream.retention_messages;
        let chat = self.chat()?;
        chat.meta.last_seq = seq;
        chat.oldest_ts.get_or_insert(ts);
        if let Some(key) = key {
            chat.idempotency.insert(key, seq);
        }
        metrics::get().chat_published.inc();
        let event = Event::message(seq, record);
        self.after_durable(AfterFlush::Chat(ChatAction::Deliver { seq, event }), ctx);
        let chat = self.chat()?;
        chat.meta.first_seq = chat.meta.first_seq.max((seq + 1).saturating_sub(retention));
        let unremoved = chat.meta.first_seq - 1 - chat.removed_upto;
        let first = chat.meta.first_seq;
        if unremoved >= (retention / 64).clamp(1, 1024) {
            self.trim_to(first - 1, ctx);
        }
        Ok((seq, false))
    }

    /// Drops every stored message up to `upto` (retention). The oldest timestamp kept is
    /// found again by the next retention scan.
    fn trim_to(&mut self, upto: u64, ctx: &mut Context<Self>) {
        if let Err(e) = self.store.trim_messages(&self.name, self.epoch, upto) {
            if matches!(e, crate::storage::StoreError::Fenced { .. }) {
                self.fail(e, "trimming the stream", ctx);
            } else {
                warn!(room = %self.name, error = %e, "trimming the stream failed; will retry");
            }
            return;
        }
        self.commits.record_write();
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        chat.meta.first_seq = chat.meta.first_seq.max(upto + 1);
        chat.removed_upto = upto;
        chat.oldest_unknown = true;
    }

    /// Retention by age, expiring typing states, forgetting abandoned long-polls.
    pub(super) fn chat_tick(&mut self, ctx: &mut Context<Self>) {
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        chat.waiters.retain(|w| !w.is_closed());
        let ttl_ms = chat.presence.status_ttl().as_millis() as u64;
        for member in chat.presence.expire(Instant::now()) {
            let event = wire::typing(&member, ttl_ms);
            self.chat_broadcast(&event);
        }
        self.trim_by_age(ctx);
    }

    /// Drops the stored messages older than the retention age: a scan of the oldest few
    /// runs as an actor future beside the room's other work (it changes nothing that
    /// readers rely on until its outcome is applied).
    fn trim_by_age(&mut self, ctx: &mut Context<Self>) {
        let max_age = self.config.stream.retention_age.as_millis() as u64;
        let cutoff = now_millis().saturating_sub(max_age);
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        let due = chat.oldest_unknown || chat.oldest_ts.is_some_and(|ts| ts < cutoff);
        if !due || chat.scanning || self.stopping {
            return;
        }
        chat.scanning = true;
        chat.oldest_unknown = false;
        let first = chat.meta.first_seq;
        let (store, name) = (Arc::clone(&self.store), self.name.clone());
        ctx.spawn(
            async move { history::scan_expired(&*store, &name, first, cutoff).await }
                .into_actor(self)
                .map(move |scanned, room, ctx| {
                    let Some(chat) = room.chat.as_mut() else {
                        return;
                    };
                    chat.scanning = false;
                    match scanned {
                        Ok((expired, oldest)) => {
                            chat.oldest_ts = oldest;
                            if let Some(upto) = expired.filter(|&u| u >= chat.meta.first_seq) {
                                debug!(room = %room.name, upto, "messages expired");
                                room.trim_to(upto, ctx);
                                // The scan read only the oldest few: look again.
                                if let Some(chat) = room.chat.as_mut() {
                                    chat.oldest_unknown = oldest.is_none();
                                    if oldest.is_some() {
                                        chat.oldest_ts = oldest;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            chat.oldest_unknown = true;
                            warn!(room = %room.name, error = %e, "reading the stream for retention failed");
                        }
                    }
                }),
        );
    }

    /// Hands one event to every member.
    fn chat_broadcast(&mut self, event: &Event) {
        self.chat_broadcast_first(event, &[]);
    }

    /// [`Self::chat_broadcast`], to the members in `first` (sorted) before the others.
    fn chat_broadcast_first(&mut self, event: &Event, first: &[SessionId]) {
        let slow = self.members.send_event_to_chats(event, first);
        self.close_slow_sessions(slow);
    }

    fn chat_send(&mut self, to: SessionId, event: Event) {
        if let Some(member) = self.members.chat(&to) {
            if !member.outbox.send(Outbound::Event(event)) {
                self.close_slow_sessions(vec![to]);
            }
        }
    }

    /// Closes a member that stopped taking events (its mailbox stays full) with its limit
    /// queued; false if it is no member. (Called from the room's `close_slow_sessions`.)
    pub(super) fn chat_close_slow(&mut self, id: SessionId) -> bool {
        let Some(member) = self.members.chat(&id) else {
            return false;
        };
        let queued = member.outbox.queued();
        info!(room = %self.name, session = id.0, queued, "closing chat member: client too slow");
        metrics::get().slow_consumers.inc();
        member.outbox.send(Outbound::Close(
            close::TOO_SLOW,
            format!("{queued} bytes queued"),
        ));
        self.chat_leave(id);
        true
    }

    /// Performs a chat action whose writes are now durable.
    pub(super) fn perform_chat(&mut self, action: ChatAction) {
        match action {
            ChatAction::Deliver { seq, event } => self.deliver_messages(vec![(seq, event)], &[]),
            ChatAction::Send { to, event } => self.chat_send(to, event),
        }
    }

    /// Delivers released messages (in seq order) to every member, as one batch each, the
    /// members in `first` (sorted: the publishers about to be acked) before the others.
    pub(super) fn deliver_messages(&mut self, messages: Vec<(u64, Event)>, first: &[SessionId]) {
        let Some(&(last, _)) = messages.last() else {
            return;
        };
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        chat.delivered = chat.delivered.max(last);
        for waiter in chat.waiters.drain(..) {
            let _ = waiter.send(());
        }
        metrics::get()
            .chat_delivered
            .inc_by((self.members.chat_count() * messages.len()) as u64);
        if messages.len() == 1 {
            let (_, event) = &messages[0];
            self.chat_broadcast_first(event, first);
            return;
        }
        metrics::get().chat_batched.inc_by(messages.len() as u64);
        let events: Arc<[Event]> = messages.into_iter().map(|(_, event)| event).collect();
        let slow = self.members.send_events_to_chats(&events, first);
        self.close_slow_sessions(slow);
    }

    /// Adds a member: `joined`, the replay, then (via the mailbox order) live messages.
    fn chat_join(
        &mut self,
        msg: ChatJoin,
        recovered: bool,
        replay: Vec<(u64, ByteString)>,
    ) -> Result<(), RoomError> {
        let conn = conn_id(msg.session);
        let sender = msg
            .subject
            .clone()
            .unwrap_or_else(|| format!("{ANONYMOUS_PREFIX}{conn}"));
        let member = Member {
            conn: conn.clone(),
            subject: sender.clone(),
            info: msg.info,
            status: None,
        };
        let presence_event = wire::presence("join", &member);
        self.chat_broadcast(&presence_event);
        let room = self.name.to_string();
        let chat = self.chat()?;
        chat.presence.join(msg.session, member);
        let members = chat.presence.members();
        let joined = wire::joined(
            &wire::Joined {
                room: &room,
                epoch: &chat.meta.epoch,
                conn: &conn,
                recovered,
                replayed: replay.len(),
                first_seq: chat.meta.first_seq,
                last_seq: chat.delivered,
            },
            &members,
        );
        // A replay larger than the outbox takes would leave a gap: the member is closed
        // (and resumes from what it got) rather than left with a hole.
        let mut queued_all = msg.outbox.send(Outbound::Event(joined));
        for (seq, record) in replay {
            queued_all = queued_all
                && msg
                    .outbox
                    .send(Outbound::Event(Event::message(seq, record)));
        }
        let id = msg.session;
        self.members.insert(
            msg.session,
            Connection {
                outbox: msg.outbox,
                access: msg.access,
                role: Role::Chat(Box::new(ChatRole {
                    key_subject: msg.subject.unwrap_or_default(),
                    sender,
                })),
            },
        );
        metrics::get().chat_members.inc();
        if !queued_all {
            self.close_slow_sessions(vec![id]);
        }
        Ok(())
    }

    /// Removes a member, announcing its departure.
    pub(super) fn chat_leave(&mut self, session: SessionId) {
        if self.members.chat(&session).is_none() {
            return;
        }
        self.members.remove(&session);
        metrics::get().chat_members.dec();
        if self.members.is_empty() {
            self.empty_since = Instant::now();
        }
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        if let Some(member) = chat.presence.leave(&session) {
            self.chat_broadcast(&wire::presence("leave", &member));
        }
    }

    /// Closes every member with `code` (shutdown or failure) and forgets them.
    pub(super) fn chat_close_all(&mut self, code: close::Close, detail: &str) {
        for (_, member) in self.members.drain_kind(true) {
            metrics::get().chat_members.dec();
            member.outbox.send(Outbound::Close(code, detail.to_owned()));
        }
        if let Some(chat) = self.chat.as_mut() {
            chat.waiters.clear();
        }
    }

    fn on_chat_request(&mut self, session: SessionId, request: Request, ctx: &mut Context<Self>) {
        let Some(Connection {
            access,
            role: Role::Chat(member),
            ..
        }) = self.members.chat(&session)
        else {
            return; // closed by the room already; late requests are dropped
        };
        let (access, sender, key_subject) =
            (*access, member.sender.clone(), member.key_subject.clone());
        match request {
            // The session answers refreshes itself; one never reaches the room.
            Request::Refresh { .. } => {}
            Request::Join { .. } => self.chat_send(
                session,
                wire::error(ErrorCode::AlreadyJoined, "this connection has joined", None),
            ),
            Request::Publish { id, body } => {
                if access != Access::Write {
                    let error = wire::error(
                        ErrorCode::ReadOnly,
                        "token grants read-only access",
                        id.as_deref(),
                    );
                    self.chat_send(session, error);
                    return;
                }
                match self.publish(&sender, &key_subject, id.as_deref(), &body, ctx) {
                    Ok((seq, duplicate)) => {
                        let event = wire::ack(id.as_deref(), seq, duplicate);
                        self.after_durable(
                            AfterFlush::Chat(ChatAction::Send { to: session, event }),
                            ctx,
                        );
                    }
                    Err(e) => {
                        let error = wire::error(e.chat_code(), &e.public_message(), id.as_deref());
                        self.chat_send(session, error);
                    }
                }
            }
            Request::Typing { status } => {
                let Some(chat) = self.chat.as_mut() else {
                    return;
                };
                let ttl_ms = chat.presence.status_ttl().as_millis() as u64;
                if let Some(member) = chat.presence.set_status(&session, status, Instant::now()) {
                    let event = wire::typing(member, ttl_ms);
                    self.chat_broadcast(&event);
                }
            }
            Request::History {
                req,
                before,
                after,
                limit,
            } => {
                let request = PageRequest {
                    from: after.map(|since| ResumeFrom { epoch: None, since }),
                    before,
                    limit: limit.unwrap_or(DEFAULT_PAGE),
                    from_oldest: true,
                };
                // The page is read while the room goes on: its reply carries its request
                // id, and it never reads past what was delivered when it was asked.
                let read = self.read_page(request);
                ctx.spawn(read.map(move |page, room, _ctx| {
                    let event = match page {
                        Ok(page) => wire::history(&page, req.as_deref()),
                        Err(e) => {
                            warn!(room = %room.name, error = %e, "history page failed");
                            wire::error(e.chat_code(), &e.public_message(), req.as_deref())
                        }
                    };
                    room.chat_send(session, event);
                }));
            }
        }
    }

    /// Reads a page as of now (the stream's position is taken at once).
    fn read_page(&mut self, request: PageRequest) -> RoomFuture<Result<Page, RoomError>> {
        let view = match self.chat() {
            Ok(chat) => chat.view(),
            Err(e) => return done(Err(e)),
        };
        let read = history::page(Arc::clone(&self.store), self.name.clone(), view, request);
        Box::pin(async move { read.await.map_err(RoomError::from) }.into_actor(self))
    }
}

impl Handler<ChatJoin> for Room {
    type Result = AtomicResponse<Self, Result<RoomAddr, RoomError>>;

    fn handle(&mut self, msg: ChatJoin, _ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return AtomicResponse::new(done(Err(RoomError::Unavailable(Unavailable::Stopping))));
        }
        let max_bytes = self.config.stream.max_replay_bytes;
        AtomicResponse::new(Box::pin(self.chat_loaded().then(
            move |loaded, room, _ctx| -> RoomFuture<Result<RoomAddr, RoomError>> {
                if let Err(e) = loaded {
                    return done(Err(e));
                }
                let view = match room.chat() {
                    Ok(chat) => chat.view(),
                    Err(e) => return done(Err(e)),
                };
                let replay = history::replay(
                    Arc::clone(&room.store),
                    room.name.clone(),
                    view,
                    msg.resume.clone(),
                    max_bytes,
                );
                Box::pin(replay.into_actor(room).map(move |replayed, room, _| {
                    let (recovered, messages) = replayed?;
                    if room.stopping {
                        return Err(RoomError::Unavailable(Unavailable::Stopping));
                    }
                    room.chat_join(msg, recovered, messages)?;
                    Ok(room.shared_address())
                }))
            },
        )))
    }
}

impl Handler<ChatRequest> for Room {
    type Result = ();

    fn handle(&mut self, msg: ChatRequest, ctx: &mut Self::Context) {
        // Members exist only once the stream is loaded (they joined through it).
        self.on_chat_request(msg.session, msg.request, ctx);
    }
}

impl Handler<HttpPublish> for Room {
    type Result = AtomicResponse<Self, Result<DurableReply, RoomError>>;

    fn handle(&mut self, msg: HttpPublish, _ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return AtomicResponse::new(done(Err(RoomError::Unavailable(Unavailable::Stopping))));
        }
        self.empty_since = Instant::now();
        AtomicResponse::new(Box::pin(self.chat_loaded().map(
            move |loaded, room, ctx| {
                loaded?;
                if room.stopping {
                    return Err(RoomError::Unavailable(Unavailable::Stopping));
                }
                let sender = msg
                    .subject
                    .clone()
                    .unwrap_or_else(|| format!("{ANONYMOUS_PREFIX}http"));
                let key_subject = msg.subject.unwrap_or_default();
                let (seq, duplicate) =
                    room.publish(&sender, &key_subject, msg.id.as_deref(), &msg.body, ctx)?;
                let (tx, rx) = oneshot::channel();
                let body = wire::ack(msg.id.as_deref(), seq, duplicate)
                    .json
                    .into_bytes();
                // A retry is answered once the original is durable too: it sits in the same queue.
                room.after_durable(AfterFlush::Reply { tx, body }, ctx);
                Ok(rx)
            },
        )))
    }
}

impl Handler<ReadMessages> for Room {
    type Result = ResponseFuture<Result<ReadReply, RoomError>>;

    fn handle(&mut self, msg: ReadMessages, ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Box::pin(std::future::ready(Err(RoomError::Unavailable(
                Unavailable::Stopping,
            ))));
        }
        self.empty_since = Instant::now();
        let (tx, rx) = oneshot::channel();
        let loaded = self.chat.is_some();
        let read = self.chat_loaded().then(
            move |loaded, room, _ctx| -> RoomFuture<Result<ReadReply, RoomError>> {
                if let Err(e) = loaded {
                    return done(Err(e));
                }
                let request = PageRequest {
                    from: msg.from.clone(),
                    before: None,
                    limit: msg.limit,
                    from_oldest: false,
                };
                Box::pin(room.read_page(request).map(move |page, room, _ctx| {
                    let page = page?;
                    let chat = room.chat()?;
                    let caught_up = msg.from.as_ref().is_some_and(|f| f.since >= page.last_seq);
                    // Read while the room went on: wait only if nothing was delivered since
                    // the page's view was taken (else the client reads again at once).
                    if msg.wait && page.recovered && caught_up && chat.delivered == page.last_seq {
                        let (tx, rx) = oneshot::channel();
                        chat.waiters.push(tx);
                        return Ok(ReadReply::Wait(rx));
                    }
                    Ok(ReadReply::Page(page.to_json(None, None).into_bytes()))
                }))
            },
        );
        let answer = read.map(move |result, _room, _ctx| {
            let _ = tx.send(result);
        });
        if loaded {
            // A page read is a snapshot of what was delivered when asked: the room goes on
            // meanwhile (a long-poll must not hold it).
            ctx.spawn(answer);
        } else {
            // The stream's first load holds the room (nothing may touch it half-loaded).
            ctx.wait(answer);
        }
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(RoomError::Unavailable(Unavailable::Stopping)))
        })
    }
}
