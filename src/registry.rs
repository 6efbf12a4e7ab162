//! The per-node room registry: room name → address of its active room actor. It activates
//! a room on first use, on the arbiter (thread) its name hashes to, and forgets it when the
//! room reports [`Deactivated`]. It never touches a document or a socket.
//!
//! Callers reach rooms through [`send_to_room`], which retries when it catches a room in
//! the moment between its deactivation and the registry hearing of it.
//!
//! In a cluster it asks [`Placement`] before activating: a room another node owns is not
//! activated here, and when the ring changes, the rooms this node no longer owns are handed
//! off (final snapshot, flush, sessions closed with "room moved" naming the new owner).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::thread::ThreadId;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use futures_util::future::join_all;

use crate::cluster::placement::{Owner, Placement};
use crate::metrics;
use crate::room::{
    Deactivated, Room, RoomAddr, RoomConfig, RoomError, RoomName, Shutdown, Unavailable,
};
use crate::storage::Store;

/// How many times [`send_to_room`] asks again after finding a room stopped.
const ROOM_RETRIES: u32 = 6;

/// Messages a room's mailbox holds before senders wait (actix's default).
const ROOM_MAILBOX: usize = 16;

/// Returns the address of a room's actor, activating it if needed.
#[derive(Message)]
#[rtype(result = "Result<RoomAddr, RoomError>")]
pub struct GetRoom {
    /// The room.
    pub name: RoomName,
}

/// Shuts every active room down (final snapshot and flush) and refuses new activations.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownAll;

/// Reports how many rooms are active.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ActiveRooms;

/// The threads rooms run on: the HTTP workers themselves (`--room-threads 0`, the
/// default), each of which adds itself as it starts, or arbiters of their own
/// (`--room-threads N`). A room on its sessions' thread hands them its frames without
/// waking another thread. A stopped thread's rooms go to the next live one until a
/// replacement worker takes its place in the list.
#[derive(Clone, Default)]
pub struct RoomThreads(Arc<RwLock<Vec<RoomThread>>>);

/// One thread rooms run on.
#[derive(Clone)]
pub struct RoomThread {
    pub arbiter: ArbiterHandle,
    /// Set for an HTTP worker (which adds itself from its own thread): sessions run there
    /// too, and `session::placement` moves a small room's sessions to it.
    pub worker: Option<ThreadId>,
}

impl RoomThreads {
    /// Rooms may run on `arbiter`, a thread of their own.
    pub fn add(&self, arbiter: ArbiterHandle) {
        self.push(RoomThread {
            arbiter,
            worker: None,
        });
    }

    /// Rooms may run on the calling thread, an HTTP worker.
    pub fn add_this_worker(&self) {
        self.push(RoomThread {
            arbiter: Arbiter::current(),
            worker: Some(std::thread::current().id()),
        });
    }

    /// Adds `thread` keeping every other thread at its place in the list, since a room's
    /// thread is its hash modulo the list's length (and the sessions' placement works it
    /// out the same way): a worker that restarts its service on the same thread replaces
    /// its entry, and a replacement worker takes a stopped one's.
    fn push(&self, thread: RoomThread) {
        let mut threads = self.0.write().unwrap_or_else(|e| e.into_inner());
        let same = thread
            .worker
            .and_then(|id| threads.iter().position(|t| t.worker == Some(id)));
        match same.or_else(|| threads.iter().position(|t| !t.arbiter.alive())) {
            Some(at) => threads[at] = thread,
            None => threads.push(thread),
        }
    }

