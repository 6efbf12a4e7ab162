//! The shared store: PostgreSQL through `tokio-postgres` and a `deadpool-postgres` pool,
//! for clusters (every node sees every room) and for deployments that want a managed
//! database's backups. Same contract as every store (see the module above).
//!
//! - **Its own runtime.** The pool, its connections and the committer run on a small tokio
//!   runtime of their own (one thread), so no room's arbiter ever runs a database future
//!   and the store works from any caller (the server, `tandem store copy`, tests). Results
//!   come back on `futures` oneshot channels, which (unlike tokio's) ignore the caller's
//!   cooperative budget.
//! - **Group commit.** Writes are queued in memory; one committer task takes everything
//!   queued and commits it as **one transaction**, while the next batch gathers. Runs of
//!   the same kind of write (log records, messages) become one `INSERT … UNNEST`, and the
//!   statements of a transaction are pipelined on its connection.
//! - **Fencing in the database.** A commit first takes the owner rows of every room it
//!   touches `FOR SHARE`; a claim updates the row (a stronger lock), so the two never
//!   interleave: a write under an epoch that is no longer current is dropped in the same
//!   transaction, and every waiter for that room is told [`StoreError::Fenced`].
//! - **Outages.** A commit or read that fails is reported (never acknowledged); reads and
//!   commits that failed before anything was sent are retried with backoff; a health task
//!   pings the database while it is unreachable and [`Store::is_ready`] says so (`/readyz`
//!   503); new connections are made by the pool once the database answers again.
//! - **Migrations** are SQL files embedded in the binary, applied at start inside one
//!   transaction under an advisory lock, into the schema named by `--postgres-schema`
//!   (created if missing), so several deployments and parallel tests share one database.
//!
//! This module holds the store, its pool, retries, health and reads; the write queue and
//! the committer are `commit`'s, the schema name check and migrations `schema`'s.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_channel::oneshot;
use tokio::sync::Notify;
use tokio_postgres::NoTls;
use tracing::{debug, info, warn};

use super::slow::{self, SlowLog};
use super::{
    encode_batch, split_batch, Durable, Epoch, Messages, Store, StoreError, StoreFuture, StoredDoc,
    StoredStream,
};
use crate::id::RoomName;
use crate::metrics;
use commit::{Op, Queue, Scope, Waiter, Write};
use schema::valid_schema;

mod commit;
mod schema;

/// The schema used when none is named.
pub const DEFAULT_SCHEMA: &str = "tandem";

/// Longest a statement, a lock wait or an idle open transaction may last on the server.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a single database operation (a commit, a read) may take before it is failed
/// here (a little over the server's bound, which normally answers first).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(12);
/// Attempts for an operation that failed before anything reached the database.
const ATTEMPTS: u32 = 3;
/// How often the health task checks the database (more often while it is down).
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const HEALTH_INTERVAL_DOWN: Duration = Duration::from_millis(250);

/// How to reach the database. Its `Debug` leaves the URL out (it may hold a password).
#[derive(Clone)]
pub struct PostgresConfig {
    /// A libpq-style URL or key=value string.
    pub url: String,
    /// The schema Tandem's tables live in (created if missing).
    pub schema: String,
    /// Most connections the pool opens.
    pub pool_size: usize,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<hidden>")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// A PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Inner {
    pool: Pool,
    queue: Mutex<Queue>,
    wake: Notify,
    ready: AtomicBool,
    /// Set when the store is dropped: the tasks end.
    closed: AtomicBool,
    /// Rooms (under an epoch) with writes in a commit that failed. Those writes are lost,
    /// so nothing more may be acknowledged under that epoch: every later write and flush
    /// of it fails, the room fails and comes back under a new epoch from what is stored.
    poisoned: Mutex<HashSet<(RoomName, u64)>>,
    /// Which slow round trips get a log line.
    slow: Mutex<SlowLog>,
}

