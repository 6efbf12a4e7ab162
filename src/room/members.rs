//! Everyone connected to a room, in one list: y-websocket sessions and chat members (WebSocket
//! or SSE) alike, each with where the room sends to it, what it may do, and what its kind
//! carries (a session's awareness client ids; a member's sender name and idempotency
//! subject). It hands frames and events to outboxes and reports who could not take them;
//! what that means (closing a slow client) is the room's decision. No actor, no store.

use std::sync::Arc;

use bytes::Bytes;

use super::{Outbound, Outbox, SessionId};
use crate::id::Access;
use crate::stream::wire::Event;

/// What a connection is in the room. (Kept small: every connection of every room holds
/// one, and the larger chat side is boxed.)
pub(super) enum Role {
    /// A y-websocket session, with the awareness client ids it has announced: sorted, no
    /// duplicates (a session usually carries one, for which a list is smaller than a set).
    Doc { clients: Vec<u64> },
    /// A chat member.
    Chat(Box<ChatRole>),
}

/// Who a chat member speaks as.
pub(super) struct ChatRole {
    /// The `sender` of its messages: the subject, or `anon-` and the connection id.
    pub sender: String,
    /// The idempotency key's first half: the subject, or "" when anonymous.
    pub key_subject: String,
}

/// Notes the awareness client ids an update set (`present`) and `removed` in a session's
/// sorted list, in O(n log n) whatever a client sends.
pub(super) fn note_clients(clients: &mut Vec<u64>, present: &[u64], removed: &[u64]) {
    clients.extend_from_slice(present);
    clients.sort_unstable();
    clients.dedup();
    if !removed.is_empty() {
        let mut removed = removed.to_vec();
        removed.sort_unstable();
        clients.retain(|id| removed.binary_search(id).is_err());
    }
}

/// One connection in the room: a y-websocket session or a chat member.
pub(super) struct Connection {
    pub outbox: Outbox,
    pub access: Access,
    pub role: Role,
}

impl Connection {
    pub fn is_doc(&self) -> bool {
        matches!(self.role, Role::Doc { .. })
    }

    pub fn is_chat(&self) -> bool {
        matches!(self.role, Role::Chat { .. })
    }
}

/// The room's connections, sorted by id.
///
/// A list, not a hash map: most rooms hold one or two connections, for which a map's
/// table (four slots and its control bytes) cost ~300 bytes per room where the list
/// holds exactly what is there; a broadcast walks it front to back. Ids only grow, so a
/// join appends; a leave shifts the rest down (a memmove of some 48 bytes per later
/// member, which is nothing next to the leave itself).
#[derive(Default)]
pub(super) struct Members {
    list: Vec<(SessionId, Connection)>,
}

impl Members {
    fn position(&self, id: &SessionId) -> Result<usize, usize> {
        self.list.binary_search_by_key(id, |(id, _)| *id)
    }

    pub fn insert(&mut self, id: SessionId, member: Connection) {
        match self.position(&id) {
            Ok(at) => self.list[at].1 = member,
            Err(at) => {
                // Grow one at a time while small (a room of two holds two slots, not
                // the four a doubling would give), by doubling beyond.
                if self.list.len() == self.list.capacity() && self.list.len() < 8 {
                    self.list.reserve_exact(1);
                }
                self.list.insert(at, (id, member));
            }
        }
    }

    pub fn get_mut(&mut self, id: &SessionId) -> Option<&mut Connection> {
        let at = self.position(id).ok()?;
        Some(&mut self.list[at].1)
    }

    fn get(&self, id: &SessionId) -> Option<&Connection> {
        let at = self.position(id).ok()?;
        Some(&self.list[at].1)
    }

    pub fn remove(&mut self, id: &SessionId) -> Option<Connection> {
        let at = self.position(id).ok()?;
        let (_, member) = self.list.remove(at);
        if self.list.is_empty() {
            // An empty room waits to be evicted: it keeps no slots.
            self.list = Vec::new();
        }
        Some(member)
    }

