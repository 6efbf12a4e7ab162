//! The consistent hash ring: which node owns a room. Pure: members in, owner out.
//!
//! Built on the `hashring` crate, with what it lacks added here:
//! - **virtual nodes**: each member is [`VNODES`] points `"{node}#{i}"` on the ring, so
//!   rooms spread evenly (the crate puts one point per node);
//! - **explicit bytes**: points and room names are hashed as their bytes and nothing else
//!   (std's `Hash` for `str` appends a terminator and is not promised stable across
//!   compiler versions or platforms), with the crate's hasher, SipHash-2-4 under fixed zero
//!   keys; golden-value tests pin the mapping, so every node built by any compiler agrees;
//! - **rebuilt, not edited**: a ring is made from the sorted member list (the crate's
//!   `add` re-sorts the whole ring per point and its `remove` matches by hash value only), and
//!   carries a version that changes with the member set.
//!
//! It must not know about sockets, actors or membership protocols: the cluster's
//! membership hands it the live members.

use std::hash::{Hash, Hasher};

use hashring::HashRing;

use crate::id::{NodeId, RoomName};

/// Points per node. Chosen by measurement (`cargo run --release --example ring_balance`,
/// 100,000 rooms): the busiest node's rooms against the mean were 1.05 / 1.07 / 1.12 at
/// 3 / 10 / 20 nodes with 512 points, against 1.15 / 1.09 / 1.12 with 256 and 1.07 / 1.22 /
/// 1.30 with 64; a lookup stays ~60 ns (a binary search over N × 512 points).
pub const VNODES: u32 = 512;

/// One point on the ring: a node's `index`-th virtual node.
#[derive(Debug, Clone)]
struct Point {
    node: NodeId,
    index: u32,
}

impl Hash for Point {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // "{node}#{index}": node ids never hold '#', so no two points share their bytes.
        state.write(self.node.as_str().as_bytes());
        state.write(b"#");
        state.write(self.index.to_string().as_bytes());
    }
}

/// A room name as the ring hashes it: its bytes only.
struct RoomKey<'a>(&'a str);

impl Hash for RoomKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// The ring for one set of members.
pub struct Ring {
    ring: HashRing<Point>,
    members: Vec<NodeId>,
    version: u64,
}

impl Ring {
    /// The ring of `members` (in any order; duplicates count once) with `vnodes` points each.
    pub fn with_vnodes(members: impl IntoIterator<Item = NodeId>, vnodes: u32) -> Self {
        let mut members: Vec<NodeId> = members.into_iter().collect();
        members.sort();
        members.dedup();
        let mut ring = HashRing::new();
        ring.batch_add(
            members
                .iter()
                .flat_map(|node| {
                    (0..vnodes).map(|index| Point {
                        node: node.clone(),
                        index,
                    })
                })
                .collect(),
        );
        let version = version_of(&members);
        Self {
            ring,
            members,
            version,
        }
    }

    /// The ring of `members` with [`VNODES`] points each.
    pub fn new(members: impl IntoIterator<Item = NodeId>) -> Self {
        Self::with_vnodes(members, VNODES)
    }

    /// The node that owns `room`; `None` when the ring has no members.
    pub fn owner(&self, room: &RoomName) -> Option<&NodeId> {
        self.owner_of(room.as_str())
    }

    /// The owner of a room given by name (validated or not: the ring hashes bytes).
    pub fn owner_of(&self, room: &str) -> Option<&NodeId> {
        self.ring.get(&RoomKey(room)).map(|point| &point.node)
    }

    /// The members, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Names this member set: equal on every node that sees the same members, different
    /// (but for a 2^-64 chance) for any other set. Shown in `/cluster` and route headers.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// A stable digest of the sorted member list (the same hasher as the ring).
fn version_of(members: &[NodeId]) -> u64 {
    let mut hasher = siphasher::sip::SipHasher::new();
    for member in members {
        hasher.write(member.as_str().as_bytes());
        hasher.write(b"\n");
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn node(id: &str) -> NodeId {
        NodeId::parse(id).unwrap()
    }

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| node(&format!("node-{i}"))).collect()
    }

