//! PostgreSQL end to end: real `tandem serve` processes on a schema of the test's own.
//! - fencing: a second process takes a room the first holds; the first's next write is
//!   refused, its sessions get 4011 "room moved", and the document and the chat stream hold
//!   everything either process acknowledged;
//! - an outage: the database goes away mid-stream (a TCP proxy the test stops); nothing
//!   unacknowledged is reported as acknowledged, `/readyz` is 503, and service resumes by
//!   itself when the database returns;
//! - `tandem store copy` from a sled directory with documents and streams.
//!
//! Skipped, saying so, where `TANDEM_TEST_POSTGRES_URL` is unset.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chat::Chat;
use common::*;
use serde_json::{json, Value};
use tandem::protocol::ysync::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn markers(text: &str) -> BTreeSet<String> {
    text.split(';')
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let (status, body) = http_get(server, path).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Publishes over HTTP with an idempotency key: `Some(seq)` when acknowledged.
async fn publish(server: &Server, room: &str, id: &str) -> Option<u64> {
    let response = awc::Client::new()
        .post(server.url(&format!("/rooms/{room}/messages")))
        .timeout(Duration::from_secs(20))
        .insert_header(("Idempotency-Key", id))
        .send_json(&json!({"id": id}))
        .await;
    let mut response = response.ok()?;
    let body = response.body().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    let ack: Value = serde_json::from_slice(&body).ok()?;
    ack["seq"].as_u64()
}

/// Every stored message of a room, in order, read page by page.
async fn all_messages(server: &Server, room: &str) -> Vec<Value> {
    let mut stored: Vec<Value> = Vec::new();
    loop {
        let after = stored.last().map_or(0, |m| m["seq"].as_u64().unwrap());
        let (status, page) = get_json(
            server,
            &format!("/rooms/{room}/messages?since={after}&limit=1000"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            return stored;
        }
        stored.extend(messages);
    }
}

/// Asserts the stream is gap-free from 1 and holds every acknowledged id at its seq.
fn assert_holds_every_ack(stored: &[Value], acked: &HashMap<String, u64>) {
    let seqs: Vec<u64> = stored.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    let by_id: HashMap<&str, u64> = stored
        .iter()
        .filter_map(|m| Some((m["id"].as_str()?, m["seq"].as_u64()?)))
        .collect();
    for (id, seq) in acked {
        assert_eq!(by_id.get(id.as_str()), Some(seq), "acknowledged {id} lost");
    }
}

#[actix_rt::test]
async fn a_second_process_takes_a_room_and_the_first_is_fenced() {
    let Some(url) = pg::url("a_second_process_takes_a_room_and_the_first_is_fenced") else {
        return;
    };
    let schema = pg::Schema::new(&url, "fencing");
    let flags = schema.flags();
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend(["--max-messages-per-sec", "0"]);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = Server::start(dir_a.path(), &flags);
    let second = Server::start(dir_b.path(), &flags);
    let room = "contested";

    // On the first process: a writer streams updates, an observer records what it saw
    // (what the first process acknowledged), and a chat member publishes.
    let mut observer = YClient::synced(&first, room).await;
    let mut writer = YClient::synced(&first, room).await;
    let (mut member, _) = Chat::join(&first, room, json!({})).await;
    let mut acked: HashMap<String, u64> = HashMap::new();
    for n in 0..20 {
        let id = format!("first-{n}");
        let ack = member.publish(Some(&id), json!({"n": n})).await;
        acked.insert(id, ack["seq"].as_u64().unwrap());
    }
    let writer_task = actix_rt::spawn(async move {
        for i in 0..100_000u32 {
            let update = local_append(&writer.doc, &format!("a{i};"));
            if !writer.try_send(&Message::Update(update.into())).await {
                break;
            }
            if i % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        writer.expect_close().await
    });
    // Let the first process acknowledge a good number of updates first.
    while markers(&observer.text()).len() < 150 {
        match observer.recv_within(WAIT).await {
            Some(Received::Message(Message::Update(u))) => observer.apply(&u),
            Some(Received::Closed(code, reason)) => panic!("closed early: {code} {reason}"),
            Some(_) => {}
            None => panic!("the observer saw nothing for {WAIT:?}"),
        }
    }

    // The second process takes the room: a client of its own activates (claims) it there.
    let mut taker = YClient::synced(&second, room).await;
    taker.append("b0;").await;

    // The first process's sessions are closed with "room moved" at its next write.
    let mut observer_close = None;
    while observer_close.is_none() {
        match observer.recv_within(WAIT).await {
            Some(Received::Message(Message::Update(u))) => observer.apply(&u),
            Some(Received::Closed(code, reason)) => observer_close = Some((code, reason)),
            Some(_) => {}
            None => panic!("the first process never stepped down"),
        }
    }
    let (code, reason) = observer_close.unwrap();
    assert_eq!(code, 4011, "observer: {reason}");
    assert!(reason.contains("room moved"), "{reason}");
    let (code, reason) = writer_task.await.unwrap();
    assert_eq!(code, 4011, "writer: {reason}");
    // The chat member on the first process is closed with the same code.
    let member_code = loop {
        match member.recv_within(WAIT).await {
            Some(event) if event["type"] == "closed" => break event["code"].as_u64(),
            Some(_) => {}
            None => panic!("the chat member on the first process was never closed"),
        }
    };
    assert_eq!(member_code, Some(4011));

    // Everything either process acknowledged is in the room, read from the second.
    let mut taker_acked = HashMap::new();
    let (mut member2, _) = Chat::join(&second, room, json!({})).await;
    for n in 0..20 {
        let id = format!("second-{n}");
        let ack = member2.publish(Some(&id), json!({"n": n})).await;
        taker_acked.insert(id, ack["seq"].as_u64().unwrap());
    }
    acked.extend(taker_acked);
    assert_holds_every_ack(&all_messages(&second, room).await, &acked);
    let seen = markers(&observer.text());
    let (status, state) = http_get(&second, &format!("/rooms/{room}/state")).await;
    assert_eq!(status, 200);
    let stored = markers(&text_of_state(&state));
    let lost: Vec<_> = seen.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} updates acknowledged by the first process lost, e.g. {:?}",
        lost.len(),
        seen.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        stored.contains("b0"),
        "the second process's own update is missing"
    );
    assert!(metric(&first, "tandem_rooms_fenced_total").await >= 1.0);
    eprintln!(
        "first process acknowledged {} updates, all kept; the store holds {}",
        seen.len(),
        stored.len()
    );
}

/// A TCP proxy to PostgreSQL that the test can cut (listener and every connection) and
/// bring back on the same port: the database "goes away" for the server behind it. It runs
/// on a runtime of its own, so the test's thread may block (starting a server) meanwhile.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    /// Set while the proxy is up; the connection tasks it started.
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .spawn(async { TcpListener::bind("127.0.0.1:0").await.unwrap() })
            .await
            .unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            tasks: Arc::default(),
            runtime: Some(runtime),
        };
        proxy.serve(listener);
        proxy
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(
        &self,
        f: F,
    ) -> tokio::task::JoinHandle<()> {
        self.runtime.as_ref().unwrap().spawn(f)
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream, Arc::clone(&self.tasks));
        let accept = self.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        let _ = server.shutdown().await;
                    }
                });
                tasks.lock().unwrap().push(relay);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes the listener and every relayed connection.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    async fn spawn_with<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        self.runtime.as_ref().unwrap().spawn(f).await.unwrap()
    }

    /// Listens again on the same port.
    async fn restore(&self) {
        let deadline = Instant::now() + WAIT;
        let addr = self.addr;
        let listener = loop {
            let bound = self
                .spawn_with(async move { TcpListener::bind(addr).await })
                .await;
            match bound {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding the proxy: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind the proxy on {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

async fn readyz(server: &Server) -> u16 {
    http_get(server, "/readyz").await.0
}

async fn wait_readyz(server: &Server, want: u16) -> Duration {
    let started = Instant::now();
    while readyz(server).await != want {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/readyz never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[actix_rt::test]
async fn a_database_outage_acknowledges_nothing_it_lost_and_service_resumes() {
    let Some(url) = pg::url("a_database_outage_acknowledges_nothing_it_lost_and_service_resumes")
    else {
        return;
    };
    let schema = pg::Schema::new(&url, "outage");
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let upstream: SocketAddr = format!("{host}:{port}")
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
    let proxy = Proxy::start(upstream).await;
    let user = config.get_user().unwrap_or("postgres");
    let dbname = config.get_dbname().unwrap_or("test");
    let proxied = format!("postgres://{user}@{}/{dbname}", proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &[
            "--postgres-url",
            &proxied,
            "--postgres-schema",
            &schema.name,
        ],
    );
    assert_eq!(readyz(&server).await, 200);
    let room = "outage";
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut refused = 0;
    for n in 0..50 {
        let id = format!("before-{n}");
        let seq = publish(&server, room, &id)
            .await
            .expect("published before the outage");
        acked.insert(id, seq);
    }

    // The database goes away: publishes fail (never acknowledged), /readyz says so.
    proxy.cut();
    for n in 0..30 {
        let id = format!("during-{n}");
        match publish(&server, room, &id).await {
            Some(seq) => {
                acked.insert(id, seq);
            }
            None => refused += 1,
        }
    }
    let noticed = wait_readyz(&server, 503).await;
    assert!(
        refused > 0,
        "every publish during the outage was acknowledged"
    );

    // It comes back: the server recovers by itself.
    proxy.restore().await;
    let recovered = wait_readyz(&server, 200).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = 0;
    while after < 50 {
        let id = format!("after-{after}");
        match publish(&server, room, &id).await {
            Some(seq) => {
                acked.insert(id, seq);
                after += 1;
            }
            None => {
                assert!(Instant::now() < deadline, "publishing never resumed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_holds_every_ack(&all_messages(&server, room).await, &acked);
    eprintln!(
        "outage: {refused} publishes refused, /readyz 503 after {noticed:?}, 200 again {recovered:?} after the database returned"
    );

    // A graceful stop while the database is away again ends (bounded), never hangs.
    let _ = publish(&server, room, "before-stop").await;
    proxy.cut();
    let stopping = Instant::now();
    let status = server.terminate();
    eprintln!(
        "stopped {:?} after SIGTERM with the database away: {status}",
        stopping.elapsed()
    );
    assert!(stopping.elapsed() < Duration::from_secs(15));
}

#[actix_rt::test]
async fn store_copy_moves_a_sled_deployment_onto_postgres() {
    let Some(url) = pg::url("store_copy_moves_a_sled_deployment_onto_postgres") else {
        return;
    };
    let schema = pg::Schema::new(&url, "copy");
    let dir = tempfile::tempdir().unwrap();
    // A sled deployment with documents (one compacted by snapshots) and chat streams (one
    // partly trimmed by retention).
    let mut server = Server::start(
        dir.path(),
        &[
            // sled, also when the suite runs on PostgreSQL (TANDEM_TEST_STORE): an empty
            // URL selects the embedded store.
            "--postgres-url",
            "",
            "--snapshot-every-updates",
            "5",
            "--stream-retention-messages",
            "30",
        ],
    );
    let mut texts = HashMap::new();
    for d in 0..5 {
        let room = format!("doc-{d}");
        let doc = yrs::Doc::new();
        for i in 0..(3 + d * 4) {
            let update = local_append(&doc, &format!("{room}:{i};"));
            let (status, _) = http_post(&server, &format!("/rooms/{room}/update"), update).await;
            assert!((200..300).contains(&status), "{status}");
        }
        let (_, state) = http_get(&server, &format!("/rooms/{room}/state")).await;
        texts.insert(room, text_of_state(&state));
    }
    let mut streams = HashMap::new();
    for c in 0..3 {
        let room = format!("chat-{c}");
        for n in 0..(10 + c * 20) {
            publish(&server, &room, &format!("m{n}"))
                .await
                .expect("published");
        }
        let (_, page) = get_json(&server, &format!("/rooms/{room}/messages?limit=1000")).await;
        streams.insert(room, page);
    }
    assert!(server.terminate().success());

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["store", "copy", "--from"])
        .arg(format!("sled:{}", dir.path().display()))
        .args(["--to", &schema.url, "--postgres-schema", &schema.name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "store copy failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("copied 8 rooms"), "{stdout}");

    // The same deployment on PostgreSQL serves the same documents and streams.
    let other = tempfile::tempdir().unwrap();
    let flags = schema.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(other.path(), &flags);
    for (room, text) in &texts {
        wait_for_text(&server, room, text).await;
    }
    for (room, before) in &streams {
        let (_, page) = get_json(&server, &format!("/rooms/{room}/messages?limit=1000")).await;
        assert_eq!(&page, before, "room {room}");
        // The stream continues where it was: same epoch, next seq.
        let last = before["last_seq"].as_u64().unwrap();
        let seq = publish(&server, room, "after-copy").await.unwrap();
        assert_eq!(seq, last + 1, "room {room}");
        let (_, joined) = Chat::join(
            &server,
            room,
            json!({"epoch": before["epoch"], "since": last}),
        )
        .await;
        assert_eq!(joined["recovered"], true, "{joined}");
    }

    // Copying again into the same schema is refused: nothing is merged.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["store", "copy", "--from"])
        .arg(format!("sled:{}", dir.path().display()))
        .args(["--to", &schema.url, "--postgres-schema", &schema.name])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exist"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// A commit that fails loses every write in it, also those of rooms that had no flush
/// waiting in that commit: such a room's next flush must fail too, never report them
/// durable. (A duplicate log key makes the commit fail here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_lost_in_a_failed_commit_are_never_acknowledged_later() {
    use tandem::room::RoomName;
    use tandem::storage::{PostgresConfig, PostgresStore, Store};
    let Some(url) = pg::url("writes_lost_in_a_failed_commit_are_never_acknowledged_later") else {
        return;
    };
    let schema = pg::Schema::new(&url, "poison");
    let store = PostgresStore::connect(&PostgresConfig {
        url: schema.url.clone(),
        schema: schema.name.clone(),
        pool_size: 4,
    })
    .unwrap();
    let (a, b) = (RoomName::parse("a").unwrap(), RoomName::parse("b").unwrap());
    let (ea, eb) = (
        store.claim(&a).await.unwrap(),
        store.claim(&b).await.unwrap(),
    );
    store
        .append_updates(&a, ea, 1, vec![b"a1".to_vec()])
        .unwrap();
    store.flush(&a, ea).await.unwrap();
    // One commit: a's duplicate record (refused by the database) and b's write, with no
    // flush of b's waiting in it.
    store
        .append_updates(&a, ea, 1, vec![b"again".to_vec()])
        .unwrap();
    store
        .append_updates(&b, eb, 1, vec![b"b1".to_vec()])
        .unwrap();
    assert!(
        store.flush(&a, ea).await.is_err(),
        "the duplicate must fail the commit"
    );
    // b's write was in that commit and is gone: its flush must not say otherwise.
    assert!(
        store.flush(&b, eb).await.is_err(),
        "a lost write was acknowledged"
    );
    assert!(store
        .append_updates(&b, eb, 2, vec![b"b2".to_vec()])
        .is_err());
    assert!(store.load_doc(&b).await.unwrap().updates.is_empty());
    // Under a new claim (a reactivation) the room works again.
    let eb2 = store.claim(&b).await.unwrap();
    store
        .append_updates(&b, eb2, 1, vec![b"b1".to_vec()])
        .unwrap();
    store.flush(&b, eb2).await.unwrap();
    assert_eq!(
        store.load_doc(&b).await.unwrap().updates,
        vec![b"b1".to_vec()]
    );
}

/// A second database session holding a schema's document log locked, so that the server's
/// commits wait until [`LogLock::release`].
struct LogLock {
    db: tokio_postgres::Client,
    connection: actix_rt::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl LogLock {
    async fn take(url: &str, schema: &pg::Schema) -> LogLock {
        let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let connection = actix_rt::spawn(connection);
        db.batch_execute(&format!(
            "BEGIN; LOCK TABLE \"{}\".doc_log IN ACCESS EXCLUSIVE MODE",
            schema.name
        ))
        .await
        .unwrap();
        LogLock { db, connection }
    }

    async fn release(self) {
        self.db.batch_execute("COMMIT").await.unwrap();
        drop(self.db);
        let _ = self.connection.await;
    }
}

/// A commit that the database holds back (another transaction holds the log table locked)
/// delays the broadcast (nothing is seen before it is durable), loses nothing once the
/// lock goes, and is logged as slow, so an operator sees why clients waited.
#[actix_rt::test]
async fn a_commit_the_database_holds_back_is_logged_and_delivered_after_it() {
    let Some(url) = pg::url("a_commit_the_database_holds_back_is_logged_and_delivered_after_it")
    else {
        return;
    };
    let schema = pg::Schema::new(&url, "slowlog");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let flags = schema.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start_logged(&dir.path().join("data"), &flags, &log);
    let mut writer = YClient::synced(&server, "held").await;
    let mut reader = YClient::synced(&server, "held").await;
    writer.append("before ").await;
    reader.next_update().await;
    assert!(
        !server.log_text().contains("was slow"),
        "{}",
        server.log_text()
    );

    // Another session of the database holds the log table for 600 ms.
    let lock = LogLock::take(&url, &schema).await;
    writer.append("held").await;
    let early = loop {
        match reader.recv_within(Duration::from_millis(600)).await {
            None => break false,
            Some(Received::Message(Message::Update(_))) => break true,
            Some(_) => {} // awareness, keepalives
        }
    };
    assert!(!early, "an update was broadcast before it was durable");
    lock.release().await;

    reader.next_update().await;
    assert_eq!(reader.text(), "before held");
    wait_for_text(&server, "held", "before held").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log_text().contains("was slow") && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let text = server.log_text();
    assert!(
        text.contains("PostgreSQL: ") && text.contains("was slow"),
        "no slow line in the log:\n{text}"
    );
}

/// With `--commit-gap-ms`, a room whose updates arrive while a commit runs (the stream
/// outpaces the store; here a lock holds the commit back) starts its next commit only a gap
/// after the last one started: what the writer sends meanwhile reaches the reader as one
/// frame, complete and in order. Without the gap each of those updates would be a frame.
#[actix_rt::test]
async fn a_commit_gap_gathers_what_arrives_behind_a_slow_commit_into_one_frame() {
    let Some(url) =
        pg::url("a_commit_gap_gathers_what_arrives_behind_a_slow_commit_into_one_frame")
    else {
        return;
    };
    let schema = pg::Schema::new(&url, "gap");
    let dir = tempfile::tempdir().unwrap();
    let mut flags = schema.flags();
    flags.extend(["--commit-gap-ms".to_owned(), "1000".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(dir.path(), &flags);
    let mut writer = YClient::synced(&server, "gap").await;
    let mut reader = YClient::synced(&server, "gap").await;
    writer.append("a,").await;
    reader.next_update().await;
    // Light traffic never waits for the gap: well after that commit, this one goes at once.
    actix_rt::time::sleep(Duration::from_millis(1100)).await;
    writer.append("b,").await;
    reader.next_update().await;
    assert_eq!(reader.text(), "a,b,");

    // A second session holds the log table: the commit of "c," waits, "d," and "e,"
    // arrive behind it.
    let lock = LogLock::take(&url, &schema).await;
    writer.append("c,").await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    writer.append("d,").await;
    writer.append("e,").await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    lock.release().await;
    // Within the gap (1 s from the start of the held commit): three more, 50 ms apart.
    for s in ["f,", "g,", "h,"] {
        writer.append(s).await;
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    let mut frames = 0;
    while reader.text().len() < "a,b,c,d,e,f,g,h,".len() {
        reader.next_update().await;
        frames += 1;
    }
    assert_eq!(reader.text(), "a,b,c,d,e,f,g,h,");
    // "c," alone (the held commit), then d to h in one commit after the gap.
    assert_eq!(frames, 2, "{frames} frames carried c to h");
}
