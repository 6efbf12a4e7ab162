//! The room's chat stream: sequencing, durability-before-delivery, idempotent publishing,
//! resume and history, presence and typing. It is part of the room actor (one mailbox, so
//! a join's replay and the live messages after it can neither overlap nor leave a gap) and
//! shares the room's durability queue: a message is appended to the store, and delivered
//! and acknowledged only once a flush covers it.
//!
//! Decisions that need no actor (resume, the idempotency window, presence, the JSON wire
//! format) live in [`crate::stream`]; this module only wires them to the room. It never
//! touches a socket: members are [`Recipient`]s of [`Outbound::Event`].

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::{AfterFlush, DurableReply, Outbound, Outbox, Room, RoomError, SessionId, Unavailable};
use crate::auth::{Access, ANONYMOUS_PREFIX};
use crate::metrics;
use crate::protocol::close;
use crate::stream::wire::{self, ErrorCode, Event, Page, RecordHead, Request};
use crate::stream::{
    new_epoch, now_millis, resume, Idempotency, IdempotencyKey, Member, Presence, Resume,
    ResumeFrom, StreamMeta,
};

pub use crate::stream::wire::MAX_PAGE;
/// Messages in a page when the client names no limit, and in the "latest page" sent to a
/// client that could not be recovered.
pub const DEFAULT_PAGE: usize = 50;
/// Most messages replayed on join; a client further behind is told it was not recovered.
pub const MAX_REPLAY: usize = 10_000;
/// Records read from the store at a time when a range may be long.
const READ_CHUNK: usize = 256;

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
#[rtype(result = "Result<Addr<Room>, RoomError>")]
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

struct ChatMember {
    outbox: Outbox,
    access: Access,
    /// The `sender` of its messages: the subject, or `anon-` and the connection id.
    sender: String,
    /// The idempotency key's first half: the subject, or "" when anonymous.
    key_subject: String,
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
    members: HashMap<SessionId, ChatMember>,
    /// Long-polls waiting for the next delivered message.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Chat {
    /// Whether the stream keeps the room active.
    pub(super) fn is_idle(&self) -> bool {
        self.members.is_empty() && self.waiters.iter().all(|w| w.is_closed())
    }
}

/// This connection's id as clients see it: unique across restarts of the process.
fn conn_id(session: SessionId) -> String {
    static NODE: OnceLock<String> = OnceLock::new();
    let node = NODE.get_or_init(|| new_epoch()[8..].to_owned());
    format!("{node}-{}", session.0)
}

impl Room {
    /// The chat stream, loaded (or created) on first use.
    fn chat(&mut self) -> Result<&mut Chat, RoomError> {
        if self.chat.is_none() {
            let loaded = self.load_chat()?;
            self.chat = Some(loaded);
            // Messages may have aged out while the room was inactive.
            self.trim_by_age();
        }
        self.chat
            .as_mut()
            .ok_or(RoomError::Unavailable(Unavailable::Failed))
    }

