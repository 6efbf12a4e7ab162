//! The room's commit queue: which actions wait for which writes to be durable. A room makes
//! writes (log records, stream messages) and queues what may only happen once they are
//! durable (a broadcast, an ack, an HTTP reply); a flush covers every write made before it
//! started; when it succeeds, the actions it covers are released, oldest first. Pure: it
//! holds no future and knows no store or actor, so its rules are tested here alone.
//!
//! The rules:
//! - nothing is released before a successful flush that covers it (started after its
//!   writes were made);
//! - actions are released in the order they were queued;
//! - a failed (or fenced) flush releases nothing: every queued action is handed back to be
//!   answered with an error, never performed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// An action waiting for durability.
#[derive(Debug)]
pub struct Pending<A> {
    /// How many writes must be durable before it is released.
    pub writes: u64,
    /// When it was queued (for the persist latency metric).
    pub since: Instant,
    /// What to do.
    pub action: A,
}

/// Writes made, writes known durable, the flush under way and the actions waiting.
#[derive(Debug)]
pub struct CommitQueue<A> {
    writes: u64,
    durable: u64,
    pending: VecDeque<Pending<A>>,
    /// The flush under way: its generation and how many writes it covers.
    in_flight: Option<(u64, u64)>,
    generation: u64,
    /// When the last flush started.
    last_started: Option<Instant>,
}

impl<A> Default for CommitQueue<A> {
    fn default() -> Self {
        Self {
            writes: 0,
            durable: 0,
            pending: VecDeque::new(),
            in_flight: None,
            generation: 0,
            last_started: None,
        }
    }
}

