//! Handing frames to the room's y-websocket sessions and closing them: one frame to
//! everyone but the senders, one to a single session, and the closes (a session too slow
//! to keep up, one that left, all of them at shutdown), each announcing the awareness
//! states the session carried. Sessions are only outboxes here; the sockets are theirs.

use std::time::Instant;

use bytes::Bytes;
use tracing::info;

use super::members::{Connection, Role};
use super::{Outbound, Room, SessionId};
use crate::metrics;
use crate::protocol::close::{self, Close};
use crate::protocol::ysync::Message as SyncMessage;

impl Room {
    /// Hands the same frame to every session but those in `except`.
    pub(super) fn broadcast(&mut self, frame: &Bytes, except: &[SessionId]) {
        let started = Instant::now();
        let (sent, slow) = self.members.send_frame_to_docs(frame, except);
        let m = metrics::get();
        m.updates_out.inc_by(sent);
        m.bytes_out.inc_by(sent * frame.len() as u64);
        m.broadcast_seconds.observe(started.elapsed().as_secs_f64());
        self.close_slow_sessions(slow);
    }

    pub(super) fn send(&mut self, to: SessionId, frame: Bytes) {
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
    pub(super) fn close_slow_sessions(&mut self, ids: Vec<SessionId>) {
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

    /// Removes a session, announcing the removal of the awareness states it carried.
    pub(super) fn remove_session(&mut self, id: SessionId) {
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
    pub(super) fn close_session(&mut self, id: SessionId, close: Close, detail: String) {
        if let Some(session) = self.members.doc(&id) {
            session.outbox.send(Outbound::Close(close, detail));
        }
        self.remove_session(id);
    }

    /// Closes every session and chat member with `close` and forgets them (shutdown,
    /// failure, stepping down).
    pub(super) fn close_all(&mut self, close: Close, detail: &str) {
        for (_, session) in self.members.drain_kind(false) {
            session
                .outbox
                .send(Outbound::Close(close, detail.to_owned()));
        }
        self.chat_close_all(close, detail);
    }
}