    fn load_chat(&mut self) -> Result<Chat, RoomError> {
        let stream = &self.config.stream;
        let retention = stream.retention_messages;
        let mut removed_upto = 0;
        let meta = match self.store.load_stream(&self.name)? {
            Some(stored) => {
                removed_upto = stored.first_seq - 1;
                StreamMeta {
                    epoch: stored.epoch,
                    // Messages past the count retention may still be stored (batched removal).
                    first_seq: stored
                        .first_seq
                        .max((stored.last_seq + 1).saturating_sub(retention)),
                    last_seq: stored.last_seq,
                }
            }
            None => {
                let meta = StreamMeta::fresh();
                self.store.create_stream(&self.name, &meta.epoch)?;
                self.writes += 1;
                meta
            }
        };
        // Rebuild the idempotency window from the newest records, oldest first, a chunk at
        // a time (records may be large; only their heads are kept).
        let mut idempotency = Idempotency::new(stream.idempotency_window);
        let window = stream.idempotency_window as u64;
        let mut after = meta.last_seq.saturating_sub(window).max(meta.first_seq - 1);
        while window > 0 && after < meta.last_seq {
            let chunk = self.store.read_messages(&self.name, after, READ_CHUNK)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            after = *last;
            for (seq, record) in &chunk {
                if let Some(RecordHead {
                    sender,
                    id: Some(id),
                    ..
                }) = RecordHead::parse(record)
                {
                    idempotency.insert((key_subject_of_sender(&sender), id), *seq);
                }
            }
        }
        let oldest_ts = self
            .store
            .read_messages(&self.name, meta.first_seq.saturating_sub(1), 1)?
            .first()
            .and_then(|(_, r)| RecordHead::parse(r))
            .map(|h| h.ts);
        debug!(room = %self.name, epoch = %meta.epoch, last_seq = meta.last_seq, "chat stream loaded");
        Ok(Chat {
            delivered: meta.last_seq,
            meta,
            oldest_ts,
            removed_upto,
            idempotency,
            presence: Presence::new(stream.typing_ttl),
            members: HashMap::new(),
            waiters: Vec::new(),
        })
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
        if let Err(e) = self
            .store
            .append_message(&self.name, seq, record.as_bytes())
        {
            self.fail(&format!("appending a message failed: {e}"), ctx);
            return Err(e.into());
        }
        self.writes += 1;
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
            self.trim_to(first - 1);
        }
        Ok((seq, false))
    }

    /// Drops every stored message up to `upto` (retention).
    fn trim_to(&mut self, upto: u64) {
        if let Err(e) = self.store.trim_messages(&self.name, upto) {
            warn!(room = %self.name, error = %e, "trimming the stream failed; will retry");
            return;
        }
        let next = self.store.read_messages(&self.name, upto, 1);
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        chat.meta.first_seq = chat.meta.first_seq.max(upto + 1);
        chat.removed_upto = upto;
        chat.oldest_ts = match next {
            Ok(records) => records
                .first()
                .and_then(|(_, r)| RecordHead::parse(r))
                .map(|h| h.ts),
            Err(_) => None,
        };
    }

    /// Retention by age, expiring typing states, forgetting abandoned long-polls.
    pub(super) fn chat_tick(&mut self) {
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        chat.waiters.retain(|w| !w.is_closed());
        // A member whose connection ended before its join was answered never sends
        // `Leave` (its actor did not know the room yet): notice it here.
        let gone: Vec<SessionId> = chat
            .members
            .iter()
            .filter(|(_, m)| !m.outbox.connected())
            .map(|(id, _)| *id)
            .collect();
        for session in gone {
            self.chat_leave(session);
        }
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        let ttl_ms = chat.presence.status_ttl().as_millis() as u64;
        for member in chat.presence.expire(Instant::now()) {
            let event = wire::typing(&member, ttl_ms);
            self.chat_broadcast(&event);
        }
        self.trim_by_age();
    }

    /// Drops the stored messages older than the retention age.
    fn trim_by_age(&mut self) {
        let max_age = self.config.stream.retention_age.as_millis() as u64;
        let cutoff = now_millis().saturating_sub(max_age);
        let Some(chat) = self.chat.as_ref() else {
            return;
        };
        if chat.oldest_ts.is_none_or(|ts| ts >= cutoff) {
            return;
        }
        // Find the newest expired message among the oldest few; trim up to it.
        let first = chat.meta.first_seq;
        let expired = match self.store.read_messages(&self.name, first - 1, 1024) {
            Ok(records) => records
                .iter()
                .take_while(|(_, r)| RecordHead::parse(r).is_some_and(|h| h.ts < cutoff))
                .map(|(seq, _)| *seq)
                .last(),
            Err(e) => {
                warn!(room = %self.name, error = %e, "reading the stream for retention failed");
                None
            }
        };
        if let Some(upto) = expired {
            debug!(room = %self.name, upto, "messages expired");
            self.trim_to(upto);
        }
    }

    /// Hands one event to every member.
    fn chat_broadcast(&mut self, event: &Event) {
        let Some(chat) = &self.chat else {
            return;
        };
        let slow: Vec<SessionId> = chat
            .members
            .iter()
            .filter(|(_, m)| !m.outbox.send(Outbound::Event(event.clone())))
            .map(|(id, _)| *id)
            .collect();
        self.close_slow_sessions(slow);
    }

    fn chat_send(&mut self, to: SessionId, event: Event) {
        if let Some(member) = self.chat.as_ref().and_then(|c| c.members.get(&to)) {
            if !member.outbox.send(Outbound::Event(event)) {
                self.close_slow_sessions(vec![to]);
            }
        }
    }

    /// Members whose outbox says they are too slow (see [`Outbox::too_slow`]).
    pub(super) fn chat_too_slow(&self) -> Vec<SessionId> {
        self.chat.as_ref().map_or_else(Vec::new, |chat| {
            chat.members
                .iter()
                .filter(|(_, m)| m.outbox.too_slow())
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// Closes a member that stopped taking events (its mailbox stays full) with its limit
    /// queued; false if it is no member. (Called from the room's `close_slow_sessions`.)
    pub(super) fn chat_close_slow(&mut self, id: SessionId) -> bool {
        let Some(member) = self.chat.as_ref().and_then(|c| c.members.get(&id)) else {
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
            ChatAction::Deliver { seq, event } => {
                let Some(chat) = self.chat.as_mut() else {
                    return;
                };
                chat.delivered = chat.delivered.max(seq);
                for waiter in chat.waiters.drain(..) {
                    let _ = waiter.send(());
                }
                metrics::get()
                    .chat_delivered
                    .inc_by(chat.members.len() as u64);
                self.chat_broadcast(&event);
            }
            ChatAction::Send { to, event } => self.chat_send(to, event),
        }
    }

    /// Messages `(after, upto]`, at most `limit`, as stored.
    /// Messages `(after, upto]`, all of them, or `None` once they would pass `max_count`
    /// messages or `max_bytes` (read a chunk at a time, so an oversized replay is refused
    /// without being loaded).
    fn read_all_capped(
        &self,
        after: u64,
        upto: u64,
        max_count: usize,
        max_bytes: u64,
    ) -> Result<Option<Vec<(u64, ByteString)>>, RoomError> {
        let mut out = Vec::new();
        let (mut next, mut bytes) = (after, 0u64);
        while next < upto {
            let chunk = self.read_range(next, upto, READ_CHUNK)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            next = *last;
            bytes += chunk.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
            out.extend(chunk);
            if out.len() > max_count || bytes > max_bytes {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }

    fn read_range(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ByteString)>, RoomError> {
        let records = self.store.read_messages(&self.name, after, limit)?;
        Ok(records
            .into_iter()
            .take_while(|(seq, _)| *seq <= upto)
            .filter_map(|(seq, r)| self.text_record(seq, r))
            .collect())
    }

    /// A stored record as text, checked once here; a record that is not UTF-8 is left out
    /// (so a replay missing it is not complete) and logged.
    fn text_record(&self, seq: u64, record: Vec<u8>) -> Option<(u64, ByteString)> {
        match String::from_utf8(record) {
            Ok(text) => Some((seq, text.into())),
            Err(_) => {
                error!(room = %self.name, seq, "stored message is not UTF-8; left out");
                None
            }
        }
    }

    /// The newest `limit` messages up to `delivered` still within retention.
    fn latest(&self, delivered: u64, limit: usize) -> Result<Vec<(u64, ByteString)>, RoomError> {
        let first = self.chat.as_ref().map_or(1, |c| c.meta.first_seq);
        let records =
            self.store
                .read_messages_before(&self.name, delivered.saturating_add(1), limit)?;
        Ok(records
            .into_iter()
            .filter(|(seq, _)| *seq >= first)
            .filter_map(|(seq, r)| self.text_record(seq, r))
            .collect())
    }

    /// What a client resuming `from` receives: whether it recovered, and the messages.
    fn replay(
        &mut self,
        from: Option<&ResumeFrom>,
    ) -> Result<(bool, Vec<(u64, ByteString)>), RoomError> {
        let max_bytes = self.config.stream.max_replay_bytes;
        let chat = self.chat()?;
        let delivered = chat.delivered;
        let decision = resume(&chat.meta, delivered, from);
        let m = metrics::get();
        match decision {
            Resume::Fresh => Ok((false, Vec::new())),
            Resume::Recovered { after } => {
                let messages = self.read_all_capped(after, delivered, MAX_REPLAY, max_bytes)?;
                if let Some(messages) = messages {
                    // Trimmed meanwhile? Then it is not the whole range: never present a
                    // partial replay as complete.
                    if messages.len() as u64 == delivered - after {
                        m.chat_recovered.inc();
                        return Ok((true, messages));
                    }
                }
                m.chat_not_recovered.inc();
                Ok((false, self.latest(delivered, DEFAULT_PAGE)?))
            }
            Resume::NotRecovered => {
                m.chat_not_recovered.inc();
                Ok((false, self.latest(delivered, DEFAULT_PAGE)?))
            }
        }
    }

    /// A page for a history request or an HTTP read.
    fn page(
        &mut self,
        from: Option<&ResumeFrom>,
        before: Option<u64>,
        limit: usize,
        from_oldest: bool,
    ) -> Result<Page, RoomError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let chat = self.chat()?;
        let (delivered, meta) = (chat.delivered, chat.meta.clone());
        let (recovered, messages) = match (before, from) {
            // History paging forward from before the retained window: start at its oldest.
            (None, Some(from)) if from_oldest && from.since + 1 < meta.first_seq => (
                false,
                self.read_range(meta.first_seq - 1, delivered, limit)?,
            ),
            (Some(before), _) => (
                false,
                self.latest(
                    before.min(delivered.saturating_add(1)).saturating_sub(1),
                    limit,
                )?,
            ),
            (None, None) => (false, self.latest(delivered, limit)?),
            (None, Some(from)) => match resume(&meta, delivered, Some(from)) {
                Resume::Recovered { after } => (true, self.read_range(after, delivered, limit)?),
                _ => (false, self.latest(delivered, limit)?),
            },
        };
        Ok(Page {
            epoch: meta.epoch,
            first_seq: meta.first_seq,
            last_seq: delivered,
            recovered,
            messages,
        })
    }

    /// Adds a member: `joined`, the replay, then (via the mailbox order) live messages.
    fn chat_join(&mut self, msg: ChatJoin) -> Result<(), RoomError> {
        let (recovered, replay) = self.replay(msg.resume.as_ref())?;
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
        chat.members.insert(
            msg.session,
            ChatMember {
                outbox: msg.outbox,
                access: msg.access,
                key_subject: msg.subject.unwrap_or_default(),
                sender,
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
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        if chat.members.remove(&session).is_none() {
            return;
        }
        metrics::get().chat_members.dec();
        if let Some(member) = chat.presence.leave(&session) {
            if chat.members.is_empty() {
                self.empty_since = Instant::now();
            }
            self.chat_broadcast(&wire::presence("leave", &member));
        }
    }

    /// Closes every member with `code` (shutdown or failure) and forgets them.
    pub(super) fn chat_close_all(&mut self, code: close::Close, detail: &str) {
        let Some(chat) = self.chat.as_mut() else {
            return;
        };
        for (_, member) in chat.members.drain() {
            metrics::get().chat_members.dec();
            member.outbox.send(Outbound::Close(code, detail.to_owned()));
        }
        chat.waiters.clear();
    }

    fn on_chat_request(&mut self, session: SessionId, request: Request, ctx: &mut Context<Self>) {
        let Some(member) = self.chat.as_ref().and_then(|c| c.members.get(&session)) else {
            return; // closed by the room already; late requests are dropped
        };
        let (access, sender, key_subject) = (
            member.access,
            member.sender.clone(),
            member.key_subject.clone(),
        );
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
                let from = after.map(|since| ResumeFrom { epoch: None, since });
                let limit = limit.unwrap_or(DEFAULT_PAGE);
                let event = match self.page(from.as_ref(), before, limit, true) {
                    Ok(page) => wire::history(&page, req.as_deref()),
                    Err(e) => {
                        warn!(room = %self.name, error = %e, "history page failed");
                        wire::error(e.chat_code(), &e.public_message(), req.as_deref())
                    }
                };
                self.chat_send(session, event);
            }
        }
    }
}

/// The idempotency key's subject half for a stored sender (anonymous senders share "").
fn key_subject_of_sender(sender: &str) -> String {
    if sender.starts_with(ANONYMOUS_PREFIX) {
        String::new()
    } else {
        sender.to_owned()
    }
}

impl Handler<ChatJoin> for Room {
    type Result = Result<Addr<Room>, RoomError>;

    fn handle(&mut self, msg: ChatJoin, ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err(RoomError::Unavailable(Unavailable::Stopping));
        }
        self.chat_join(msg)?;
        Ok(ctx.address())
    }
}

impl Handler<ChatRequest> for Room {
    type Result = ();

    fn handle(&mut self, msg: ChatRequest, ctx: &mut Self::Context) {
        self.on_chat_request(msg.session, msg.request, ctx);
    }
}

impl Handler<HttpPublish> for Room {
    type Result = Result<DurableReply, RoomError>;

    fn handle(&mut self, msg: HttpPublish, ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err(RoomError::Unavailable(Unavailable::Stopping));
        }
        self.empty_since = Instant::now();
        let sender = msg
            .subject
            .clone()
            .unwrap_or_else(|| format!("{ANONYMOUS_PREFIX}http"));
        let key_subject = msg.subject.unwrap_or_default();
        let (seq, duplicate) =
            self.publish(&sender, &key_subject, msg.id.as_deref(), &msg.body, ctx)?;
        let (tx, rx) = oneshot::channel();
        let body = wire::ack(msg.id.as_deref(), seq, duplicate)
            .json
            .into_bytes();
        // A retry is answered once the original is durable too: it sits in the same queue.
        self.after_durable(AfterFlush::Reply { tx, body }, ctx);
        Ok(rx)
    }
}

impl Handler<ReadMessages> for Room {
    type Result = Result<ReadReply, RoomError>;

    fn handle(&mut self, msg: ReadMessages, _ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err(RoomError::Unavailable(Unavailable::Stopping));
        }
        self.empty_since = Instant::now();
        let page = self.page(msg.from.as_ref(), None, msg.limit, false)?;
        let caught_up = msg.from.as_ref().is_some_and(|f| f.since >= page.last_seq);
        if msg.wait && page.recovered && caught_up {
            let (tx, rx) = oneshot::channel();
            self.chat()?.waiters.push(tx);
            return Ok(ReadReply::Wait(rx));
        }
        Ok(ReadReply::Page(page.to_json(None, None).into_bytes()))
    }
}
