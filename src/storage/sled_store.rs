//! The embedded store: one sled database, one tree for documents, and a flusher thread
//! that turns concurrent durability requests into one `flush` (group commit).
//!
//! Key layout in the `docs` tree (room names never contain NUL, so `name\0` is a prefix
//! no other room shares):
//! - `name\0\0` → the snapshot: 8-byte big-endian `upto`, then the state update (the log
//!   entries it covers are removed by the next snapshot, see `write_snap`);
//! - `name\0\2` + 8-byte big-endian seq → the logged updates numbered up to seq, each as a
//!   4-byte big-endian length and the update (one record per group commit);
//! - `name\0\1` + 8-byte big-endian seq → one logged update (written by earlier versions,
//!   still read).
//!
//! The `streams` tree holds chat streams, with the same prefix scheme:
//! - `name\0\0` → the stream meta: 8-byte big-endian trimmed-up-to seq, then the epoch;
//! - `name\0\1` + 8-byte big-endian seq → one message record.
//!
//! The `owners` tree holds each room's ownership epoch (8-byte big-endian) under its name.
//! One process holds a sled directory, so the epochs are checked in process: a write
//! checks its epoch and is applied under a shared lock that a claim takes exclusively, so
//! a claim and a stale write cannot interleave; a write under an older epoch is refused
//! at once.
//!
//! sled makes writes durable only at `flush` (or its 500 ms background flush), which is
//! why [`Store::flush`] exists and why the flusher thread is here; and its flush leaves the
//! log's metadata and its blob files unsynced, so the flusher surrounds each one with
//! [`DiskSync`](super::disk_sync)'s syncs (blob files before the log points to them). Reads
//! run on the caller's thread (sled is in process and reads from its page cache) and return
//! a resolved future.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::thread;
use std::time::Instant;

// Not tokio's oneshot: its receiver obeys tokio's cooperative budget, which a room that
// drains a long mailbox in one poll exhausts, so it would see the flush end only late.
use futures_channel::oneshot;
use tracing::warn;

use super::disk_sync::DiskSync;
use super::slow::SlowLog;
use super::{
    encode_batch, split_batch, Durable, Epoch, FlushPolicy, Messages, Store, StoreError,
    StoreFuture, StoredDoc, StoredStream,
};
use crate::id::RoomName;
use crate::metrics;

const SNAPSHOT_TAG: u8 = 0;
const UPDATE_TAG: u8 = 1;
const BATCH_TAG: u8 = 2;
const STREAM_META_TAG: u8 = 0;
const MESSAGE_TAG: u8 = 1;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// A sled-backed [`Store`].
pub struct SledStore {
    docs: sled::Tree,
    streams: sled::Tree,
    /// Room name → current ownership epoch.
    owners: sled::Tree,
    /// Writes hold it shared while they check their epoch and write; a claim holds it
    /// exclusively while it moves the epoch.
    fence: Arc<RwLock<()>>,
    /// The group-commit thread; `None` under [`FlushPolicy::Interval`].
    flusher: Option<Flusher>,
}

