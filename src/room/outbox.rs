//! A session's outbox as the room sees it: the session's address plus the bytes handed to it
//! and not yet taken. A session actor stops taking messages while its socket is full (the
//! HTTP layer polls it only when it can write), so its unread-bytes check cannot run then;
//! this count is what bounds such a session's queue. It owns no policy beyond that bound:
//! the room decides what a refused send means (the session is closed as too slow).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Recipient;

use super::Outbound;

/// A session's outbox: where the room sends, and how much is queued there.
#[derive(Clone)]
pub struct Outbox {
    recipient: Recipient<Outbound>,
    queued: Arc<AtomicU64>,
    limit: u64,
}

impl Outbox {
    /// An outbox that refuses sends while more than `limit` bytes are queued.
    pub fn new(recipient: Recipient<Outbound>, limit: u64) -> Self {
        Self {
            recipient,
            queued: Arc::default(),
            limit,
        }
    }

    /// Queues a frame or event; false, queuing nothing, when the session already has more
    /// than its limit queued. Closes are always queued.
    pub fn send(&self, message: Outbound) -> bool {
        let size = message.size();
        if size > 0 && self.queued.fetch_add(size, Ordering::Relaxed) > self.limit {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        self.recipient.do_send(message);
        true
    }

    /// Bytes queued and not yet taken.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// The session took `message` from its mailbox (called by the session).
    pub fn taken(&self, message: &Outbound) {
        self.queued.fetch_sub(message.size(), Ordering::Relaxed);
    }

    /// Whether the session is still alive.
    pub fn connected(&self) -> bool {
        self.recipient.connected()
    }
}

impl Outbound {
    /// The bytes this message puts on the wire (0 for a close).
    fn size(&self) -> u64 {
        match self {
            Outbound::Frame(frame) => frame.len() as u64,
            Outbound::Event(event) => event.json.len() as u64,
            Outbound::Close(..) => 0,
        }
    }
}
