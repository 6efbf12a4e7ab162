//! The committer: the queue of buffered writes and of flushes waiting for them, the task
//! that commits everything queued as one transaction (fenced by the rooms' owner rows)
//! and answers the waiters, and the statements a batch of writes becomes. It owns no
//! connection handling (the pool, retries and timeouts are the parent module's).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_channel::oneshot;
use tracing::{debug, warn};

use super::{db_error, lost, seq_param, Failure, Inner};
use crate::id::RoomName;
use crate::metrics;
use crate::storage::{Epoch, StoreError};

/// One buffered write.
pub(super) enum Op {
    Append { last_seq: u64, updates: Vec<u8> },
    Snapshot { upto: u64, state: Vec<u8> },
    CreateStream { stream_epoch: String },
    Message { seq: u64, record: Vec<u8> },
    Trim { upto: u64 },
}

pub(super) struct Write {
    pub(super) room: RoomName,
    pub(super) epoch: Epoch,
    pub(super) op: Op,
}

/// Who waits for a commit: one room under an epoch, or everyone.
pub(super) enum Scope {
    Room(RoomName, Epoch),
    All,
}

pub(super) struct Waiter {
    pub(super) scope: Scope,
    pub(super) tx: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
pub(super) struct Queue {
    pub(super) writes: Vec<Write>,
    pub(super) waiters: Vec<Waiter>,
}

impl Inner {
    /// Commits whatever is queued, one transaction at a time, until the store is dropped.
    pub(super) async fn commit_loop(self: Arc<Self>) {
        loop {
            let (writes, waiters) = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                (
                    std::mem::take(&mut queue.writes),
                    std::mem::take(&mut queue.waiters),
                )
            };
            metrics::get().store_queued_writes.set(0);
            if writes.is_empty() && waiters.is_empty() {
                if self.closed.load(Ordering::Relaxed) {
                    return;
                }
                self.wake.notified().await;
                continue;
            }
            let started = Instant::now();
            let result = self.commit(&writes, &waiters).await;
            let m = metrics::get();
            m.flush_seconds.observe(started.elapsed().as_secs_f64());
            m.flush_batch_size.observe(waiters.len() as f64);
            match result {
                Ok(current) => {
                    let any_lost = !self
                        .poisoned
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_empty();
                    for waiter in waiters {
                        let outcome = match &waiter.scope {
                            Scope::Room(room, epoch) if current.get(room) != Some(&epoch.0) => {
                                Err(StoreError::fenced(room, *epoch))
                            }
                            // Its writes of an earlier commit were lost: never acknowledged.
                            Scope::Room(room, epoch) if self.is_poisoned(room, *epoch) => {
                                Err(lost(room))
                            }
                            Scope::All if any_lost => {
                                Err(StoreError::refused("writes of a failed commit were lost"))
                            }
                            _ => Ok(()),
                        };
                        let _ = waiter.tx.send(outcome);
                    }
                }
                Err(e) => {
                    warn!(error = %e, writes = writes.len(), "PostgreSQL commit failed; nothing in it is acknowledged");
                    {
                        // Every room with writes in it loses them: none of its later flushes
                        // may succeed as if they were stored.
                        let mut poisoned = self.poisoned.lock().unwrap_or_else(|e| e.into_inner());
                        poisoned.extend(writes.iter().map(|w| (w.room.clone(), w.epoch.0)));
                    }
                    for waiter in waiters {
                        let _ = waiter.tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// One transaction: lock the owner rows of every room involved, drop the writes whose
    /// epoch is not current, apply the rest in order. Returns the current epochs.
    async fn commit(
        &self,
        writes: &[Write],
        waiters: &[Waiter],
    ) -> Result<HashMap<RoomName, u64>, StoreError> {
        let rooms: BTreeSet<&str> = writes
            .iter()
            .map(|w| w.room.as_str())
            .chain(waiters.iter().filter_map(|w| match &w.scope {
                Scope::Room(room, _) => Some(room.as_str()),
                Scope::All => None,
            }))
            .collect();
        let rooms: Vec<&str> = rooms.into_iter().collect();
        let rooms = &rooms[..];
        self.with_retries("a commit", move || self.commit_once(rooms, writes))
            .await
    }

    async fn commit_once(
        &self,
        rooms: &[&str],
        writes: &[Write],
    ) -> Result<HashMap<RoomName, u64>, Failure> {
        let mut client = self.connection().await?;
        // Until COMMIT is sent, a failure rolls the transaction back: retrying is safe.
        let before_commit = |context: &str| {
            let context = context.to_owned();
            move |e: tokio_postgres::Error| Failure {
                retry: e.is_closed() || e.code().is_none(),
                error: db_error(&context, e),
            }
        };
        let tx = client
            .transaction()
            .await
            .map_err(before_commit("starting a commit"))?;
        let rows = tx
            .query(
                "SELECT room, epoch FROM room_owner WHERE room = ANY($1) ORDER BY room FOR SHARE",
                &[&rooms],
            )
            .await
            .map_err(before_commit("locking the owner rows"))?;
        let mut current = HashMap::new();
        for row in rows {
            let (room, epoch): (String, i64) = (row.get(0), row.get(1));
            if let Ok(room) = RoomName::parse(&room) {
                current.insert(room, epoch as u64);
            }
        }
        let live: Vec<&Write> = writes
            .iter()
            .filter(|w| current.get(&w.room) == Some(&w.epoch.0))
            .collect();
        if live.len() < writes.len() {
            debug!(
                refused = writes.len() - live.len(),
                "writes under a stale epoch refused"
            );
        }
        let statements = statements(&live).map_err(|error| Failure {
            error,
            retry: false,
        })?;
        // Pipelined: sent in order on the one connection, answered in order.
        let params: Vec<_> = statements.iter().map(Statement::params).collect();
        let pending = statements
            .iter()
            .zip(&params)
            .map(|(s, p)| tx.execute(s.sql, p))
            .collect::<Vec<_>>();
        futures_util::future::try_join_all(pending)
            .await
            .map_err(before_commit("writing"))?;
        tx.commit().await.map_err(|e| Failure {
            // The commit may or may not have happened: never retried, never acknowledged.
            retry: false,
            error: db_error("committing", e),
        })?;
        Ok(current)
    }
}

/// One statement of a commit, with its parameters.
struct Statement {
    sql: &'static str,
    rooms: Vec<String>,
    seqs: Vec<i64>,
    blobs: Vec<Vec<u8>>,
    text: Option<String>,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `$1` rooms, `$2` seqs, `$3` blobs (arrays).
    Arrays,
    /// `$1` room, `$2` seq, `$3` blob.
    RoomSeqBlob,
    /// `$1` room, `$2` seq.
    RoomSeq,
    /// `$1` room, `$2` text.
    RoomText,
    /// `$1` room.
    Room,
}

impl Statement {
    fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        match self.kind {
            Kind::Arrays => vec![&self.rooms, &self.seqs, &self.blobs],
            Kind::RoomSeqBlob => vec![&self.rooms[0], &self.seqs[0], &self.blobs[0]],
            Kind::RoomSeq => vec![&self.rooms[0], &self.seqs[0]],
            Kind::RoomText => vec![&self.rooms[0], self.text.as_ref().unwrap_or(&self.rooms[0])],
            Kind::Room => vec![&self.rooms[0]],
        }
    }

    fn one(sql: &'static str, kind: Kind, room: &RoomName) -> Self {
        Self {
            sql,
            rooms: vec![room.as_str().to_owned()],
            seqs: Vec::new(),
            blobs: Vec::new(),
            text: None,
            kind,
        }
    }
}

const INSERT_LOG: &str = "INSERT INTO doc_log (room, seq, updates) \
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])";
const INSERT_MESSAGES: &str = "INSERT INTO stream_message (room, seq, record) \
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])";
const UPSERT_SNAPSHOT: &str = "INSERT INTO doc_snapshot (room, upto, state) VALUES ($1, $2, $3) \
     ON CONFLICT (room) DO UPDATE SET upto = EXCLUDED.upto, state = EXCLUDED.state";
const DELETE_LOG_UPTO: &str = "DELETE FROM doc_log WHERE room = $1 AND seq <= $2";
const UPSERT_STREAM: &str =
    "INSERT INTO stream_meta (room, stream_epoch, trimmed) VALUES ($1, $2, 0) \
     ON CONFLICT (room) DO UPDATE SET stream_epoch = EXCLUDED.stream_epoch, trimmed = 0";
const DELETE_MESSAGES: &str = "DELETE FROM stream_message WHERE room = $1";
const DELETE_MESSAGES_UPTO: &str = "DELETE FROM stream_message WHERE room = $1 AND seq <= $2";
const RAISE_TRIMMED: &str =
    "UPDATE stream_meta SET trimmed = greatest(trimmed, $2) WHERE room = $1";

/// The statements that apply `writes` in order: runs of log records or of messages (of
/// any rooms) become one insert each.
fn statements(writes: &[&Write]) -> Result<Vec<Statement>, StoreError> {
    let mut out: Vec<Statement> = Vec::new();
    for write in writes {
        let room = &write.room;
        match &write.op {
            Op::Append { last_seq, updates } => {
                push_row(&mut out, INSERT_LOG, room, *last_seq, updates)?;
            }
            Op::Message { seq, record } => {
                push_row(&mut out, INSERT_MESSAGES, room, *seq, record)?;
            }
            Op::Snapshot { upto, state } => {
                let mut upsert = Statement::one(UPSERT_SNAPSHOT, Kind::RoomSeqBlob, room);
                upsert.seqs.push(seq_param(*upto)?);
                upsert.blobs.push(state.clone());
                out.push(upsert);
                let mut delete = Statement::one(DELETE_LOG_UPTO, Kind::RoomSeq, room);
                delete.seqs.push(seq_param(*upto)?);
                out.push(delete);
            }
            Op::CreateStream { stream_epoch } => {
                let mut upsert = Statement::one(UPSERT_STREAM, Kind::RoomText, room);
                upsert.text = Some(stream_epoch.clone());
                out.push(upsert);
                out.push(Statement::one(DELETE_MESSAGES, Kind::Room, room));
            }
            Op::Trim { upto } => {
                let mut delete = Statement::one(DELETE_MESSAGES_UPTO, Kind::RoomSeq, room);
                delete.seqs.push(seq_param(*upto)?);
                out.push(delete);
                let mut raise = Statement::one(RAISE_TRIMMED, Kind::RoomSeq, room);
                raise.seqs.push(seq_param(*upto)?);
                out.push(raise);
            }
        }
    }
    Ok(out)
}

/// Adds a row to the insert at the end of `out` if it is the same insert, else starts one.
fn push_row(
    out: &mut Vec<Statement>,
    sql: &'static str,
    room: &RoomName,
    seq: u64,
    blob: &[u8],
) -> Result<(), StoreError> {
    let seq = seq_param(seq)?;
    match out.last_mut() {
        Some(last) if last.sql == sql => {
            last.rooms.push(room.as_str().to_owned());
            last.seqs.push(seq);
            last.blobs.push(blob.to_vec());
        }
        _ => out.push(Statement {
            sql,
            rooms: vec![room.as_str().to_owned()],
            seqs: vec![seq],
            blobs: vec![blob.to_vec()],
            text: None,
            kind: Kind::Arrays,
        }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::RoomName;
    use crate::storage::Epoch;

    fn write(room: &str, op: Op) -> Write {
        Write {
            room: RoomName::parse(room).unwrap(),
            epoch: Epoch(1),
            op,
        }
    }

    #[test]
    fn runs_of_rows_become_one_insert_and_order_is_kept() {
        let writes = [
            write(
                "a",
                Op::Message {
                    seq: 1,
                    record: b"x".to_vec(),
                },
            ),
            write(
                "b",
                Op::Message {
                    seq: 7,
                    record: b"y".to_vec(),
                },
            ),
            write(
                "a",
                Op::Append {
                    last_seq: 3,
                    updates: vec![1],
                },
            ),
            write(
                "a",
                Op::Snapshot {
                    upto: 3,
                    state: vec![2],
                },
            ),
            write(
                "a",
                Op::Append {
                    last_seq: 4,
                    updates: vec![3],
                },
            ),
        ];
        let refs: Vec<&Write> = writes.iter().collect();
        let sql: Vec<&str> = statements(&refs).unwrap().iter().map(|s| s.sql).collect();
        assert_eq!(
            sql,
            [
                INSERT_MESSAGES,
                INSERT_LOG,
                UPSERT_SNAPSHOT,
                DELETE_LOG_UPTO,
                INSERT_LOG
            ]
        );
        assert_eq!(statements(&refs).unwrap()[0].rooms, ["a", "b"]);
    }
}
