//! Which slow store operations get a log line. A flush or round trip slower than
//! [`THRESHOLD`] holds back every acknowledgement and broadcast behind it, so an operator
//! should see it next to the clients' complaints; but a disk that stalls for a minute must
//! not write a line per flush. At most one line per [`EVERY`], saying how many slow ones
//! it stands for. What is logged, and with which fields, is the store's business; this
//! only decides when (pure: the caller passes the clock).

use std::time::{Duration, Instant};

/// An operation slower than this is slow.
pub(super) const THRESHOLD: Duration = Duration::from_millis(100);
/// At most one line per this long.
pub(super) const EVERY: Duration = Duration::from_secs(10);

/// When the last line was written and how many slow operations came since.
#[derive(Debug, Default)]
pub(super) struct SlowLog {
    last_line: Option<Instant>,
    unlogged: u64,
}

impl SlowLog {
    /// Notes an operation that took `took`, ending at `now`. `Some(n)` when a line is due:
    /// it stands for `n` slow operations (this one and those left unlogged since the last
    /// line).
    pub(super) fn note(&mut self, took: Duration, now: Instant) -> Option<u64> {
        if took < THRESHOLD {
            return None;
        }
        self.unlogged += 1;
        if self
            .last_line
            .is_some_and(|at| now.saturating_duration_since(at) < EVERY)
        {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_operations_are_never_logged_and_slow_ones_once_per_interval() {
        let start = Instant::now();
        let slow = THRESHOLD + Duration::from_millis(1);
        let mut log = SlowLog::default();
        assert_eq!(log.note(THRESHOLD - Duration::from_millis(1), start), None);
        assert_eq!(
            log.note(slow, start),
            Some(1),
            "the first slow one is logged"
        );
        for i in 1..=5 {
            assert_eq!(log.note(slow, start + Duration::from_secs(i)), None);
        }
        assert_eq!(
            log.note(Duration::ZERO, start + EVERY),
            None,
            "fast: nothing"
        );
        assert_eq!(
            log.note(slow, start + EVERY),
            Some(6),
            "the next line counts the five left unlogged"
        );
        assert_eq!(log.note(slow, start + EVERY * 2), Some(1));
    }
}
