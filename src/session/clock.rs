//! One clock per worker thread for every WebSocket session on that thread: it ticks the
//! sessions' heartbeats and tells them when the server shuts down. A session joins when it
//! is created and leaves when it stops; what a tick or the shutdown means (ping, keepalive,
//! timeouts, the close) is the session's business, not the clock's.
//!
//! Why not a timer and a shutdown watcher in each session: both come to every session at
//! once, and per session they cost a timer entry and two spawned futures (about 300 bytes
//! of every idle connection). Here a session costs one map entry and a weak address.
//! A session's first tick comes within one interval of its start, as its own timer's did.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use actix::{Message, WeakAddr};
use tokio::sync::watch;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::Session;
use crate::room::SessionId;

/// What the clock tells a session.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub(super) enum Beat {
    /// A heartbeat interval has passed.
    Tick,
    /// The server is shutting down: close with "going away".
    GoingAway,
}

/// The sessions of this thread, and whether shutdown has begun.
#[derive(Default)]
struct Clock {
    sessions: HashMap<SessionId, WeakAddr<Session>>,
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
    session: WeakAddr<Session>,
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

/// The thread's clock task: a tick every `every`, and the shutdown once.
fn start(every: Duration, mut shutdown: watch::Receiver<bool>) {
    actix::spawn(async move {
        let mut ticks = interval_at(Instant::now() + every, every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => tell_all(Beat::Tick),
                // An error means the server is gone: its sessions go too.
                _ = shutdown.wait_for(|&down| down) => {
                    tell_all(Beat::GoingAway);
                    return;
                }
            }
        }
    });
}

/// Sends `beat` to every live session of this thread (after shutdown, no one joins).
fn tell_all(beat: Beat) {
    let sessions: Vec<_> = CLOCK.with(|clock| {
        let mut clock = clock.borrow_mut();
        let Some(clock) = clock.as_mut() else {
            return Vec::new();
        };
        clock.shut_down |= beat == Beat::GoingAway;
        let mut live = Vec::with_capacity(clock.sessions.len());
        // A session leaves when it stops; one that could not is dropped here.
        clock.sessions.retain(|_, session| match session.upgrade() {
            Some(addr) => {
                live.push(addr);
                true
            }
            None => false,
        });
        live
    });
    for session in sessions {
        session.do_send(beat);
    }
}
