//! Running several nodes as one: which node owns which room. So far the pure hash ring
//! ([`ring`]); membership, placement and routing build on it (issue 14).

pub mod ring;