    fn room(i: usize) -> String {
        format!("room-{i}")
    }

    #[test]
    fn golden_owners_are_the_same_on_every_build() {
        // Pinned once: a change here means nodes built before and after it would disagree
        // on owners, which a rolling upgrade cannot survive.
        let ring = Ring::new([node("alpha"), node("beta"), node("gamma")]);
        let owners: Vec<(&str, &str)> = ["doc-1", "doc-2", "team:notes", "lobby", "a", "x.y-z_9"]
            .iter()
            .map(|r| (*r, ring.owner_of(r).unwrap().as_str()))
            .collect();
        assert_eq!(owners, GOLDEN, "the ring's mapping changed");
        assert_eq!(ring.version(), GOLDEN_VERSION, "the ring's version changed");
    }

    const GOLDEN: &[(&str, &str)] = &[
        ("doc-1", "gamma"),
        ("doc-2", "alpha"),
        ("team:notes", "gamma"),
        ("lobby", "gamma"),
        ("a", "beta"),
        ("x.y-z_9", "alpha"),
    ];
    const GOLDEN_VERSION: u64 = 12_909_940_710_214_613_319;

    #[test]
    fn an_empty_ring_has_no_owner() {
        assert!(Ring::new([]).owner_of("r").is_none());
    }

    fn owners(ring: &Ring, rooms: usize) -> Vec<NodeId> {
        (0..rooms)
            .map(|i| ring.owner_of(&room(i)).unwrap().clone())
            .collect()
    }

    #[test]
    fn load_is_even_at_ten_nodes() {
        let ring = Ring::new(nodes(10));
        let mut load: HashMap<NodeId, usize> = HashMap::new();
        for owner in owners(&ring, 20_000) {
            *load.entry(owner).or_default() += 1;
        }
        let max = *load.values().max().unwrap() as f64;
        assert!(max / 2_000.0 < 1.2, "max/mean {}", max / 2_000.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn the_same_members_give_the_same_owners_in_any_order(n in 1usize..8, seed in any::<u64>()) {
            let mut members = nodes(n);
            let a = Ring::new(members.clone());
            // Any order, with duplicates: the same ring.
            members.rotate_left((seed % n as u64) as usize);
            members.push(members[0].clone());
            let b = Ring::new(members);
            prop_assert_eq!(a.version(), b.version());
            prop_assert_eq!(owners(&a, 500), owners(&b, 500));
        }

        #[test]
        fn a_joining_node_takes_its_share_and_only_it_gains(n in 1usize..12) {
            let before = Ring::new(nodes(n));
            let joined = node("newcomer");
            let mut members = nodes(n);
            members.push(joined.clone());
            let after = Ring::new(members);
            prop_assert_ne!(before.version(), after.version());
            let rooms = 4_000;
            let (old, new) = (owners(&before, rooms), owners(&after, rooms));
            let moved: Vec<_> = old.iter().zip(&new).filter(|(o, n)| o != n).collect();
            // Every room that moved went to the new node.
            prop_assert!(moved.iter().all(|(_, n)| **n == joined));
            // About 1/(n+1) of them moved.
            let share = moved.len() as f64 / rooms as f64;
            let expected = 1.0 / (n + 1) as f64;
            prop_assert!((share - expected).abs() < expected * 0.35 + 0.01,
                "moved {share:.3}, expected about {expected:.3}");
        }

        #[test]
        fn a_leaving_node_moves_only_its_own_rooms(n in 2usize..12, gone in any::<prop::sample::Index>()) {
            let members = nodes(n);
            let leaving = members[gone.index(n)].clone();
            let before = Ring::new(members.clone());
            let after = Ring::new(members.into_iter().filter(|m| *m != leaving));
            let (old, new) = (owners(&before, 3_000), owners(&after, 3_000));
            for (o, n) in old.iter().zip(&new) {
                if *o != leaving {
                    prop_assert_eq!(o, n, "a room of a staying node moved");
                } else {
                    prop_assert_ne!(n, &leaving);
                }
            }
        }
    }
}
