//! One clock per worker thread for every WebSocket session on that thread: it ticks the
//! sessions' heartbeats and tells them when the server shuts down. A session joins when it
//! is created and leaves when it stops; what a tick or the shutdown means (ping, keepalive,
//! timeouts, the close) is the session's business, not the clock's.
//!
//! Why not a timer and a shutdown watcher in each session: both come to every session at
//! once, and in each session's task they would cost a timer and a watch (about 230 bytes
//! of every idle connection). Here a session costs one map entry and its [`Signals`].
//! A session's first tick comes within one interval of its start. The sessions are ticked
//! in [`SLICES`] groups spread over the interval, not all at once: a thread with thousands
//! of sessions would otherwise queue thousands of pings in one go, every interval.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::room::SessionId;

/// Groups of sessions ticked one after the other within an interval.
const SLICES: u32 = 8;

/// What the clock tells a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Beat {
    /// A heartbeat interval has passed.
    Tick,
    /// The server is shutting down: close with "going away".
    GoingAway,
}

/// Where the clock leaves its beats for one session, and the waker of the session's task.
#[derive(Default)]
pub(super) struct Signals {
    tick: Cell<bool>,
    going_away: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signals {
    /// Leaves `beat` for the session and wakes its task.
    fn raise(&self, beat: Beat) {
        match beat {
            Beat::Tick => self.tick.set(true),
            Beat::GoingAway => self.going_away.set(true),
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The beat left for the session, the shutdown first; with none, the task is woken
    /// when one comes.
    pub(super) fn take(&self, cx: &Context<'_>) -> Option<Beat> {
        if self.going_away.replace(false) {
            return Some(Beat::GoingAway);
        }
        if self.tick.replace(false) {
            return Some(Beat::Tick);
        }
        let waker = match self.waker.take() {
            Some(waker) if waker.will_wake(cx.waker()) => waker,
            _ => cx.waker().clone(),
        };
        self.waker.set(Some(waker));
        None
    }
}

/// The sessions of this thread, and whether shutdown has begun.
#[derive(Default)]
struct Clock {
    sessions: HashMap<SessionId, Weak<Signals>>,
    shut_down: bool,
}

thread_local! {
    /// `None` until the thread's first session starts its clock.
    static CLOCK: RefCell<Option<Clock>> = const { RefCell::new(None) };
}

/// Adds a session to this thread's clock, starting the clock (ticking every `every`,
/// watching `shutdown`) with the thread's first session. The server has one heartbeat
/// interval, so the first session's is the thread's. Returns false, adding nothing, when
/// shutdown has begun: the session closes at once.
pub(super) fn join(
    id: SessionId,
    session: Weak<Signals>,
    every: Duration,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    CLOCK.with(|clock| {
        let mut clock = clock.borrow_mut();
        let clock = clock.get_or_insert_with(|| {
            start(every, shutdown.clone());
            Clock::default()
        });
        if clock.shut_down {
            return false;
        }
        clock.sessions.insert(id, session);
        true
    })
}

/// Removes a session (it stopped).
pub(super) fn leave(id: SessionId) {
    CLOCK.with(|clock| {
        if let Some(clock) = clock.borrow_mut().as_mut() {
            clock.sessions.remove(&id);
        }
    });
}

/// The thread's clock task: every session ticked once per `every` (a slice of them at a
/// time), and the shutdown once.
fn start(every: Duration, mut shutdown: watch::Receiver<bool>) {
    actix::spawn(async move {
        let step = every / SLICES;
        let mut ticks = interval_at(Instant::now() + step, step);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut slice = 0;
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    tell(Beat::Tick, Some(slice));
                    slice = (slice + 1) % SLICES;
                }
                // An error means the server is gone: its sessions go too.
                _ = shutdown.wait_for(|&down| down) => {
                    tell(Beat::GoingAway, None);
                    return;
                }
            }
        }
    });
}

/// The slice of the interval in which `id` is ticked.
fn slice_of(id: SessionId) -> u32 {
    (id.0 % u64::from(SLICES)) as u32
}

/// Sends `beat` to the live sessions of this thread in `slice`, or to all of them (after
/// shutdown, no one joins).
fn tell(beat: Beat, slice: Option<u32>) {
    let sessions: Vec<_> = CLOCK.with(|clock| {
        let mut clock = clock.borrow_mut();
        let Some(clock) = clock.as_mut() else {
            return Vec::new();
        };
        clock.shut_down |= beat == Beat::GoingAway;
        let mut live: Vec<Rc<Signals>> = Vec::with_capacity(clock.sessions.len());
        // A session leaves when it stops; one that could not is dropped here.
        clock.sessions.retain(|&id, session| {
            if slice.is_some_and(|slice| slice != slice_of(id)) {
                return true;
            }
            match session.upgrade() {
                Some(signals) => {
                    live.push(signals);
                    true
                }
                None => false,
            }
        });
        live
    });
    // Raised outside the borrow: a woken task may run as soon as it is woken.
    for session in sessions {
        session.raise(beat);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_raised_beat_wakes_the_waiting_task_once_and_the_shutdown_comes_first() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&wakes));
        let cx = Context::from_waker(&waker);
        let signals = Signals::default();
        assert_eq!(signals.take(&cx), None, "nothing yet: the waker is kept");
        signals.raise(Beat::Tick);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        signals.raise(Beat::GoingAway);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "woken once until it looks"
        );
        assert_eq!(signals.take(&cx), Some(Beat::GoingAway));
        assert_eq!(signals.take(&cx), Some(Beat::Tick));
        assert_eq!(signals.take(&cx), None);
        signals.raise(Beat::Tick);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn one_round_of_slices_ticks_every_session_once_and_spreads_them() {
        let mut ticked = vec![0; 1000];
        let mut per_slice = [0; SLICES as usize];
        for slice in 0..SLICES {
            for (id, count) in ticked.iter_mut().enumerate() {
                if slice_of(SessionId(id as u64)) == slice {
                    *count += 1;
                    per_slice[slice as usize] += 1;
                }
            }
        }
        assert!(ticked.iter().all(|&n| n == 1));
        assert!(per_slice.iter().all(|&n| n == 1000 / SLICES as usize));
    }
}
