//! An in-memory [`Store`] for tests and for running without a disk. Nothing survives the
//! process; `flush` resolves at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Durable, Store, StoreError, StoredDoc, StoredStream};
use crate::id::RoomName;

#[derive(Default)]
struct RoomRecords {
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
}

impl Store for MemoryStore {
    fn load_doc(&self, room: &RoomName) -> Result<StoredDoc, StoreError> {
        Ok(self.with_room(room, |records| {
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
        }))
    }

    fn append_updates(
        &self,
        room: &RoomName,
        last_seq: u64,
        updates: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let first = last_seq + 1 - updates.len() as u64;
        self.with_room(room, |records| {
            for (seq, update) in (first..).zip(updates) {
                records.log.insert(seq, update.clone());
            }
        });
        Ok(())
    }

    fn write_snapshot(&self, room: &RoomName, upto: u64, state: &[u8]) -> Result<(), StoreError> {
        self.with_room(room, |records| {
            records.snapshot = Some((upto, state.to_vec()));
            records.log.retain(|&seq, _| seq > upto);
        });
        Ok(())
    }

    fn load_stream(&self, room: &RoomName) -> Result<Option<StoredStream>, StoreError> {
        Ok(self.with_room(room, |records| {
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
        }))
    }

    fn create_stream(&self, room: &RoomName, epoch: &str) -> Result<(), StoreError> {
        self.with_room(room, |records| {
            records.stream = Some((epoch.to_owned(), 0));
            records.messages.clear();
        });
        Ok(())
    }

    fn append_message(&self, room: &RoomName, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        self.with_room(room, |records| {
            records.messages.insert(seq, record.to_vec())
        });
        Ok(())
    }

    fn read_messages(
        &self,
        room: &RoomName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self.with_room(room, |records| {
            records
                .messages
                .range(after.saturating_add(1)..)
                .take(limit)
                .map(|(seq, r)| (*seq, r.clone()))
                .collect()
        }))
    }

    fn read_messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self.with_room(room, |records| {
            let mut page: Vec<_> = records
                .messages
                .range(..before)
                .rev()
                .take(limit)
                .map(|(seq, r)| (*seq, r.clone()))
                .collect();
            page.reverse();
            page
        }))
    }

    fn trim_messages(&self, room: &RoomName, upto: u64) -> Result<(), StoreError> {
        self.with_room(room, |records| {
            records.messages.retain(|&seq, _| seq > upto);
            if let Some((_, trimmed)) = &mut records.stream {
                *trimmed = (*trimmed).max(upto);
            }
        });
        Ok(())
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn flush(&self) -> Durable {
        Box::pin(async { Ok(()) })
    }
}
