//! Persistence behind one small trait, so the room actor never knows which database it
//! writes to. A room's document is stored as a snapshot (the whole state as one update,
//! covering log entries up to a sequence number) plus a log of updates after it.
//!
//! Writes are cheap and buffered; [`Store::flush`] is the durability barrier: its future
//! resolves once everything written before the call survives `kill -9`. Implementations
//! coalesce concurrent flushes (group commit). Only this module knows sled.
//!
//! A room's chat stream is stored beside its document: a small meta record (the epoch and
//! how far the stream has been trimmed) and one record per message, keyed by seq. The
//! same flush makes both durable.

mod memory;
mod sled_store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use thiserror::Error;

pub use memory::MemoryStore;
pub use sled_store::{SledStore, DEFAULT_CACHE_BYTES as DEFAULT_SLED_CACHE_BYTES};

use crate::id::RoomName;

/// A storage failure. Cloneable so one failed group commit can be reported to every waiter.
/// Its text is for the server's log: clients are only ever told that storage failed.
#[derive(Debug, Error, Clone)]
pub enum StoreError {
    /// The database reported an error, or refused what it holds; the error itself is kept
    /// whole (`source`) for the log.
    #[error("storage error: {context}{}", caused_by(.source))]
    Backend {
        /// What the store was doing.
        context: String,
        /// The database's own error, if there is one.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// A stored record is not in the expected format.
    #[error("corrupt record for room {room}: {reason}")]
    Corrupt {
        /// The room whose record is bad.
        room: String,
        /// What is wrong.
        reason: String,
    },
    /// The store has shut down.
    #[error("storage is closed")]
    Closed,
}

impl StoreError {
    /// A failure of the database while doing `context`.
    pub fn backend(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A failure with no underlying error (a record the store refuses).
    pub fn refused(context: impl Into<String>) -> Self {
        StoreError::Backend {
            context: context.into(),
            source: None,
        }
    }
}

/// ": {source}" for a `Backend` error's text, so the log line carries the cause.
fn caused_by(source: &Option<Arc<dyn std::error::Error + Send + Sync>>) -> String {
    source
        .as_ref()
        .map_or_else(String::new, |e| format!(": {e}"))
}

/// A future that resolves when earlier writes are durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// A room's stored document: the snapshot and the updates logged after it, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredDoc {
    /// The last snapshot, if any.
    pub snapshot: Option<Vec<u8>>,
    /// The logged updates after the snapshot, oldest first.
    pub updates: Vec<Vec<u8>>,
    /// The highest sequence number used so far (by the log or the snapshot); 0 if none.
    pub last_seq: u64,
}

/// A room's stored chat stream position (see [`Store::load_stream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStream {
    /// The stream's epoch.
    pub epoch: String,
    /// The highest seq ever appended (0 if none).
    pub last_seq: u64,
    /// The lowest seq still stored (`last_seq + 1` when none is).
    pub first_seq: u64,
}

/// Where rooms keep their documents and chat streams.
pub trait Store: Send + Sync + 'static {
    /// Reads a room's snapshot and log tail.
    fn load_doc(&self, room: &RoomName) -> Result<StoredDoc, StoreError>;
    /// Appends `updates`, numbered up to `last_seq` (the last of them; strictly
    /// increasing per room), to the room's log as one record. The room writes what arrived
    /// since its previous flush in one go: one write per flush, not per update.
    fn append_updates(
        &self,
        room: &RoomName,
        last_seq: u64,
        updates: &[Vec<u8>],
    ) -> Result<(), StoreError>;
    /// Atomically stores `state` as the room's snapshot covering every log entry up to
    /// `upto` and removes those entries.
    fn write_snapshot(&self, room: &RoomName, upto: u64, state: &[u8]) -> Result<(), StoreError>;
    /// Reads a room's stream position, or `None` if the room never had a stream.
    fn load_stream(&self, room: &RoomName) -> Result<Option<StoredStream>, StoreError>;
    /// Starts a room's stream (or replaces a lost one) under `epoch`, with no messages.
    fn create_stream(&self, room: &RoomName, epoch: &str) -> Result<(), StoreError>;
    /// Appends message `seq` (strictly increasing per room) to the room's stream.
    fn append_message(&self, room: &RoomName, seq: u64, record: &[u8]) -> Result<(), StoreError>;
    /// Up to `limit` messages with seq > `after`, oldest first.
    fn read_messages(
        &self,
        room: &RoomName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Up to `limit` messages with seq < `before`, the newest of them, oldest first.
    fn read_messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Removes every message with seq ≤ `upto` (retention), remembering that they existed.
    fn trim_messages(&self, room: &RoomName, upto: u64) -> Result<(), StoreError>;
    /// The durability barrier; see the module docs.
    fn flush(&self) -> Durable;
    /// Makes everything written so far durable before returning (blocks the caller).
    fn flush_blocking(&self) -> Result<(), StoreError>;
    /// Whether the store can serve requests (for `/readyz`).
    fn is_ready(&self) -> bool {
        true
    }
}

/// How updates are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Flush every group commit: an update is durable before anyone sees it (the default).
    EveryBatch,
    /// Flush in the background every so many milliseconds; a crash may lose that window.
    Interval(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_backend_error_keeps_its_cause_for_the_log() {
        let e = StoreError::backend("flushing", std::io::Error::other("device full"));
        assert_eq!(e.to_string(), "storage error: flushing: device full");
        assert_eq!(e.source().unwrap().to_string(), "device full");
        let copy = e.clone(); // one failed group commit, told to every waiter
        assert_eq!(copy.to_string(), e.to_string());
        let refused = StoreError::refused("an update over 4 GiB");
        assert_eq!(refused.to_string(), "storage error: an update over 4 GiB");
        assert!(refused.source().is_none());
    }
}
