//! The per-node room registry: room name → address of its active room actor. It activates
//! a room on first use, on the arbiter (thread) its name hashes to, and forgets it when the
//! room reports [`Deactivated`]. It never touches a document or a socket.
//!
//! Callers reach rooms through [`send_to_room`], which retries when it catches a room in
//! the moment between its deactivation and the registry hearing of it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use futures_util::future::join_all;

use crate::room::{Deactivated, Room, RoomConfig, RoomError, RoomName, Shutdown, Unavailable};
use crate::storage::Store;

/// How many times [`send_to_room`] asks again after finding a room stopped.
const ROOM_RETRIES: u32 = 6;

/// Returns the address of a room's actor, activating it if needed.
#[derive(Message)]
#[rtype(result = "Result<Addr<Room>, RoomError>")]
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

/// The registry actor.
pub struct Registry {
    rooms: HashMap<RoomName, (u64, Addr<Room>)>,
    arbiters: Vec<ArbiterHandle>,
    store: Arc<dyn Store>,
    config: RoomConfig,
    next_activation: u64,
    shutting_down: bool,
    max_rooms: usize,
}

impl Registry {
    /// A registry that places rooms on `arbiters` (one per core, say).
    pub fn new(
        store: Arc<dyn Store>,
        arbiters: Vec<ArbiterHandle>,
        config: RoomConfig,
        max_rooms: usize,
    ) -> Self {
        assert!(
            !arbiters.is_empty(),
            "the registry needs at least one arbiter"
        );
        Self {
            rooms: HashMap::new(),
            arbiters,
            store,
            config,
            next_activation: 0,
            shutting_down: false,
            max_rooms,
        }
    }

    fn arbiter_for(&self, name: &RoomName) -> &ArbiterHandle {
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        &self.arbiters[hasher.finish() as usize % self.arbiters.len()]
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Handler<GetRoom> for Registry {
    type Result = Result<Addr<Room>, RoomError>;

    fn handle(&mut self, msg: GetRoom, ctx: &mut Self::Context) -> Self::Result {
        if let Some((_, addr)) = self.rooms.get(&msg.name) {
            if addr.connected() {
                return Ok(addr.clone());
            }
        }
        if self.shutting_down {
            return Err(RoomError::Unavailable(Unavailable::ShuttingDown));
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
        let registry = ctx.address().recipient();
        let addr = Room::start_in_arbiter(self.arbiter_for(&msg.name), move |_| {
            Room::new(name, activation, store, registry, config)
        });
        self.rooms.insert(msg.name, (activation, addr.clone()));
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
        let rooms: Vec<Addr<Room>> = self.rooms.values().map(|(_, a)| a.clone()).collect();
        Box::pin(async move {
            join_all(rooms.iter().map(|room| room.send(Shutdown))).await;
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
