//! The room actor: one per active room, owner of the room's [`Document`], its sessions and
//! its durability queue. Data flows one way through it: a session's message is applied to
//! the CRDT, the delta is appended to the store, and only once a flush has made it durable
//! is it broadcast (encoded once, the same bytes to every other session).
//!
//! The room never touches sockets (sessions are type-erased [`Recipient`]s) nor a database
//! (only the [`Store`] trait). Activation happens in `started`: the room claims itself in
//! the store (a new ownership [`Epoch`] that every write carries), then loads its snapshot
//! and log tail, as an actor future that holds the mailbox until it is done. A write or
//! flush refused as fenced (a newer activation claimed the room) makes the room stop
//! writing, close its sessions with "room moved" and step down. Deactivation after the idle
//! timeout writes a final snapshot and tells the registry. Which writes must be durable
//! before which action is the [`commit`] queue's business.

mod awareness;
mod chat;
pub mod commit;
pub mod document;
mod error;
mod history;
mod members;
mod outbox;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures_util::future::{FutureExt, Shared};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

pub use crate::id::{RoomName, RoomNameError, SessionId, MAX_ROOM_NAME_LEN};
pub use chat::{
    ChatJoin, ChatRequest, HttpPublish, ReadMessages, ReadReply, StreamConfig, DEFAULT_PAGE,
    MAX_PAGE,
};
pub use document::{DocError, Document};
pub use error::{RoomError, Unavailable, STORAGE_FAILED};
pub use outbox::{channel as outbox, Inbox, Outbox, HARD_FACTOR, SLOW_GRACE};

use crate::auth::Access;
use crate::id::Epoch;
use crate::metrics;
use crate::protocol::close::{self, Close};
use crate::protocol::update_check::check_update_v1;
use crate::protocol::ysync::{self, Message as SyncMessage};
use crate::storage::{Durable, Store, StoreError, StoredDoc};
use crate::stream::wire::Event;
use commit::CommitQueue;
use members::{Connection, Members, Role};

/// Queued updates applied at once, whatever is still in the mailbox: bounds the batch
/// (and the delay of its first update) under a steady stream.
const MAX_INBOX_UPDATES: usize = 512;
/// The same bound in bytes.
const MAX_INBOX_BYTES: usize = 1 << 20;

/// A v1 update with no structs and no deletions.
const EMPTY_UPDATE: &[u8] = &[0, 0];

/// Room behaviour knobs (from the configuration).
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Deactivate a room after it has had no sessions for this long.
    pub idle_timeout: Duration,
    /// Write a snapshot after this many logged updates.
    pub snapshot_every_updates: u64,
    /// Write a snapshot at least this often while the room changes.
    pub snapshot_interval: Duration,
    /// Refuse updates once the stored document (snapshot plus log) would exceed this.
    pub max_document_bytes: u64,
    /// The chat stream's knobs.
    pub stream: StreamConfig,
    /// Log every claim (activation) with its epoch at info level (cluster nodes).
    pub log_claims: bool,
    /// Least time between two group commits: under a steady stream the room gathers what
    /// arrives until then (zero: a flush starts as soon as the last one ends).
    pub commit_gap: Duration,
    /// Hold a room's document encoded (compact) once nothing has needed it for this long;
    /// `None`: never.
    pub freeze_after: Option<Duration>,
}

/// A room's address as sessions hold it: one per room, shared.
pub type RoomAddr = Arc<Addr<Room>>;

/// Something for a session to do: send a frame or close.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Outbound {
    /// Send this binary frame (y-websocket sessions).
    Frame(Bytes),
    /// Send this chat event (chat members).
    Event(Event),
    /// Send these chat events, in order: the messages one flush released, handed over in
    /// one mailbox message and written together (shared by every member, not copied).
    Events(Arc<[Event]>),
    /// Close with this code; the string adds detail to the reason.
    Close(Close, String),
}

/// A session joins the room; the room greets it with SyncStep1 and the awareness states,
/// and answers with its own address for the session's later messages.
#[derive(Message)]
#[rtype(result = "Result<RoomAddr, RoomError>")]
pub struct Join {
    /// The joining session.
    pub session: SessionId,
    /// What the session may do; a read-only session's updates are refused.
    pub access: Access,
    /// Where the room sends the session's frames.
    pub outbox: Outbox,
}

/// A session left; its awareness states are removed and the removal broadcast.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The session that left.
    pub session: SessionId,
}

/// A decoded message from a session, with the frame it came in (relayed as is when it is
/// an awareness update).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Receive {
    /// The sender.
    pub session: SessionId,
    /// The decoded message.
    pub message: SyncMessage,
    /// The frame it was decoded from.
    pub frame: Bytes,
}

/// A reply that arrives once the room's state up to now is durable.
pub type DurableReply = oneshot::Receiver<Result<Bytes, RoomError>>;

/// Apply an update from HTTP; the reply resolves once it is durable.
#[derive(Message)]
#[rtype(result = "Result<DurableReply, RoomError>")]
pub struct ApplyUpdate {
    /// A v1 Yjs update.
    pub update: Bytes,
}

