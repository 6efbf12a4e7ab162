//! Which thread a WebSocket session runs on. A connection arrives on whichever HTTP worker
//! accepted it. When rooms run on the workers too (`--room-threads 0`, the default) and
//! there are several, a session of a small room moves to its room's thread, so that the
//! room hands it frames and acks without waking another thread; once a room holds
//! [`SPREAD_AT`] sessions, later ones stay where they were accepted (actix deals accepted
//! connections out to the workers in turn), so that a broadcast to a large room is written
//! to its sockets by every worker at once instead of by one.
//!
//! It owns the count of each room's sessions and that decision. It does not move sockets
//! (the session does, as it starts) and does not start rooms (the registry does, on the
//! same thread: both pick it with [`room_hash`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use actix::ArbiterHandle;

use crate::registry::{room_hash, RoomThreads};
use crate::room::RoomName;

/// Sessions a room holds before later ones stay on the thread that accepted them.
///
/// Below it, every session shares its room's thread: a chat room's publisher gets its ack
/// and a y-websocket session its echo-free broadcast without a wake-up across threads
/// (each costs tens of microseconds on a loaded machine). Above it, one thread writing
/// every socket is what bounds a broadcast's latency: at 1 → 1,000 that is ~5 µs of
/// kernel time per socket, most of a 50 updates/s fan-out's p99.
pub const SPREAD_AT: u32 = 16;

/// Where a session should run.
pub enum Place {
    /// On the thread that accepted it.
    Here,
    /// On its room's thread, another worker.
    Move(ArbiterHandle),
}

/// The sessions of each room, by room hash, for the threads rooms run on.
pub struct SessionThreads {
    threads: RoomThreads,
    /// Sessions seated per room hash; a room without sessions has no entry. (Two rooms
    /// whose 64-bit hashes collide count as one: at worst one of them spreads early.)
    counts: Mutex<HashMap<u64, u32>>,
}

/// A session's place in its room's count: dropped with the session, which gives it back.
pub struct Seat {
    threads: Arc<SessionThreads>,
    room: u64,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.threads.leave(self.room);
    }
}

