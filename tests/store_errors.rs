//! A store that fails, in a server run in-process: nothing is acknowledged, clients are
//! told the room's storage failed, and no text of the store's error ever reaches them
//! (close reasons, HTTP bodies, chat errors). The error itself belongs in the log.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use tandem::room::RoomName;
use tandem::storage::{
    Durable, Epoch, MemoryStore, Messages, Store, StoreError, StoreFuture, StoredDoc, StoredStream,
};
use tandem::{Config, Settings};

/// What the failing store says; a client must never see it.
const SECRET_DETAIL: &str = "disk /dev/sdq1 on fire at 0xdeadbeef";

/// A [`MemoryStore`] whose writes and flushes fail while `failing` is set.
struct FailingStore {
    inner: MemoryStore,
    failing: AtomicBool,
}

impl FailingStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::backend(
                "writing",
                std::io::Error::other(SECRET_DETAIL),
            ))
        } else {
            Ok(())
        }
    }
}

impl Store for FailingStore {
    fn claim(&self, room: &RoomName) -> StoreFuture<Epoch> {
        self.inner.claim(room)
    }
    fn load_doc(&self, room: &RoomName) -> StoreFuture<StoredDoc> {
        self.inner.load_doc(room)
    }
    fn append_updates(
        &self,
        room: &RoomName,
        epoch: Epoch,
        last: u64,
        u: Vec<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.append_updates(room, epoch, last, u)
    }
    fn write_snapshot(
        &self,
        room: &RoomName,
        epoch: Epoch,
        upto: u64,
        state: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.write_snapshot(room, epoch, upto, state)
    }
    fn load_stream(&self, room: &RoomName) -> StoreFuture<Option<StoredStream>> {
        self.inner.load_stream(room)
    }
    fn create_stream(&self, room: &RoomName, epoch: Epoch, e: &str) -> Result<(), StoreError> {
        self.inner.create_stream(room, epoch, e)
    }
    fn append_message(
        &self,
        room: &RoomName,
        epoch: Epoch,
        seq: u64,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.append_message(room, epoch, seq, record)
    }
    fn read_messages(&self, room: &RoomName, after: u64, limit: usize) -> StoreFuture<Messages> {
        self.inner.read_messages(room, after, limit)
    }
    fn read_messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> StoreFuture<Messages> {
        self.inner.read_messages_before(room, before, limit)
    }
    fn trim_messages(&self, room: &RoomName, epoch: Epoch, upto: u64) -> Result<(), StoreError> {
        self.inner.trim_messages(room, epoch, upto)
    }
    fn flush(&self, room: &RoomName, epoch: Epoch) -> Durable {
        let result = self.check();
        let inner = self.inner.flush(room, epoch);
        Box::pin(async move {
            result?;
            inner.await
        })
    }
    fn flush_all(&self) -> Durable {
        self.inner.flush_all()
    }
    fn rooms(&self) -> StoreFuture<Vec<RoomName>> {
        self.inner.rooms()
    }
}

#[actix_rt::test]
async fn a_failing_store_is_reported_without_its_details() {
    // Port 0: the kernel picks, and the server tells the test which it bound.
    let settings = Settings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Settings::default()
    };
    let config = Config::from_settings(settings).unwrap();
    let store = Arc::new(FailingStore {
        inner: MemoryStore::new(),
        failing: AtomicBool::new(false),
    });
    let (stop, stopped) = futures_channel::oneshot::channel::<()>();
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let server_store: Arc<dyn Store> = store.clone();
    let server = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            tandem::run_listening(config, server_store, shutdown, move |addr| {
                let _ = bound_tx.send(addr);
            })
            .await
        })
    });
    let base = bound
        .recv_timeout(WAIT)
        .expect("the server never listened")
        .to_string();

    let mut client = YClient::try_connect_url(&format!("ws://{base}/yjs/doc"), None)
        .await
        .unwrap();
    client.sync().await;
    store.failing.store(true, Ordering::SeqCst);

    // A WebSocket session: its update is never acknowledged; the close says why, vaguely.
    client.append("never durable").await;
    let (code, reason) = client.expect_close().await;
    eprintln!("closed {code}: {reason}");
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("storage unavailable"), "{reason}");
    assert!(
        !reason.contains("fire"),
        "store details reached a client: {reason}"
    );

    // HTTP: the update is refused with 503 and a reason without the store's words.
    let update = local_append(&yrs::Doc::new(), "also never durable");
    let response = awc::Client::new()
        .post(format!("http://{base}/rooms/doc2/update"))
        .send_body(update)
        .await;
    let mut response = response.expect("POST");
    let body = response.body().await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(response.status().as_u16(), 503, "{text}");
    assert!(
        !text.contains("fire"),
        "store details reached a client: {text}"
    );

    let _ = stop.send(());
    server.join().unwrap().unwrap();
}
