//! The store contract (see `tandem::storage`), checked the same way against every store:
//! `MemoryStore`, `SledStore` on a fresh directory and `PostgresStore` on a fresh schema
//! (skipped, saying so, where `TANDEM_TEST_POSTGRES_URL` is unset).
//!
//! Each check is an async function over a [`Backend`]: a way to open handles on one set of
//! data (a second handle on the same data, or the same data after a restart).

mod common;

use std::sync::Arc;

use common::pg;
use tandem::room::RoomName;
use tandem::storage::{
    Epoch, FlushPolicy, MemoryStore, PostgresConfig, PostgresStore, SledStore, Store, StoreError,
    StoredStream,
};

/// Where a test's data lives, and how to open a store on it.
enum Backend {
    Memory(Arc<MemoryStore>),
    Sled(tempfile::TempDir),
    Postgres(pg::Schema),
}

impl Backend {
    /// A store on this backend's data. For sled, only one may be open at a time (the
    /// directory lock): drop the last before opening again.
    fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Memory(store) => store.clone(),
            Backend::Sled(dir) => {
                Arc::new(SledStore::open(dir.path(), FlushPolicy::EveryBatch).unwrap())
            }
            Backend::Postgres(schema) => Arc::new(
                PostgresStore::connect(&PostgresConfig {
                    url: schema.url.clone(),
                    schema: schema.name.clone(),
                    pool_size: 4,
                })
                .unwrap_or_else(|e| panic!("{} is set but: {e}", pg::URL_VAR)),
            ),
        }
    }

    /// Whether two stores may be open on the data at once (sled: no; one process owns it).
    fn shared(&self) -> bool {
        !matches!(self, Backend::Sled(_))
    }
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

fn is_fenced<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Fenced { .. }))
}

/// A write under `epoch` is refused, by the write itself or by the flush that covers it.
async fn refused(
    store: &dyn Store,
    room: &RoomName,
    epoch: Epoch,
    write: Result<(), StoreError>,
) -> bool {
    if is_fenced(&write) {
        return true;
    }
    write.unwrap();
    is_fenced(&store.flush(room, epoch).await)
}

