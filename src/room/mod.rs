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
//! timeout writes a final snapshot and tells the registry.
//!
//! This module holds the actor's state, its lifecycle and its handlers; the rest is split
//! by concern: which writes must be durable before which action is the [`commit`] queue's
//! business, starting flushes and performing what they release is `release`'s, handing
//! frames to sessions and closing them is `delivery`'s, and the messages themselves are in
//! `messages`. The chat stream's part of the room is `chat`.

mod awareness;
mod chat;
pub mod commit;
mod delivery;
pub mod document;
mod error;
mod history;
mod members;
mod messages;
mod outbox;
mod release;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

pub use crate::id::{RoomName, RoomNameError, SessionId, MAX_ROOM_NAME_LEN};
pub use chat::{
    ChatJoin, ChatRequest, HttpPublish, ReadMessages, ReadReply, StreamConfig, DEFAULT_PAGE,
    MAX_PAGE,
};
pub use document::{DocError, Document};
pub use error::{RoomError, Unavailable, STORAGE_FAILED};
pub use messages::{
    ApplyUpdate, Deactivated, DurableReply, Join, Leave, Outbound, ReadState, Receive, Shutdown,
};
pub use outbox::{channel as outbox, Inbox, Outbox, HARD_FACTOR, SLOW_GRACE};

use crate::auth::Access;
use crate::id::Epoch;
use crate::metrics;
use crate::protocol::close;
use crate::protocol::update_check::check_update_v1;
use crate::protocol::ysync::{self, Message as SyncMessage};
use crate::storage::{Store, StoreError, StoredDoc};
use commit::CommitQueue;
use members::{Connection, Members, Role};
use release::{AfterFlush, InFlight};

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

/// Sent by the room to itself: apply the queued updates (handled after the messages
/// already in the mailbox).
#[derive(Message)]
#[rtype(result = "()")]
struct ApplyInbox;

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
