//! The chat stream's reads, as async functions over the store: loading a stream (its
//! position, the idempotency window, the oldest timestamp), the replay a resuming client
//! gets, history pages, and the retention scan. They take what they need by value (the
//! store, the room's name, a [`StreamView`] of where the stream stands) and touch no actor:
//! the room runs one as an actor future and applies its outcome. Nothing here writes.

use std::sync::Arc;

use bytestring::ByteString;
use tracing::{debug, error};

use super::chat::{StreamConfig, DEFAULT_PAGE, MAX_REPLAY};
use crate::auth::ANONYMOUS_PREFIX;
use crate::id::RoomName;
use crate::metrics;
use crate::storage::{Store, StoreError};
use crate::stream::wire::{Page, RecordHead, MAX_PAGE};
use crate::stream::{resume, Idempotency, Resume, ResumeFrom, StreamMeta};

/// Records read from the store at a time when a range may be long.
const READ_CHUNK: usize = 256;
/// Most records the retention scan reads per round.
const RETENTION_SCAN: usize = 1024;

/// Where a room's stream stands, as the reads need it.
#[derive(Debug, Clone)]
pub(super) struct StreamView {
    /// The stream's epoch and seq range (`first_seq` already honours count retention).
    pub meta: StreamMeta,
    /// The highest seq delivered; replays and pages never go past it.
    pub delivered: u64,
}

/// A stream as loaded from the store.
pub(super) struct Loaded {
    pub meta: StreamMeta,
    /// Messages up to here are removed from the store.
    pub removed_upto: u64,
    pub idempotency: Idempotency,
    /// Timestamp of the oldest message kept.
    pub oldest_ts: Option<u64>,
    /// Messages up to here have outlived the retention age and are to be removed.
    pub expired_upto: Option<u64>,
    /// The room had no stream: the caller creates it under `meta.epoch`.
    pub created: bool,
}

/// Loads a room's stream: its position, then the idempotency window rebuilt from the
/// newest records (a chunk at a time, only their heads kept), then the retention scan.
pub(super) async fn load(
    store: Arc<dyn Store>,
    room: RoomName,
    config: StreamConfig,
    now_ms: u64,
) -> Result<Loaded, StoreError> {
    let retention = config.retention_messages;
    let (meta, removed_upto, created) = match store.load_stream(&room).await? {
        Some(stored) => {
            let meta = StreamMeta {
                epoch: stored.epoch,
                // Messages past the count retention may still be stored (batched removal).
                first_seq: stored
                    .first_seq
                    .max((stored.last_seq + 1).saturating_sub(retention)),
                last_seq: stored.last_seq,
            };
            (meta, stored.first_seq - 1, false)
        }
        None => (StreamMeta::fresh(), 0, true),
    };
    let mut idempotency = Idempotency::new(config.idempotency_window);
    let window = config.idempotency_window as u64;
    let mut after = meta.last_seq.saturating_sub(window).max(meta.first_seq - 1);
    while window > 0 && after < meta.last_seq {
        let chunk = store.read_messages(&room, after, READ_CHUNK).await?;
        let Some((last, _)) = chunk.last() else {
            break;
        };
        after = *last;
        for (seq, record) in &chunk {
            if let Some(RecordHead {
                sender,
                id: Some(id),
                ..
            }) = RecordHead::parse(record)
            {
                idempotency.insert((key_subject_of_sender(&sender), id), *seq);
            }
        }
    }
    let cutoff = now_ms.saturating_sub(config.retention_age.as_millis() as u64);
    let (expired_upto, oldest_ts) = scan_expired(&*store, &room, meta.first_seq, cutoff).await?;
    debug!(room = %room, epoch = %meta.epoch, last_seq = meta.last_seq, "chat stream loaded");
    Ok(Loaded {
        meta,
        removed_upto,
        idempotency,
        oldest_ts,
        expired_upto,
        created,
    })
}

/// The retention scan: among the oldest stored messages from `first_seq`, the newest one
/// older than `cutoff` (to remove up to), and the timestamp of the oldest one kept.
pub(super) async fn scan_expired(
    store: &dyn Store,
    room: &RoomName,
    first_seq: u64,
    cutoff: u64,
) -> Result<(Option<u64>, Option<u64>), StoreError> {
    let records = store
        .read_messages(room, first_seq.saturating_sub(1), RETENTION_SCAN)
        .await?;
    let mut expired = None;
    for (seq, record) in &records {
        match RecordHead::parse(record) {
            Some(head) if head.ts < cutoff => expired = Some(*seq),
            Some(head) => return Ok((expired, Some(head.ts))),
            None => return Ok((expired, None)),
        }
    }
    Ok((expired, None))
}

/// The idempotency key's subject half for a stored sender (anonymous senders share "").
pub(super) fn key_subject_of_sender(sender: &str) -> String {
    if sender.starts_with(ANONYMOUS_PREFIX) {
        String::new()
    } else {
        sender.to_owned()
    }
}

/// Reads through the store for one room.
struct Reader<'a> {
    store: &'a dyn Store,
    room: &'a RoomName,
}

