//! `tandem store copy`: moves every room (document and chat stream) from one store to
//! another, e.g. a single node's sled directory onto PostgreSQL. It claims each room in the
//! destination, writes the snapshot, the log and the messages under that claim, flushes,
//! then reads the room back from the destination and compares. Rooms that already exist in
//! the destination are refused (nothing is merged or overwritten). Knows only the
//! [`Store`] trait.

use tracing::info;

use super::{Store, StoreError};
use crate::id::RoomName;

/// Messages copied per destination flush (bounds what is buffered).
const PAGE: usize = 1000;

/// What a copy moved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Rooms copied.
    pub rooms: usize,
    /// Rooms with a document.
    pub documents: usize,
    /// Logged updates copied (besides snapshots).
    pub updates: usize,
    /// Rooms with a chat stream.
    pub streams: usize,
    /// Messages copied.
    pub messages: u64,
}

/// Copies every room of `from` into `to`, verifying each one; see the module docs.
pub async fn copy_all(from: &dyn Store, to: &dyn Store) -> Result<CopyReport, StoreError> {
    let rooms = from.rooms().await?;
    let existing = to.rooms().await?;
    let clashes: Vec<&RoomName> = rooms.iter().filter(|r| existing.contains(r)).collect();
    if let Some(first) = clashes.first() {
        return Err(StoreError::refused(format!(
            "{} of the rooms to copy already exist in the destination (e.g. {first}); \
             copy into an empty store (for PostgreSQL, a new --schema)",
            clashes.len()
        )));
    }
    let mut report = CopyReport::default();
    for room in &rooms {
        copy_room(from, to, room, &mut report).await?;
        report.rooms += 1;
        if report.rooms % 100 == 0 {
            info!(copied = report.rooms, of = rooms.len(), "copying rooms");
        }
    }
    to.flush_all().await?;
    Ok(report)
}

async fn copy_room(
    from: &dyn Store,
    to: &dyn Store,
    room: &RoomName,
    report: &mut CopyReport,
) -> Result<(), StoreError> {
    let epoch = to.claim(room).await?;
    let doc = from.load_doc(room).await?;
    let has_doc = doc.snapshot.is_some() || !doc.updates.is_empty();
    if let Some(snapshot) = &doc.snapshot {
        let covered = doc.last_seq - doc.updates.len() as u64;
        to.write_snapshot(room, epoch, covered, snapshot.clone())?;
    }
    if !doc.updates.is_empty() {
        to.append_updates(room, epoch, doc.last_seq, doc.updates.clone())?;
        report.updates += doc.updates.len();
    }
    to.flush(room, epoch).await?;
    if has_doc {
        report.documents += 1;
        let copied = to.load_doc(room).await?;
        if copied != doc {
            return Err(StoreError::refused(format!(
                "room {room}: the copied document reads back differently"
            )));
        }
    }
    let Some(stream) = from.load_stream(room).await? else {
        return Ok(());
    };
    to.create_stream(room, epoch, &stream.epoch)?;
    let mut after = stream.first_seq.saturating_sub(1);
    loop {
        let page = from.read_messages(room, after, PAGE).await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = *last;
        report.messages += page.len() as u64;
        for (seq, record) in page {
            to.append_message(room, epoch, seq, record)?;
        }
        to.flush(room, epoch).await?;
    }
    // Remembers how far the stream went, so that its sequence continues after the copy.
    to.trim_messages(room, epoch, stream.first_seq - 1)?;
    to.flush(room, epoch).await?;
    report.streams += 1;
    let copied = to.load_stream(room).await?;
    if copied.as_ref() != Some(&stream) {
        return Err(StoreError::refused(format!(
            "room {room}: the copied stream reads back as {copied:?}, not {stream:?}"
        )));
    }
    Ok(())
}