    /// How many threads rooms run on.
    pub fn count(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The thread for a room whose name hashes to `hash` ([`room_hash`]): the entry at
    /// `hash` modulo the list's length, or, while that one has stopped (until its
    /// replacement takes its place), the next live one; none while no live thread was
    /// added. The list is never reordered, so every other room keeps its thread.
    pub fn pick(&self, hash: u64) -> Option<RoomThread> {
        let threads = self.0.read().unwrap_or_else(|e| e.into_inner());
        let n = threads.len();
        let first = (hash % n.max(1) as u64) as usize;
        (0..n)
            .map(|i| &threads[(first + i) % n])
            .find(|thread| thread.arbiter.alive())
            .cloned()
    }
}

/// The hash that picks a room's thread.
pub fn room_hash(name: &RoomName) -> u64 {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

/// The registry actor.
pub struct Registry {
    rooms: HashMap<RoomName, (u64, RoomAddr)>,
    threads: RoomThreads,
    store: Arc<dyn Store>,
    config: Arc<RoomConfig>,
    next_activation: u64,
    shutting_down: bool,
    max_rooms: usize,
    placement: Option<Arc<Placement>>,
    /// Where rooms report that they stopped: made once, shared by every room.
    recipient: Option<Arc<Recipient<Deactivated>>>,
}

/// The ring changed: hand off the rooms this node no longer owns.
#[derive(Message)]
#[rtype(result = "()")]
struct RingChanged;

impl Registry {
    /// A registry that places rooms on `threads`.
    pub fn new(
        store: Arc<dyn Store>,
        threads: RoomThreads,
        config: Arc<RoomConfig>,
        max_rooms: usize,
    ) -> Self {
        Self {
            rooms: HashMap::new(),
            threads,
            store,
            config,
            next_activation: 0,
            shutting_down: false,
            max_rooms,
            placement: None,
            recipient: None,
        }
    }

    /// Places rooms with `placement` (a cluster node).
    pub fn with_placement(mut self, placement: Arc<Placement>) -> Self {
        self.placement = Some(placement);
        self
    }

    /// The thread a room is started on: the one its name hashes to, or, before any thread
    /// was added, the registry's own.
    fn arbiter_for(&self, name: &RoomName) -> ArbiterHandle {
        self.threads
            .pick(room_hash(name))
            .map_or_else(Arbiter::current, |thread| thread.arbiter)
    }
}

/// Starts the room `make` builds on `arbiter`, handing it its own address: the one address
/// the registry, the room and every session of it share (each `Addr` clone allocates).
/// Should the arbiter stop before the room starts, the address is disconnected and
/// [`send_to_room`] asks again, which activates the room anew.
fn start_room(
    arbiter: &ArbiterHandle,
    make: impl FnOnce(RoomAddr) -> Room + Send + 'static,
) -> RoomAddr {
    let (sender, receiver) = actix::dev::channel::channel(ROOM_MAILBOX);
    let address: RoomAddr = Arc::new(Addr::new(sender));
    let own = Arc::clone(&address);
    arbiter.spawn_fn(move || {
        let context = Context::with_receiver(receiver);
        actix::spawn(context.into_future(make(own)));
    });
    address
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(placement) = &self.placement else {
            return;
        };
        // The others show this node's active rooms in their `/cluster`.
        ctx.run_interval(Duration::from_secs(2), |registry, _| {
            if let Some(placement) = &registry.placement {
                placement.publish_rooms(registry.rooms.len());
            }
        });
        let mut changes = placement.changes();
        let me = ctx.address();
        actix::spawn(async move {
            while changes.changed().await.is_ok() {
                if me.try_send(RingChanged).is_err() && !me.connected() {
                    return;
                }
            }
        });
    }
}

impl Handler<RingChanged> for Registry {
    type Result = ();

    fn handle(&mut self, _msg: RingChanged, _ctx: &mut Self::Context) {
        let Some(placement) = &self.placement else {
            return;
        };
        let snapshot = placement.snapshot();
        metrics::get()
            .cluster_members
            .set(snapshot.view.members.len() as i64);
        // The bits of the u64 version, shown as a signed gauge: compared, never summed.
        metrics::get()
            .ring_version
            .set(snapshot.ring.version() as i64);
        for (name, (activation, addr)) in &self.rooms {
            if let Owner::Remote(owner) = placement.owner(name) {
                tracing::info!(room = %name, activation, to = %owner.id, "handing the room off");
                metrics::get().handoffs.inc();
                addr.do_send(Shutdown::moved_to(&owner.url));
            }
        }
    }
}

impl Handler<GetRoom> for Registry {
    type Result = Result<RoomAddr, RoomError>;