/// Read the document: the whole state as one v1 update, or its root types as JSON.
#[derive(Message)]
#[rtype(result = "Result<DurableReply, RoomError>")]
pub struct ReadState {
    /// JSON instead of a binary update.
    pub json: bool,
}

/// Close every session with "going away", write a final snapshot, flush, stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// What sessions are closed with: "going away" when the server stops, "room moved"
    /// (with the new owner) when the ring gives the room to another node.
    pub close: Close,
    /// Detail after the close reason.
    pub detail: String,
}

impl Shutdown {
    /// The server is stopping.
    pub fn server_stopping() -> Self {
        Self {
            close: close::GOING_AWAY,
            detail: String::new(),
        }
    }

    /// The room now belongs to the node at `url`.
    pub fn moved_to(url: &str) -> Self {
        Self {
            close: close::ROOM_MOVED,
            detail: format!("now served by {url}"),
        }
    }
}

/// Sent to the registry when a room actor stops, so it forgets the address.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deactivated {
    /// The room.
    pub name: RoomName,
    /// Which activation stopped (a newer one may already be registered).
    pub activation: u64,
}

/// Sent by the room to itself: apply the queued updates (handled after the messages
/// already in the mailbox).
#[derive(Message)]
#[rtype(result = "()")]
struct ApplyInbox;

/// What to do once the room's log is durable up to a sequence number.
enum AfterFlush {
    /// Send a logged update to every session but its sender. The broadcasts one flush
    /// releases go out merged: one frame per recipient (see [`Room::broadcast_updates`]).
    Broadcast {
        update: Bytes,
        except: Option<SessionId>,
    },
    Send {
        to: SessionId,
        frame: Bytes,
    },
    Reply {
        tx: oneshot::Sender<Result<Bytes, RoomError>>,
        body: Bytes,
    },
    Chat(chat::ChatAction),
}

/// A flush under way: its generation (the commit queue's) and its outcome.
struct InFlight {
    generation: u64,
    done: Shared<Durable>,
}

/// The room actor.
pub struct Room {
    name: RoomName,
    activation: u64,
    store: Arc<dyn Store>,
    registry: Arc<Recipient<Deactivated>>,
    /// Shared by every room of the node.
    config: Arc<RoomConfig>,
    /// This room's address, the one the registry holds and hands to joining sessions
    /// (made once: each `Addr` clone allocates).
    address: RoomAddr,
    document: Document,
    /// Everyone connected: y-websocket sessions and chat members.
    members: Members,
    /// The chat stream, loaded on first use (boxed: most rooms have none).
    chat: Option<Box<chat::Chat>>,
    /// Stored size of the document: the last snapshot plus the log after it.
    stored_bytes: u64,
    /// Highest sequence number appended to the log.
    last_seq: u64,
    /// The ownership epoch this activation claimed (0 until the claim resolves).
    epoch: Epoch,
    /// Writes made and the actions waiting for them to be durable.
    commits: CommitQueue<AfterFlush>,
    /// Sessions found too slow and not yet closed (see `close_slow_sessions`).
    slow: Vec<SessionId>,
    closing_slow: bool,
    /// Updates received and not yet applied, with their senders (see `apply_inbox`).
    inbox: Vec<(SessionId, Bytes)>,
    /// Their total size.
    inbox_bytes: usize,
    /// Logged updates not yet handed to the store: written as one record when the next
    /// flush starts (one store write per group commit instead of one per update).
    unwritten: Vec<Vec<u8>>,
    /// Sequence number the last snapshot covers.
    snapshot_seq: u64,
    last_snapshot_at: Instant,
    /// The flush under way, if any.
    in_flight: Option<InFlight>,
    /// A flush waits for the commit gap to pass (see `request_next_flush`).
    gap_wait: bool,
    empty_since: Instant,
    stopping: bool,
    /// The document is being rebuilt from the store (after a yrs panic): updates wait.
    reloading: bool,
}

impl Room {
    /// A room that loads its document from `store` when started; `address` is its own.
    pub fn new(
        address: RoomAddr,
        name: RoomName,
        activation: u64,
        store: Arc<dyn Store>,
        registry: Arc<Recipient<Deactivated>>,
        config: Arc<RoomConfig>,
    ) -> Self {
        Self {
            name,
            activation,
            store,
            registry,
            config,
            address,
            document: Document::new(),
            members: Members::default(),
            chat: None,
            stored_bytes: 0,
            last_seq: 0,
            epoch: Epoch(0),
            commits: CommitQueue::new(),
            slow: Vec::new(),
            closing_slow: false,
            inbox: Vec::new(),
            inbox_bytes: 0,
            unwritten: Vec::new(),
            snapshot_seq: 0,
            last_snapshot_at: Instant::now(),
            in_flight: None,
            gap_wait: false,
            empty_since: Instant::now(),
            stopping: false,
            reloading: false,
        }
    }