    /// The y-websocket session `id`, if it is one.
    pub fn doc(&self, id: &SessionId) -> Option<&Connection> {
        self.get(id).filter(|m| m.is_doc())
    }

    /// The chat member `id`, if it is one.
    pub fn chat(&self, id: &SessionId) -> Option<&Connection> {
        self.get(id).filter(|m| m.is_chat())
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn chat_count(&self) -> usize {
        self.list.iter().filter(|(_, m)| m.is_chat()).count()
    }

    /// Connections whose client went away (before its `Leave` could arrive).
    pub fn disconnected(&self) -> Vec<SessionId> {
        self.select(|m| !m.outbox.connected())
    }

    /// Connections whose outbox says they are too slow (see [`Outbox::too_slow`]).
    pub fn too_slow(&self) -> Vec<SessionId> {
        self.select(|m| m.outbox.too_slow())
    }

    fn select(&self, keep: impl Fn(&Connection) -> bool) -> Vec<SessionId> {
        self.list
            .iter()
            .filter(|(_, m)| keep(m))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Hands the same frame to every y-websocket session but those in `except`: how many
    /// took it, and who could not.
    pub fn send_frame_to_docs(&self, frame: &Bytes, except: &[SessionId]) -> (u64, Vec<SessionId>) {
        let (mut sent, mut slow) = (0, Vec::new());
        for (id, member) in self.list.iter().filter(|(_, m)| m.is_doc()) {
            if except.contains(id) {
                continue;
            }
            if member.outbox.send(Outbound::Frame(frame.clone())) {
                sent += 1;
            } else {
                slow.push(*id);
            }
        }
        (sent, slow)
    }

    /// Hands one event to every chat member, those in `first` before the others: who
    /// could not take it.
    pub fn send_event_to_chats(&self, event: &Event, first: &[SessionId]) -> Vec<SessionId> {
        self.send_to_chats(first, || Outbound::Event(event.clone()))
    }

    /// Hands a batch of events to every chat member (one mailbox message each, the batch
    /// shared), those in `first` before the others; returns the members whose outbox
    /// refused it.
    pub fn send_events_to_chats(
        &self,
        events: &Arc<[Event]>,
        first: &[SessionId],
    ) -> Vec<SessionId> {
        self.send_to_chats(first, || Outbound::Events(Arc::clone(events)))
    }

    /// Sends each chat member its own `message()`, those in `first` (sorted, no
    /// repeats) before the others: a session's task runs in the order it was woken, so
    /// the members sent to first are the first to write. Returns those whose outbox
    /// refused it.
    fn send_to_chats(&self, first: &[SessionId], message: impl Fn() -> Outbound) -> Vec<SessionId> {
        let early = first.iter().filter_map(|id| Some((id, self.get(id)?)));
        let rest = self
            .list
            .iter()
            .filter(|(id, _)| first.binary_search(id).is_err())
            .map(|entry| (&entry.0, &entry.1)); // the same shape as `early`'s items
        early
            .chain(rest)
            .filter(|(_, m)| m.is_chat())
            .filter(|(_, m)| !m.outbox.send(message()))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Removes every connection of one kind (`chat`: members, else sessions), returning them.
    pub fn drain_kind(&mut self, chat: bool) -> Vec<(SessionId, Connection)> {
        let (kind, rest) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|(_, m)| m.is_chat() == chat);
        self.list = rest;
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// The list is what a set would hold, sorted, whatever the updates carry.
        #[test]
        fn noted_clients_are_the_set_of_present_minus_removed(
            updates in prop::collection::vec(
                (prop::collection::vec(0u64..20, 0..6), prop::collection::vec(0u64..20, 0..4)),
                0..12,
            )
        ) {
            let (mut list, mut set) = (Vec::new(), BTreeSet::new());
            for (present, removed) in &updates {
                note_clients(&mut list, present, removed);
                set.extend(present.iter().copied());
                for id in removed {
                    set.remove(id);
                }
            }
            prop_assert_eq!(list, set.into_iter().collect::<Vec<_>>());
        }
    }

    fn member(chat: bool) -> (Connection, crate::room::Inbox) {
        let (outbox, inbox) = super::super::outbox(1 << 20);
        let role = match chat {
            true => Role::Chat(Box::new(ChatRole {
                sender: "ada".into(),
                key_subject: String::new(),
            })),
            false => Role::Doc { clients: vec![] },
        };
        let access = Access::Write;
        (
            Connection {
                outbox,
                access,
                role,
            },
            inbox,
        )
    }

    proptest! {
        /// Joins and leaves in any order (ids need not arrive sorted): the list holds what
        /// a map would, and a broadcast reaches each session once.
        #[test]
        fn the_list_holds_what_a_map_would(
            ops in prop::collection::vec((0u64..12, any::<bool>(), any::<bool>()), 0..40)
        ) {
            let mut members = Members::default();
            let mut model = std::collections::BTreeMap::new();
            let mut inboxes = Vec::new();
            for (id, join, chat) in ops {
                let id = SessionId(id);
                if join {
                    let (connection, inbox) = member(chat);
                    inboxes.push(inbox);
                    members.insert(id, connection);
                    model.insert(id, chat);
                } else {
                    prop_assert_eq!(members.remove(&id).is_some(), model.remove(&id).is_some());
                }
                for probe in 0..12 {
                    let probe = SessionId(probe);
                    prop_assert_eq!(members.chat(&probe).is_some(), model.get(&probe) == Some(&true));
                    prop_assert_eq!(members.doc(&probe).is_some(), model.get(&probe) == Some(&false));
                }
                prop_assert_eq!(members.is_empty(), model.is_empty());
                prop_assert_eq!(members.chat_count(), model.values().filter(|&&c| c).count());
                let docs = model.values().filter(|&&c| !c).count() as u64;
                let (sent, slow) = members.send_frame_to_docs(&Bytes::from_static(b"x"), &[]);
                prop_assert_eq!((sent, slow.len()), (docs, 0));
            }
        }
    }

    #[test]
    fn a_room_of_two_holds_two_slots_and_an_empty_room_none() {
        let mut members = Members::default();
        let (a, _a) = member(false);
        let (b, _b) = member(false);
        members.insert(SessionId(1), a);
        members.insert(SessionId(2), b);
        assert_eq!(members.list.capacity(), 2);
        members.remove(&SessionId(1));
        members.remove(&SessionId(2));
        assert_eq!(members.list.capacity(), 0);
    }

    #[test]
    fn sessions_and_members_share_one_list_and_each_kind_gets_its_own_sends() {
        // The receiving ends stay open (kept here) for the test's length.
        let receivers = std::cell::RefCell::new(Vec::new());
        let outbox = || {
            let (outbox, inbox) = super::super::outbox(1 << 20);
            receivers.borrow_mut().push(inbox);
            outbox
        };
        let mut members = Members::default();
        let doc = |clients: &[u64]| Connection {
            outbox: outbox(),
            access: Access::Write,
            role: Role::Doc {
                clients: clients.to_vec(),
            },
        };
        members.insert(SessionId(1), doc(&[7]));
        members.insert(SessionId(2), doc(&[]));
        members.insert(
            SessionId(3),
            Connection {
                outbox: outbox(),
                access: Access::Read,
                role: Role::Chat(Box::new(ChatRole {
                    sender: "ada".into(),
                    key_subject: "ada".into(),
                })),
            },
        );
        assert!(members.doc(&SessionId(3)).is_none() && members.chat(&SessionId(3)).is_some());
        assert_eq!(members.chat_count(), 1);
        let (sent, slow) = members.send_frame_to_docs(&Bytes::from_static(b"x"), &[SessionId(1)]);
        assert_eq!(
            (sent, slow.len()),
            (1, 0),
            "every session but the sender, no chat member"
        );
        let chats = members.drain_kind(true);
        assert_eq!(chats.len(), 1);
        assert_eq!(chats[0].0, SessionId(3));
        assert!(!members.is_empty());
        assert_eq!(members.drain_kind(false).len(), 2);
        assert!(members.is_empty());
    }
}
