//! A session's outbox as the room sees it: the channel to the session plus the bytes handed
//! to it and not yet taken. A session normally takes its messages at once (and bounds what
//! its client leaves unread itself), but not while it waits for its join or when its thread
//! is starved; this count bounds what can pile up in the channel meanwhile. It owns no policy
//! beyond that bound: the room decides what a refused send means (the session is closed as
//! too slow).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedSender;

use super::Outbound;

/// How long a client may stay over its outbox limit before it is closed as too slow: a
/// healthy client is a round trip behind, and one group commit can release a large burst.
pub const SLOW_GRACE: Duration = Duration::from_secs(2);
/// Bytes over the limit, as a multiple of it, that close a session at once.
pub const HARD_FACTOR: u64 = 4;

/// A session's outbox: where the room sends, and how much is queued there.
#[derive(Clone)]
pub struct Outbox {
    /// A plain channel, not an actor's address: a session is a task, and a channel costs
    /// one allocation where an address costs three.
    sender: UnboundedSender<Outbound>,
    queued: Arc<AtomicU64>,
    limit: u64,
    /// Since when the queue has been over the limit (the room's copy only).
    over_since: Cell<Option<Instant>>,
}

impl Outbox {
    /// An outbox that refuses sends while more than `limit` bytes are queued.
    pub fn new(sender: UnboundedSender<Outbound>, limit: u64) -> Self {
        Self {
            sender,
            queued: Arc::default(),
            limit,
            over_since: Cell::new(None),
        }
    }

    /// Queues a frame or event; false, queuing nothing, when the session has had more than
    /// its limit queued for [`SLOW_GRACE`], or has more than [`HARD_FACTOR`] times it.
    /// Closes are always queued.
    pub fn send(&self, message: Outbound) -> bool {
        let size = message.size();
        if size > 0 && self.too_slow() {
            return false;
        }
        self.queued.fetch_add(size, Ordering::Relaxed);
        // A session that is gone takes nothing more; the room hears of it by `connected`.
        let _ = self.sender.unbounded_send(message);
        true
    }

    /// Whether the session has had more than its limit queued for [`SLOW_GRACE`], or has
    /// more than [`HARD_FACTOR`] times it (the room also asks on its tick, since a stalled
    /// session may be sent nothing more).
    pub fn too_slow(&self) -> bool {
        let queued = self.queued.load(Ordering::Relaxed);
        if queued <= self.limit {
            self.over_since.set(None);
            return false;
        }
        let now = Instant::now();
        let since = self.over_since.get().unwrap_or(now);
        self.over_since.set(Some(since));
        queued > self.limit.saturating_mul(HARD_FACTOR) || now - since >= SLOW_GRACE
    }

    /// Bytes queued and not yet taken.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// What the session keeps of its outbox: the count it takes messages off. (A whole
    /// copy would hold a second address to the session, three allocations.)
    pub fn receipts(&self) -> Receipts {
        Receipts(Arc::clone(&self.queued))
    }

    /// Whether the session is still alive.
    pub fn connected(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// The session's side of its outbox: it tells the room's count what it took.
pub struct Receipts(Arc<AtomicU64>);

impl Receipts {
    /// The session took `message` from its mailbox.
    pub fn taken(&self, message: &Outbound) {
        self.0.fetch_sub(message.size(), Ordering::Relaxed);
    }
}

impl Outbound {
    /// The bytes this message puts on the wire (0 for a close).
    fn size(&self) -> u64 {
        match self {
            Outbound::Frame(frame) => frame.len() as u64,
            Outbound::Event(event) => event.json.len() as u64,
            Outbound::Events(events) => events.iter().map(|e| e.json.len() as u64).sum(),
            Outbound::Close(..) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::close;
    use bytes::Bytes;
    use futures_channel::mpsc;

    #[test]
    fn sends_are_refused_once_the_limit_is_queued_and_taking_frees_room() {
        // A session that never takes anything (its channel only fills).
        let (sender, stalled) = mpsc::unbounded();
        let outbox = Outbox::new(sender, 150);
        let frame = || Outbound::Frame(Bytes::from(vec![0u8; 100]));
        // Under the limit, then over it within the grace: queued up to 4x the limit (the
        // send that crosses a bound is the last one taken).
        let accepted = (0..10).take_while(|_| outbox.send(frame())).count();
        assert_eq!(accepted, 7);
        assert_eq!(outbox.queued(), 700, "a refused send queues nothing");
        assert!(outbox.too_slow());
        assert!(outbox.send(Outbound::Close(close::TOO_SLOW, String::new())));
        let receipts = outbox.receipts();
        for _ in 0..7 {
            receipts.taken(&frame());
        }
        assert_eq!(outbox.queued(), 0);
        assert!(!outbox.too_slow());
        assert!(outbox.send(frame()));
        assert!(outbox.send(frame()));
        // Over the limit for longer than the grace: refused.
        outbox
            .over_since
            .set(Some(Instant::now() - SLOW_GRACE - Duration::from_millis(1)));
        assert!(!outbox.send(frame()));
        assert!(outbox.connected());
        drop(stalled);
        assert!(
            !outbox.connected(),
            "a session that is gone is seen as gone"
        );
    }
}