    fn handle(&mut self, msg: GetRoom, ctx: &mut Self::Context) -> Self::Result {
        if let Some((_, addr)) = self.rooms.get(&msg.name) {
            if addr.connected() {
                return Ok(Arc::clone(addr));
            }
        }
        if self.shutting_down {
            return Err(RoomError::Unavailable(Unavailable::ShuttingDown));
        }
        if let Some(Owner::Remote(owner)) = self.placement.as_ref().map(|p| p.owner(&msg.name)) {
            // The edge routes requests to the owner; this is the safety net for one that
            // raced a ring change.
            tracing::debug!(room = %msg.name, owner = %owner.id, "not activated here");
            return Err(RoomError::Unavailable(Unavailable::Moved));
        }
        if !self.store.is_ready() {
            // The database is unreachable: an activation would only fail (and be retried);
            // refuse at once until the store says it is back.
            return Err(RoomError::Unavailable(Unavailable::Failed));
        }
        if self.rooms.len() >= self.max_rooms {
            return Err(RoomError::Full {
                limit: self.max_rooms,
            });
        }
        self.next_activation += 1;
        let activation = self.next_activation;
        let (name, store, config) = (
            msg.name.clone(),
            Arc::clone(&self.store),
            self.config.clone(),
        );
        let registry = Arc::clone(
            self.recipient
                .get_or_insert_with(|| Arc::new(ctx.address().recipient())),
        );
        let addr = start_room(&self.arbiter_for(&msg.name), move |own| {
            Room::new(own, name, activation, store, registry, config)
        });
        self.rooms.insert(msg.name, (activation, Arc::clone(&addr)));
        Ok(addr)
    }
}

impl Handler<Deactivated> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Deactivated, _ctx: &mut Self::Context) {
        if self
            .rooms
            .get(&msg.name)
            .is_some_and(|(a, _)| *a == msg.activation)
        {
            self.rooms.remove(&msg.name);
        }
    }
}

impl Handler<ActiveRooms> for Registry {
    type Result = usize;

    fn handle(&mut self, _msg: ActiveRooms, _ctx: &mut Self::Context) -> usize {
        self.rooms.len()
    }
}

impl Handler<ShutdownAll> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: ShutdownAll, _ctx: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        let rooms: Vec<RoomAddr> = self.rooms.values().map(|(_, a)| Arc::clone(a)).collect();
        Box::pin(async move {
            join_all(
                rooms
                    .iter()
                    .map(|room| room.send(Shutdown::server_stopping())),
            )
            .await;
        })
    }
}

/// Sends a message to a room, activating it if needed, and retrying (with a short backoff)
/// when the room stopped between the lookup and the delivery.
pub async fn send_to_room<M>(
    registry: &Addr<Registry>,
    name: &RoomName,
    make: impl Fn() -> M,
) -> Result<M::Result, RoomError>
where
    M: Message + Send + 'static,
    M::Result: Send,
    Room: Handler<M>,
    <Room as Actor>::Context: ToEnvelope<Room, M>,
{
    let mut delay = Duration::from_millis(5);
    for _ in 0..ROOM_RETRIES {
        let room = registry
            .send(GetRoom { name: name.clone() })
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "the registry did not answer");
                RoomError::Unavailable(Unavailable::ShuttingDown)
            })??;
        match room.send(make()).await {
            Ok(result) => return Ok(result),
            Err(MailboxError::Closed) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(MailboxError::Timeout) => {
                return Err(RoomError::Unavailable(Unavailable::NotAnswering))
            }
        }
    }
    tracing::warn!(room = %name, "the room kept stopping while asked");
    Err(RoomError::Unavailable(Unavailable::KeepsStopping))
}
