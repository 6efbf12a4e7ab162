//! The room's side of group commit: it starts a flush when something waits for one (at
//! most one at a time, the next after the commit gap under a steady stream), notices when
//! the flush ends, and then performs what the flush released, in order: each run of
//! broadcasts as one merged update per recipient, each run of chat messages as one batch
//! per member with the acks after it, HTTP replies. A failed flush fails the room.
//!
//! Which action waits for which flush is the [`commit`](super::commit) queue's business;
//! this module is the actor shell around it and never touches the document or the store
//! beyond handing it the unwritten log and asking for a flush.

use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::future::{FutureExt, Shared};
use tokio::sync::oneshot;
use tracing::error;

use super::{chat, commit, Room, RoomError, SessionId, Unavailable};
use crate::metrics;
use crate::protocol::ysync::Message as SyncMessage;
use crate::storage::{Durable, StoreError};
use crate::stream::wire::Event;

/// What to do once the room's log is durable up to a sequence number.
pub(super) enum AfterFlush {
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
pub(super) struct InFlight {
    generation: u64,
    done: Shared<Durable>,
}

impl Room {
    /// Runs `action` once everything logged so far is durable.
    pub(super) fn after_durable(&mut self, action: AfterFlush, ctx: &mut Context<Self>) {
        self.poll_flush(ctx);
        if let Some(action) = self.commits.defer(action, Instant::now()) {
            self.perform(action);
            return;
        }
        self.request_flush(ctx);
    }

    /// Starts a flush unless one is running or one waits for the commit gap; when it
    /// ends, releases what it covered.
    pub(super) fn request_flush(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn request_next_flush(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn poll_flush(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn flush_done(
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
    pub(super) fn refuse_all(
        &mut self,
        pending: Vec<commit::Pending<AfterFlush>>,
        cause: &StoreError,
    ) {
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
    pub(super) fn perform_released(&mut self, released: Vec<commit::Pending<AfterFlush>>) {
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
    pub(super) fn release_chat(
        &mut self,
        messages: Vec<(u64, Event)>,
        acks: Vec<chat::ChatAction>,
    ) {
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
    pub(super) fn broadcast_updates(&mut self, run: Vec<(Bytes, Option<SessionId>)>) {
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

    pub(super) fn perform(&mut self, action: AfterFlush) {
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

    /// Hands the logged updates not yet written to the store, as one record.
    pub(super) fn write_unwritten(&mut self) -> Result<(), StoreError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.unwritten);
        self.store
            .append_updates(&self.name, self.epoch, self.last_seq, records)
    }
}

/// What an HTTP waiter is told when the flush it waited for failed.
fn failure_of(cause: &StoreError) -> RoomError {
    match cause {
        StoreError::Fenced { .. } => RoomError::Unavailable(Unavailable::Moved),
        _ => RoomError::Unavailable(Unavailable::Failed),
    }
}