    /// Installs the stored document: the snapshot, then the logged updates after it.
    fn install(&mut self, stored: StoredDoc, started: Instant) -> Result<(), RoomError> {
        self.document = Document::load(
            stored.snapshot.as_deref(),
            stored.updates.iter().map(Vec::as_slice),
        )?;
        self.stored_bytes = stored.snapshot.as_ref().map_or(0, |s| s.len() as u64)
            + stored.updates.iter().map(|u| u.len() as u64).sum::<u64>();
        self.last_seq = stored.last_seq;
        self.snapshot_seq = stored.last_seq - stored.updates.len() as u64;
        debug!(
            room = %self.name,
            epoch = %self.epoch,
            log_entries = stored.updates.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "room activated"
        );
        Ok(())
    }

    /// This room's address for a joining session (the same one for all of them).
    fn shared_address(&self) -> RoomAddr {
        Arc::clone(&self.address)
    }

    fn tick_interval(&self) -> Duration {
        let shortest = self
            .config
            .idle_timeout
            .min(self.config.snapshot_interval)
            .min(self.config.stream.typing_ttl)
            .min(self.config.freeze_after.unwrap_or(Duration::MAX));
        (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    /// Applies one sender's updates in one transaction; what they changed is logged and
    /// its broadcast queued (to everyone but the sender). Stops at the first update refused
    /// and returns why: the ones before it are kept.
    fn apply(
        &mut self,
        updates: &[&[u8]],
        from: Option<SessionId>,
        ctx: &mut Context<Self>,
    ) -> Result<(), RoomError> {
        let limit = self.config.max_document_bytes;
        let mut size = self.stored_bytes;
        let fit = updates
            .iter()
            .take_while(|u| {
                size += u.len() as u64;
                size <= limit
            })
            .count();
        let applied = match self.document.apply_updates(&updates[..fit]) {
            Ok(applied) => applied,
            Err(e) => {
                // The document may be half-changed: it is rebuilt from the store, and the
                // sender of the updates that made yrs panic is refused.
                self.reload_after_panic(ctx);
                return Err(e.into());
            }
        };
        metrics::get().updates_in.inc_by(applied.count as u64);
        for record in applied.records {
            self.last_seq += 1;
            self.stored_bytes += record.len() as u64;
            let update = Bytes::copy_from_slice(&record);
            self.unwritten.push(record);
            self.commits.record_write();
            self.after_durable(
                AfterFlush::Broadcast {
                    update,
                    except: from,
                },
                ctx,
            );
        }
        if self.stopping {
            // Writing to the store failed while starting the flush: the room has failed.
            return Err(RoomError::Unavailable(Unavailable::Failed));
        }
        if self.last_seq - self.snapshot_seq >= self.config.snapshot_every_updates {
            self.snapshot();
        }
        match applied.error {
            Some(e) => Err(e.into()),
            None if fit < updates.len() => Err(RoomError::TooLarge { limit }),
            None => Ok(()),
        }
    }

    /// yrs panicked: the document may be half-changed, so rebuild it from the store, once
    /// what was applied before is durable there. Updates wait in the inbox meanwhile, and
    /// the mailbox is held (an actor future the room waits on).
    fn reload_after_panic(&mut self, ctx: &mut Context<Self>) {
        error!(room = %self.name, "yrs panicked on an update; reloading the room");
        self.reloading = true;
        if let Err(e) = self.write_unwritten() {
            self.fail(e, "writing the log before a reload", ctx);
            return;
        }
        let flush = self.store.flush(&self.name, self.epoch);
        let (store, name) = (Arc::clone(&self.store), self.name.clone());
        let started = Instant::now();
        ctx.wait(
            async move {
                flush.await?;
                store.load_doc(&name).await
            }
            .into_actor(self)
            .map(move |loaded, room, ctx| {
                room.reloading = false;
                let installed = loaded
                    .map_err(RoomError::from)
                    .and_then(|stored| room.install(stored, started));
                match installed {
                    Ok(()) => {
                        if !room.inbox.is_empty() {
                            ctx.notify(ApplyInbox);
                        }
                    }
                    Err(RoomError::Store(e)) => room.fail(e, "reloading after a yrs panic", ctx),
                    Err(e) => room.fail(
                        StoreError::refused(format!("the stored document does not load: {e}")),
                        "reloading after a yrs panic",
                        ctx,
                    ),
                }
            }),
        );
    }

    /// Applies the updates queued by `Receive`, each sender's consecutive ones in one
    /// transaction, closing a sender whose update is refused.
    fn apply_inbox(&mut self, ctx: &mut Context<Self>) {
        if self.reloading || self.stopping {
            return;
        }
        let inbox = std::mem::take(&mut self.inbox);
        self.inbox_bytes = 0;
        let mut rest = &inbox[..];
        while let Some(&(session, _)) = rest.first() {
            if self.reloading || self.stopping {
                // A panic started a reload: the rest waits for the rebuilt document.
                self.inbox_bytes = rest.iter().map(|(_, u)| u.len()).sum();
                self.inbox = rest.to_vec();
                return;
            }
            let run = rest.iter().take_while(|(s, _)| *s == session).count();
            let (updates, next) = rest.split_at(run);
            rest = next;
            if self.members.doc(&session).is_none() {
                continue; // closed by an earlier refusal: its later updates are dropped
            }
            let updates: Vec<&[u8]> = updates.iter().map(|(_, u)| u.as_ref()).collect();
            if let Err(e) = self.apply(&updates, Some(session), ctx) {
                info!(room = %self.name, session = session.0, error = %e, "closing session: update refused");
                if matches!(e, RoomError::Invalid(_)) {
                    metrics::get().protocol_errors.inc();
                }
                self.close_session(session, e.close(), e.public_message());
            }
        }
    }

    /// Runs `action` once everything logged so far is durable.
    fn after_durable(&mut self, action: AfterFlush, ctx: &mut Context<Self>) {
        self.poll_flush(ctx);
        if let Some(action) = self.commits.defer(action, Instant::now()) {
            self.perform(action);
            return;
        }
        self.request_flush(ctx);
    }

    /// Starts a flush unless one is running or one waits for the commit gap; when it
    /// ends, releases what it covered.
    fn request_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.commits.wants_flush() || self.stopping || self.gap_wait {
            return;
        }
        if let Err(e) = self.write_unwritten() {
            self.fail(e, "appending to the log", ctx);
            return;
        }
        let generation = self.commits.flush_started(Instant::now());
        let done = self.store.flush(&self.name, self.epoch).shared();
        self.in_flight = Some(InFlight {
            generation,
            done: done.clone(),
        });
        // Wakes the room when the flush ends while it is idle. Under a steady stream of
        // messages actix drains the whole mailbox before it polls spawned futures, so the
        // handlers also check the flush themselves (`poll_flush`).
        ctx.spawn(
            done.into_actor(self)
                .map(move |result, room, ctx| room.flush_done(generation, result, ctx)),
        );
    }

    /// Starts the flush after one that just ended. If something arrived while that one
    /// ran, the stream outpaces the store: what arrives until the commit gap has passed
    /// joins the next commit, and every recipient gets one frame for all of it. Light
    /// traffic (nothing waiting) never waits for the gap.
    fn request_next_flush(&mut self, ctx: &mut Context<Self>) {
        if self.commits.wants_flush() && !self.stopping && !self.gap_wait {
            let wait = self
                .commits
                .wait_before_flush(Instant::now(), self.config.commit_gap);
            if !wait.is_zero() {
                self.gap_wait = true;
                // Wakes an idle room; a busy one starts the flush from its handlers
                // (`poll_flush`), as actix polls timers only once the mailbox is empty.
                let started = self.commits.flushes_started();
                ctx.run_later(wait, move |room, ctx| {
                    if room.gap_wait && room.commits.flushes_started() == started {
                        room.gap_wait = false;
                        room.request_flush(ctx);
                    }
                });
                return;
            }
        }
        self.request_flush(ctx);
    }

    /// Starts the flush that waited for the commit gap once it is due, and handles the end
    /// of the in-flight flush if it has ended, without waiting.
    fn poll_flush(&mut self, ctx: &mut Context<Self>) {
        if self.gap_wait
            && self
                .commits
                .wait_before_flush(Instant::now(), self.config.commit_gap)
                .is_zero()
        {
            self.gap_wait = false;
            self.request_flush(ctx);
        }
        let Some(in_flight) = &self.in_flight else {
            return;
        };
        let generation = in_flight.generation;
        if let Some(result) = in_flight.done.clone().now_or_never() {
            self.flush_done(generation, result, ctx);
        }
    }

    /// A flush ended: release what it made durable (once per flush), or fail the room.
    fn flush_done(
        &mut self,
        generation: u64,
        result: Result<(), StoreError>,
        ctx: &mut Context<Self>,
    ) {
        if self.commits.in_flight() != Some(generation) {
            return; // already handled
        }
        self.in_flight = None;
        match result {
            Ok(()) => {
                let released = self.commits.flush_succeeded(generation);
                self.perform_released(released);
                self.request_next_flush(ctx);
            }
            Err(e) => {
                let abandoned = self.commits.flush_failed(generation);
                self.refuse_all(abandoned, &e);
                self.fail(e, "flushing", ctx);
            }
        }
    }

    /// Answers the HTTP requests among `pending` with the room's failure; the rest
    /// (broadcasts, acks) are simply never performed.
    fn refuse_all(&mut self, pending: Vec<commit::Pending<AfterFlush>>, cause: &StoreError) {
        for pending in pending {
            if let AfterFlush::Reply { tx, .. } = pending.action {
                let _ = tx.send(Err(failure_of(cause)));
            }
        }
    }

    /// Performs what a flush released, in order. Each run of consecutive broadcasts goes
    /// out as one frame per recipient, not one per update: at high rates this divides the
    /// per-recipient cost, which dominates fan-out.
    ///
    /// Chat messages likewise go to each member as one batch, and the acks of the run come
    /// after it (each ack still follows the delivery of the message it acknowledges).
    fn perform_released(&mut self, released: Vec<commit::Pending<AfterFlush>>) {
        let mut run: Vec<(Bytes, Option<SessionId>)> = Vec::new();
        let mut messages: Vec<(u64, Event)> = Vec::new();
        let mut acks: Vec<chat::ChatAction> = Vec::new();
        for pending in released {
            metrics::get()
                .persist_seconds
                .observe(pending.since.elapsed().as_secs_f64());
            match pending.action {
                AfterFlush::Broadcast { update, except } => run.push((update, except)),
                AfterFlush::Chat(chat::ChatAction::Deliver { seq, event }) => {
                    messages.push((seq, event));
                }
                AfterFlush::Chat(ack @ chat::ChatAction::Send { .. }) => acks.push(ack),
                other => {
                    self.broadcast_updates(std::mem::take(&mut run));
                    self.release_chat(std::mem::take(&mut messages), std::mem::take(&mut acks));
                    self.perform(other);
                }
            }
        }
        self.broadcast_updates(run);
        self.release_chat(messages, acks);
    }

    /// Delivers a run of released chat messages, then the acks that came with them. The
    /// publishers get the messages first: their acks then go out at the head of the
    /// sweep over the members instead of wherever each publisher falls in it.
    fn release_chat(&mut self, messages: Vec<(u64, Event)>, acks: Vec<chat::ChatAction>) {
        let mut publishers: Vec<SessionId> = acks.iter().filter_map(chat::ChatAction::to).collect();
        publishers.sort_unstable();
        publishers.dedup();
        self.deliver_messages(messages, &publishers);
        for ack in acks {
            self.perform_chat(ack);
        }
    }

    /// Sends updates to every session as one merged update each: senders get everything
    /// but their own updates, everyone else all of them.
    fn broadcast_updates(&mut self, run: Vec<(Bytes, Option<SessionId>)>) {
        let frame_of = |update: Vec<u8>| SyncMessage::Update(update.into()).encode();
        match run.len() {
            0 => return,
            1 => {
                let (update, except) = &run[0];
                let except: Vec<SessionId> = except.iter().copied().collect();
                self.broadcast(&SyncMessage::Update(update.clone()).encode(), &except);
                return;
            }
            _ => {}
        }
        let merge = |updates: &[&Bytes]| yrs::merge_updates_v1(updates.iter().map(|u| u.as_ref()));
        let all: Vec<&Bytes> = run.iter().map(|(u, _)| u).collect();
        let Ok(merged) = merge(&all) else {
            // Our own records always decode; should one not, send them one by one.
            error!(room = %self.name, "merging released updates failed; sending them singly");
            for (update, except) in &run {
                let except: Vec<SessionId> = except.iter().copied().collect();
                self.broadcast(&SyncMessage::Update(update.clone()).encode(), &except);
            }
            return;
        };
        metrics::get().merged_updates.inc_by(run.len() as u64);
        let mut senders: Vec<SessionId> = run.iter().filter_map(|(_, e)| *e).collect();
        senders.sort_unstable_by_key(|s| s.0);
        senders.dedup();
        self.broadcast(&frame_of(merged), &senders);
        for sender in senders {
            let others: Vec<&Bytes> = run
                .iter()
                .filter(|(_, e)| *e != Some(sender))
                .map(|(u, _)| u)
                .collect();
            let update = match others.as_slice() {
                [] => continue,
                [one] => (*one).clone(),
                many => match merge(many) {
                    Ok(merged) => merged.into(),
                    Err(_) => continue,
                },
            };
            self.send(sender, SyncMessage::Update(update).encode());
        }
    }

    fn perform(&mut self, action: AfterFlush) {
        match action {
            AfterFlush::Broadcast { update, except } => {
                self.broadcast_updates(vec![(update, except)])
            }
            AfterFlush::Send { to, frame } => self.send(to, frame),
            AfterFlush::Reply { tx, body } => {
                let _ = tx.send(Ok(body));
            }
            AfterFlush::Chat(action) => self.perform_chat(action),
        }
    }

    /// Hands the same frame to every session but those in `except`.
    fn broadcast(&mut self, frame: &Bytes, except: &[SessionId]) {
        let started = Instant::now();
        let (sent, slow) = self.members.send_frame_to_docs(frame, except);
        let m = metrics::get();
        m.updates_out.inc_by(sent);
        m.bytes_out.inc_by(sent * frame.len() as u64);
        m.broadcast_seconds.observe(started.elapsed().as_secs_f64());
        self.close_slow_sessions(slow);
    }

    fn send(&mut self, to: SessionId, frame: Bytes) {
        if let Some(session) = self.members.doc(&to) {
            metrics::get().bytes_out.inc_by(frame.len() as u64);
            if !session.outbox.send(Outbound::Frame(frame)) {
                self.close_slow_sessions(vec![to]);
            }
        }
    }

    /// Closes sessions that stopped taking frames (their mailboxes stay full) with their limit
    /// queued. Closing one broadcasts its awareness removal, which can find more: they join
    /// the same work list, so a room full of stalled sessions is closed in a loop, not by
    /// recursion as deep as their number.
    fn close_slow_sessions(&mut self, ids: Vec<SessionId>) {
        self.slow.extend(ids);
        if self.closing_slow {
            return; // an outer call is draining the list
        }
        self.closing_slow = true;
        while let Some(id) = self.slow.pop() {
            if self.chat_close_slow(id) {
                continue;
            }
            let Some(session) = self.members.doc(&id) else {
                continue; // already closed
            };
            let queued = session.outbox.queued();
            info!(room = %self.name, session = id.0, queued, "closing session: client too slow");
            metrics::get().slow_consumers.inc();
            self.close_session(id, close::TOO_SLOW, format!("{queued} bytes queued"));
        }
        self.closing_slow = false;
    }

    /// Hands the logged updates not yet written to the store, as one record.
    fn write_unwritten(&mut self) -> Result<(), StoreError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.unwritten);
        self.store
            .append_updates(&self.name, self.epoch, self.last_seq, records)
    }

    /// Writes the whole state as a snapshot covering the log, which it replaces.
    fn snapshot(&mut self) {
        // While reloading, the document may be half-changed: never store it.
        if self.last_seq == self.snapshot_seq || self.reloading {
            return;
        }
        let state = self.document.snapshot();
        // Never replace a loadable log with a snapshot that would not load.
        if let Err(e) = check_update_v1(&state) {
            error!(room = %self.name, error = %e, "snapshot does not validate; keeping the log");
            return;
        }
        let size = state.len() as u64;
        match self
            .store
            .write_snapshot(&self.name, self.epoch, self.last_seq, state)
        {
            Ok(()) => {
                debug!(room = %self.name, seq = self.last_seq, bytes = size, "snapshot written");
                self.snapshot_seq = self.last_seq;
                // The snapshot holds them; the next flush makes it durable.
                self.unwritten.clear();
                self.stored_bytes = size;
                self.last_snapshot_at = Instant::now();
                metrics::get().snapshots.inc();
            }
            // The log still holds everything; the next snapshot will try again.
            Err(e) => warn!(room = %self.name, error = %e, "snapshot failed"),
        }
    }

    /// Removes a session, announcing the removal of the awareness states it carried.
    fn remove_session(&mut self, id: SessionId) {
        if self.members.doc(&id).is_none() {
            return;
        }
        let Some(Connection {
            role: Role::Doc { clients },
            ..
        }) = self.members.remove(&id)
        else {
            return;
        };
        if self.members.is_empty() {
            self.empty_since = Instant::now();
        }
        if let Some(removal) = self.document.remove_awareness(&clients) {
            let frame = SyncMessage::Awareness(removal.into()).encode();
            self.broadcast(&frame, &[]);
        }
    }

    /// Closes one session with `close` and forgets it.
    fn close_session(&mut self, id: SessionId, close: Close, detail: String) {
        if let Some(session) = self.members.doc(&id) {
            session.outbox.send(Outbound::Close(close, detail));
        }
        self.remove_session(id);
    }

    /// Closes every session and chat member with `close` and forgets them (shutdown,
    /// failure, stepping down).
    fn close_all(&mut self, close: Close, detail: &str) {
        for (_, session) in self.members.drain_kind(false) {
            session
                .outbox
                .send(Outbound::Close(close, detail.to_owned()));
        }
        self.chat_close_all(close, detail);
    }

    /// The store failed, or refused this activation's writes as fenced: nothing pending can
    /// be acknowledged. Close everyone and stop; the next activation (here or on the new
    /// owner) reloads from what the store holds. `doing` says what failed, for the log.
    fn fail(&mut self, error: StoreError, doing: &str, ctx: &mut Context<Self>) {
        let (close, detail) = match &error {
            StoreError::Fenced { .. } => {
                // Not an error of this node's: another activation owns the room now.
                warn!(room = %self.name, epoch = %self.epoch, "{doing}: {error}; stepping down");
                metrics::get().rooms_fenced.inc();
                (close::ROOM_MOVED, Unavailable::Moved.to_string())
            }
            _ => {
                // The error goes to the log; clients get a fixed line.
                error!(room = %self.name, "{doing} failed: {error}; closing the room");
                (close::INTERNAL_ERROR, STORAGE_FAILED.to_owned())
            }
        };
        self.unwritten.clear(); // never acknowledged
        let abandoned = self.commits.abandon();
        self.refuse_all(abandoned, &error);
        self.close_all(close, &detail);
        self.stopping = true;
        ctx.stop();
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        self.apply_inbox(ctx);
        let snapshot_due = self.last_snapshot_at.elapsed() >= self.config.snapshot_interval;
        if snapshot_due && self.last_seq > self.snapshot_seq {
            self.snapshot();
        }
        // A connection that ended before its join was answered never sends `Leave`
        // (its actor did not know the room yet): notice it here.
        for id in self.members.disconnected() {
            self.remove_session(id);
            self.chat_leave(id);
        }
        // A stalled client is sent nothing once a burst ends: look at the queues here too.
        let slow = self.members.too_slow();
        self.close_slow_sessions(slow);
        self.chat_tick(ctx);
        if let Some(longest) = self.config.freeze_after {
            let quiet = !self.reloading && self.inbox.is_empty();
            let after = document::freeze_delay(self.stored_bytes, longest);
            if quiet && self.document.freeze_if_unused(after) {
                metrics::get().document_freezes.inc();
            }
        }
        let idle = self.members.is_empty()
            && self.chat.as_deref().is_none_or(chat::Chat::is_idle)
            && self.commits.is_idle()
            && !self.reloading
            && self.empty_since.elapsed() >= self.config.idle_timeout;
        if idle && !self.stopping {
            // Final snapshot, then stop: the registry forgets this activation when it hears
            // `Deactivated`; messages still queued here fail and their senders retry.
            self.snapshot();
            if let Err(e) = self.write_unwritten() {
                error!(room = %self.name, error = %e, "final log write failed");
            }
            // Compaction only: everything acknowledged is durable already.
            let flush = self.store.flush(&self.name, self.epoch);
            let name = self.name.clone();
            actix::spawn(async move {
                if let Err(e) = flush.await {
                    warn!(room = %name, error = %e, "flush after deactivation failed");
                }
            });
            metrics::get().evictions.inc();
            debug!(room = %self.name, "room deactivated after idle timeout");
            self.stopping = true;
            ctx.stop();
        }
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::get().rooms_active.inc();
        metrics::get().activations.inc();
        // Claim, then load: the room handles no message before both are done, and never
        // blocks its thread on them.
        let (store, name) = (Arc::clone(&self.store), self.name.clone());
        let started = Instant::now();
        ctx.wait(
            async move {
                let epoch = store.claim(&name).await?;
                let stored = store.load_doc(&name).await?;
                Ok::<_, StoreError>((epoch, stored))
            }
            .into_actor(self)
            .map(move |loaded, room, ctx| {
                let installed = loaded.map_err(RoomError::from).and_then(|(epoch, stored)| {
                    room.epoch = epoch;
                    room.install(stored, started)
                });
                match installed {
                    Ok(()) => {
                        if room.config.log_claims {
                            // In a cluster, an activation is an ownership change: say so.
                            info!(room = %room.name, epoch = %room.epoch, "room claimed");
                        }
                        ctx.run_interval(room.tick_interval(), Self::on_tick);
                    }
                    Err(RoomError::Store(e)) => room.fail(e, "activation", ctx),
                    Err(e) => room.fail(
                        StoreError::refused(format!("the stored document does not load: {e}")),
                        "activation",
                        ctx,
                    ),
                }
            }),
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::get().rooms_active.dec();
        self.registry.do_send(Deactivated {
            name: self.name.clone(),
            activation: self.activation,
        });
    }
}

