//! Running several nodes as one: who is in the cluster ([`membership`]: chitchat gossip, or
//! an in-memory twin) and which node owns which room ([`ring`]: the consistent hash ring,
//! pure). Placement and routing build on them (issue 14, in progress).

pub mod membership;
pub mod placement;
pub mod ring;
