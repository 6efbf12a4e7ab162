//! A room's awareness table: the latest state and clock each Yjs client announced, with
//! the y-protocols rules for which announcement wins. Pure: it takes parsed awareness
//! entries and returns payloads to send; the codec is `protocol::ysync`, and who is told
//! is the room's business.
//!
//! Why not yrs's `Awareness`: it owns a whole `Doc` and allocates about a kilobyte of
//! observer machinery per room, and a server only relays states. Here an empty table
//! allocates nothing, and a state is held as the JSON text it arrived as.

use std::collections::HashMap;

use crate::protocol::ysync::{self, AwarenessEntry};

/// One client's last announcement.
#[derive(Debug)]
struct Client {
    clock: u32,
    /// Its state as JSON, or `None` once it left (the clock is kept, so that an older
    /// announcement arriving late cannot bring it back).
    state: Option<Box<str>>,
}

/// The awareness states of a room's clients.
#[derive(Debug, Default)]
pub struct Awareness {
    clients: HashMap<u64, Client>,
}

impl Awareness {
    /// Applies announcements as y-protocols' `applyAwarenessUpdate` does: one wins if its
    /// clock is newer than the client's (0 for a client not seen before), or if it is a
    /// removal at the same clock of a present state.
    pub fn apply(&mut self, entries: &[AwarenessEntry<'_>]) {
        for entry in entries {
            let removal = entry.json == "null";
            let known = self.clients.get(&entry.client_id);
            // An unknown client counts as clock 0, so its clock-0 announcement is ignored.
            let current = known.map_or(0, |client| client.clock);
            let present = known.is_some_and(|client| client.state.is_some());
            let wins = current < entry.clock || (current == entry.clock && removal && present);
            if wins {
                let state = (!removal).then(|| Box::from(entry.json));
                self.clients.insert(
                    entry.client_id,
                    Client {
                        clock: entry.clock,
                        state,
                    },
                );
            }
        }
    }

    /// Every present state as one awareness payload (what a joining session is sent), or
    /// `None` when no client has one.
    pub fn states(&self) -> Option<Vec<u8>> {
        let entries: Vec<AwarenessEntry<'_>> = self
            .clients
            .iter()
            .filter_map(|(&client_id, client)| {
                Some(AwarenessEntry {
                    client_id,
                    clock: client.clock,
                    json: client.state.as_deref()?,
                })
            })
            .collect();
        (!entries.is_empty()).then(|| ysync::encode_awareness(&entries))
    }

    /// Removes the states of `clients` (their session is gone) and returns the payload
    /// announcing it, at each one's current clock as y-protocols' server does, or `None`
    /// when none of them had a state.
    pub fn remove(&mut self, clients: impl IntoIterator<Item = u64>) -> Option<Vec<u8>> {
        let mut removed = Vec::new();
        for client_id in clients {
            if let Some(client) = self.clients.get_mut(&client_id) {
                if client.state.take().is_some() {
                    removed.push(AwarenessEntry {
                        client_id,
                        clock: client.clock,
                        json: "null",
                    });
                }
            }
        }
        (!removed.is_empty()).then(|| ysync::encode_awareness(&removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(client_id: u64, clock: u32, json: &str) -> AwarenessEntry<'_> {
        AwarenessEntry {
            client_id,
            clock,
            json,
        }
    }

    /// The present states, sorted by client id.
    fn present(awareness: &Awareness) -> Vec<(u64, u32, String)> {
        let Some(payload) = awareness.states() else {
            return Vec::new();
        };
        let mut states: Vec<_> = ysync::parse_awareness(&payload)
            .unwrap()
            .into_iter()
            .map(|e| (e.client_id, e.clock, e.json.to_owned()))
            .collect();
        states.sort();
        states
    }

    #[test]
    fn an_empty_table_has_no_states_and_removes_nothing() {
        let mut awareness = Awareness::default();
        assert_eq!(awareness.states(), None);
        assert_eq!(awareness.remove([1, 2]), None);
    }

    #[test]
    fn a_clock_zero_announcement_of_an_unknown_client_is_ignored() {
        let mut awareness = Awareness::default();
        awareness.apply(&[entry(7, 0, "{}")]);
        assert_eq!(present(&awareness), vec![]);
        awareness.apply(&[entry(7, 1, "{}")]);
        assert_eq!(present(&awareness), vec![(7, 1, "{}".into())]);
    }

    #[test]
    fn a_newer_clock_wins_and_an_older_one_is_ignored() {
        let mut awareness = Awareness::default();
        awareness.apply(&[entry(7, 2, r#"{"n":"b"}"#)]);
        awareness.apply(&[entry(7, 1, r#"{"n":"a"}"#)]);
        assert_eq!(present(&awareness), vec![(7, 2, r#"{"n":"b"}"#.into())]);
        awareness.apply(&[entry(7, 3, r#"{"n":"c"}"#)]);
        assert_eq!(present(&awareness), vec![(7, 3, r#"{"n":"c"}"#.into())]);
    }

    #[test]
    fn a_removal_at_the_same_clock_wins_but_a_state_at_the_same_clock_does_not() {
        let mut awareness = Awareness::default();
        awareness.apply(&[entry(7, 4, "{}")]);
        awareness.apply(&[entry(7, 4, r#"{"other":1}"#)]);
        assert_eq!(present(&awareness), vec![(7, 4, "{}".into())]);
        awareness.apply(&[entry(7, 4, "null")]);
        assert_eq!(present(&awareness), vec![]);
    }

    #[test]
    fn a_late_state_cannot_bring_back_a_client_that_left() {
        let mut awareness = Awareness::default();
        awareness.apply(&[entry(7, 5, "null")]);
        awareness.apply(&[entry(7, 4, "{}")]);
        assert_eq!(present(&awareness), vec![]);
        awareness.apply(&[entry(7, 6, "{}")]);
        assert_eq!(present(&awareness), vec![(7, 6, "{}".into())]);
    }

    #[test]
    fn removing_announces_only_present_states_at_their_clock() {
        let mut awareness = Awareness::default();
        awareness.apply(&[entry(1, 3, "{}"), entry(2, 9, "{}"), entry(3, 1, "null")]);
        let payload = awareness.remove([1, 3, 4]).expect("client 1 had a state");
        let entries = ysync::parse_awareness(&payload).unwrap();
        assert_eq!(entries, vec![entry(1, 3, "null")]);
        assert_eq!(present(&awareness), vec![(2, 9, "{}".into())]);
        assert_eq!(awareness.remove([1]), None, "already removed");
        // A peer applying the removal drops the state, as y-protocols' clients do.
        let mut peer = Awareness::default();
        peer.apply(&[entry(1, 3, "{}")]);
        peer.apply(&ysync::parse_awareness(&payload).unwrap());
        assert_eq!(present(&peer), vec![]);
    }

    proptest! {
        /// Whatever order announcements of one client arrive in, the one with the highest
        /// clock decides (a removal winning a tie), as every peer must agree.
        #[test]
        fn the_highest_clock_decides_in_any_order(
            announcements in prop::collection::vec((0u32..6, any::<bool>()), 1..12),
            seed in any::<u64>(),
        ) {
            let as_entry = |&(clock, leaves): &(u32, bool)| {
                entry(1, clock, if leaves { "null" } else { "{}" })
            };
            let mut shuffled = announcements.clone();
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let mut in_order = Awareness::default();
            let mut sorted = announcements.clone();
            sorted.sort();
            for a in &sorted {
                in_order.apply(&[as_entry(a)]);
            }
            let top = sorted.last().unwrap().0;
            let removed_at_top = sorted.iter().any(|&(c, leaves)| c == top && leaves);
            let expected = if removed_at_top || top == 0 {
                vec![]
            } else {
                vec![(1, top, "{}".to_owned())]
            };
            prop_assert_eq!(present(&in_order), expected);
            // In any other order the same announcement wins: a removal at the top clock beats
            // a state at that clock whichever comes first.
            let mut any_order = Awareness::default();
            for a in &shuffled {
                any_order.apply(&[as_entry(a)]);
            }
            prop_assert_eq!(present(&any_order), present(&in_order));
        }
    }
}
