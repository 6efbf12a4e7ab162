//! The ids every layer shares, in one leaf module that imports nothing of Tandem's: room
//! names (the one validated newtype passed around, so that no raw path segment ever
//! reaches the registry or a storage key), session ids, and the right a session holds in
//! a room, the ownership epoch a store hands a room's owner, and cluster node ids. Pure.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use thiserror::Error;

/// Identifies one session (connection) within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A room's ownership epoch: [`crate::storage::Store::claim`] hands out a higher one on
/// every claim, and every write carries the epoch it was made under, so that the store can
/// refuse a write from an owner that has since been replaced (fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The longest node id accepted, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;

/// A cluster node's id: 1–64 bytes of `A-Z a-z 0-9 _ - .`, chosen by the operator
/// (`--node-id`). Its bytes are what the hash ring hashes, so it must be the same on every
/// node that names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(std::sync::Arc<str>);

/// Why a string is not a node id.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("node id {0:?}: use 1-64 of A-Z a-z 0-9 _ - .")]
pub struct NodeIdError(pub String);

impl NodeId {
    /// Validates `id`.
    pub fn parse(id: &str) -> Result<Self, NodeIdError> {
        let ok = !id.is_empty()
            && id.len() <= MAX_NODE_ID_LEN
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(Self(id.into()))
        } else {
            Err(NodeIdError(id.to_owned()))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a session or request may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Receive the document and awareness; no changes.
    Read,
    /// Read and change.
    #[default]
    Write,
}

/// The longest room name accepted, in bytes.
pub const MAX_ROOM_NAME_LEN: usize = 128;

/// Why a string is not a room name.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RoomNameError {
    /// The name is empty.
    #[error("room name is empty")]
    Empty,
    /// The name is longer than [`MAX_ROOM_NAME_LEN`].
    #[error("room name is {0} bytes long; the limit is {MAX_ROOM_NAME_LEN}")]
    TooLong(usize),
    /// The name holds a character outside `A-Z a-z 0-9 _ - . :`.
    #[error("room name contains {0:?}; allowed are A-Z a-z 0-9 _ - . :")]
    BadCharacter(char),
    /// The name starts with a dot (no `.`, `..` or hidden names).
    #[error("room name must not start with '.'")]
    LeadingDot,
}

/// A validated room name: 1–128 bytes of `A-Z a-z 0-9 _ - . :`, not starting with `.`.
/// Clones share one allocation (the registry, the room and its sessions each hold one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, RoomNameError> {
        if name.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if name.len() > MAX_ROOM_NAME_LEN {
            return Err(RoomNameError::TooLong(name.len()));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(RoomNameError::BadCharacter(bad));
        }
        if name.starts_with('.') {
            return Err(RoomNameError::LeadingDot);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["a", "doc-1", "team:notes_2026.v2", &"x".repeat(128)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn node_ids_are_plain() {
        assert!(NodeId::parse("node-1.eu_west").is_ok());
        for bad in ["", "a b", "n#1", "é", &"x".repeat(65)] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_tricks() {
        assert_eq!(RoomName::parse(""), Err(RoomNameError::Empty));
        assert_eq!(
            RoomName::parse(&"x".repeat(129)),
            Err(RoomNameError::TooLong(129))
        );
        assert_eq!(RoomName::parse(".."), Err(RoomNameError::LeadingDot));
        assert_eq!(
            RoomName::parse("a/b"),
            Err(RoomNameError::BadCharacter('/'))
        );
        assert_eq!(
            RoomName::parse("a\0b"),
            Err(RoomNameError::BadCharacter('\0'))
        );
        assert_eq!(RoomName::parse("é"), Err(RoomNameError::BadCharacter('é')));
    }
}
