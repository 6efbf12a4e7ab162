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

use std::collections::{BTreeSet, HashMap, HashSet};
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

/// The schema used when none is named.
pub const DEFAULT_SCHEMA: &str = "tandem";

/// The migrations, in order; a database at a version above the last is refused.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("migrations/0001_init.sql"))];

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

/// One buffered write.
enum Op {
    Append { last_seq: u64, updates: Vec<u8> },
    Snapshot { upto: u64, state: Vec<u8> },
    CreateStream { stream_epoch: String },
    Message { seq: u64, record: Vec<u8> },
    Trim { upto: u64 },
}

struct Write {
    room: RoomName,
    epoch: Epoch,
    op: Op,
}

/// Who waits for a commit: one room under an epoch, or everyone.
enum Scope {
    Room(RoomName, Epoch),
    All,
}

struct Waiter {
    scope: Scope,
    tx: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
struct Queue {
    writes: Vec<Write>,
    waiters: Vec<Waiter>,
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

/// Whether `name` may be used as the schema name: unquoted-identifier characters only, so
/// it can be written into SQL and `search_path` safely.
fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
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

    async fn migrate(&self, schema: &str) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("starting the migration", e))?;
        // Every node of a deployment may start at once: one migrates, the others wait.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('tandem-migrate:' || $1))",
            &[&schema],
        )
        .await
        .map_err(|e| db_error("taking the migration lock", e))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             SET LOCAL search_path = {schema};
             CREATE TABLE IF NOT EXISTS schema_version (
                 version     integer PRIMARY KEY,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(|e| db_error("creating the schema", e))?;
        let current: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(|e| db_error("reading the schema version", e))?
            .get(0);
        let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if current > newest {
            return Err(StoreError::refused(format!(
                "schema {schema} is at version {current}, written by a newer Tandem; this \
                 binary knows versions up to {newest}"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| db_error(&format!("applying migration {version}"), e))?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(|e| db_error("recording the schema version", e))?;
            info!(schema, version, "applied migration");
        }
        tx.commit()
            .await
            .map_err(|e| db_error("committing the migration", e))
    }

    /// Commits whatever is queued, one transaction at a time, until the store is dropped.
    async fn commit_loop(self: Arc<Self>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["tandem", "t_1", "test_schema_42"] {
            assert!(valid_schema(ok), "{ok}");
        }
        for bad in ["", "1abc", "Tandem", "a-b", "a;drop", &"x".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }

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