impl Handler<Join> for Room {
    type Result = Result<RoomAddr, RoomError>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err(RoomError::Unavailable(Unavailable::Stopping));
        }
        self.apply_inbox(ctx);
        if self.reloading {
            return Err(RoomError::Unavailable(Unavailable::Reloading));
        }
        let Ok(state_vector) = self.document.state_vector() else {
            self.reload_after_panic(ctx);
            return Err(RoomError::Unavailable(Unavailable::Reloading));
        };
        let greeting = SyncMessage::SyncStep1(state_vector.into()).encode();
        msg.outbox.send(Outbound::Frame(greeting));
        if let Some(states) = self.document.awareness_states() {
            msg.outbox.send(Outbound::Frame(
                SyncMessage::Awareness(states.into()).encode(),
            ));
        }
        self.members.insert(
            msg.session,
            Connection {
                outbox: msg.outbox,
                access: msg.access,
                role: Role::Doc {
                    clients: Vec::new(),
                },
            },
        );
        Ok(self.shared_address())
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        self.apply_inbox(ctx);
        self.remove_session(msg.session);
        self.chat_leave(msg.session);
    }
}

impl Handler<Receive> for Room {
    type Result = ();

    fn handle(&mut self, msg: Receive, ctx: &mut Self::Context) {
        let Receive {
            session,
            message,
            frame,
        } = msg;
        if self.members.doc(&session).is_none() {
            return; // closed by the room already; late frames are dropped
        }
        if !matches!(message, SyncMessage::SyncStep2(_) | SyncMessage::Update(_)) {
            self.apply_inbox(ctx); // everything is handled in the order it arrived
            if self.members.doc(&session).is_none() {
                return; // closed while the queue was applied (refused, or too slow)
            }
            if self.reloading {
                // The queue made yrs panic: this waits for the rebuilt document (the
                // reload holds the mailbox; this comes right after it).
                ctx.notify(Receive {
                    session,
                    message,
                    frame,
                });
                return;
            }
        }
        let Some(access) = self.members.doc(&session).map(|s| s.access) else {
            return;
        };
        match message {
            SyncMessage::SyncStep1(sv) => match self.document.diff(&sv) {
                Ok(diff) => {
                    let frame = SyncMessage::SyncStep2(diff.into()).encode();
                    // Reply with state that is durable: after the flush covering it.
                    self.after_durable(AfterFlush::Send { to: session, frame }, ctx);
                }
                // The document could not be thawed: rebuilt from the store; the client
                // asks again when it reconnects.
                Err(DocError::Panicked) => {
                    self.reload_after_panic(ctx);
                    let reloading = RoomError::Unavailable(Unavailable::Reloading);
                    self.close_session(session, reloading.close(), reloading.public_message());
                }
                Err(e) => self.close_session(session, close::MALFORMED_MESSAGE, e.to_string()),
            },
            SyncMessage::SyncStep2(update) | SyncMessage::Update(update)
                if access != Access::Write =>
            {
                // Refused, never applied. An empty update (a fresh client's SyncStep2) is no
                // attempt to write and gets no answer; anything else gets y-protocols'
                // "permission denied" so the client can tell the user.
                if update.as_ref() != EMPTY_UPDATE {
                    self.send(session, ysync::encode_permission_denied("read-only access"));
                }
            }
            SyncMessage::SyncStep2(update) | SyncMessage::Update(update) => {
                // Queued, and applied once the mailbox is empty (or the queue full): when
                // updates arrive faster than one at a time, a batch costs one transaction,
                // one log record and one broadcast.
                if self.inbox.is_empty() {
                    ctx.notify(ApplyInbox);
                }
                self.inbox_bytes += update.len();
                self.inbox.push((session, update));
                if self.inbox.len() >= MAX_INBOX_UPDATES || self.inbox_bytes >= MAX_INBOX_BYTES {
                    self.apply_inbox(ctx);
                }
            }
            SyncMessage::Awareness(payload) => match self.document.apply_awareness(&payload) {
                Ok(change) => {
                    if let Some(Connection {
                        role: Role::Doc { clients },
                        ..
                    }) = self.members.get_mut(&session)
                    {
                        members::note_clients(clients, &change.present, &change.removed);
                    }
                    // Relayed to everyone, the sender too, as the reference server does:
                    // the echo is what keeps an idle stock client's connection alive.
                    self.broadcast(&frame, &[]);
                }
                Err(e) => {
                    metrics::get().protocol_errors.inc();
                    self.close_session(session, close::MALFORMED_MESSAGE, e.to_string());
                }
            },
            SyncMessage::QueryAwareness => {
                if let Some(states) = self.document.awareness_states() {
                    self.send(session, SyncMessage::Awareness(states.into()).encode());
                }
            }
        }
    }
}

