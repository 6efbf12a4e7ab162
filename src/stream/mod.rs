//! The chat stream's pure core: the per-room sequence and epoch, the resume decision, the
//! idempotency window and the presence list. No actors, no sockets, no storage: the room
//! actor owns one [`Presence`] and one [`Idempotency`] and asks [`resume`] what a joining
//! client gets; callers pass the clock in, so everything here is unit-tested directly.
//!
//! The JSON wire format (client requests, server events) is in [`wire`].

pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where a room's stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMeta {
    /// Names this incarnation of the stream; a new one means the old sequence is gone.
    pub epoch: String,
    /// The highest sequence number assigned (0 before the first message).
    pub last_seq: u64,
    /// The lowest sequence number still stored (`last_seq + 1` when none is).
    pub first_seq: u64,
}

impl StreamMeta {
    /// A new, empty stream with a fresh epoch.
    pub fn fresh() -> Self {
        Self {
            epoch: new_epoch(),
            last_seq: 0,
            first_seq: 1,
        }
    }
}

/// A new epoch: unique per stream incarnation (time plus process-random bits, hex).
pub fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(nanos);
    format!(
        "{:012x}{:04x}",
        nanos >> 16 & 0xffff_ffff_ffff,
        hasher.finish() & 0xffff
    )
}

/// Milliseconds since the Unix epoch, the messages' server timestamp.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a joining client asked to resume from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResumeFrom {
    /// The epoch the client's `since` belongs to, if it knows it.
    pub epoch: Option<String>,
    /// The last sequence number the client has seen.
    pub since: u64,
}

/// What a joining client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Every message after `after` is held: replay exactly those, then live ones.
    Recovered {
        /// Replay from `after + 1`.
        after: u64,
    },
    /// The server cannot prove it holds every message the client missed.
    NotRecovered,
    /// The client asked for no resume: live messages only.
    Fresh,
}

/// Decides whether a client resuming `from` can be given a complete replay. `visible` is
/// the highest sequence number already delivered to members (only those are replayed;
/// later ones reach the client live).
pub fn resume(meta: &StreamMeta, visible: u64, from: Option<&ResumeFrom>) -> Resume {
    let Some(from) = from else {
        return Resume::Fresh;
    };
    if from.epoch.as_deref().is_some_and(|e| e != meta.epoch) {
        return Resume::NotRecovered;
    }
    // A client ahead of the stream saw messages of an earlier incarnation.
    if from.since > visible {
        return Resume::NotRecovered;
    }
    // Messages after `since` were trimmed away.
    if from.since + 1 < meta.first_seq && from.since < visible {
        return Resume::NotRecovered;
    }
    Resume::Recovered { after: from.since }
}

/// Who may not publish a message id twice: the subject, or nobody in particular for
/// anonymous publishers (their ids are shared across connections, so a retry over a new
/// connection is still recognised).
pub type IdempotencyKey = (String, String);

/// The recent client message ids of one room, each with the sequence number it got.
/// Bounded by count; the oldest ids fall out first.
#[derive(Debug)]
pub struct Idempotency {
    capacity: usize,
    seqs: HashMap<IdempotencyKey, u64>,
    order: VecDeque<IdempotencyKey>,
}

impl Idempotency {
    /// A window remembering the last `capacity` ids (0 disables idempotency).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seqs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The sequence number `key` was published as, if it is still remembered.
    pub fn get(&self, key: &IdempotencyKey) -> Option<u64> {
        self.seqs.get(key).copied()
    }

    /// Remembers that `key` was published as `seq`.
    pub fn insert(&mut self, key: IdempotencyKey, seq: u64) {
        if self.capacity == 0 || self.seqs.contains_key(&key) {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seqs.remove(&oldest);
            }
        }
        self.seqs.insert(key.clone(), seq);
        self.order.push_back(key);
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// One member of a room's presence list: a connection, not a person (a person with two
/// tabs is two members with the same subject).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The connection id, unique in the process (`c` + session number).
    pub conn: String,
    /// The token's subject, or an anonymous id.
    pub subject: String,
    /// Public info from the token (`info` claim), if any.
    pub info: Option<serde_json::Value>,
    /// The typing/status state and when it expires.
    pub status: Option<(String, Instant)>,
}

/// The presence list of one room, keyed by whatever the room identifies connections by.
#[derive(Debug)]
pub struct Presence<K> {
    members: HashMap<K, Member>,
    status_ttl: Duration,
}

impl<K: std::hash::Hash + Eq + Clone> Presence<K> {
    /// An empty list whose statuses expire after `status_ttl`.
    pub fn new(status_ttl: Duration) -> Self {
        Self {
            members: HashMap::new(),
            status_ttl,
        }
    }

    /// Adds a member.
    pub fn join(&mut self, key: K, member: Member) {
        self.members.insert(key, member);
    }

    /// Removes a member, returning it.
    pub fn leave(&mut self, key: &K) -> Option<Member> {
        self.members.remove(key)
    }

    /// The member for `key`.
    pub fn get(&self, key: &K) -> Option<&Member> {
        self.members.get(key)
    }

