//! A session's task: the future that runs one WebSocket session. It owns where the
//! session's events come from (the client's frames, the room's messages, the clock's
//! beats, the socket's readiness, the session's deadlines) and the order it takes them in;
//! what each event means is the session's business ([`Session`]'s handlers, which never
//! wait: what they schedule, they note in the session's fields).
//!
//! It is a hand-written future rather than an actor or an `async` loop: it holds only the
//! session and its sources. Measured with heaptrack on the release build, the task is
//! 640 bytes; as an actix actor the session cost about twice that (its task with the
//! context, the mailbox's five allocations, the reader as a boxed stream), and as an
//! `async` loop over `select!` 1,790 bytes (a future for every source, held in the state).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::time::Sleep;
use tracing::debug;

use super::clock::{Beat, Signals};
use super::socket::FrameReader;
use super::Session;
use crate::protocol::close;
use crate::room::Inbox;

/// Outbound messages handled in one turn before the queued frames are flushed.
const MAX_MESSAGES_PER_TURN: usize = 256;

/// Turns one poll takes before the task lets the thread's other tasks run.
const MAX_TURNS_PER_POLL: usize = 64;

/// A session's task.
pub(super) struct Task {
    session: Session,
    reader: FrameReader,
    inbox: Inbox,
    signals: Rc<Signals>,
    /// Set while the session has a deadline (an idle session has none).
    timer: Option<Pin<Box<Sleep>>>,
    /// The client may still send frames.
    reading: bool,
    /// The room may still send messages.
    receiving: bool,
    /// Sources that answered Pending in this poll: they hold the task's waker, so a later
    /// turn of the same poll need not ask them again (asking the socket costs a readiness
    /// check per delivered frame).
    inbox_pending: bool,
    reader_pending: bool,
}

impl Task {
    /// The task of `session`, started: joining its room, or closing with `refuse`.
    pub(super) fn new(
        mut session: Session,
        refuse: Option<close::Close>,
        reader: FrameReader,
        inbox: Inbox,
        signals: Rc<Signals>,
    ) -> Self {
        session.started(refuse);
        session.after_turn();
        Self {
            session,
            reader,
            inbox,
            signals,
            timer: None,
            reading: true,
            receiving: true,
            inbox_pending: false,
            reader_pending: false,
        }
    }

    /// One turn: every source is asked once, and what is ready is handled. False when
    /// nothing was (then every source holds the task's waker).
    fn turn(&mut self, cx: &mut Context<'_>) -> bool {
        let session = &mut self.session;
        // A join under way holds everything else back: the room has not answered yet.
        if let Some(joining) = session.joining.as_mut() {
            let Poll::Ready(result) = joining.as_mut().poll(cx) else {
                return false;
            };
            session.joining = None;
            session.joined(result);
            return true;
        }
        let mut progressed = false;
        if let Some(beat) = self.signals.take(cx) {
            match beat {
                Beat::Tick => session.heartbeat(),
                Beat::GoingAway => session.close(close::GOING_AWAY, ""),
            }
            progressed = true;
        }
        if session.awaiting_writable {
            if let Poll::Ready(result) = session.writer.poll_writable(cx) {
                session.awaiting_writable = false;
                match result {
                    Ok(()) => session.flush(),
                    Err(e) => session.lost(&e),
                }
                progressed = true;
            }
        }
        if self.receiving && !self.inbox_pending && !session.stopped {
            match self.inbox.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    session.on_outbound(message);
                    // Whatever else is waiting goes out in the same write.
                    for _ in 1..MAX_MESSAGES_PER_TURN {
                        match self.inbox.try_recv() {
                            Some(message) => session.on_outbound(message),
                            None => break,
                        }
                    }
                    progressed = true;
                }
                Poll::Ready(None) => {
                    self.receiving = false;
                    progressed = true;
                }
                Poll::Pending => self.inbox_pending = true,
            }
        }
        // A frame may start a join (a chat `join`): nothing is read past it until then.
        if self.reading && !self.reader_pending && !session.stopped {
            match self.reader.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => {
                    session.on_frame(item);
                    progressed = true;
                }
                Poll::Ready(None) => {
                    self.reading = false;
                    session.on_read_end();
                    progressed = true;
                }
                Poll::Pending => self.reader_pending = true,
            }
        }
        if progressed || session.stopped {
            return true;
        }
        self.wait_for_deadline(cx)
    }

    /// Arms the timer for the session's earliest deadline and, once it has passed, acts
    /// on what is due. True when something was.
    fn wait_for_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.session.next_deadline() else {
            self.timer = None;
            return false;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.session.on_time(Instant::now());
        true
    }
}

impl Future for Task {
    type Output = ();

    /// Takes turns, flushing what each queued, until nothing is ready or the session
    /// stops.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let task = self.get_mut();
        task.inbox_pending = false;
        task.reader_pending = false;
        for _ in 0..MAX_TURNS_PER_POLL {
            if task.session.stopped {
                task.session.finish();
                return Poll::Ready(());
            }
            let progressed = task.turn(cx);
            task.session.after_turn();
            if !progressed && !task.session.stopped {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref(); // more may be ready: after the thread's other tasks
        Poll::Pending
    }
}

impl Session {
    /// Flushes what the turn queued.
    fn after_turn(&mut self) {
        if self.flush_scheduled && !self.stopped {
            self.flush_scheduled = false;
            self.flush();
        }
    }

    /// The earliest of the session's deadlines, if it has any.
    fn next_deadline(&self) -> Option<Instant> {
        [
            self.expires_at,
            self.slow_check_at,
            self.refill_at,
            self.close_by,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Acts on every deadline that has passed.
    fn on_time(&mut self, now: Instant) {
        if self.close_by.is_some_and(|at| at <= now) {
            debug!(session = self.id.0, "close handshake timed out");
            self.stopped = true;
            return;
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            self.expire();
        }
        if self.slow_check_at.is_some_and(|at| at <= now) {
            self.slow_check();
        }
        if self.refill_at.is_some_and(|at| at <= now) {
            self.resume_when_refilled();
        }
    }
}
