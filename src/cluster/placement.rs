//! Placement: turns each membership view into a ring and answers "who owns this room" for
//! the edge (route or serve) and the registry (activate here or not). One per node; the
//! ring is swapped whole on every membership change, so readers never see half of one.
//! Knows no sockets and no rooms' state.

use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::watch;
use tracing::info;

use super::membership::{Member, Membership, View};
use super::ring::Ring;
use crate::id::{NodeId, RoomName};

/// Who owns a room, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node.
    Local,
    /// Another member.
    Remote(Member),
}

/// A ring and the view it was built from.
pub struct Snapshot {
    pub ring: Ring,
    pub view: View,
}

/// This node's placement.
pub struct Placement {
    me: Member,
    current: RwLock<Arc<Snapshot>>,
    changes: watch::Sender<u64>,
    membership: Option<Arc<dyn Membership>>,
}

/// A member as `/cluster` and `/route` show it.
#[derive(Debug, Serialize)]
pub struct MemberInfo<'a> {
    pub id: &'a str,
    pub url: &'a str,
}

impl Placement {
    /// Placement over `membership`'s views, kept current by a task (spawned on the
    /// caller's tokio runtime) for as long as the membership sends views.
    pub fn start(membership: Arc<dyn Membership>) -> Arc<Self> {
        let mut views = membership.watch();
        let first = views.borrow_and_update().clone();
        let mut placement = Self::new(membership.this_node().clone(), first);
        placement.membership = Some(membership);
        let placement = Arc::new(placement);
        let weak = Arc::downgrade(&placement);
        tokio::spawn(async move {
            while views.changed().await.is_ok() {
                let view = views.borrow_and_update().clone();
                let Some(placement) = weak.upgrade() else {
                    return;
                };
                placement.install(view);
            }
        });
        placement
    }

    /// Placement over a fixed view (tests, the in-memory twin).
    pub fn new(me: Member, view: View) -> Self {
        let snapshot = Arc::new(Snapshot {
            ring: Ring::new(view.members.iter().map(|m| m.id.clone())),
            view,
        });
        let version = snapshot.ring.version();
        Self {
            me,
            current: RwLock::new(snapshot),
            changes: watch::Sender::new(version),
            membership: None,
        }
    }

    /// Tells the other members how many rooms this node has active.
    pub fn publish_rooms(&self, rooms: usize) {
        if let Some(membership) = &self.membership {
            membership.publish_rooms(rooms);
        }
    }

    /// Builds the ring for a new view and swaps it in (only the view, when the members are
    /// the same: room counts and dead members change often and move nothing).
    pub fn install(&self, view: View) {
        let current = self.snapshot();
        if current.view.members == view.members {
            let ring = Ring::new(view.members.iter().map(|m| m.id.clone()));
            *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                Arc::new(Snapshot { ring, view });
            return;
        }
        let ring = Ring::new(view.members.iter().map(|m| m.id.clone()));
        let version = ring.version();
        info!(
            ring_version = version,
            members = view.members.len(),
            "ring rebuilt"
        );
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Snapshot { ring, view });
        self.changes.send_replace(version);
    }

    /// The current ring and view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// This node.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Who owns `room` now. With no live member known (cannot happen: this node is always
    /// in its own view) the room is served here.
    pub fn owner(&self, room: &RoomName) -> Owner {
        let snapshot = self.snapshot();
        match snapshot.ring.owner(room) {
            Some(id) if *id != self.me.id => match snapshot.view.member(id) {
                Some(member) => Owner::Remote(member.clone()),
                None => Owner::Local,
            },
            _ => Owner::Local,
        }
    }

    /// Ring versions, one per change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The owner's id of a room (for `/route`).
    pub fn owner_id(&self, room: &RoomName) -> Option<NodeId> {
        self.snapshot().ring.owner(room).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            id: NodeId::parse(id).unwrap(),
            url: format!("http://{id}.test"),
        }
    }

    #[test]
    fn rooms_are_local_or_remote_and_move_with_the_view() {
        let view = View::new(vec![member("a"), member("b"), member("c")]);
        let placement = Placement::new(member("a"), view);
        let rooms: Vec<RoomName> = (0..300)
            .map(|i| RoomName::parse(&format!("r{i}")).unwrap())
            .collect();
        let local = rooms
            .iter()
            .filter(|r| placement.owner(r) == Owner::Local)
            .count();
        assert!((60..140).contains(&local), "{local} of 300 local");
        let changes = placement.changes();
        placement.install(View::new(vec![member("a")]));
        assert!(changes.has_changed().unwrap());
        assert!(rooms.iter().all(|r| placement.owner(r) == Owner::Local));
    }
}
