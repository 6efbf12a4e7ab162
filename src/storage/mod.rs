//! Persistence behind one small trait, so the room actor never knows which database it
//! writes to. A room's document is stored as a snapshot (the whole state as one update,
//! covering log entries up to a sequence number) plus a log of updates after it; its chat
//! stream beside it, as a small meta record (the stream's epoch and how far it has been
//! trimmed) and one record per message, keyed by seq.
//!
//! The contract, the same for every backend (`tests/store_contract.rs` checks it):
//! - **Reads are futures**, so no room blocks its thread on a database round trip. A read
//!   sees every write whose flush has resolved; it may or may not see later ones.
//! - **Writes are cheap and buffered**: they return at once and are made durable together
//!   by [`Store::flush`], the durability barrier (one transaction or one `fsync` serves
//!   every flush that arrives while the previous one runs: group commit). A room's writes
//!   are applied in the order it made them.
//! - **Ownership is fenced.** [`Store::claim`] takes a room for the caller with an
//!   [`Epoch`] higher than any before it; every write carries the epoch it was made under.
//!   A write under an epoch older than the room's current one is refused with
//!   [`StoreError::Fenced`], by the write or by the flush that covers it, and never becomes
//!   visible; the check and the write are atomic, so a takeover and a stale write cannot
//!   interleave. A claim resolves once every write acknowledged (flushed) under earlier
//!   epochs is visible to reads, so the new owner starts from everything the old one
//!   acknowledged.
//!
//! Only this module's submodules know sled or PostgreSQL.

pub mod copy;
mod disk_sync;
mod memory;
mod postgres;
mod sled_store;
mod slow;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use thiserror::Error;

pub use memory::MemoryStore;
pub use postgres::{PostgresConfig, PostgresStore, DEFAULT_SCHEMA as DEFAULT_POSTGRES_SCHEMA};
pub use sled_store::{SledStore, DEFAULT_CACHE_BYTES as DEFAULT_SLED_CACHE_BYTES};