impl Inner {
    fn is_poisoned(&self, room: &RoomName, epoch: Epoch) -> bool {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(room.clone(), epoch.0))
    }
}

/// What a room whose writes were lost in a failed commit is told from then on.
fn lost(room: &RoomName) -> StoreError {
    StoreError::refused(format!(
        "room {room}: an earlier commit of its writes failed; it must reload"
    ))
}

/// Why an attempt failed, and whether another may be made.
struct Failure {
    error: StoreError,
    /// Nothing reached the database (or the transaction never committed and is known to
    /// have been rolled back): trying again is safe.
    retry: bool,
}

fn db_error(context: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(format!("PostgreSQL: {context}"), e)
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::backend("PostgreSQL: getting a connection", e)
}

fn seq_param(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::refused("a sequence number above 2^63"))
}

fn seq_of(value: i64, room: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        room: room.to_owned(),
        reason: format!("negative sequence number {value}"),
    })
}

impl PostgresStore {
    /// Connects, creates the schema if missing and applies the migrations. Fails when the
    /// database cannot be reached or holds a newer schema version than this binary knows.
    pub fn connect(config: &PostgresConfig) -> Result<Self, StoreError> {
        if !valid_schema(&config.schema) {
            return Err(StoreError::refused(format!(
                "schema name {:?}: use 1-63 of a-z 0-9 _, not starting with a digit",
                config.schema
            )));
        }
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| StoreError::backend("PostgreSQL: parsing the URL", e))?;
        // Server-side bounds, so that a paused or partitioned node cannot hold a room's
        // owner row (and with it every claim of the room) longer than this: its open
        // transaction is ended by the server. The client's own bound is a little longer,
        // so a connection normally comes back clean (the server answered with an error).
        pg.options(format!(
            "-c search_path={} -c statement_timeout={ms} -c lock_timeout={ms} \
             -c idle_in_transaction_session_timeout={ms}",
            config.schema,
            ms = SERVER_TIMEOUT.as_millis()
        ));
        // Names the deployment in pg_stat_activity (and lets a test find its own sessions).
        pg.application_name(format!("tandem/{}", config.schema));
        pg.connect_timeout(Duration::from_secs(5));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tandem-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::backend("starting the PostgreSQL runtime", e))?;
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::backend("PostgreSQL: building the pool", e))?;
        let inner = Arc::new(Inner {
            pool,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            poisoned: Mutex::default(),
            slow: Mutex::default(),
        });
        // Waited for on this thread without entering the runtime: the caller may be inside
        // another runtime (the server's), where `block_on` is not allowed.
        let (done, migrated) = std::sync::mpsc::channel();
        let (schema, migrate) = (config.schema.clone(), Arc::clone(&inner));
        runtime.spawn(async move {
            let _ = done.send(migrate.migrate(&schema).await);
        });
        let migrated = migrated
            .recv()
            .map_err(|_| StoreError::Closed)
            .and_then(|result| result);
        if let Err(e) = migrated {
            // Dropping a runtime blocks, which is refused inside another runtime.
            runtime.shutdown_background();
            return Err(e);
        }
        inner.ready.store(true, Ordering::Relaxed);
        runtime.spawn(Arc::clone(&inner).commit_loop());
        runtime.spawn(Arc::clone(&inner).health_loop());
        info!(schema = %config.schema, "PostgreSQL store ready");
        Ok(Self {
            inner,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Runs `op` on the store's runtime; the result arrives whatever runtime awaits it.
    fn run<T, F>(&self, op: impl FnOnce(Arc<Inner>) -> F + Send + 'static) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        self.handle.spawn(async move {
            let _ = tx.send(op(inner).await);
        });
        Box::pin(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }

    fn queue(&self, room: &RoomName, epoch: Epoch, op: Op) -> Result<(), StoreError> {
        if self.inner.is_poisoned(room, epoch) {
            return Err(lost(room));
        }
        let mut queue = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.writes.push(Write {
            room: room.clone(),
            epoch,
            op,
        });
        metrics::get()
            .store_queued_writes
            .set(queue.writes.len() as i64);
        Ok(())
    }

    fn wait_for_commit(&self, scope: Scope) -> Durable {
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.waiters.push(Waiter { scope, tx });
        }
        self.inner.wake.notify_one();
        Box::pin(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.wake.notify_one();
        if let Some(runtime) = self.runtime.take() {
            // May be dropped inside another runtime (the server's), where a blocking
            // shutdown is not allowed; every acknowledged write is committed already.
            runtime.shutdown_background();
        }
    }
}