impl Handler<ApplyInbox> for Room {
    type Result = ();

    fn handle(&mut self, _msg: ApplyInbox, ctx: &mut Self::Context) {
        self.apply_inbox(ctx);
    }
}

impl Handler<ApplyUpdate> for Room {
    type Result = Result<DurableReply, RoomError>;

    fn handle(&mut self, msg: ApplyUpdate, ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err(RoomError::Unavailable(Unavailable::Stopping));
        }
        self.empty_since = Instant::now();
        self.apply_inbox(ctx);
        if self.reloading {
            return Err(RoomError::Unavailable(Unavailable::Reloading));
        }
        self.apply(&[&msg.update], None, ctx)?;
        let (tx, rx) = oneshot::channel();
        self.after_durable(
            AfterFlush::Reply {
                tx,
                body: Bytes::new(),
            },
            ctx,
        );
        Ok(rx)
    }
}

impl Handler<ReadState> for Room {
    type Result = Result<DurableReply, RoomError>;

    fn handle(&mut self, msg: ReadState, ctx: &mut Self::Context) -> Self::Result {
        self.empty_since = Instant::now();
        self.apply_inbox(ctx);
        if self.reloading {
            return Err(RoomError::Unavailable(Unavailable::Reloading));
        }
        let body: Bytes = if msg.json {
            match self.document.to_json() {
                Ok(json) => json.to_string().into(),
                Err(_) => {
                    self.reload_after_panic(ctx);
                    return Err(RoomError::Unavailable(Unavailable::Reloading));
                }
            }
        } else {
            self.document.snapshot().into()
        };
        let (tx, rx) = oneshot::channel();
        self.after_durable(AfterFlush::Reply { tx, body }, ctx);
        Ok(rx)
    }
}