async fn log_and_snapshot_round_trip(backend: Backend) {
    let store = backend.open();
    let (a, ab) = (room("a"), room("ab"));
    let (ea, eab) = (
        store.claim(&a).await.unwrap(),
        store.claim(&ab).await.unwrap(),
    );
    assert_eq!(store.load_doc(&a).await.unwrap(), Default::default());
    store
        .append_updates(&a, ea, 2, vec![b"one".to_vec(), b"two".to_vec()])
        .unwrap();
    store
        .append_updates(&ab, eab, 1, vec![b"other room".to_vec()])
        .unwrap();
    store.flush(&a, ea).await.unwrap();
    store.flush(&ab, eab).await.unwrap();
    let loaded = store.load_doc(&a).await.unwrap();
    assert_eq!(loaded.updates, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!((loaded.snapshot, loaded.last_seq), (None, 2));

    // The snapshot covers 1..=2 and replaces those entries; what comes after stays.
    store
        .write_snapshot(&a, ea, 2, b"state@2".to_vec())
        .unwrap();
    store
        .append_updates(&a, ea, 3, vec![b"three".to_vec()])
        .unwrap();
    store.flush(&a, ea).await.unwrap();
    let loaded = store.load_doc(&a).await.unwrap();
    assert_eq!(loaded.snapshot.as_deref(), Some(&b"state@2"[..]));
    assert_eq!(loaded.updates, vec![b"three".to_vec()]);
    assert_eq!(loaded.last_seq, 3);
    // A snapshot alone keeps the sequence.
    store
        .write_snapshot(&a, ea, 3, b"state@3".to_vec())
        .unwrap();
    store.flush(&a, ea).await.unwrap();
    let loaded = store.load_doc(&a).await.unwrap();
    assert!(loaded.updates.is_empty());
    assert_eq!(loaded.last_seq, 3);
    assert_eq!(
        store.load_doc(&ab).await.unwrap().updates.len(),
        1,
        "rooms stay apart"
    );
    assert_eq!(store.rooms().await.unwrap(), vec![a, ab]);
}

async fn a_snapshot_and_the_log_it_replaces_change_together(backend: Backend) {
    // Many snapshots interleaved with log records, reopened after each flush: every load
    // is one consistent state (a snapshot and exactly the log after it).
    let r = room("atomic");
    let mut expected_tail: Vec<Vec<u8>> = Vec::new();
    let mut expected_snapshot: Option<Vec<u8>> = None;
    let mut seq = 0;
    for round in 0..5u8 {
        let store = backend.open();
        let epoch = store.claim(&r).await.unwrap();
        for i in 0..3u8 {
            seq += 1;
            let update = vec![round, i];
            store
                .append_updates(&r, epoch, seq, vec![update.clone()])
                .unwrap();
            expected_tail.push(update);
        }
        if round % 2 == 1 {
            let state = vec![b's', round];
            store.write_snapshot(&r, epoch, seq, state.clone()).unwrap();
            expected_snapshot = Some(state);
            expected_tail.clear();
        }
        store.flush(&r, epoch).await.unwrap();
        drop(store);
        let loaded = backend.open().load_doc(&r).await.unwrap();
        assert_eq!(loaded.snapshot, expected_snapshot, "round {round}");
        assert_eq!(loaded.updates, expected_tail, "round {round}");
        assert_eq!(loaded.last_seq, seq);
    }
}

async fn stream_append_read_and_trim(backend: Backend) {
    let store = backend.open();
    let (a, ab) = (room("a"), room("ab"));
    let (ea, eab) = (
        store.claim(&a).await.unwrap(),
        store.claim(&ab).await.unwrap(),
    );
    assert_eq!(store.load_stream(&a).await.unwrap(), None);
    store.create_stream(&a, ea, "e1").unwrap();
    store.create_stream(&ab, eab, "e2").unwrap();
    for seq in 1..=5 {
        store
            .append_message(&a, ea, seq, format!("m{seq}").into_bytes())
            .unwrap();
    }
    store
        .append_message(&ab, eab, 1, b"other".to_vec())
        .unwrap();
    store.flush(&a, ea).await.unwrap();
    store.flush(&ab, eab).await.unwrap();
    let seqs = |page: Vec<(u64, Vec<u8>)>| page.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    assert_eq!(seqs(store.read_messages(&a, 2, 2).await.unwrap()), [3, 4]);
    let all = store.read_messages(&a, 0, 100).await.unwrap();
    assert_eq!(all[0], (1, b"m1".to_vec()));
    assert_eq!(seqs(all), [1, 2, 3, 4, 5]);
    assert!(store
        .read_messages(&a, u64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        seqs(store.read_messages_before(&a, 5, 2).await.unwrap()),
        [3, 4]
    );
    assert_eq!(
        seqs(store.read_messages_before(&a, 2, 10).await.unwrap()),
        [1]
    );
    store.trim_messages(&a, ea, 2).unwrap();
    store.flush(&a, ea).await.unwrap();
    let stream = |epoch: &str, last_seq, first_seq| StoredStream {
        epoch: epoch.into(),
        last_seq,
        first_seq,
    };
    assert_eq!(
        store.load_stream(&a).await.unwrap(),
        Some(stream("e1", 5, 3))
    );
    store.trim_messages(&a, ea, 5).unwrap();
    store.flush(&a, ea).await.unwrap();
    drop(store);
    let store = backend.open();
    // Everything trimmed: the sequence still continues after 5.
    assert_eq!(
        store.load_stream(&a).await.unwrap(),
        Some(stream("e1", 5, 6))
    );
    assert_eq!(
        store.load_stream(&ab).await.unwrap(),
        Some(stream("e2", 1, 1))
    );
    // A new stream epoch starts empty.
    let ea = store.claim(&a).await.unwrap();
    store.create_stream(&a, ea, "e3").unwrap();
    store.flush(&a, ea).await.unwrap();
    assert_eq!(
        store.load_stream(&a).await.unwrap(),
        Some(stream("e3", 0, 1))
    );
    assert!(store.read_messages(&a, 0, 10).await.unwrap().is_empty());
}

async fn flush_is_the_durability_barrier(backend: Backend) {
    // What a flush resolved for is there for the next store opened on the data.
    let r = room("barrier");
    let store = backend.open();
    let epoch = store.claim(&r).await.unwrap();
    let mut flushes = Vec::new();
    for seq in 1..=20u64 {
        store
            .append_updates(&r, epoch, seq, vec![seq.to_be_bytes().to_vec()])
            .unwrap();
        flushes.push(store.flush(&r, epoch));
    }
    for flush in flushes {
        flush.await.unwrap();
    }
    drop(store);
    let loaded = backend.open().load_doc(&r).await.unwrap();
    assert_eq!(loaded.updates.len(), 20);
    assert_eq!(loaded.updates[19], 20u64.to_be_bytes().to_vec());
}

async fn a_newer_claim_fences_the_older_epoch(backend: Backend) {
    let r = room("fenced");
    let store = backend.open();
    let first = store.claim(&r).await.unwrap();
    store
        .append_updates(&r, first, 1, vec![b"acked".to_vec()])
        .unwrap();
    store.flush(&r, first).await.unwrap();

    let second = store.claim(&r).await.unwrap();
    assert!(second > first, "epochs only grow: {first} then {second}");
    // Every kind of write under the old epoch is refused.
    assert!(
        refused(
            &*store,
            &r,
            first,
            store.append_updates(&r, first, 2, vec![b"stale".to_vec()])
        )
        .await
    );
    assert!(
        refused(
            &*store,
            &r,
            first,
            store.write_snapshot(&r, first, 2, b"stale".to_vec())
        )
        .await
    );
    assert!(refused(&*store, &r, first, store.create_stream(&r, first, "stale")).await);
    assert!(
        refused(
            &*store,
            &r,
            first,
            store.append_message(&r, first, 1, b"stale".to_vec())
        )
        .await
    );
    assert!(refused(&*store, &r, first, store.trim_messages(&r, first, 1)).await);
    assert!(is_fenced(&store.flush(&r, first).await));
    // A write under no claim at all is refused too.
    let never = room("never-claimed");
    assert!(
        refused(
            &*store,
            &never,
            Epoch(1),
            store.append_updates(&never, Epoch(1), 1, vec![b"x".to_vec()])
        )
        .await
    );

    // The new owner sees what the old one acknowledged, and nothing it was refused.
    let loaded = store.load_doc(&r).await.unwrap();
    assert_eq!(loaded.updates, vec![b"acked".to_vec()]);
    assert_eq!(loaded.snapshot, None);
    assert_eq!(store.load_stream(&r).await.unwrap(), None);
    store
        .append_updates(&r, second, 2, vec![b"new".to_vec()])
        .unwrap();
    store.flush(&r, second).await.unwrap();
    assert_eq!(store.load_doc(&r).await.unwrap().updates.len(), 2);
}

async fn two_claimers_the_older_is_refused_and_the_newer_sees_every_ack(backend: Backend) {
    // Two handles on one database (two nodes), or one handle for sled (one process).
    let r = room("contested");
    let old_node = backend.open();
    let new_node = if backend.shared() {
        backend.open()
    } else {
        old_node.clone()
    };
    let epoch = old_node.claim(&r).await.unwrap();
    // The old owner writes and flushes as fast as it can while the new one claims.
    let writer = {
        let store = old_node.clone();
        let r = r.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for seq in 1..=2000u64 {
                let update = seq.to_be_bytes().to_vec();
                if store
                    .append_updates(&r, epoch, seq, vec![update.clone()])
                    .is_err()
                {
                    break;
                }
                match store.flush(&r, epoch).await {
                    Ok(()) => acked.push(update),
                    Err(StoreError::Fenced { .. }) => break,
                    Err(e) => panic!("unexpected: {e}"),
                }
                tokio::time::sleep(std::time::Duration::from_micros(500)).await;
            }
            acked
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let newer = new_node.claim(&r).await.unwrap();
    assert!(newer > epoch);
    let seen = new_node.load_doc(&r).await.unwrap().updates;
    let acked = writer.await.unwrap();
    assert!(
        !acked.is_empty(),
        "the old owner never wrote; the test proved nothing"
    );
    assert!(acked.len() < 2000, "the old owner was never fenced");
    // Everything acknowledged before the claim is visible after it; nothing written after
    // it by the old owner was acknowledged.
    for update in &acked {
        assert!(
            seen.contains(update),
            "an acknowledged write is missing after the claim"
        );
    }
    assert!(
        acked.len() >= seen.len().saturating_sub(1),
        "acked {} but {} visible",
        acked.len(),
        seen.len()
    );
    let later = new_node.load_doc(&r).await.unwrap().updates;
    assert_eq!(
        later, seen,
        "the fenced owner changed the room after the claim"
    );
}

/// Runs one check against all three stores.
macro_rules! against_every_store {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::Backend::Memory(Default::default())).await;
                }
            )*
        }
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::Backend::Sled(tempfile::tempdir().unwrap())).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(url) = super::pg::url(concat!("store_contract::postgres::", stringify!($check))) else {
                        return;
                    };
                    let schema = super::pg::Schema::new(&url, stringify!($check));
                    super::$check(super::Backend::Postgres(schema)).await;
                }
            )*
        }
    };
}

against_every_store!(
    log_and_snapshot_round_trip,
    a_snapshot_and_the_log_it_replaces_change_together,
    stream_append_read_and_trim,
    flush_is_the_durability_barrier,
    a_newer_claim_fences_the_older_epoch,
    two_claimers_the_older_is_refused_and_the_newer_sees_every_ack,
);
