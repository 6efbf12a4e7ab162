//! A session's mailbox: the room's [`Outbox`] sends into it, the session's [`Inbox`] takes
//! from it, and it counts the bytes handed over and not yet taken. A session normally
//! takes its messages at once (and bounds what its client leaves unread itself), but not
//! while it waits for its join or when its thread is starved; the count bounds what can
//! pile up meanwhile. It owns no policy beyond that bound: the room decides what a refused
//! send means (the session is closed as too slow).
//!
//! Written here rather than taken from a channel crate because a broadcast sends one
//! message per recipient, and the channels at hand allocate per message (a node freed by
//! the other thread, then consolidated by glibc: 2–3% of the server's time at 1 → 1,000
//! fan-out) or per channel in blocks of 31–32 slots (1–2 KiB for every idle session). This
//! one holds the oldest message inline and allocates only for a burst, freeing that
//! allocation once the session has taken the burst.

use std::cell::Cell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::Stream;

use super::Outbound;

/// How long a client may stay over its outbox limit before it is closed as too slow: a
/// healthy client is a round trip behind, and one group commit can release a large burst.
pub const SLOW_GRACE: Duration = Duration::from_secs(2);
/// Bytes over the limit, as a multiple of it, that close a session at once.
pub const HARD_FACTOR: u64 = 4;

/// A new mailbox whose outbox refuses sends while more than `limit` bytes are queued.
pub fn channel(limit: u64) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            oldest: None,
            rest: VecDeque::new(),
            queued: 0,
            senders: 1,
            receiver_gone: false,
            waker: None,
        }),
    });
    let outbox = Outbox {
        shared: Arc::clone(&shared),
        limit,
        over_since: Cell::new(None),
    };
    (outbox, Inbox { shared })
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    /// The state; a panic elsewhere while it was held leaves nothing half-done in it
    /// (every change is one push, pop or count), so a poisoned lock is taken as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State {
    /// The oldest message not yet taken: inline, so one message at a time (every message
    /// at light load) allocates nothing.
    oldest: Option<Outbound>,
    /// The messages behind it, in order; unallocated unless a burst is waiting.
    rest: VecDeque<Outbound>,
    /// Bytes handed over and not yet taken.
    queued: u64,
    /// Outboxes alive: when none is left, the inbox ends.
    senders: usize,
    receiver_gone: bool,
    /// The session's task, while it waits for a message.
    waker: Option<Waker>,
}

impl State {
    fn pop(&mut self) -> Option<Outbound> {
        let message = self.oldest.take()?;
        self.oldest = self.rest.pop_front();
        if self.oldest.is_none() && self.rest.capacity() > 0 {
            // Everything is taken: free the burst's memory. (Not sooner: a session one
            // message behind would allocate it again on every send.)
            self.rest = VecDeque::new();
        }
        self.queued -= message.size();
        Some(message)
    }
}

/// A session's outbox: where the room sends, and how much is queued there.
pub struct Outbox {
    shared: Arc<Shared>,
    limit: u64,
    /// Since when the queue has been over the limit (the room's copy only).
    over_since: Cell<Option<Instant>>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
            limit: self.limit,
            over_since: self.over_since.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.waker.take()
        };
        // The last outbox is gone: the session sees its inbox end.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Outbox {
    /// Queues a frame or event; false, queuing nothing, when the session has had more than
    /// its limit queued for [`SLOW_GRACE`], or has more than [`HARD_FACTOR`] times it.
    /// Closes are always queued.
    pub fn send(&self, message: Outbound) -> bool {
        let size = message.size();
        let waker = {
            let mut state = self.shared.lock();
            if size > 0 && self.too_slow_with(state.queued) {
                return false;
            }
            // A session that is gone takes nothing more; the room hears of it by
            // `connected`.
            if state.receiver_gone {
                return true;
            }
            state.queued += size;
            if state.oldest.is_none() {
                state.oldest = Some(message);
            } else {
                state.rest.push_back(message);
            }
            state.waker.take()
        };
        // Woken outside the lock: the session's thread may be waiting for it.
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Whether the session has had more than its limit queued for [`SLOW_GRACE`], or has
    /// more than [`HARD_FACTOR`] times it (the room also asks on its tick, since a stalled
    /// session may be sent nothing more).
    pub fn too_slow(&self) -> bool {
        self.too_slow_with(self.queued())
    }

    /// [`Self::too_slow`] with `queued` bytes queued.
    fn too_slow_with(&self, queued: u64) -> bool {
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
        self.shared.lock().queued
    }

    /// Whether the session is still alive.
    pub fn connected(&self) -> bool {
        !self.shared.lock().receiver_gone
    }
}

