//! Per-session flow control, pure: a token bucket for the message rate and the in-flight
//! byte count that bounds a session's outbox. No actors, no sockets, no clocks of its own
//! (callers pass `Instant`s), so both are unit-tested directly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Unanswered probes remembered per session.
const MAX_PROBES: usize = 64;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
///
/// Sessions use it to throttle, not to refuse: [`TokenBucket::take`] always succeeds and
/// may leave the bucket in debt; the caller stops reading the client for the time it
/// returns, so that a client over the rate is slowed by TCP backpressure rather than cut.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Whole and fractional tokens; negative while in debt.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes one token, into debt if need be: `Some(wait)` when the bucket is left without
    /// a whole token, `wait` being how long until it holds one again.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= 1.0;
        self.wait(now)
    }

    /// Takes one token if the bucket holds one; false (and nothing taken) when it does not.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the bucket holds a whole token, or None if it does at `now`.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

/// Bytes sent to a client that it has not yet read.
///
/// WebSocket pings carry the count of bytes sent before them. A client answers a ping only
/// after reading every frame sent before it, so the newest answered count is what the
/// client has surely read, and `sent - read` bounds what is still queued anywhere between
/// this process and the client: the actor's write buffer, the socket buffers, the network.
///
/// A healthy client is always a round trip behind, and one group commit can release a
/// large burst at once, so what judges a client is [`InFlight::overdue`]: the bytes it has
/// left unread for longer than a grace period.
#[derive(Debug, Default, Clone)]
pub struct InFlight {
    sent: u64,
    read: u64,
    last_probe: u64,
    /// Unanswered probes: when each was sent and the count it carried, oldest first.
    probes: VecDeque<(Instant, u64)>,
}

impl InFlight {
    /// Records `bytes` handed to the socket.
    pub fn sent(&mut self, bytes: usize) {
        self.sent += bytes as u64;
    }

    /// Bytes sent and not yet known read.
    pub fn unread(&self) -> u64 {
        self.sent - self.read
    }

    /// Bytes sent at least `grace` before `now` and not yet known read.
    pub fn overdue(&self, now: Instant, grace: Duration) -> u64 {
        let sent_before = self
            .probes
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= grace)
            .map_or(self.read, |&(_, count)| count);
        sent_before.saturating_sub(self.read)
    }

    /// A ping payload to send now if `every` bytes went out since the last one (`now` is
    /// asked only then: this runs on every delivery).
    pub fn probe_due(&mut self, every: u64, now: impl FnOnce() -> Instant) -> Option<[u8; 8]> {
        (self.sent - self.last_probe >= every).then(|| self.probe(now()))
    }

    /// A ping payload carrying the current count.
    pub fn probe(&mut self, now: Instant) -> [u8; 8] {
        self.last_probe = self.sent;
        if self.sent > self.read && self.probes.back().is_none_or(|&(_, c)| c < self.sent) {
            if self.probes.len() >= MAX_PROBES {
                // A client that never answers: fold into the newest (bounded memory; its
                // time stays, so what is overdue is only under-counted).
                if let Some(newest) = self.probes.back_mut() {
                    newest.1 = self.sent;
                }
            } else {
                self.probes.push_back((now, self.sent));
            }
        }
        self.sent.to_be_bytes()
    }

    /// Handles a pong's payload; ignores payloads that are not ours.
    pub fn answered(&mut self, payload: &[u8]) {
        if let Ok(bytes) = <[u8; 8]>::try_from(payload) {
            let read = u64::from_be_bytes(bytes);
            if read <= self.sent {
                self.read = self.read.max(read);
                while self.probes.front().is_some_and(|&(_, c)| c <= self.read) {
                    self.probes.pop_front();
                }
                if self.probes.is_empty() {
                    // A live client answers every probe: its idle session holds no queue.
                    self.probes = VecDeque::new();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, start);
        assert_eq!((0..8).filter(|_| bucket.try_take(start)).count(), 5);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..8).filter(|_| bucket.try_take(later)).count(), 5);
    }

    #[test]
    fn taking_past_the_burst_throttles_for_the_debt() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, start);
        assert_eq!(bucket.take(start), None);
        assert_eq!(bucket.take(start), None);
        // The last whole token: now the caller waits one token's time (100 ms).
        let wait = bucket.take(start).expect("empty");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // Taken anyway (a frame already read): the debt doubles the wait.
        let wait = bucket.take(start).expect("in debt");
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
        assert!(!bucket.try_take(start), "nothing to take while in debt");
        // After waiting what it said, a token is there.
        let later = start + Duration::from_millis(200);
        assert_eq!(bucket.wait(later), None);
        assert!(bucket.try_take(later));
    }

    proptest::proptest! {
        /// Whatever the pattern of takes, a caller that waits what `take` says never gets
        /// more than the burst plus the rate times the time spent.
        #[test]
        fn a_throttled_caller_stays_within_the_rate(gaps in proptest::collection::vec(0u64..50, 1..300)) {
            let start = Instant::now();
            let (rate, burst) = (100.0, 20.0);
            let mut bucket = TokenBucket::new(rate, burst, start);
            let mut now = start;
            for gap in &gaps {
                now += Duration::from_millis(*gap);
                if let Some(wait) = bucket.take(now) {
                    now += wait;
                }
            }
            let allowed = burst + rate * now.duration_since(start).as_secs_f64();
            proptest::prop_assert!(gaps.len() as f64 <= allowed + 1.0);
        }
    }

    #[test]
    fn unread_bytes_fall_only_when_a_probe_is_answered() {
        let now = Instant::now();
        let mut flight = InFlight::default();
        flight.sent(100);
        assert_eq!(flight.probe_due(1000, || now), None);
        let probe = flight.probe(now);
        flight.sent(50);
        assert_eq!(flight.unread(), 150);
        flight.answered(&probe);
        assert_eq!(flight.unread(), 50);
        flight.answered(b"other"); // not ours
        flight.answered(&u64::MAX.to_be_bytes()); // impossible count
        assert_eq!(flight.unread(), 50);
        flight.sent(1000);
        assert!(flight.probe_due(1000, || now).is_some());
    }

    #[test]
    fn only_bytes_unread_for_longer_than_the_grace_are_overdue() {
        let grace = Duration::from_secs(2);
        let start = Instant::now();
        let mut flight = InFlight::default();
        flight.sent(1000);
        let first = flight.probe(start);
        assert_eq!(
            flight.overdue(start, grace),
            0,
            "a fresh burst is not overdue"
        );
        let later = start + Duration::from_secs(1);
        flight.sent(500);
        let second = flight.probe(later);
        assert_eq!(flight.overdue(later, grace), 0);
        // Two seconds on, the first burst is overdue but not the second.
        assert_eq!(flight.overdue(start + grace, grace), 1000);
        assert_eq!(flight.overdue(later + grace, grace), 1500);
        // Reading catches up.
        flight.answered(&first);
        assert_eq!(flight.overdue(later + grace, grace), 500);
        flight.answered(&second);
        assert_eq!(flight.overdue(later + grace * 10, grace), 0);
        assert_eq!(flight.unread(), 0);
    }
}