impl<A> CommitQueue<A> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// A write was handed to the store.
    pub fn record_write(&mut self) {
        self.writes += 1;
    }

    /// Writes made so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Whether nothing waits and no flush is under way.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_none()
    }

    /// Queues `action` until every write made so far is durable. Hands it back when it may
    /// be performed at once (everything is durable and nothing older waits).
    pub fn defer(&mut self, action: A, now: Instant) -> Option<A> {
        if self.pending.is_empty() && self.durable >= self.writes {
            return Some(action);
        }
        self.pending.push_back(Pending {
            writes: self.writes,
            since: now,
            action,
        });
        None
    }

    /// Whether a flush should start: something waits and no flush is under way.
    pub fn wants_flush(&self) -> bool {
        self.in_flight.is_none() && !self.pending.is_empty()
    }

    /// How long the next flush should wait so that flushes start at least `gap` apart:
    /// zero after a quiet spell, so light traffic never waits for it.
    pub fn wait_before_flush(&self, now: Instant, gap: Duration) -> Duration {
        self.last_started.map_or(Duration::ZERO, |at| {
            (at + gap).saturating_duration_since(now)
        })
    }

    /// A flush covering every write made so far has started at `now`; returns its
    /// generation.
    pub fn flush_started(&mut self, now: Instant) -> u64 {
        self.last_started = Some(now);
        self.generation += 1;
        self.in_flight = Some((self.generation, self.writes));
        self.generation
    }

    /// How many flushes have started.
    pub fn flushes_started(&self) -> u64 {
        self.generation
    }

    /// The generation of the flush under way, if any.
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight.map(|(generation, _)| generation)
    }

    /// The flush `generation` succeeded: the actions it covers, oldest first. Nothing if
    /// that flush is not the one under way (its end was handled already).
    pub fn flush_succeeded(&mut self, generation: u64) -> Vec<Pending<A>> {
        match self.in_flight {
            Some((g, upto)) if g == generation => {
                self.in_flight = None;
                self.durable = self.durable.max(upto);
                self.release()
            }
            _ => Vec::new(),
        }
    }

    /// The flush `generation` failed: nothing is released; every waiting action is handed
    /// back to be failed. Nothing if that flush is not the one under way.
    pub fn flush_failed(&mut self, generation: u64) -> Vec<Pending<A>> {
        match self.in_flight {
            Some((g, _)) if g == generation => {
                self.in_flight = None;
                self.abandon()
            }
            _ => Vec::new(),
        }
    }

    /// Every write made so far is durable (a flush made outside the queue, at shutdown):
    /// the actions that releases, oldest first.
    pub fn all_durable(&mut self) -> Vec<Pending<A>> {
        self.durable = self.writes;
        self.release()
    }

    /// Hands back every waiting action, unperformed (the room failed).
    pub fn abandon(&mut self) -> Vec<Pending<A>> {
        self.pending.drain(..).collect()
    }

    fn release(&mut self) -> Vec<Pending<A>> {
        let covered = self
            .pending
            .iter()
            .take_while(|p| p.writes <= self.durable)
            .count();
        if covered == self.pending.len() {
            // Everything: the queue's memory goes with it (an idle room keeps none).
            return std::mem::take(&mut self.pending).into();
        }
        self.pending.drain(..covered).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flushes_start_a_gap_apart_and_never_wait_after_a_quiet_spell() {
        let t0 = Instant::now();
        let gap = Duration::from_millis(10);
        let mut q = CommitQueue::<()>::new();
        assert_eq!(q.wait_before_flush(t0, gap), Duration::ZERO, "first flush");
        q.flush_started(t0);
        let soon = t0 + Duration::from_millis(3);
        assert_eq!(q.wait_before_flush(soon, gap), Duration::from_millis(7));
        assert_eq!(
            q.wait_before_flush(soon, Duration::ZERO),
            Duration::ZERO,
            "no gap: at once"
        );
        let later = t0 + Duration::from_millis(25);
        assert_eq!(q.wait_before_flush(later, gap), Duration::ZERO, "quiet");
    }

    #[test]
    fn an_action_waits_for_the_flush_that_covers_its_writes() {
        let now = Instant::now();
        let mut q = CommitQueue::new();
        assert_eq!(
            q.defer("free", now),
            Some("free"),
            "nothing written: at once"
        );
        q.record_write();
        assert_eq!(q.defer("a", now), None);
        assert!(q.wants_flush());
        let first = q.flush_started(Instant::now());
        q.record_write();
        assert_eq!(q.defer("b", now), None);
        assert!(!q.wants_flush(), "one flush at a time");
        let released: Vec<_> = q
            .flush_succeeded(first)
            .into_iter()
            .map(|p| p.action)
            .collect();
        assert_eq!(released, ["a"], "b's write came after the flush started");
        assert!(q.wants_flush());
        let second = q.flush_started(Instant::now());
        assert!(
            q.flush_succeeded(first).is_empty(),
            "an old generation is ignored"
        );
        let released: Vec<_> = q
            .flush_succeeded(second)
            .into_iter()
            .map(|p| p.action)
            .collect();
        assert_eq!(released, ["b"]);
        assert!(q.is_idle());
    }

    #[test]
    fn a_failed_flush_releases_nothing_and_hands_everything_back() {
        let now = Instant::now();
        let mut q = CommitQueue::new();
        q.record_write();
        q.defer(1, now);
        let g = q.flush_started(Instant::now());
        q.record_write();
        q.defer(2, now);
        let back: Vec<_> = q.flush_failed(g).into_iter().map(|p| p.action).collect();
        assert_eq!(back, [1, 2]);
        assert!(q.is_idle());
    }

    #[test]
    fn an_action_queued_behind_others_keeps_its_place() {
        let now = Instant::now();
        let mut q = CommitQueue::new();
        q.record_write();
        q.defer("write", now);
        let g = q.flush_started(Instant::now());
        // No new write, but an older action waits: this one must not overtake it.
        assert_eq!(q.defer("reply", now), None);
        let released: Vec<_> = q.flush_succeeded(g).into_iter().map(|p| p.action).collect();
        assert_eq!(released, ["write", "reply"]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write,
        Defer,
        StartFlush,
        /// End the flush under way: true for success.
        EndFlush(bool),
        EndOld(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Write),
            3 => Just(Op::Defer),
            2 => Just(Op::StartFlush),
            2 => any::<bool>().prop_map(Op::EndFlush),
            1 => any::<bool>().prop_map(Op::EndOld),
        ]
    }

    proptest! {
        /// The model: each action records the writes made when it was queued; each flush
        /// the writes made when it started. An action is released only by a successful flush
        /// that started after its writes, in order, and a failed flush releases nothing.
        #[test]
        fn nothing_is_released_before_the_flush_that_covers_it(ops in proptest::collection::vec(op(), 1..200)) {
            let now = Instant::now();
            let mut q: CommitQueue<(u64, u64)> = CommitQueue::new();
            let mut next_id = 0u64;
            let mut released_ids: Vec<u64> = Vec::new();
            let mut failed_ids: Vec<u64> = Vec::new();
            // (generation, writes covered) of the flush under way in the model.
            let mut flush: Option<(u64, u64)> = None;
            let mut durable_model = 0u64;
            let mut old_generations: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Write => q.record_write(),
                    Op::Defer => {
                        let id = next_id;
                        next_id += 1;
                        if let Some((id, writes)) = q.defer((id, q.writes()), now) {
                            prop_assert!(writes <= durable_model, "performed at once before durable");
                            released_ids.push(id);
                        }
                    }
                    Op::StartFlush => {
                        if q.wants_flush() {
                            let g = q.flush_started(Instant::now());
                            flush = Some((g, q.writes()));
                        }
                    }
                    Op::EndFlush(ok) => {
                        if let Some((g, upto)) = flush.take() {
                            old_generations.push(g);
                            if ok {
                                durable_model = durable_model.max(upto);
                                for p in q.flush_succeeded(g) {
                                    prop_assert!(p.action.1 <= upto, "released before a covering flush");
                                    released_ids.push(p.action.0);
                                }
                            } else {
                                let back = q.flush_failed(g);
                                failed_ids.extend(back.iter().map(|p| p.action.0));
                            }
                        }
                    }
                    Op::EndOld(ok) => {
                        if let Some(&g) = old_generations.last() {
                            let out = if ok { q.flush_succeeded(g) } else { q.flush_failed(g) };
                            prop_assert!(out.is_empty(), "an ended flush released again");
                        }
                    }
                }
            }
            // In order, each at most once, and never both released and failed.
            let mut all = released_ids.clone();
            all.extend(&failed_ids);
            let mut sorted = released_ids.clone();
            sorted.sort_unstable();
            prop_assert_eq!(&sorted, &released_ids, "released out of order");
            let count = all.len();
            all.sort_unstable();
            all.dedup();
            prop_assert_eq!(all.len(), count, "an action came out twice");
        }
    }
}