impl Inner {
    /// A connection from the pool, noting the database as down if none can be had.
    async fn connection(&self) -> Result<Object, Failure> {
        let status = self.pool.status();
        let m = metrics::get();
        m.store_pool_size.set(status.size as i64);
        m.store_pool_available.set(status.available as i64);
        match self.pool.get().await {
            Ok(client) => Ok(client),
            Err(e) => {
                self.ready.store(false, Ordering::Relaxed);
                Err(Failure {
                    error: pool_error(e),
                    retry: true,
                })
            }
        }
    }

    /// Runs `attempt` up to [`ATTEMPTS`] times while it fails retryably, with backoff,
    /// each under [`OPERATION_TIMEOUT`]; counts round trips and errors.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let m = metrics::get();
        let mut delay = Duration::from_millis(50);
        for n in 1..=ATTEMPTS {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(OPERATION_TIMEOUT, attempt()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Failure {
                    error: StoreError::refused(format!(
                        "PostgreSQL: {what} took longer than {OPERATION_TIMEOUT:?}"
                    )),
                    retry: false,
                }),
            };
            let took = started.elapsed();
            m.store_round_trip_seconds.observe(took.as_secs_f64());
            let line_due = (took >= slow::THRESHOLD).then(|| {
                let mut log = self.slow.lock().unwrap_or_else(|e| e.into_inner());
                log.note(took, Instant::now())
            });
            if let Some(round_trips) = line_due.flatten() {
                warn!(
                    took_ms = took.as_millis() as u64,
                    slow_round_trips = round_trips,
                    "PostgreSQL: {what} was slow: what waited on it was held back"
                );
            }
            match outcome {
                Ok(value) => {
                    self.ready.store(true, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(failure) => {
                    m.store_errors.inc();
                    if !failure.retry || n == ATTEMPTS || self.closed.load(Ordering::Relaxed) {
                        return Err(failure.error);
                    }
                    debug!(attempt = n, error = %failure.error, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Pings the database, often while it is unreachable, and keeps readiness current.
    async fn health_loop(self: Arc<Self>) {
        while !self.closed.load(Ordering::Relaxed) {
            let up = self.ready.load(Ordering::Relaxed);
            tokio::time::sleep(if up {
                HEALTH_INTERVAL
            } else {
                HEALTH_INTERVAL_DOWN
            })
            .await;
            let ping = async {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| e.to_string())
            };
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(2), ping).await,
                Ok(Ok(_))
            );
            if ok != self.ready.swap(ok, Ordering::Relaxed) {
                if ok {
                    info!("PostgreSQL is reachable again");
                } else {
                    warn!("PostgreSQL is unreachable; /readyz answers 503 until it returns");
                }
            }
        }
    }
}

const READ_AFTER: &str = "SELECT seq, record FROM stream_message \
     WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3";
const READ_BEFORE: &str = "SELECT seq, record FROM stream_message \
     WHERE room = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3";

impl PostgresStore {
    /// Messages of `room` by one of the two page queries (`$2` the bound seq, `$3` the limit).
    fn messages(
        &self,
        sql: &'static str,
        room: &RoomName,
        bound: u64,
        limit: usize,
    ) -> StoreFuture<Messages> {
        let room = room.clone();
        let bound = i64::try_from(bound).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |inner| async move {
            let db = &*inner;
            let room = &room;
            db.with_retries("reading messages", move || async move {
                let client = db.connection().await?;
                let rows = client
                    .query(sql, &[&room.as_str(), &bound, &limit])
                    .await
                    .map_err(read_failure("reading messages"))?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1)))
                    .collect())
            })
            .await
        })
    }
}