pub use crate::id::Epoch;
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
    /// The write was made under an epoch older than the room's current one: another
    /// activation (on this node or another) has claimed the room since. Nothing of it was
    /// stored; the room must stop writing and step down.
    #[error("room {room} was claimed under a newer epoch; writes under epoch {epoch} are refused")]
    Fenced {
        /// The room.
        room: String,
        /// The stale epoch the write carried.
        epoch: Epoch,
    },
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

    /// A write under `epoch` that a newer claim of `room` refuses.
    pub fn fenced(room: &RoomName, epoch: Epoch) -> Self {
        StoreError::Fenced {
            room: room.to_string(),
            epoch,
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

/// What the store's reads and claims return: a future, so that no caller blocks on a
/// database round trip.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A future that resolves when earlier writes are durable.
pub type Durable = StoreFuture<()>;

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
    /// The stream's epoch (its identity for resuming clients; not the ownership epoch).
    pub epoch: String,
    /// The highest seq ever appended (0 if none).
    pub last_seq: u64,
    /// The lowest seq still stored (`last_seq + 1` when none is).
    pub first_seq: u64,
}

/// Stored messages: `(seq, record)`, oldest first.
pub type Messages = Vec<(u64, Vec<u8>)>;

/// Where rooms keep their documents and chat streams; see the module docs for the
/// contract every implementation keeps.
pub trait Store: Send + Sync + 'static {
    /// Takes `room` for the caller: an epoch higher than any handed out for it before.
    /// From then on writes under older epochs are refused. Resolves once the claim is
    /// durable and every write flushed under an earlier epoch is visible to reads.
    fn claim(&self, room: &RoomName) -> StoreFuture<Epoch>;
    /// Reads a room's snapshot and log tail.
    fn load_doc(&self, room: &RoomName) -> StoreFuture<StoredDoc>;
    /// Appends `updates`, numbered up to `last_seq` (the last of them; strictly
    /// increasing per room), to the room's log as one record. The room writes what arrived
    /// since its previous flush in one go: one write per flush, not per update.
    fn append_updates(
        &self,
        room: &RoomName,
        epoch: Epoch,
        last_seq: u64,
        updates: Vec<Vec<u8>>,
    ) -> Result<(), StoreError>;
    /// Atomically stores `state` as the room's snapshot covering every log entry up to
    /// `upto`, and removes covered entries: these at once, or (sled) those the previous
    /// snapshot covered. Loading skips covered entries either way.
    fn write_snapshot(
        &self,
        room: &RoomName,
        epoch: Epoch,
        upto: u64,
        state: Vec<u8>,
    ) -> Result<(), StoreError>;
    /// Reads a room's stream position, or `None` if the room never had a stream.
    fn load_stream(&self, room: &RoomName) -> StoreFuture<Option<StoredStream>>;
    /// Starts a room's stream (or replaces a lost one) under `stream_epoch`, with no
    /// messages.
    fn create_stream(
        &self,
        room: &RoomName,
        epoch: Epoch,
        stream_epoch: &str,
    ) -> Result<(), StoreError>;
    /// Appends message `seq` (strictly increasing per room) to the room's stream.
    fn append_message(
        &self,
        room: &RoomName,
        epoch: Epoch,
        seq: u64,
        record: Vec<u8>,
    ) -> Result<(), StoreError>;
    /// Up to `limit` messages with seq > `after`, oldest first.
    fn read_messages(&self, room: &RoomName, after: u64, limit: usize) -> StoreFuture<Messages>;
    /// Up to `limit` messages with seq < `before`, the newest of them, oldest first.
    fn read_messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> StoreFuture<Messages>;
    /// Removes every message with seq ≤ `upto` (retention), remembering that they existed.
    fn trim_messages(&self, room: &RoomName, epoch: Epoch, upto: u64) -> Result<(), StoreError>;
    /// The durability barrier for `room` under `epoch`: resolves once everything written
    /// before the call is durable, or with [`StoreError::Fenced`] if the room has been
    /// claimed under a newer epoch (then none of this epoch's unflushed writes are kept).
    fn flush(&self, room: &RoomName, epoch: Epoch) -> Durable;
    /// Makes everything written so far, for every room, durable (shutdown, tools).
    fn flush_all(&self) -> Durable;
    /// Every room with a document or a stream stored (for `tandem store copy`).
    fn rooms(&self) -> StoreFuture<Vec<RoomName>>;
    /// Whether the store can serve requests (for `/readyz`).
    fn is_ready(&self) -> bool {
        true
    }
}

/// A log record's bytes: each update as a 4-byte big-endian length and the update (the
/// format every store keeps a group commit's updates in).
pub(crate) fn encode_batch(updates: &[Vec<u8>]) -> Result<Vec<u8>, StoreError> {
    let size = updates.iter().map(|u| u.len() + 4).sum();
    let mut value = Vec::with_capacity(size);
    for update in updates {
        let len =
            u32::try_from(update.len()).map_err(|_| StoreError::refused("an update over 4 GiB"))?;
        value.extend_from_slice(&len.to_be_bytes());
        value.extend_from_slice(update);
    }
    Ok(value)
}

/// The updates of a log record (see [`encode_batch`]), or `None` if it is truncated.
pub(crate) fn split_batch(mut value: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut updates = Vec::new();
    while !value.is_empty() {
        let (len, rest) = value.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        updates.push(rest[..len].to_vec());
        value = &rest[len..];
    }
    Some(updates)
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

    proptest::proptest! {
        #[test]
        fn a_log_record_gives_back_its_updates(updates in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..20)) {
            let record = encode_batch(&updates).unwrap();
            proptest::prop_assert_eq!(split_batch(&record), Some(updates.clone()));
            if !record.is_empty() {
                // Any truncation is noticed (or ends exactly between two updates).
                let cut = &record[..record.len() - 1];
                proptest::prop_assert!(split_batch(cut).is_none_or(|u| u.len() < updates.len()));
            }
        }
    }

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