    /// Sets (or with `None` clears) a member's status; returns the member if it changed.
    pub fn set_status(&mut self, key: &K, status: Option<String>, now: Instant) -> Option<&Member> {
        let ttl = self.status_ttl;
        let member = self.members.get_mut(key)?;
        member.status = status.map(|s| (s, now + ttl));
        Some(member)
    }

    /// Clears every status that has expired by `now`; returns the members it cleared.
    pub fn expire(&mut self, now: Instant) -> Vec<Member> {
        let mut cleared = Vec::new();
        for member in self.members.values_mut() {
            if member
                .status
                .as_ref()
                .is_some_and(|(_, until)| *until <= now)
            {
                member.status = None;
                cleared.push(member.clone());
            }
        }
        cleared
    }

    /// Every member, ordered by connection id for a stable listing.
    pub fn members(&self) -> Vec<&Member> {
        let mut all: Vec<_> = self.members.values().collect();
        all.sort_by(|a, b| a.conn.cmp(&b.conn));
        all
    }

    /// The keys of every member.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.members.keys()
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there is no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// How long a status lasts.
    pub fn status_ttl(&self) -> Duration {
        self.status_ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(first: u64, last: u64) -> StreamMeta {
        StreamMeta {
            epoch: "e1".into(),
            last_seq: last,
            first_seq: first,
        }
    }

    fn from(epoch: Option<&str>, since: u64) -> ResumeFrom {
        ResumeFrom {
            epoch: epoch.map(str::to_owned),
            since,
        }
    }

    #[test]
    fn resume_within_the_retained_window_recovers() {
        let m = meta(5, 20);
        assert_eq!(resume(&m, 20, None), Resume::Fresh);
        for since in [4, 10, 19, 20] {
            assert_eq!(
                resume(&m, 20, Some(&from(Some("e1"), since))),
                Resume::Recovered { after: since }
            );
        }
        // Without an epoch the client is trusted to mean this one.
        assert_eq!(
            resume(&m, 20, Some(&from(None, 12))),
            Resume::Recovered { after: 12 }
        );
    }

    #[test]
    fn resume_that_would_leave_a_gap_or_cross_epochs_does_not_recover() {
        let m = meta(5, 20);
        // Message 4 was trimmed: a client that saw only 3 cannot get it.
        assert_eq!(
            resume(&m, 20, Some(&from(Some("e1"), 3))),
            Resume::NotRecovered
        );
        assert_eq!(
            resume(&m, 20, Some(&from(Some("old"), 12))),
            Resume::NotRecovered
        );
        // Ahead of what was delivered: it saw another incarnation's messages.
        assert_eq!(resume(&m, 18, Some(&from(None, 19))), Resume::NotRecovered);
        // Everything was trimmed but the client is up to date: nothing is missing.
        let empty = meta(21, 20);
        assert_eq!(
            resume(&empty, 20, Some(&from(Some("e1"), 20))),
            Resume::Recovered { after: 20 }
        );
        assert_eq!(
            resume(&empty, 20, Some(&from(Some("e1"), 19))),
            Resume::NotRecovered
        );
    }

    #[test]
    fn a_new_stream_recovers_from_zero() {
        let m = StreamMeta::fresh();
        assert_eq!(
            resume(&m, 0, Some(&from(Some(&m.epoch), 0))),
            Resume::Recovered { after: 0 }
        );
        assert_ne!(new_epoch(), m.epoch);
    }

    #[test]
    fn idempotency_remembers_a_bounded_window() {
        let mut window = Idempotency::new(2);
        let key = |id: &str| (String::new(), id.to_owned());
        window.insert(key("a"), 1);
        window.insert(key("a"), 9); // a repeat keeps the first seq
        window.insert(key("b"), 2);
        assert_eq!(window.get(&key("a")), Some(1));
        window.insert(key("c"), 3);
        assert_eq!(window.get(&key("a")), None);
        assert_eq!(window.get(&key("c")), Some(3));
        assert_eq!(window.len(), 2);
        let mut off = Idempotency::new(0);
        off.insert(key("a"), 1);
        assert!(off.is_empty());
    }

    #[test]
    fn statuses_expire_on_their_own() {
        let start = Instant::now();
        let mut presence = Presence::new(Duration::from_secs(5));
        let member = |conn: &str| Member {
            conn: conn.into(),
            subject: "alice".into(),
            info: None,
            status: None,
        };
        presence.join(1, member("c1"));
        presence.join(2, member("c2"));
        assert!(presence
            .set_status(&1, Some("typing".into()), start)
            .is_some());
        assert!(presence
            .set_status(&9, Some("typing".into()), start)
            .is_none());
        assert!(presence.expire(start + Duration::from_secs(4)).is_empty());
        let cleared = presence.expire(start + Duration::from_secs(5));
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].conn, "c1");
        assert!(presence.expire(start + Duration::from_secs(9)).is_empty());
        assert_eq!(presence.leave(&2).map(|m| m.conn), Some("c2".into()));
        assert_eq!(presence.len(), 1);
    }
}