/// What an HTTP waiter is told when the flush it waited for failed.
fn failure_of(cause: &StoreError) -> RoomError {
    match cause {
        StoreError::Fenced { .. } => RoomError::Unavailable(Unavailable::Moved),
        _ => RoomError::Unavailable(Unavailable::Failed),
    }
}

impl Handler<Shutdown> for Room {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.apply_inbox(ctx);
        if self.stopping {
            return Box::pin(actix::fut::ready(())); // failed while applying: nothing to save
        }
        self.stopping = true;
        self.close_all(msg.close, &msg.detail);
        self.snapshot();
        if let Err(e) = self.write_unwritten() {
            // Nothing pending may be acknowledged now; `fail` answers them with an error.
            self.fail(e, "the final log write", ctx);
            return Box::pin(actix::fut::ready(()));
        }
        Box::pin(
            self.store
                .flush(&self.name, self.epoch)
                .into_actor(self)
                .map(|result, room, ctx| {
                    match result {
                        Ok(()) => {
                            let released = room.commits.all_durable();
                            room.perform_released(released);
                        }
                        Err(e) => {
                            error!(room = %room.name, error = %e, "final flush failed");
                            let abandoned = room.commits.abandon();
                            room.refuse_all(abandoned, &e);
                        }
                    }
                    ctx.stop();
                }),
        )
    }
}
