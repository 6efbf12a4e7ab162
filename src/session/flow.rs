//! The session's flow control, as handlers: the outbox rule (a client that leaves too
//! much unread for too long is cut, 4008) and the message rate (a client over it is not
//! read until its tokens refill). The arithmetic behind both is in [`super::limits`];
//! what a cut or a pause does to the socket is the session's.

use std::time::{Duration, Instant};

use tracing::info;

use super::socket::Pause;
use super::Session;
use crate::metrics;
use crate::protocol::close;
use crate::room::{HARD_FACTOR, SLOW_GRACE};

impl Session {
    /// While the client has more than the limit unread, looks again once the oldest of
    /// it can be overdue: a burst that stops does not leave a silent client's bytes held
    /// until the next frame or the heartbeat timeout.
    pub(super) fn schedule_slow_check(&mut self) {
        if self.slow_check_at.is_some() || self.in_flight.unread() <= self.config.max_outbox_bytes {
            return;
        }
        self.slow_check_at = Some(Instant::now() + SLOW_GRACE / 4);
    }

    /// The slow check [`Self::schedule_slow_check`] asked for is due.
    pub(super) fn slow_check(&mut self) {
        self.slow_check_at = None;
        if !self.closing && !self.cut_if_too_slow() {
            self.schedule_slow_check();
        }
    }

    /// The outbox rule: cuts the client (4008) when what it left unread for longer than
    /// the grace is over the limit, or when its unread bytes pass the hard bound whatever
    /// their age. True when it cut.
    pub(super) fn cut_if_too_slow(&mut self) -> bool {
        let max = self.config.max_outbox_bytes;
        let unread = self.in_flight.unread();
        if unread <= max {
            return false; // nothing can be overdue (the common case: no clock read)
        }
        let overdue = self.in_flight.overdue(Instant::now(), SLOW_GRACE);
        // While the client is throttled its pongs wait behind its own frames, unread by
        // us: only the hard bound (memory) judges it then.
        let soft = overdue > max && !self.throttled_within(SLOW_GRACE);
        if !soft && unread <= max.saturating_mul(HARD_FACTOR) {
            return false;
        }
        self.cut_slow("client too slow", unread);
        true
    }

    /// Closes the session as too slow (4008). Frames it has not begun to receive are
    /// dropped, so the close frame is next.
    pub(super) fn cut_slow(&mut self, why: &str, unread: u64) {
        info!(room = %self.room_name, session = self.id.0, unread, "closing session: {why}");
        metrics::get().slow_consumers.inc();
        self.writer.discard_unsent();
        self.close(close::TOO_SLOW, &format!("{unread} bytes unread"));
    }

    /// Whether the session's reading was paused for the message rate within `window`.
    pub(super) fn throttled_within(&self, window: Duration) -> bool {
        self.last_throttled.is_some_and(|at| at.elapsed() < window)
    }

    /// Counts an incoming y-websocket message against the rate: past it, the client's
    /// socket is not read until its tokens refill (TCP backpressure slows only this
    /// client; nobody is cut for typing, pasting or importing fast).
    pub(super) fn throttle(&mut self, size: usize) {
        metrics::get().bytes_in.inc_by(size as u64);
        let in_debt = self
            .rate
            .as_mut()
            .and_then(|rate| rate.take(Instant::now()))
            .is_some();
        if in_debt {
            self.pause_for_rate();
        }
    }

    /// Stops reading the client until its rate's bucket holds a whole token again.
    pub(super) fn pause_for_rate(&mut self) {
        if self.writer.gate().is_paused_for(Pause::Throttle) {
            return;
        }
        metrics::get().throttled.inc();
        self.last_throttled = Some(Instant::now());
        self.writer.gate().pause(Pause::Throttle);
        self.resume_when_refilled();
    }

    /// Lifts the throttle once the bucket holds a token, looking again after each wait
    /// (frames already decoded may have taken more meanwhile).
    pub(super) fn resume_when_refilled(&mut self) {
        match self
            .rate
            .as_mut()
            .and_then(|rate| rate.wait(Instant::now()))
        {
            Some(wait) => self.refill_at = Some(Instant::now() + wait),
            None => {
                self.refill_at = None;
                self.writer.gate().resume(Pause::Throttle);
            }
        }
    }
}