impl SessionThreads {
    /// Placement over `threads`, the threads rooms run on.
    pub fn new(threads: RoomThreads) -> Arc<Self> {
        Arc::new(Self {
            threads,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Seats one more session of `room` and says where it should run. No seat when
    /// nothing is to be decided: rooms on threads of their own, or a single worker.
    pub fn seat(self: &Arc<Self>, room: &RoomName) -> (Option<Seat>, Place) {
        let hash = room_hash(room);
        let Some(thread) = self.threads.pick(hash).filter(|_| self.threads.count() > 1) else {
            return (None, Place::Here);
        };
        let Some(worker) = thread.worker else {
            return (None, Place::Here);
        };
        let before = {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(hash).or_insert(0);
            *count += 1;
            *count - 1
        };
        let seat = Seat {
            threads: Arc::clone(self),
            room: hash,
        };
        // (`pick` returns a live thread; the session checks again as it moves.)
        let place = if before >= SPREAD_AT || worker == std::thread::current().id() {
            Place::Here
        } else {
            Place::Move(thread.arbiter)
        };
        (Some(seat), place)
    }

    fn leave(&self, room: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&room) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&room);
            }
        }
    }

    /// Sessions seated for `room` (for tests and the curious).
    pub fn sessions(&self, room: &RoomName) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&room_hash(room)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::Arbiter;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    /// Two workers, each added from its own thread, as actix-server adds them.
    async fn two_workers() -> (RoomThreads, Vec<Arbiter>) {
        let threads = RoomThreads::default();
        let arbiters = vec![Arbiter::new(), Arbiter::new()];
        for arbiter in &arbiters {
            add_worker(arbiter, &threads).await;
        }
        (threads, arbiters)
    }

    fn stop(arbiters: Vec<Arbiter>) {
        for arbiter in arbiters {
            arbiter.stop();
        }
    }

    /// Adds `arbiter` to `threads` from its own thread, as a worker does; returns its id.
    async fn add_worker(arbiter: &Arbiter, threads: &RoomThreads) -> std::thread::ThreadId {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let threads = threads.clone();
        arbiter.spawn_fn(move || {
            threads.add_this_worker();
            let _ = tx.send(std::thread::current().id());
        });
        rx.await.unwrap()
    }

    #[actix_rt::test]
    async fn small_rooms_move_to_their_thread_large_ones_spread() {
        let (threads, arbiters) = two_workers().await;
        let placement = SessionThreads::new(threads);
        let name = room("big");
        let mut seats = Vec::new();
        // From the test's thread, which is neither worker, the first SPREAD_AT sessions
        // move to the room's thread and the rest stay.
        for i in 0..SPREAD_AT + 4 {
            let (seat, place) = placement.seat(&name);
            seats.push(seat.expect("two workers: a seat"));
            let moved = matches!(place, Place::Move(_));
            assert_eq!(moved, i < SPREAD_AT, "session {i}");
        }
        assert_eq!(placement.sessions(&name), SPREAD_AT + 4);
        // Sessions leave: below the mark, newcomers move again.
        seats.truncate(SPREAD_AT as usize - 1);
        assert_eq!(placement.sessions(&name), SPREAD_AT - 1);
        assert!(matches!(placement.seat(&name).1, Place::Move(_)));
        // The count went up and came back with the dropped seat; all gone, no entry.
        drop(seats);
        assert_eq!(placement.sessions(&name), 0);
        assert!(placement.counts.lock().unwrap().is_empty());
        stop(arbiters);
    }

    #[actix_rt::test]
    async fn a_session_accepted_on_its_rooms_thread_stays() {
        let (threads, arbiters) = two_workers().await;
        let placement = SessionThreads::new(threads.clone());
        let name = room("here");
        let home = threads.pick(room_hash(&name)).unwrap().arbiter;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let on_home = Arc::clone(&placement);
        home.spawn_fn(move || {
            let (seat, place) = on_home.seat(&name);
            let _ = tx.send((seat.is_some(), matches!(place, Place::Here)));
        });
        assert_eq!(rx.await.unwrap(), (true, true));
        stop(arbiters);
    }

    #[actix_rt::test]
    async fn nothing_to_decide_with_one_worker_or_rooms_on_threads_of_their_own() {
        let one = RoomThreads::default();
        one.add_this_worker();
        let (seat, place) = SessionThreads::new(one).seat(&room("a"));
        assert!(seat.is_none() && matches!(place, Place::Here));

        let own = RoomThreads::default();
        let arbiters = vec![Arbiter::new(), Arbiter::new()];
        for arbiter in &arbiters {
            own.add(arbiter.handle());
        }
        let (seat, place) = SessionThreads::new(own).seat(&room("a"));
        assert!(seat.is_none() && matches!(place, Place::Here));
        stop(arbiters);
    }

    #[actix_rt::test]
    async fn counts_stay_exact_under_any_order_of_joins_and_leaves() {
        let (threads, arbiters) = two_workers().await;
        let placement = SessionThreads::new(threads);
        let (r, other) = (room("r"), room("other"));
        let mut seats: Vec<Seat> = (0..10).map(|_| placement.seat(&r).0.unwrap()).collect();
        let kept = placement.seat(&other).0.unwrap();
        seats.drain(2..7);
        seats.push(placement.seat(&r).0.unwrap());
        assert_eq!((placement.sessions(&r), placement.sessions(&other)), (6, 1));
        seats.clear();
        assert_eq!((placement.sessions(&r), placement.sessions(&other)), (0, 1));
        drop(kept);
        assert!(placement.counts.lock().unwrap().is_empty());
        stop(arbiters);
    }

    #[actix_rt::test]
    async fn a_restarted_or_replaced_worker_keeps_every_room_on_its_thread() {
        let (threads, arbiters) = two_workers().await;
        let before: Vec<_> = (0..32u64)
            .map(|h| threads.pick(h).unwrap().worker)
            .collect();
        // The first worker's service restarts on the same thread: it adds itself again.
        add_worker(&arbiters[0], &threads).await;
        assert_eq!(threads.count(), 2);
        let after: Vec<_> = (0..32u64)
            .map(|h| threads.pick(h).unwrap().worker)
            .collect();
        assert_eq!(before, after);
        // The second worker stops and a new one takes its place, not a third slot.
        let mut arbiters = arbiters;
        let stopped = arbiters.pop().unwrap();
        stopped.stop();
        stopped.join().unwrap();
        // Until it is replaced, its rooms go to the live thread and the others stay.
        for h in 0..32u64 {
            assert_eq!(threads.pick(h).unwrap().worker, before[0], "hash {h}");
        }
        let replacement = Arbiter::new();
        let new_id = add_worker(&replacement, &threads).await;
        assert_eq!(threads.count(), 2);
        for h in 0..32u64 {
            let now = threads.pick(h).unwrap().worker;
            if before[h as usize] == before[1] {
                assert_eq!(now, Some(new_id), "hash {h}");
            } else {
                assert_eq!(now, before[h as usize], "hash {h}");
            }
        }
        arbiters.push(replacement);
        stop(arbiters);
    }
}
