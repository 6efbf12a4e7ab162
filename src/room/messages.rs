//! The messages other layers send a room (sessions, the HTTP edge, the registry) and what
//! a room sends back (frames and closes to its sessions, its end to the registry). Types
//! only: the room's handlers for them live beside the state they change.

use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Outbox, RoomAddr, RoomError, RoomName, SessionId};
use crate::auth::Access;
use crate::protocol::close::{self, Close};
use crate::protocol::ysync::Message as SyncMessage;
use crate::stream::wire::Event;

/// Something for a session to do: send a frame or close.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Outbound {
    /// Send this binary frame (y-websocket sessions).
    Frame(Bytes),
    /// Send this chat event (chat members).
    Event(Event),
    /// Send these chat events, in order: the messages one flush released, handed over in
    /// one mailbox message and written together (shared by every member, not copied).
    Events(Arc<[Event]>),
    /// Close with this code; the string adds detail to the reason.
    Close(Close, String),
}

/// A session joins the room; the room greets it with SyncStep1 and the awareness states,
/// and answers with its own address for the session's later messages.
#[derive(Message)]
#[rtype(result = "Result<RoomAddr, RoomError>")]
pub struct Join {
    /// The joining session.
    pub session: SessionId,
    /// What the session may do; a read-only session's updates are refused.
    pub access: Access,
    /// Where the room sends the session's frames.
    pub outbox: Outbox,
}

/// A session left; its awareness states are removed and the removal broadcast.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The session that left.
    pub session: SessionId,
}

/// A decoded message from a session, with the frame it came in (relayed as is when it is
/// an awareness update).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Receive {
    /// The sender.
    pub session: SessionId,
    /// The decoded message.
    pub message: SyncMessage,
    /// The frame it was decoded from.
    pub frame: Bytes,
}

/// A reply that arrives once the room's state up to now is durable.
pub type DurableReply = oneshot::Receiver<Result<Bytes, RoomError>>;

/// Apply an update from HTTP; the reply resolves once it is durable.
#[derive(Message)]
#[rtype(result = "Result<DurableReply, RoomError>")]
pub struct ApplyUpdate {
    /// A v1 Yjs update.
    pub update: Bytes,
}

/// Read the document: the whole state as one v1 update, or its root types as JSON.
#[derive(Message)]
#[rtype(result = "Result<DurableReply, RoomError>")]
pub struct ReadState {
    /// JSON instead of a binary update.
    pub json: bool,
}

/// Close every session with "going away", write a final snapshot, flush, stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// What sessions are closed with: "going away" when the server stops, "room moved"
    /// (with the new owner) when the ring gives the room to another node.
    pub close: Close,
    /// Detail after the close reason.
    pub detail: String,
}

impl Shutdown {
    /// The server is stopping.
    pub fn server_stopping() -> Self {
        Self {
            close: close::GOING_AWAY,
            detail: String::new(),
        }
    }

    /// The room now belongs to the node at `url`.
    pub fn moved_to(url: &str) -> Self {
        Self {
            close: close::ROOM_MOVED,
            detail: format!("now served by {url}"),
        }
    }
}

/// Sent to the registry when a room actor stops, so it forgets the address.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deactivated {
    /// The room.
    pub name: RoomName,
    /// Which activation stopped (a newer one may already be registered).
    pub activation: u64,
}
