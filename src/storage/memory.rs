//! An in-memory [`Store`] for tests and for running without a disk. Nothing survives the
//! process; writes are visible at once and `flush` resolves at once. It keeps the same
//! ownership contract as the databases (epochs, fencing), so the room code and the
//! conformance suite run on it unchanged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Durable, Epoch, Messages, Store, StoreError, StoreFuture, StoredDoc, StoredStream};
use crate::id::RoomName;

#[derive(Default)]
struct RoomRecords {
    /// The current ownership epoch (0: never claimed).
    epoch: u64,
    snapshot: Option<(u64, Vec<u8>)>,
    log: BTreeMap<u64, Vec<u8>>,
    /// The stream's epoch and trimmed-up-to seq, once it exists.
    stream: Option<(String, u64)>,
    messages: BTreeMap<u64, Vec<u8>>,
}

/// A [`Store`] that keeps everything in a map.
#[derive(Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<RoomName, RoomRecords>>,
}

fn ready<T: Send + 'static>(value: Result<T, StoreError>) -> StoreFuture<T> {
    Box::pin(std::future::ready(value))
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_room<T>(&self, room: &RoomName, f: impl FnOnce(&mut RoomRecords) -> T) -> T {
        // A poisoned lock means a panic elsewhere mid-write; the map itself is still whole.
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        f(rooms.entry(room.clone()).or_default())
    }

    /// Runs a write if `epoch` is the room's current one; refuses it otherwise.
    fn write(
        &self,
        room: &RoomName,
        epoch: Epoch,
        f: impl FnOnce(&mut RoomRecords),
    ) -> Result<(), StoreError> {
        self.with_room(room, |records| {
            if records.epoch != epoch.0 {
                return Err(StoreError::fenced(room, epoch));
            }
            f(records);
            Ok(())
        })
    }
}

impl Store for MemoryStore {
    fn claim(&self, room: &RoomName) -> StoreFuture<Epoch> {
        ready(Ok(self.with_room(room, |records| {
            records.epoch += 1;
            Epoch(records.epoch)
        })))
    }

    fn load_doc(&self, room: &RoomName) -> StoreFuture<StoredDoc> {
        ready(Ok(self.with_room(room, |records| {
            let covered = records.snapshot.as_ref().map_or(0, |(upto, _)| *upto);
            let tail = records.log.range(covered + 1..);
            StoredDoc {
                snapshot: records.snapshot.as_ref().map(|(_, s)| s.clone()),
                last_seq: records
                    .log
                    .keys()
                    .next_back()
                    .copied()
                    .unwrap_or(0)
                    .max(covered),
                updates: tail.map(|(_, u)| u.clone()).collect(),
            }
        })))
    }

    fn append_updates(
        &self,
        room: &RoomName,
        epoch: Epoch,
        last_seq: u64,
        updates: Vec<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let first = (last_seq + 1)
            .checked_sub(updates.len() as u64)
            .ok_or_else(|| StoreError::refused("a log record with more updates than its seq"))?;
        self.write(room, epoch, |records| {
            for (seq, update) in (first..).zip(updates) {
                records.log.insert(seq, update);
            }
        })
    }

    fn write_snapshot(
        &self,
        room: &RoomName,
        epoch: Epoch,
        upto: u64,
        state: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.write(room, epoch, |records| {
            records.snapshot = Some((upto, state));
            records.log.retain(|&seq, _| seq > upto);
        })
    }

    fn load_stream(&self, room: &RoomName) -> StoreFuture<Option<StoredStream>> {
        ready(Ok(self.with_room(room, |records| {
            let (epoch, trimmed) = records.stream.clone()?;
            let last_seq = records
                .messages
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0)
                .max(trimmed);
            let first_seq = records
                .messages
                .keys()
                .next()
                .copied()
                .unwrap_or(last_seq + 1);
            Some(StoredStream {
                epoch,
                last_seq,
                first_seq,
            })
        })))
    }

    fn create_stream(
        &self,
        room: &RoomName,
        epoch: Epoch,
        stream_epoch: &str,
    ) -> Result<(), StoreError> {
        self.write(room, epoch, |records| {
            records.stream = Some((stream_epoch.to_owned(), 0));
            records.messages.clear();
        })
    }

    fn append_message(
        &self,
        room: &RoomName,
        epoch: Epoch,
        seq: u64,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.write(room, epoch, |records| {
            records.messages.insert(seq, record);
        })
    }

    fn read_messages(&self, room: &RoomName, after: u64, limit: usize) -> StoreFuture<Messages> {
        ready(Ok(self.with_room(room, |records| {
            records
                .messages
                .range(after.saturating_add(1)..)
                .take(limit)
                .map(|(seq, r)| (*seq, r.clone()))
                .collect()
        })))
    }

    fn read_messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> StoreFuture<Messages> {
        ready(Ok(self.with_room(room, |records| {
            let mut page: Messages = records
                .messages
                .range(..before)
                .rev()
                .take(limit)
                .map(|(seq, r)| (*seq, r.clone()))
                .collect();
            page.reverse();
            page
        })))
    }

    fn trim_messages(&self, room: &RoomName, epoch: Epoch, upto: u64) -> Result<(), StoreError> {
        self.write(room, epoch, |records| {
            records.messages.retain(|&seq, _| seq > upto);
            if let Some((_, trimmed)) = &mut records.stream {
                *trimmed = (*trimmed).max(upto);
            }
        })
    }

    fn flush(&self, room: &RoomName, epoch: Epoch) -> Durable {
        let current = self.with_room(room, |records| records.epoch);
        if current != epoch.0 {
            return ready(Err(StoreError::fenced(room, epoch)));
        }
        ready(Ok(()))
    }

    fn flush_all(&self) -> Durable {
        ready(Ok(()))
    }

    fn rooms(&self) -> StoreFuture<Vec<RoomName>> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<RoomName> = rooms
            .iter()
            .filter(|(_, r)| r.snapshot.is_some() || !r.log.is_empty() || r.stream.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        ready(Ok(names))
    }
}
