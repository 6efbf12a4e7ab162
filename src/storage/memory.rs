//! An in-memory [`Store`] for tests and for running without a disk. Nothing survives the
//! process; `flush` resolves at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Durable, Store, StoreError, StoredDoc};
use crate::room::RoomName;

#[derive(Default)]
struct RoomRecords {
    snapshot: Option<(u64, Vec<u8>)>,
    log: BTreeMap<u64, Vec<u8>>,
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

    fn append_update(&self, room: &RoomName, seq: u64, update: &[u8]) -> Result<(), StoreError> {
        self.with_room(room, |records| records.log.insert(seq, update.to_vec()));
        Ok(())
    }

    fn write_snapshot(&self, room: &RoomName, upto: u64, state: &[u8]) -> Result<(), StoreError> {
        self.with_room(room, |records| {
            records.snapshot = Some((upto, state.to_vec()));
            records.log.retain(|&seq, _| seq > upto);
        });
        Ok(())
    }

    fn flush(&self) -> Durable {
        Box::pin(async { Ok(()) })
    }
}