/// A read failure: connection-level ones are worth another attempt (reads change nothing).
fn read_failure(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Failure {
    move |e| Failure {
        retry: e.is_closed() || e.code().is_none(),
        error: db_error(context, e),
    }
}

impl Store for PostgresStore {
    fn claim(&self, room: &RoomName) -> StoreFuture<Epoch> {
        let room = room.clone();
        self.run(move |inner| async move {
            let db = &*inner;
            let room = &room;
            db.with_retries("a claim", move || async move {
                let client = db.connection().await?;
                // Waits for any commit holding the row FOR SHARE: the writes it
                // carries are either in before the claim or refused after it.
                let row = client
                    .query_one(
                        "INSERT INTO room_owner (room, epoch) VALUES ($1, 1) \
                             ON CONFLICT (room) DO UPDATE \
                             SET epoch = room_owner.epoch + 1, claimed_at = now() \
                             RETURNING epoch",
                        &[&room.as_str()],
                    )
                    .await
                    // The claim may have happened: a new one is harmless (a higher epoch).
                    .map_err(read_failure("claiming a room"))?;
                Ok(Epoch(row.get::<_, i64>(0) as u64))
            })
            .await
        })
    }

    fn load_doc(&self, room: &RoomName) -> StoreFuture<StoredDoc> {
        let room = room.clone();
        self.run(move |inner| async move {
            let db = &*inner;
            let room = &room;
            db.with_retries("loading a document", move || async move {
                    let mut client = db.connection().await?;
                    let tx = client
                        .build_transaction()
                        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()
                        .await
                        .map_err(read_failure("starting a read"))?;
                    let snapshot = tx
                        .query_opt(
                            "SELECT upto, state FROM doc_snapshot WHERE room = $1",
                            &[&room.as_str()],
                        )
                        .await
                        .map_err(read_failure("reading a snapshot"))?;
                    let (covered, snapshot) = match snapshot {
                        Some(row) => (row.get::<_, i64>(0), Some(row.get::<_, Vec<u8>>(1))),
                        None => (0, None),
                    };
                    let rows = tx
                        .query(
                            "SELECT seq, updates FROM doc_log WHERE room = $1 AND seq > $2 ORDER BY seq",
                            &[&room.as_str(), &covered],
                        )
                        .await
                        .map_err(read_failure("reading a log"))?;
                    let corrupt = |reason: &str| Failure {
                        error: StoreError::Corrupt {
                            room: room.to_string(),
                            reason: reason.to_owned(),
                        },
                        retry: false,
                    };
                    let mut stored = StoredDoc {
                        snapshot,
                        updates: Vec::new(),
                        last_seq: seq_of(covered, room.as_str())
                            .map_err(|error| Failure { error, retry: false })?,
                    };
                    for row in rows {
                        let seq = seq_of(row.get::<_, i64>(0), room.as_str())
                            .map_err(|error| Failure { error, retry: false })?;
                        let updates = split_batch(row.get::<_, &[u8]>(1))
                            .ok_or_else(|| corrupt("truncated log record"))?;
                        let first = (seq + 1)
                            .checked_sub(updates.len() as u64)
                            .ok_or_else(|| corrupt("log record holds more updates than its seq"))?;
                        // A record overlapping the snapshot keeps only what is after it.
                        let covered = stored.last_seq;
                        stored.updates.extend(
                            (first..)
                                .zip(updates)
                                .filter(|(s, _)| *s > covered)
                                .map(|(_, u)| u),
                        );
                        stored.last_seq = stored.last_seq.max(seq);
                    }
                    Ok(stored)
                })
                .await
        })
    }

    fn append_updates(
        &self,
        room: &RoomName,
        epoch: Epoch,
        last_seq: u64,
        updates: Vec<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let updates = encode_batch(&updates)?;
        self.queue(room, epoch, Op::Append { last_seq, updates })
    }

    fn write_snapshot(
        &self,
        room: &RoomName,
        epoch: Epoch,
        upto: u64,
        state: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.queue(room, epoch, Op::Snapshot { upto, state })
    }

    fn load_stream(&self, room: &RoomName) -> StoreFuture<Option<StoredStream>> {
        let room = room.clone();
        self.run(move |inner| async move {
            let db = &*inner;
            let room = &room;
            db.with_retries("loading a stream", move || async move {
                let client = db.connection().await?;
                let row = client
                    .query_opt(
                        "SELECT m.stream_epoch, m.trimmed, \
                                    (SELECT min(seq) FROM stream_message WHERE room = m.room), \
                                    (SELECT max(seq) FROM stream_message WHERE room = m.room) \
                             FROM stream_meta m WHERE m.room = $1",
                        &[&room.as_str()],
                    )
                    .await
                    .map_err(read_failure("reading a stream"))?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let epoch: String = row.get(0);
                let trimmed = row.get::<_, i64>(1) as u64;
                let first: Option<i64> = row.get(2);
                let last: Option<i64> = row.get(3);
                let last_seq = last.map_or(0, |s| s as u64).max(trimmed);
                Ok(Some(StoredStream {
                    epoch,
                    last_seq,
                    first_seq: first.map_or(last_seq + 1, |s| s as u64),
                }))
            })
            .await
        })
    }

    fn create_stream(
        &self,
        room: &RoomName,
        epoch: Epoch,
        stream_epoch: &str,
    ) -> Result<(), StoreError> {
        self.queue(
            room,
            epoch,
            Op::CreateStream {
                stream_epoch: stream_epoch.to_owned(),
            },
        )
    }

    fn append_message(
        &self,
        room: &RoomName,
        epoch: Epoch,
        seq: u64,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        seq_param(seq)?;
        self.queue(room, epoch, Op::Message { seq, record })
    }

    fn read_messages(&self, room: &RoomName, after: u64, limit: usize) -> StoreFuture<Messages> {
        self.messages(READ_AFTER, room, after, limit)
    }

    fn read_messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> StoreFuture<Messages> {
        let newest_first = self.messages(READ_BEFORE, room, before, limit);
        Box::pin(async move {
            let mut page = newest_first.await?;
            page.reverse();
            Ok(page)
        })
    }

    fn trim_messages(&self, room: &RoomName, epoch: Epoch, upto: u64) -> Result<(), StoreError> {
        seq_param(upto)?;
        self.queue(room, epoch, Op::Trim { upto })
    }

    fn flush(&self, room: &RoomName, epoch: Epoch) -> Durable {
        self.wait_for_commit(Scope::Room(room.clone(), epoch))
    }

    fn flush_all(&self) -> Durable {
        self.wait_for_commit(Scope::All)
    }

    fn rooms(&self) -> StoreFuture<Vec<RoomName>> {
        self.run(move |inner| async move {
            let db = &*inner;
            db.with_retries("listing rooms", move || async move {
                let client = db.connection().await?;
                let rows = client
                    .query(
                        "SELECT room FROM doc_snapshot UNION SELECT room FROM doc_log \
                             UNION SELECT room FROM stream_meta ORDER BY 1",
                        &[],
                    )
                    .await
                    .map_err(read_failure("listing rooms"))?;
                Ok(rows
                    .into_iter()
                    .filter_map(|r| RoomName::parse(r.get::<_, &str>(0)).ok())
                    .collect())
            })
            .await
        })
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }
}