/// The session's side of its mailbox: the messages in the order they were sent, ending
/// once every [`Outbox`] is gone.
pub struct Inbox {
    shared: Arc<Shared>,
}

impl Inbox {
    /// The next message if one is waiting (taking it frees its bytes in the count).
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.shared.lock().pop()
    }
}

impl Stream for Inbox {
    type Item = Outbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        let mut state = self.shared.lock();
        if let Some(message) = state.pop() {
            return Poll::Ready(Some(message));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let (oldest, rest) = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            state.queued = 0;
            state.waker = None;
            (state.oldest.take(), std::mem::take(&mut state.rest))
        };
        drop((oldest, rest)); // outside the lock: dropping an event may free a batch
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
    use futures_util::StreamExt;

    fn frame(byte: u8) -> Outbound {
        Outbound::Frame(Bytes::from(vec![byte; 100]))
    }

    fn first_byte(message: Option<Outbound>) -> Option<u8> {
        match message {
            Some(Outbound::Frame(frame)) => Some(frame[0]),
            _ => None,
        }
    }

    #[test]
    fn sends_are_refused_once_the_limit_is_queued_and_taking_frees_room() {
        // A session that takes nothing until told to.
        let (outbox, mut inbox) = channel(150);
        // Under the limit, then over it within the grace: queued up to 4x the limit (the
        // send that crosses a bound is the last one taken).
        let accepted = (0..10).take_while(|&i| outbox.send(frame(i))).count();
        assert_eq!(accepted, 7);
        assert_eq!(outbox.queued(), 700, "a refused send queues nothing");
        assert!(outbox.too_slow());
        assert!(outbox.send(Outbound::Close(close::TOO_SLOW, String::new())));
        let taken: Vec<_> = (0..7).map(|_| first_byte(inbox.try_recv())).collect();
        assert_eq!(taken, (0..7).map(Some).collect::<Vec<_>>(), "in order");
        assert!(matches!(inbox.try_recv(), Some(Outbound::Close(..))));
        assert!(inbox.try_recv().is_none());
        assert_eq!(outbox.queued(), 0);
        assert!(!outbox.too_slow());
        assert!(outbox.send(frame(1)));
        assert!(outbox.send(frame(2)));
        // Over the limit for longer than the grace: refused.
        outbox
            .over_since
            .set(Some(Instant::now() - SLOW_GRACE - Duration::from_millis(1)));
        assert!(!outbox.send(frame(3)));
        assert!(outbox.connected());
        drop(inbox);
        assert!(
            !outbox.connected(),
            "a session that is gone is seen as gone"
        );
        assert_eq!(outbox.queued(), 0, "what it left is dropped with it");
        assert!(outbox.send(frame(4)), "sending to it is harmless");
    }

    #[test]
    fn a_burst_is_allocated_only_while_it_waits() {
        let (outbox, mut inbox) = channel(1 << 20);
        outbox.send(frame(1));
        assert_eq!(
            inbox.shared.lock().rest.capacity(),
            0,
            "one message is inline"
        );
        for i in 2..=5 {
            outbox.send(frame(i));
        }
        assert!(inbox.shared.lock().rest.capacity() > 0);
        let taken: Vec<_> = std::iter::from_fn(|| first_byte(inbox.try_recv())).collect();
        assert_eq!(taken, vec![1, 2, 3, 4, 5]);
        assert_eq!(inbox.shared.lock().rest.capacity(), 0, "freed once taken");
        // A session that stays one message behind keeps the allocation it has.
        outbox.send(frame(6));
        outbox.send(frame(7));
        for i in 8..20 {
            assert_eq!(first_byte(inbox.try_recv()), Some(i - 2));
            assert!(
                inbox.shared.lock().rest.capacity() > 0,
                "kept while one waits"
            );
            outbox.send(frame(i));
        }
        assert_eq!(first_byte(inbox.try_recv()), Some(18));
        assert_eq!(first_byte(inbox.try_recv()), Some(19));
        assert_eq!(inbox.shared.lock().rest.capacity(), 0);
    }

    #[actix_rt::test]
    async fn the_inbox_wakes_on_a_send_and_ends_when_every_outbox_is_gone() {
        let (outbox, mut inbox) = channel(1 << 20);
        let second = outbox.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            assert!(outbox.send(frame(9)));
        });
        assert_eq!(first_byte(inbox.next().await), Some(9));
        sender.join().expect("the sending thread");
        drop(second);
        assert!(
            inbox.next().await.is_none(),
            "no outbox left: the inbox ends"
        );
    }
}