impl Reader<'_> {
    /// Messages `(after, upto]`, at most `limit`, as text.
    async fn range(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ByteString)>, StoreError> {
        let records = self.store.read_messages(self.room, after, limit).await?;
        Ok(records
            .into_iter()
            .take_while(|(seq, _)| *seq <= upto)
            .filter_map(|(seq, r)| self.text(seq, r))
            .collect())
    }

    /// Messages `(after, upto]`, all of them, or `None` once they would pass `max_count`
    /// messages or `max_bytes` (read a chunk at a time, so an oversized replay is refused
    /// without being loaded).
    async fn all_capped(
        &self,
        after: u64,
        upto: u64,
        max_count: usize,
        max_bytes: u64,
    ) -> Result<Option<Vec<(u64, ByteString)>>, StoreError> {
        let mut out = Vec::new();
        let (mut next, mut bytes) = (after, 0u64);
        while next < upto {
            let chunk = self.range(next, upto, READ_CHUNK).await?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            next = *last;
            bytes += chunk.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
            out.extend(chunk);
            if out.len() > max_count || bytes > max_bytes {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }

    /// The newest `limit` messages up to `delivered` from `first` on.
    async fn latest(
        &self,
        first: u64,
        delivered: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ByteString)>, StoreError> {
        let records = self
            .store
            .read_messages_before(self.room, delivered.saturating_add(1), limit)
            .await?;
        Ok(records
            .into_iter()
            .filter(|(seq, _)| *seq >= first)
            .filter_map(|(seq, r)| self.text(seq, r))
            .collect())
    }

    /// A stored record as text, checked once here; a record that is not UTF-8 is left out
    /// (so a replay missing it is not complete) and logged.
    fn text(&self, seq: u64, record: Vec<u8>) -> Option<(u64, ByteString)> {
        match String::from_utf8(record) {
            Ok(text) => Some((seq, text.into())),
            Err(_) => {
                error!(room = %self.room, seq, "stored message is not UTF-8; left out");
                None
            }
        }
    }
}

/// What a client resuming `from` receives: whether it recovered, and the messages.
pub(super) async fn replay(
    store: Arc<dyn Store>,
    room: RoomName,
    view: StreamView,
    from: Option<ResumeFrom>,
    max_bytes: u64,
) -> Result<(bool, Vec<(u64, ByteString)>), StoreError> {
    let reader = Reader {
        store: &*store,
        room: &room,
    };
    let StreamView { meta, delivered } = view;
    let m = metrics::get();
    match resume(&meta, delivered, from.as_ref()) {
        Resume::Fresh => Ok((false, Vec::new())),
        Resume::Recovered { after } => {
            let messages = reader
                .all_capped(after, delivered, MAX_REPLAY, max_bytes)
                .await?;
            if let Some(messages) = messages {
                // Trimmed meanwhile? Then it is not the whole range: never present a
                // partial replay as complete.
                if messages.len() as u64 == delivered - after {
                    m.chat_recovered.inc();
                    return Ok((true, messages));
                }
            }
            m.chat_not_recovered.inc();
            let latest = reader
                .latest(meta.first_seq, delivered, DEFAULT_PAGE)
                .await?;
            Ok((false, latest))
        }
        Resume::NotRecovered => {
            m.chat_not_recovered.inc();
            let latest = reader
                .latest(meta.first_seq, delivered, DEFAULT_PAGE)
                .await?;
            Ok((false, latest))
        }
    }
}

/// What a history request or an HTTP read asks for.
#[derive(Debug, Clone)]
pub(super) struct PageRequest {
    /// Continue after this position.
    pub from: Option<ResumeFrom>,
    /// Or: the newest messages before this seq.
    pub before: Option<u64>,
    /// At most this many (clamped to 1..=MAX_PAGE).
    pub limit: usize,
    /// History paging: from before the retained window, start at its oldest.
    pub from_oldest: bool,
}

/// A page for a history request or an HTTP read.
pub(super) async fn page(
    store: Arc<dyn Store>,
    room: RoomName,
    view: StreamView,
    request: PageRequest,
) -> Result<Page, StoreError> {
    let reader = Reader {
        store: &*store,
        room: &room,
    };
    let StreamView { meta, delivered } = view;
    let limit = request.limit.clamp(1, MAX_PAGE);
    let first = meta.first_seq;
    let (recovered, messages) = match (request.before, request.from.as_ref()) {
        (None, Some(from)) if request.from_oldest && from.since + 1 < first => {
            (false, reader.range(first - 1, delivered, limit).await?)
        }
        (Some(before), _) => {
            let upto = before.min(delivered.saturating_add(1)).saturating_sub(1);
            (false, reader.latest(first, upto, limit).await?)
        }
        (None, None) => (false, reader.latest(first, delivered, limit).await?),
        (None, Some(from)) => match resume(&meta, delivered, Some(from)) {
            Resume::Recovered { after } => (true, reader.range(after, delivered, limit).await?),
            _ => (false, reader.latest(first, delivered, limit).await?),
        },
    };
    Ok(Page {
        epoch: meta.epoch,
        first_seq: meta.first_seq,
        last_seq: delivered,
        recovered,
        messages,
    })
}