/// The flusher thread and the channel that feeds it. Dropping it ends the thread and waits
/// for it, so the database (and its file lock) is released when the store is dropped.
struct Flusher {
    requests: Option<mpsc::Sender<Waiter>>,
    thread: Option<thread::JoinHandle<()>>,
    /// Blob files synced after flushes so far.
    blobs_synced: Arc<AtomicU64>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Default bound of sled's page cache. sled's own default is 1 GiB, more than an
/// embedded server should take unasked. (Measured: it is not what makes RSS follow the
/// data written; 8 MiB, 64 MiB and 1 GiB gave the same RSS over 100,000 edit sessions.)
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    /// Opens (or creates) the database in `dir`, with Tandem's default cache bound.
    pub fn open(dir: &Path, policy: FlushPolicy) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, policy, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database in `dir`; sled's page cache holds at most about
    /// `cache_bytes`.
    pub fn open_with_cache(
        dir: &Path,
        policy: FlushPolicy,
        cache_bytes: u64,
    ) -> Result<Self, StoreError> {
        let interval = match policy {
            FlushPolicy::EveryBatch => 500,
            FlushPolicy::Interval(ms) => ms.max(1),
        };
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(interval))
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| StoreError::backend(format!("opening {}", dir.display()), e))?;
        check_format(&db, dir)?;
        let docs = db.open_tree("docs").map_err(backend)?;
        let streams = db.open_tree("streams").map_err(backend)?;
        let owners = db.open_tree("owners").map_err(backend)?;
        let flusher = match policy {
            FlushPolicy::EveryBatch => {
                let disk = DiskSync::open(dir).map_err(|e| {
                    StoreError::backend(format!("watching {} for durability", dir.display()), e)
                })?;
                Some(spawn_flusher(db.clone(), disk)?)
            }
            FlushPolicy::Interval(_) => None,
        };
        Ok(Self {
            docs,
            streams,
            owners,
            fence: Arc::new(RwLock::new(())),
            flusher,
        })
    }

    /// The room's current ownership epoch (0: never claimed).
    fn current_epoch(owners: &sled::Tree, room: &RoomName) -> Result<u64, StoreError> {
        match owners.get(room.as_str()).map_err(backend)? {
            None => Ok(0),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    room: room.to_string(),
                    reason: "owner epoch is not 8 bytes".into(),
                }),
        }
    }

    /// Runs a write if `epoch` is the room's current one, with claims held off meanwhile.
    fn fenced_write(
        &self,
        room: &RoomName,
        epoch: Epoch,
        write: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let _shared = self.fence.read().unwrap_or_else(|e| e.into_inner());
        if Self::current_epoch(&self.owners, room)? != epoch.0 {
            return Err(StoreError::fenced(room, epoch));
        }
        write()
    }

    /// How many blob files (values too large for sled's log) the flushes have synced so
    /// far; 0 under [`FlushPolicy::Interval`], which does not sync them.
    pub fn blobs_synced(&self) -> u64 {
        self.flusher
            .as_ref()
            .map_or(0, |f| f.blobs_synced.load(Ordering::Relaxed))
    }

    /// A future that resolves once everything written so far is durable.
    fn durable(&self) -> Durable {
        let Some(requests) = self.flusher.as_ref().and_then(|f| f.requests.as_ref()) else {
            return Box::pin(async { Ok(()) });
        };
        let (tx, rx) = oneshot::channel();
        let sent = requests.send(tx);
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn prefix(room: &RoomName) -> Vec<u8> {
        let mut key = Vec::with_capacity(room.as_str().len() + 10);
        key.extend_from_slice(room.as_str().as_bytes());
        key.push(0);
        key
    }

    fn snapshot_key(room: &RoomName) -> Vec<u8> {
        let mut key = Self::prefix(room);
        key.push(SNAPSHOT_TAG);
        key
    }

    fn log_key(room: &RoomName, tag: u8, seq: u64) -> Vec<u8> {
        let mut key = Self::prefix(room);
        key.push(tag);
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    fn stream_meta_key(room: &RoomName) -> Vec<u8> {
        let mut key = Self::prefix(room);
        key.push(STREAM_META_TAG);
        key
    }

    fn message_key(room: &RoomName, seq: u64) -> Vec<u8> {
        let mut key = Self::prefix(room);
        key.push(MESSAGE_TAG);
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    /// The stream meta: (trimmed-up-to seq, epoch).
    fn stream_meta(&self, room: &RoomName) -> Result<Option<(u64, String)>, StoreError> {
        let Some(value) = self
            .streams
            .get(Self::stream_meta_key(room))
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let corrupt = |reason: &str| StoreError::Corrupt {
            room: room.to_string(),
            reason: reason.to_owned(),
        };
        let (trimmed, epoch) = value
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("stream meta shorter than its header"))?;
        let epoch = std::str::from_utf8(epoch).map_err(|_| corrupt("stream epoch is not UTF-8"))?;
        Ok(Some((u64::from_be_bytes(*trimmed), epoch.to_owned())))
    }

    fn meta_value(trimmed: u64, epoch: &str) -> Vec<u8> {
        let mut value = Vec::with_capacity(8 + epoch.len());
        value.extend_from_slice(&trimmed.to_be_bytes());
        value.extend_from_slice(epoch.as_bytes());
        value
    }

    /// Decodes a message entry's key into its seq.
    fn message_entry(
        room: &RoomName,
        entry: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<(u64, Vec<u8>), StoreError> {
        let (key, value) = entry.map_err(backend)?;
        let seq = key
            .len()
            .checked_sub(8)
            .and_then(|at| key[at..].try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt {
                room: room.to_string(),
                reason: "message key has no 8-byte sequence number".into(),
            })?;
        Ok((seq, value.to_vec()))
    }
}

/// The on-disk format this binary writes: 1 logged one update per record; 2 adds batch
/// records (`BATCH_TAG`) and the chat streams. A binary refuses a newer format than its
/// own rather than misread it (an older one would silently skip batch records).
const FORMAT: u32 = 2;

/// Records this binary's format in the database, refusing one written by a newer binary.
fn check_format(db: &sled::Db, dir: &Path) -> Result<(), StoreError> {
    let meta = db.open_tree("meta").map_err(backend)?;
    let stored = match meta.get("format").map_err(backend)? {
        Some(bytes) => <[u8; 4]>::try_from(bytes.as_ref())
            .map(u32::from_be_bytes)
            .map_err(|_| StoreError::refused("the format record is not 4 bytes"))?,
        None => 1, // a database from before formats were recorded, or a new one
    };
    if stored > FORMAT {
        return Err(StoreError::refused(format!(
            "{} was written by a newer Tandem (storage format {stored}); this binary reads \
             formats up to {FORMAT}",
            dir.display()
        )));
    }
    if stored < FORMAT {
        meta.insert("format", &FORMAT.to_be_bytes())
            .map_err(backend)?;
        db.flush().map_err(backend)?;
    }
    Ok(())
}

/// How long the flusher waits to gather more requests when they arrive back to back.
/// Measured on the editing trace (259,778 updates as fast as one writer sends them): 1 ms
/// cut flushes from ~5,000 to ~1,000 and the server's CPU by ~1.3× (mean of 4 runs); a request that
/// comes after a quiet spell is flushed at once, so light traffic pays no latency for it.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Starts the thread that serves durability requests in batches: sled's flush, then the
/// syncs it leaves out (`disk`).
fn spawn_flusher(db: sled::Db, mut disk: DiskSync) -> Result<Flusher, StoreError> {
    let (tx, rx) = mpsc::channel::<Waiter>();
    let blobs_synced = Arc::new(AtomicU64::new(0));
    let synced = Arc::clone(&blobs_synced);
    let thread = thread::Builder::new()
        .name("tandem-flusher".into())
        .spawn(move || {
            // Every request that arrived while the previous flush ran shares this one.
            let mut last_end: Option<Instant> = None;
            let mut slow = SlowLog::default();
            while let Ok(first) = rx.recv() {
                // Under a steady stream (this request came right after the last flush),
                // wait a little so that one flush serves more writes.
                if last_end.is_some_and(|end| end.elapsed() < LINGER) {
                    thread::sleep(LINGER);
                }
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let started = Instant::now();
                let result = commit(&db, &mut disk).map(|blobs| {
                    synced.fetch_add(blobs as u64, Ordering::Relaxed);
                });
                let ended = Instant::now();
                last_end = Some(ended);
                let took = ended - started;
                metrics::get().flush_seconds.observe(took.as_secs_f64());
                if let Some(flushes) = slow.note(took, ended) {
                    warn!(
                        took_ms = took.as_millis() as u64,
                        slow_flushes = flushes,
                        "sled flush was slow: acknowledgements and broadcasts waited for the disk"
                    );
                }
                metrics::get().flush_batch_size.observe(batch.len() as f64);
                for waiter in batch {
                    let _ = waiter.send(result.clone());
                }
            }
        })
        .map_err(|e| StoreError::backend("starting the flusher thread", e))?;
    Ok(Flusher {
        requests: Some(tx),
        thread: Some(thread),
        blobs_synced,
    })
}

/// One group commit: the blob files that sled's flush may write log records pointing to,
/// sled's flush, then what it leaves unsynced. Returns how many blob files it synced.
fn commit(db: &sled::Db, disk: &mut DiskSync) -> Result<usize, StoreError> {
    let sync_failed = |e| StoreError::backend("syncing the database's files around a flush", e);
    let before = disk.before_flush().map_err(sync_failed)?;
    db.flush().map_err(backend)?;
    let after = disk.after_flush().map_err(sync_failed)?;
    Ok(before + after)
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::backend("sled", e)
}

impl Store for SledStore {
    fn claim(&self, room: &RoomName) -> StoreFuture<Epoch> {
        let claimed = {
            let _exclusive = self.fence.write().unwrap_or_else(|e| e.into_inner());
            Self::current_epoch(&self.owners, room).and_then(|current| {
                let next = current + 1;
                self.owners
                    .insert(room.as_str(), &next.to_be_bytes())
                    .map_err(backend)?;
                Ok(Epoch(next))
            })
        };
        // The flush makes the claim durable, and with it whatever an earlier activation
        // wrote and did not flush: nothing is served before it is durable.
        let durable = self.durable();
        Box::pin(async move {
            let epoch = claimed?;
            durable.await?;
            Ok(epoch)
        })
    }

    fn load_doc(&self, room: &RoomName) -> StoreFuture<StoredDoc> {
        Box::pin(std::future::ready(self.read_doc(room)))
    }

    fn append_updates(
        &self,
        room: &RoomName,
        epoch: Epoch,
        last_seq: u64,
        updates: Vec<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.fenced_write(room, epoch, || self.write_log(room, last_seq, &updates))
    }

    fn write_snapshot(
        &self,
        room: &RoomName,
        epoch: Epoch,
        upto: u64,
        state: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.fenced_write(room, epoch, || self.write_snap(room, upto, &state))?;
        // A large snapshot is a blob file, and sled's own flusher fsyncs the log that
        // points to it within 500 ms without syncing the blob. Ours syncs the blob first:
        // have it run now, not at the room's next commit (an idle room may make none).
        drop(self.durable());
        Ok(())
    }

    fn load_stream(&self, room: &RoomName) -> StoreFuture<Option<StoredStream>> {
        Box::pin(std::future::ready(self.read_stream(room)))
    }

    fn create_stream(
        &self,
        room: &RoomName,
        epoch: Epoch,
        stream_epoch: &str,
    ) -> Result<(), StoreError> {
        self.fenced_write(room, epoch, || self.new_stream(room, stream_epoch))
    }

    fn append_message(
        &self,
        room: &RoomName,
        epoch: Epoch,
        seq: u64,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.fenced_write(room, epoch, || {
            self.streams
                .insert(Self::message_key(room, seq), record)
                .map(drop)
                .map_err(backend)
        })
    }

    fn read_messages(&self, room: &RoomName, after: u64, limit: usize) -> StoreFuture<Messages> {
        Box::pin(std::future::ready(self.read_after(room, after, limit)))
    }

    fn read_messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> StoreFuture<Messages> {
        Box::pin(std::future::ready(self.read_before(room, before, limit)))
    }

    fn trim_messages(&self, room: &RoomName, epoch: Epoch, upto: u64) -> Result<(), StoreError> {
        self.fenced_write(room, epoch, || self.trim(room, upto))
    }

    fn flush(&self, room: &RoomName, epoch: Epoch) -> Durable {
        let durable = self.durable();
        let (owners, room) = (self.owners.clone(), room.clone());
        Box::pin(async move {
            durable.await?;
            // Written before a newer claim, so durable, but this owner has been replaced:
            // it must not acknowledge anything more.
            if Self::current_epoch(&owners, &room)? != epoch.0 {
                return Err(StoreError::fenced(&room, epoch));
            }
            Ok(())
        })
    }

    fn flush_all(&self) -> Durable {
        self.durable()
    }

    fn rooms(&self) -> StoreFuture<Vec<RoomName>> {
        Box::pin(std::future::ready(self.room_names()))
    }
}

impl SledStore {
    fn room_names(&self) -> Result<Vec<RoomName>, StoreError> {
        let mut names = std::collections::BTreeSet::new();
        for tree in [&self.docs, &self.streams] {
            let mut next: Option<Vec<u8>> = None;
            loop {
                // Jump from one room's prefix to the next instead of reading every record.
                let entry = match &next {
                    None => tree.first(),
                    Some(from) => tree.range(from.clone()..).next().transpose(),
                }
                .map_err(backend)?;
                let Some((key, _)) = entry else { break };
                let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
                let name = String::from_utf8_lossy(&key[..end]).into_owned();
                if let Ok(room) = RoomName::parse(&name) {
                    names.insert(room);
                }
                let mut after = key[..end].to_vec();
                after.push(1); // past every `name\0…` key
                next = Some(after);
            }
        }
        Ok(names.into_iter().collect())
    }

    fn read_doc(&self, room: &RoomName) -> Result<StoredDoc, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            room: room.to_string(),
            reason: reason.to_owned(),
        };
        let mut stored = StoredDoc::default();
        let mut covered = 0;
        if let Some(value) = self.docs.get(Self::snapshot_key(room)).map_err(backend)? {
            let (upto, state) = value
                .split_first_chunk::<8>()
                .ok_or_else(|| corrupt("snapshot shorter than its header"))?;
            covered = u64::from_be_bytes(*upto);
            stored.snapshot = Some(state.to_vec());
            stored.last_seq = covered;
        }
        // Every logged update after the snapshot with its seq, from single records and
        // batches alike. A record is keyed by its last seq, so starting after `covered`
        // skips the records the snapshot covers whole (the store keeps those until the
        // next snapshot) without reading them.
        let mut log: Vec<(u64, Vec<u8>)> = Vec::new();
        for tag in [UPDATE_TAG, BATCH_TAG] {
            let mut log_prefix = Self::prefix(room);
            log_prefix.push(tag);
            let first = Self::log_key(room, tag, covered.saturating_add(1));
            let last = Self::log_key(room, tag, u64::MAX);
            for entry in self.docs.range(first..=last) {
                let (key, value) = entry.map_err(backend)?;
                let seq_bytes: [u8; 8] = key[log_prefix.len()..]
                    .try_into()
                    .map_err(|_| corrupt("log key has no 8-byte sequence number"))?;
                let seq = u64::from_be_bytes(seq_bytes);
                if tag == UPDATE_TAG {
                    log.push((seq, value.to_vec()));
                    continue;
                }
                let updates = split_batch(&value).ok_or_else(|| corrupt("truncated log batch"))?;
                let first = (seq + 1)
                    .checked_sub(updates.len() as u64)
                    .ok_or_else(|| corrupt("log batch holds more updates than its seq"))?;
                log.extend((first..).zip(updates));
            }
        }
        log.sort_by_key(|(seq, _)| *seq);
        for (seq, update) in log {
            if seq > covered {
                stored.updates.push(update);
                stored.last_seq = stored.last_seq.max(seq);
            }
        }
        Ok(stored)
    }

    fn write_log(
        &self,
        room: &RoomName,
        last_seq: u64,
        updates: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let value = encode_batch(updates)?;
        self.docs
            .insert(Self::log_key(room, BATCH_TAG, last_seq), value)
            .map_err(backend)?;
        Ok(())
    }

    /// Stores the snapshot and removes the log that the room's previous snapshot covered:
    /// the entries this one covers stay until the next one (loading skips them). One
    /// snapshot behind because of what a power cut can leave: were this snapshot a blob
    /// file lost while the log record of its batch survived, sled would resolve the key to
    /// the previous snapshot, and the log after that one must then still be there.
    fn write_snap(&self, room: &RoomName, upto: u64, state: &[u8]) -> Result<(), StoreError> {
        let key = Self::snapshot_key(room);
        let previous = match self.docs.get(&key).map_err(backend)? {
            Some(value) => value
                .first_chunk::<8>()
                .map(|covered| u64::from_be_bytes(*covered))
                .ok_or_else(|| StoreError::Corrupt {
                    room: room.to_string(),
                    reason: "snapshot shorter than its header".into(),
                })?,
            None => 0,
        };
        let mut batch = sled::Batch::default();
        let mut value = Vec::with_capacity(8 + state.len());
        value.extend_from_slice(&upto.to_be_bytes());
        value.extend_from_slice(state);
        batch.insert(key, value);
        if previous > 0 {
            for tag in [UPDATE_TAG, BATCH_TAG] {
                let start = Self::log_key(room, tag, 0);
                let end = Self::log_key(room, tag, previous.min(upto));
                for key in self.docs.range(start..=end).keys() {
                    batch.remove(key.map_err(backend)?);
                }
            }
        }
        // One batch: a crash leaves either the old snapshot and its log or the new one.
        self.docs.apply_batch(batch).map_err(backend)
    }

    fn read_stream(&self, room: &RoomName) -> Result<Option<StoredStream>, StoreError> {
        let Some((trimmed, epoch)) = self.stream_meta(room)? else {
            return Ok(None);
        };
        let (start, end) = (
            Self::message_key(room, 0),
            Self::message_key(room, u64::MAX),
        );
        let first = self.streams.range(start.clone()..=end.clone()).next();
        let last = self.streams.range(start..=end).next_back();
        let first = first.map(|e| Self::message_entry(room, e)).transpose()?;
        let last = last.map(|e| Self::message_entry(room, e)).transpose()?;
        let last_seq = last.map_or(0, |(seq, _)| seq).max(trimmed);
        Ok(Some(StoredStream {
            epoch,
            last_seq,
            first_seq: first.map_or(last_seq + 1, |(seq, _)| seq),
        }))
    }

    fn new_stream(&self, room: &RoomName, epoch: &str) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let (start, end) = (
            Self::message_key(room, 0),
            Self::message_key(room, u64::MAX),
        );
        for key in self.streams.range(start..=end).keys() {
            batch.remove(key.map_err(backend)?);
        }
        batch.insert(Self::stream_meta_key(room), Self::meta_value(0, epoch));
        self.streams.apply_batch(batch).map_err(backend)
    }

    fn read_after(
        &self,
        room: &RoomName,
        after: u64,
        limit: usize,
    ) -> Result<Messages, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let (start, end) = (
            Self::message_key(room, from),
            Self::message_key(room, u64::MAX),
        );
        self.streams
            .range(start..=end)
            .take(limit)
            .map(|e| Self::message_entry(room, e))
            .collect()
    }

    fn read_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> Result<Messages, StoreError> {
        let (start, end) = (Self::message_key(room, 0), Self::message_key(room, before));
        let mut page = self
            .streams
            .range(start..end)
            .rev()
            .take(limit)
            .map(|e| Self::message_entry(room, e))
            .collect::<Result<Vec<_>, _>>()?;
        page.reverse();
        Ok(page)
    }

    fn trim(&self, room: &RoomName, upto: u64) -> Result<(), StoreError> {
        let Some((trimmed, epoch)) = self.stream_meta(room)? else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        let (start, end) = (Self::message_key(room, 0), Self::message_key(room, upto));
        for key in self.streams.range(start..=end).keys() {
            batch.remove(key.map_err(backend)?);
        }
        // With the messages, the meta remembers how far the stream went, so the sequence
        // continues after a restart even when every message has been trimmed.
        batch.insert(
            Self::stream_meta_key(room),
            Self::meta_value(trimmed.max(upto), &epoch),
        );
        self.streams.apply_batch(batch).map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    //! What only sled has: its key layout, the format record, reopening a directory. The
    //! contract every store keeps is checked by `tests/store_contract.rs`.
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    fn block<T>(f: StoreFuture<T>) -> Result<T, StoreError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A new store in a temporary directory, and room `name` claimed in it.
    fn store_with(name: &str) -> (tempfile::TempDir, SledStore, RoomName, Epoch) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), FlushPolicy::EveryBatch).unwrap();
        let r = room(name);
        let epoch = block(store.claim(&r)).unwrap();
        (dir, store, r, epoch)
    }

    #[test]
    fn a_large_snapshot_goes_to_a_blob_file_that_its_flush_syncs() {
        let (dir, store, r, epoch) = store_with("big");
        let blobs = || std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        let before = (blobs(), store.blobs_synced());
        // Far over sled's inline limit (~128 KiB): sled writes it to a file of its own.
        store
            .write_snapshot(&r, epoch, 1, vec![1u8; 600 * 1024])
            .unwrap();
        block(store.flush(&r, epoch)).unwrap();
        assert_eq!(blobs(), before.0 + 1, "the snapshot is a blob file");
        assert_eq!(
            store.blobs_synced(),
            before.1 + 1,
            "and the flush synced it"
        );
        let stored = store.read_doc(&r).unwrap();
        assert_eq!(stored.snapshot.map(|s| s.len()), Some(600 * 1024));
    }

    #[test]
    fn a_large_snapshot_is_synced_without_waiting_for_the_next_commit() {
        let (_dir, store, r, epoch) = store_with("idle");
        let before = store.blobs_synced();
        store
            .write_snapshot(&r, epoch, 1, vec![3u8; 600 * 1024])
            .unwrap();
        // No flush asked for: the room that wrote it may be idle from now on.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while store.blobs_synced() == before && Instant::now() < deadline {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            store.blobs_synced(),
            before + 1,
            "the snapshot's blob was synced"
        );
    }

    /// The blob files in the store's directory.
    fn blob_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(dir.join("blobs")).unwrap();
        entries.map(|e| e.unwrap().path()).collect()
    }

    #[test]
    fn a_snapshot_lost_with_its_blob_leaves_the_previous_one_and_the_log_after_it() {
        // What a power cut could leave if the log record of a snapshot's batch reached the
        // disk and its blob file did not (the flusher orders the syncs against it; this is
        // the second line): the store reopened without the newest blob file.
        let (dir, store, r, epoch) = store_with("lost");
        store
            .write_snapshot(&r, epoch, 1, vec![1u8; 600 * 1024])
            .unwrap();
        block(store.flush(&r, epoch)).unwrap();
        let first = blob_files(dir.path());
        store
            .append_updates(&r, epoch, 2, vec![b"two".to_vec()])
            .unwrap();
        block(store.flush(&r, epoch)).unwrap(); // acknowledged
        store
            .write_snapshot(&r, epoch, 2, vec![2u8; 700 * 1024])
            .unwrap();
        block(store.flush(&r, epoch)).unwrap();
        drop(store);
        let newest: Vec<_> = blob_files(dir.path())
            .into_iter()
            .filter(|path| !first.contains(path))
            .collect();
        assert!(!newest.is_empty(), "the second snapshot is a blob file");
        for path in newest {
            std::fs::remove_file(path).unwrap();
        }
        let store = SledStore::open(dir.path(), FlushPolicy::EveryBatch).unwrap();
        let loaded = store.read_doc(&r).unwrap();
        let snapshot = loaded.snapshot.as_ref().map(|s| (s.len(), s[0]));
        assert_eq!(snapshot, Some((600 * 1024, 1)), "the previous snapshot");
        assert_eq!(
            loaded.updates,
            vec![b"two".to_vec()],
            "and the update after it"
        );
        assert_eq!(loaded.last_seq, 2);
    }

    #[test]
    fn a_snapshot_removes_the_log_its_predecessor_covered() {
        let (_dir, store, r, epoch) = store_with("trim");
        let log_records = || {
            let mut prefix = SledStore::prefix(&r);
            prefix.push(BATCH_TAG);
            store.docs.scan_prefix(prefix).count()
        };
        for seq in 1..=3 {
            store
                .append_updates(&r, epoch, seq, vec![vec![seq as u8]])
                .unwrap();
        }
        store.write_snapshot(&r, epoch, 2, b"s2".to_vec()).unwrap();
        assert_eq!(log_records(), 3, "kept until the next snapshot");
        let loaded = store.read_doc(&r).unwrap();
        assert_eq!((loaded.updates, loaded.last_seq), (vec![vec![3]], 3));
        store.write_snapshot(&r, epoch, 3, b"s3".to_vec()).unwrap();
        assert_eq!(log_records(), 1, "1 and 2 removed, 3 kept");
        let loaded = store.read_doc(&r).unwrap();
        assert!(loaded.updates.is_empty());
        assert_eq!(loaded.last_seq, 3);
    }

    #[test]
    fn legacy_single_records_and_batches_load_in_order() {
        let (_dir, store, r, epoch) = store_with("mixed");
        store
            .docs
            .insert(SledStore::log_key(&r, UPDATE_TAG, 1), &b"1"[..])
            .unwrap();
        store
            .docs
            .insert(SledStore::log_key(&r, UPDATE_TAG, 2), &b"2"[..])
            .unwrap();
        store
            .append_updates(
                &r,
                epoch,
                5,
                vec![b"3".to_vec(), b"4".to_vec(), b"5".to_vec()],
            )
            .unwrap();
        let loaded = block(store.load_doc(&r)).unwrap();
        let texts: Vec<&[u8]> = loaded.updates.iter().map(Vec::as_slice).collect();
        assert_eq!(texts, [&b"1"[..], b"2", b"3", b"4", b"5"]);
        assert_eq!(loaded.last_seq, 5);
        store.write_snapshot(&r, epoch, 5, b"s".to_vec()).unwrap();
        assert!(block(store.load_doc(&r)).unwrap().updates.is_empty());
        // A truncated batch is reported, not half-loaded.
        store
            .docs
            .insert(SledStore::log_key(&r, BATCH_TAG, 9), &[0, 0, 0, 9, 1][..])
            .unwrap();
        assert!(matches!(
            block(store.load_doc(&r)),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_database_from_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path(), FlushPolicy::EveryBatch).unwrap());
        {
            let db = sled::open(dir.path()).unwrap();
            let meta = db.open_tree("meta").unwrap();
            assert_eq!(
                meta.get("format").unwrap().unwrap().as_ref(),
                FORMAT.to_be_bytes()
            );
            meta.insert("format", &(FORMAT + 1).to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path(), FlushPolicy::EveryBatch)
            .err()
            .expect("a newer format must be refused");
        assert!(err.to_string().contains("newer Tandem"), "{err}");
    }

    #[test]
    fn flushed_writes_and_epochs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (d, s) = (room("d"), room("s"));
        {
            let store = SledStore::open(dir.path(), FlushPolicy::EveryBatch).unwrap();
            let epoch = block(store.claim(&d)).unwrap();
            store
                .append_updates(&d, epoch, 1, vec![b"durable".to_vec()])
                .unwrap();
            let other = block(store.claim(&s)).unwrap();
            store.create_stream(&s, other, "e1").unwrap();
            store.append_message(&s, other, 1, b"m1".to_vec()).unwrap();
            store.trim_messages(&s, other, 1).unwrap();
            block(store.flush(&d, epoch)).unwrap();
        }
        let store = SledStore::open(dir.path(), FlushPolicy::EveryBatch).unwrap();
        assert_eq!(
            block(store.load_doc(&d)).unwrap().updates,
            vec![b"durable".to_vec()]
        );
        // Everything trimmed: the sequence still continues after 1.
        let stream = block(store.load_stream(&s)).unwrap().unwrap();
        assert_eq!((stream.last_seq, stream.first_seq), (1, 2));
        // The epoch kept growing across the restart.
        assert_eq!(block(store.claim(&d)).unwrap(), Epoch(2));
        assert_eq!(block(store.rooms()).unwrap(), vec![d, s]);
    }
}
