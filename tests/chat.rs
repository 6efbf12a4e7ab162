//! The chat stream end to end, over every transport: a real server, real WebSocket, SSE and
//! HTTP clients, a real sled directory and real `kill -9`. The properties under test are
//! the stream's promises: every acknowledged message survives, seqs have no gap, a resume
//! replays exactly what was missed (or says it cannot), a retried publish is published once.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use actix_http::ws::Message as WsMessage;
use common::chat::{hs256, Chat, Sse};
use common::pg;
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};

async fn post_message(server: &Server, room: &str, key: Option<&str>, body: Value) -> Value {
    let mut request = awc::Client::new().post(server.url(&format!("/rooms/{room}/messages")));
    if let Some(key) = key {
        request = request.insert_header(("Idempotency-Key", key));
    }
    let mut response = request.send_json(&body).await.expect("POST message");
    let status = response.status().as_u16();
    let body = response.body().await.expect("body");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let mut response = awc::Client::new()
        .get(server.url(path))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("GET");
    let body = response.body().limit(64 << 20).await.expect("body");
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (response.status().as_u16(), value)
}

fn seqs_of(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

#[actix_rt::test]
async fn websocket_resume_replays_exactly_what_was_missed_then_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let room = "chat-ws-resume";
    let (mut alice, joined) = Chat::join(&server, room, json!({"v": 1})).await;
    assert_eq!(joined["v"], 1);
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["last_seq"], 0);
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        let ack = alice
            .publish(Some(&format!("a{i}")), json!({"text": i}))
            .await;
        assert_eq!(ack["seq"], i);
        assert_eq!(ack["duplicate"], false);
    }

    // Bob reads 1..3 from the start, then goes away.
    let (mut bob, joined) = Chat::join(&server, room, json!({"epoch": epoch, "since": 0})).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["replayed"], 5);
    assert_eq!(bob.messages(3).await, range(1, 3));
    bob.close().await;

    for i in 6..=9 {
        alice.publish(None, json!({"text": i})).await;
    }
    let (mut bob, joined) = Chat::join(&server, room, json!({"epoch": epoch, "since": 3})).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["replayed"], 6);
    assert_eq!(joined["last_seq"], 9);
    assert_eq!(bob.messages(6).await, range(4, 9));
    // Then live, with nothing repeated.
    alice.publish(None, json!({"text": 10})).await;
    let live = bob.next_of("message").await;
    assert_eq!(live["seq"], 10);
    assert_eq!(live["body"], json!({"text": 10}));
    assert!(live["ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(live["sender"].as_str().unwrap().starts_with("anon-"));
    bob.expect_no("message", Duration::from_millis(300)).await;

    // History pages in both directions.
    bob.send(&json!({"type": "history", "req": "h1", "before": 6, "limit": 3}))
        .await;
    let page = bob.next_of("history").await;
    assert_eq!(page["req"], "h1");
    assert_eq!(seqs_of(&page), range(3, 5));
    bob.send(&json!({"type": "history", "req": "h2", "after": 7, "limit": 2}))
        .await;
    assert_eq!(seqs_of(&bob.next_of("history").await), range(8, 9));
}

#[actix_rt::test]
async fn sse_resume_with_last_event_id_then_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--heartbeat-interval-secs", "0.3"]);
    let room = "chat-sse-resume";
    for i in 1..=3 {
        let ack = post_message(&server, room, None, json!({"n": i})).await;
        assert_eq!(ack["seq"], i);
    }
    let mut sse = Sse::open(&server, &format!("/rooms/{room}/events?since=0"), None).await;
    let joined = sse.next_of("joined").await;
    assert_eq!(joined.data["recovered"], true);
    let mut last = 0;
    for expected in 1..=3 {
        let message = sse.next_of("message").await;
        assert_eq!(message.id, Some(expected));
        assert_eq!(message.data["seq"], expected);
        last = expected;
    }
    // The connection stays open with comment lines between events.
    let mut comments = 0;
    let started = Instant::now();
    while comments < 2 {
        let _ = tokio::time::timeout(Duration::from_millis(400), sse.next(&mut comments)).await;
        assert!(started.elapsed() < WAIT, "no keepalive comments");
    }
    drop(sse);

    for i in 4..=7 {
        post_message(&server, room, None, json!({"n": i})).await;
    }
    let mut sse = Sse::open(&server, &format!("/rooms/{room}/events"), Some(last)).await;
    let joined = sse.next_of("joined").await;
    assert_eq!(joined.data["recovered"], true);
    assert_eq!(joined.data["replayed"], 4);
    for expected in 4..=7 {
        assert_eq!(sse.next_of("message").await.id, Some(expected));
    }
    post_message(&server, room, None, json!({"n": 8})).await;
    let live = sse.next_of("message").await;
    assert_eq!(live.id, Some(8));
    assert_eq!(live.data["body"], json!({"n": 8}));
}

#[actix_rt::test]
async fn long_poll_resume_and_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let room = "chat-long-poll";
    for i in 1..=6 {
        post_message(&server, room, None, json!(i)).await;
    }
    let (status, page) =
        get_json(&server, &format!("/rooms/{room}/messages?since=2&limit=3")).await;
    assert_eq!(status, 200);
    assert_eq!(page["recovered"], true);
    assert_eq!(seqs_of(&page), range(3, 5));
    let epoch = page["epoch"].as_str().unwrap().to_owned();
    let (_, page) = get_json(
        &server,
        &format!("/rooms/{room}/messages?since=5&epoch={epoch}"),
    )
    .await;
    assert_eq!(seqs_of(&page), vec![6]);

    // Caught up: the read waits for the next message.
    let path = format!("/rooms/{room}/messages?since=6&epoch={epoch}&wait=5");
    let started = Instant::now();
    let (waiting, publishing) = tokio::join!(get_json(&server, &path), async {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        post_message(&server, room, None, json!(7)).await
    });
    assert_eq!(publishing["seq"], 7);
    assert_eq!(waiting.0, 200);
    assert_eq!(seqs_of(&waiting.1), vec![7]);
    assert!(started.elapsed() < Duration::from_secs(4));

    // Nothing newer within `wait`: an empty page, still recovered.
    let (_, page) = get_json(&server, &format!("/rooms/{room}/messages?since=7&wait=0.3")).await;
    assert_eq!(seqs_of(&page), Vec::<u64>::new());
    assert_eq!(page["recovered"], true);
    assert_eq!(page["last_seq"], 7);

    // Bad parameters are refused with a reason.
    for bad in ["limit=0", "limit=100000", "wait=-1", "wait=3600", "since=x"] {
        let (status, body) = get_json(&server, &format!("/rooms/{room}/messages?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].as_str().is_some(), "{bad}");
    }
}

#[actix_rt::test]
async fn a_lost_stream_is_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let room = "chat-epoch";
    // Retention by count: messages before the window cannot be replayed.
    let server = Server::start(dir.path(), &["--stream-retention-messages", "5"]);
    for i in 1..=10 {
        post_message(&server, room, None, json!(i)).await;
    }
    let (mut late, joined) = Chat::join(&server, room, json!({"since": 2})).await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["first_seq"], 6);
    assert_eq!(late.messages(5).await, range(6, 10), "the latest page");
    let (_, joined) = Chat::join(&server, room, json!({"since": 5})).await;
    assert_eq!(joined["recovered"], true, "everything after 5 is held");
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    drop(server);

    // Retention by age: once the window has passed, nothing can be replayed.
    actix_rt::time::sleep(Duration::from_millis(600)).await;
    let server = Server::start(dir.path(), &["--stream-retention-secs", "0.5"]);
    let (_, joined) = Chat::join(&server, room, json!({"epoch": epoch, "since": 8})).await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["replayed"], 0);
    assert_eq!(joined["first_seq"], 11);
    assert_eq!(joined["last_seq"], 10, "the sequence continues");
    let (status, page) = get_json(&server, &format!("/rooms/{room}/messages?since=8")).await;
    assert_eq!(status, 200);
    assert_eq!(page["recovered"], false);
    drop(server);

    // Data lost (a fresh store: a new directory, or a new schema on PostgreSQL): a new
    // epoch; the old position is not recovered even where seqs match.
    let fresh = tempfile::tempdir().unwrap();
    let server = Server::start(fresh.path(), &[]);
    for i in 1..=12 {
        post_message(&server, room, None, json!(i)).await;
    }
    let (_, joined) = Chat::join(&server, room, json!({"epoch": epoch, "since": 10})).await;
    assert_ne!(joined["epoch"], epoch.as_str());
    assert_eq!(joined["recovered"], false);
    let (_, page) = get_json(
        &server,
        &format!("/rooms/{room}/messages?since=10&epoch={epoch}"),
    )
    .await;
    assert_eq!(page["recovered"], false);
    // Without an epoch, a client ahead of the stream is not recovered either.
    let (_, joined) = Chat::join(&server, room, json!({"since": 50})).await;
    assert_eq!(joined["recovered"], false);
}

#[actix_rt::test]
async fn the_same_message_id_publishes_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let room = "chat-idempotency";
    let (mut watcher, _) = Chat::join(&server, room, json!({})).await;
    let (mut sender, _) = Chat::join(&server, room, json!({})).await;
    let mut acks = Vec::new();
    for _ in 0..3 {
        acks.push(sender.publish(Some("msg-1"), json!({"text": "once"})).await);
    }
    assert_eq!(acks[0]["seq"], 1);
    assert_eq!(acks[0]["duplicate"], false);
    for ack in &acks[1..] {
        assert_eq!(ack["seq"], 1);
        assert_eq!(ack["duplicate"], true);
        assert_eq!(ack["id"], "msg-1");
    }
    // A retry over a new connection is recognised too.
    let (mut again, _) = Chat::join(&server, room, json!({})).await;
    assert_eq!(again.publish(Some("msg-1"), json!({})).await["seq"], 1);

    let mut http = Vec::new();
    for _ in 0..3 {
        http.push(post_message(&server, room, Some("http-1"), json!({"text": "http"})).await);
    }
    assert_eq!(http[0]["seq"], 2);
    assert_eq!(http[0]["duplicate"], false);
    assert!(http[1..]
        .iter()
        .all(|a| a["seq"] == 2 && a["duplicate"] == true));

    assert_eq!(watcher.messages(2).await, vec![1, 2]);
    watcher
        .expect_no("message", Duration::from_millis(300))
        .await;
    let (_, page) = get_json(&server, &format!("/rooms/{room}/messages?since=0")).await;
    assert_eq!(seqs_of(&page), vec![1, 2]);

    // The window survives a restart: it is rebuilt from the stored messages.
    drop(server);
    let server = Server::start(dir.path(), &[]);
    let ack = post_message(&server, room, Some("http-1"), json!({"text": "http"})).await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["duplicate"].as_bool()),
        (Some(2), Some(true))
    );
}

#[actix_rt::test]
async fn kill_9_while_publishing_keeps_every_acknowledged_message_gap_free() {
    acknowledged_messages_survive_kill_9(&[]).await;
}

/// The same on PostgreSQL (a schema of its own).
#[actix_rt::test]
async fn kill_9_while_publishing_keeps_every_acknowledged_message_gap_free_on_postgres() {
    let Some(url) =
        pg::url("kill_9_while_publishing_keeps_every_acknowledged_message_gap_free_on_postgres")
    else {
        return;
    };
    let schema = pg::Schema::new(&url, "chatcrash");
    acknowledged_messages_survive_kill_9(&schema.flags()).await;
}

async fn acknowledged_messages_survive_kill_9(store: &[String]) {
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &store);
    let room = "chat-crash";
    let (mut publisher, _) = Chat::join(&server, room, json!({})).await;
    // Pipeline publishes; kill the server while acks are still arriving.
    let total = 2000;
    let mut sent = 0;
    let mut acked: HashMap<String, u64> = HashMap::new();
    while sent < 50 {
        sent += 1;
        publisher
            .send(&json!({"type": "publish", "id": format!("p{sent}"), "body": {"n": sent}}))
            .await;
    }
    loop {
        let event = publisher.recv().await;
        if event["type"] == "ack" {
            acked.insert(
                event["id"].as_str().unwrap().to_owned(),
                event["seq"].as_u64().unwrap(),
            );
            if sent < total {
                sent += 1;
                publisher
                    .send(
                        &json!({"type": "publish", "id": format!("p{sent}"), "body": {"n": sent}}),
                    )
                    .await;
            }
        }
        if acked.len() == 300 {
            server.kill9();
            break;
        }
    }
    let server = server.restart();
    let mut stored: Vec<Value> = Vec::new();
    loop {
        let after = stored.last().map_or(0, |m| m["seq"].as_u64().unwrap());
        let (_, page) = get_json(
            &server,
            &format!("/rooms/{room}/messages?since={after}&limit=1000"),
        )
        .await;
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            break;
        }
        stored.extend(messages);
    }
    let seqs: Vec<u64> = stored.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, range(1, seqs.len() as u64), "gap-free from 1");
    let by_id: HashMap<&str, u64> = stored
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["seq"].as_u64().unwrap()))
        .collect();
    for (id, seq) in &acked {
        assert_eq!(by_id.get(id.as_str()), Some(seq), "acknowledged {id} lost");
    }
    assert!(seqs.len() >= acked.len());
    // Retrying an acknowledged id after the crash gets its original seq.
    let (id, seq) = acked.iter().next().unwrap();
    let ack = post_message(&server, room, Some(id), json!({})).await;
    assert_eq!(ack["seq"].as_u64(), Some(*seq));
    assert_eq!(ack["duplicate"], true);
}

#[actix_rt::test]
async fn presence_join_leave_typing_expiry_and_vanished_clients() {
    const SECRET: &str = "a chat presence test secret";
    let token = |sub: &str, info: Value| {
        let claims = json!({"sub": sub, "rooms": ["team:*"], "perm": "write", "info": info});
        hs256(SECRET, claims, 300)
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--jwt-secret",
            SECRET,
            "--heartbeat-interval-secs",
            "0.2",
            "--heartbeat-timeout-secs",
            "2",
            "--typing-ttl-secs",
            "0.4",
        ],
    );
    let room = "team:presence";
    let alice_token = token("alice", json!({"name": "Alice"}));
    let (mut alice, joined) = Chat::join_as(&server, room, json!({}), Some(&alice_token)).await;
    assert_eq!(joined["presence"].as_array().unwrap().len(), 1);
    assert_eq!(joined["presence"][0]["subject"], "alice");
    assert_eq!(joined["presence"][0]["info"]["name"], "Alice");

    let bob_token = token("bob", json!({"name": "Bob"}));
    let (mut bob, joined) = Chat::join_as(&server, room, json!({}), Some(&bob_token)).await;
    let bob_conn = joined["conn"].as_str().unwrap().to_owned();
    let subjects: BTreeSet<&str> = joined["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, BTreeSet::from(["alice", "bob"]));
    let seen = alice.next_of("presence").await;
    assert_eq!(seen["event"], "join");
    assert_eq!(seen["member"]["conn"], bob_conn.as_str());
    assert_eq!(seen["member"]["info"]["name"], "Bob");

    // Messages carry the token's subject as sender.
    bob.publish(None, json!("hi")).await;
    assert_eq!(alice.next_of("message").await["sender"], "bob");

    // Typing shows, then expires on its own.
    bob.send(&json!({"type": "typing", "status": "typing"}))
        .await;
    let typing = alice.next_of("typing").await;
    assert_eq!(
        (typing["subject"].as_str(), typing["status"].as_str()),
        (Some("bob"), Some("typing"))
    );
    let set_at = Instant::now();
    let expired = alice.next_of("typing").await;
    assert_eq!(expired["status"], Value::Null);
    assert!(
        set_at.elapsed() >= Duration::from_millis(300),
        "expired too early"
    );

    // A polite close leaves at once.
    bob.close().await;
    let left = alice.next_of("presence").await;
    assert_eq!(
        (left["event"].as_str(), left["member"]["conn"].as_str()),
        (Some("leave"), Some(bob_conn.as_str()))
    );

    // A client that vanishes (stops reading, never answers a ping) leaves within the
    // heartbeat timeout.
    let carol_token = token("carol", Value::Null);
    let (carol, _) = Chat::join_as(&server, room, json!({}), Some(&carol_token)).await;
    assert_eq!(
        alice.next_of("presence").await["member"]["subject"],
        "carol"
    );
    let vanished_at = Instant::now();
    let left = alice.next_of("presence").await;
    assert_eq!(
        (left["event"].as_str(), left["member"]["subject"].as_str()),
        (Some("leave"), Some("carol"))
    );
    let after = vanished_at.elapsed();
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(6),
        "left after {after:?}"
    );
    drop(carol);

    // A read-only token may join and read, never publish (WebSocket or HTTP).
    let reader = hs256(
        SECRET,
        json!({"sub": "dave", "rooms": ["team:*"], "perm": "read"}),
        300,
    );
    let (mut dave, joined) = Chat::join_as(&server, room, json!({"since": 0}), Some(&reader)).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(dave.messages(1).await, vec![1]);
    dave.send(&json!({"type": "publish", "id": "ro", "body": "nope"}))
        .await;
    let error = dave.next_of("error").await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("read_only"), Some("ro"))
    );
    let (status, _) = http_post_as(
        &server,
        &format!("/rooms/{room}/messages"),
        b"1".to_vec(),
        Some(&reader),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = http_post_as(
        &server,
        &format!("/rooms/{room}/messages"),
        b"1".to_vec(),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = get_json(&server, &format!("/rooms/{room}/messages?since=0")).await;
    assert_eq!(status, 401, "history needs a token too");
    assert!(body["error"].as_str().is_some());
}

#[actix_rt::test]
async fn protocol_errors_are_answered_and_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-chat-body-bytes", "1024"]);
    let room = "chat-errors";
    let mut chat = Chat::connect(&server, room, None).await;
    chat.send(&json!({"type": "publish", "id": "early", "body": 1}))
        .await;
    let error = chat.next_of("error").await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("not_joined"), Some("early"))
    );
    chat.send(&json!({"type": "shout"})).await;
    assert_eq!(chat.next_of("error").await["code"], "bad_request");
    chat.send(&json!({"type": "join", "v": 99})).await;
    assert_eq!(chat.next_of("error").await["code"], "bad_request");
    chat.send(&json!({"type": "join"})).await;
    chat.next_of("joined").await;
    chat.send(&json!({"type": "join"})).await;
    assert_eq!(chat.next_of("error").await["code"], "already_joined");
    chat.send(&json!({"type": "publish", "id": "big", "body": "x".repeat(2000)}))
        .await;
    let error = chat.next_of("error").await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("body_too_large"), Some("big"))
    );
    for bad in [
        json!({"type": "publish", "id": "i".repeat(300), "body": 1}),
        json!({"type": "typing", "status": "s".repeat(300)}),
        json!({"type": "history", "before": 5, "after": 1}),
        json!({"type": "history", "limit": 0}),
        json!({"type": "history", "limit": 5000}),
    ] {
        chat.send(&bad).await;
        assert_eq!(chat.next_of("error").await["code"], "bad_request", "{bad}");
    }
    // Still usable after errors.
    assert_eq!(chat.publish(Some("ok"), json!("fine")).await["seq"], 1);
    // Binary frames are not the chat protocol: closed with 1003.
    chat.socket
        .send(WsMessage::Binary(vec![0, 0].into()))
        .await
        .unwrap();
    let closed = chat.next_of("closed").await;
    assert_eq!(closed["code"], 1003);

    // Connections that drop while their join is in flight leave no ghost member.
    for i in 0..30 {
        let mut ghost = Chat::connect(&server, &format!("ghosts-{}", i % 3), None).await;
        ghost.send(&json!({"type": "join", "since": 0})).await;
        drop(ghost);
    }
    let deadline = Instant::now() + WAIT;
    while metric(&server, "tandem_chat_members").await > 0.0 {
        assert!(Instant::now() < deadline, "ghost members stayed joined");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    // HTTP: bad bodies and keys get a status with a reason.
    let url = server.url(&format!("/rooms/{room}/messages"));
    let mut response = awc::Client::new()
        .post(&url)
        .send_body("not json")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(String::from_utf8_lossy(&response.body().await.unwrap()).contains("JSON"));
    let response = awc::Client::new()
        .post(&url)
        .send_json(&json!({"text": "y".repeat(2000)}))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let response = awc::Client::new()
        .post(&url)
        .insert_header(("Idempotency-Key", "k".repeat(300)))
        .send_json(&json!(1))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = awc::Client::new()
        .get(server.url(&format!("/rooms/{room}/events")))
        .insert_header(("Last-Event-ID", "abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

/// Publishes sent back to back are released by few flushes, so members get them in
/// batches (one mailbox message and one write each): still every message once, in seq
/// order, over WebSocket and SSE, each ack after its message.
#[actix_rt::test]
async fn pipelined_publishes_reach_members_in_batches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-messages-per-sec", "0"]);
    let room = "chat-batches";
    let (mut publisher, _) = Chat::join(&server, room, json!({})).await;
    let (mut reader, _) = Chat::join(&server, room, json!({})).await;
    let mut sse = Sse::open(&server, &format!("/rooms/{room}/events"), None).await;
    sse.next_of("joined").await;
    const N: u64 = 300;
    for i in 1..=N {
        publisher
            .send(&json!({"type": "publish", "id": format!("p{i}"), "body": {"n": i}}))
            .await;
    }
    // The publisher is a member too: its own messages, each before its ack.
    let mut seen = 0;
    let mut acked = 0;
    while acked < N {
        let event = publisher.recv().await;
        match event["type"].as_str() {
            Some("message") => {
                seen += 1;
                assert_eq!(event["seq"], seen, "messages in seq order");
            }
            Some("ack") => {
                acked += 1;
                assert_eq!(event["id"], format!("p{acked}"), "acks in publish order");
                assert!(
                    event["seq"].as_u64().unwrap() <= seen,
                    "an ack follows its message"
                );
            }
            _ => {}
        }
    }
    assert_eq!(reader.messages(N as usize).await, range(1, N));
    for seq in 1..=N {
        let event = sse.next_of("message").await;
        assert_eq!(event.id, Some(seq), "SSE in seq order");
        assert_eq!(event.data["body"]["n"], seq);
    }
    let batched = metric(&server, "tandem_chat_batched_messages_total").await;
    assert!(
        batched > 0.0,
        "some messages went out in batches ({batched})"
    );
}

#[actix_rt::test]
async fn five_hundred_rooms_of_four_keep_order_and_isolation() {
    let dir = tempfile::tempdir().unwrap();
    // Clients here answer pings only when read; a long timeout keeps the early ones alive.
    let server = Server::start(dir.path(), &["--heartbeat-timeout-secs", "120"]);
    let rooms = 500;
    let per_room = 4;
    let mut members: Vec<(String, Chat)> = Vec::new();
    for r in 0..rooms {
        let room = format!("many-{r}");
        for _ in 0..per_room {
            let (chat, _) = Chat::join(&server, &room, json!({})).await;
            members.push((room.clone(), chat));
        }
    }
    // Every member publishes one message, tagged with its room.
    for (room, chat) in &mut members {
        chat.send(&json!({"type": "publish", "body": {"room": room}}))
            .await;
    }
    // Every member sees its room's messages 1..=4, in order, and none of another room's.
    for (room, chat) in &mut members {
        let mut seqs = Vec::new();
        while seqs.len() < per_room {
            let event = chat.next_of("message").await;
            assert_eq!(
                event["body"]["room"],
                room.as_str(),
                "a message crossed rooms"
            );
            seqs.push(event["seq"].as_u64().unwrap());
        }
        assert_eq!(seqs, range(1, per_room as u64), "{room}");
    }
    assert_eq!(
        metric(&server, "tandem_chat_members").await,
        (rooms * per_room) as f64
    );
    assert!(metric(&server, "tandem_chat_published_total").await >= (rooms * per_room) as f64);
}

#[actix_rt::test]
async fn count_retention_is_exact_though_removal_is_batched() {
    count_retention_is_exact(&[]).await;
}

/// The same on PostgreSQL (a schema of its own).
#[actix_rt::test]
async fn count_retention_is_exact_though_removal_is_batched_on_postgres() {
    let Some(url) = pg::url("count_retention_is_exact_though_removal_is_batched_on_postgres")
    else {
        return;
    };
    let schema = pg::Schema::new(&url, "retention");
    count_retention_is_exact(&schema.flags()).await;
}

async fn count_retention_is_exact(store: &[String]) {
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let room = "chat-retention";
    let mut flags = vec!["--stream-retention-messages", "200"];
    flags.extend(store);
    let mut server = Server::start(dir.path(), &flags);
    let (mut publisher, _) = Chat::join(&server, room, json!({})).await;
    for n in 1..=250 {
        publisher.send(&json!({"type": "publish", "body": n})).await;
    }
    for _ in 0..250 {
        publisher.next_of("ack").await;
    }
    for restarted in [false, true] {
        let (_, page) = get_json(&server, &format!("/rooms/{room}/messages?limit=1000")).await;
        assert_eq!(seqs_of(&page), range(51, 250), "restarted: {restarted}");
        assert_eq!(page["first_seq"], 51);
        let (_, joined) = Chat::join(&server, room, json!({"since": 49})).await;
        assert_eq!(joined["recovered"], false, "restarted: {restarted}");
        let (mut client, joined) = Chat::join(&server, room, json!({"since": 50})).await;
        assert_eq!(joined["recovered"], true);
        assert_eq!(joined["replayed"], 200);
        assert_eq!(client.messages(200).await, range(51, 250));
        client
            .send(&json!({"type": "history", "before": 60, "limit": 50}))
            .await;
        assert_eq!(seqs_of(&client.next_of("history").await), range(51, 59));
        // Paging forward from before the window starts at its oldest message.
        client
            .send(&json!({"type": "history", "after": 0, "limit": 5}))
            .await;
        let page = client.next_of("history").await;
        assert_eq!(seqs_of(&page), range(51, 55));
        assert_eq!(page["recovered"], false);
        server.kill9();
        server = server.restart();
    }
}

#[actix_rt::test]
async fn a_subscriber_that_stops_reading_is_cut_off_not_buffered() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-outbox-bytes", "262144"]);
    let room = "chat-slow-sse";
    // A raw SSE subscriber that sends its request and then never reads.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stalled
        .write_all(
            format!("GET /rooms/{room}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while metric(&server, "tandem_chat_members").await < 1.0 {
        assert!(Instant::now() < deadline, "the subscriber never joined");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // 40 MB of messages: far more than the socket buffers and the 256 KiB outbox hold.
    let body = json!({"text": "z".repeat(60_000)});
    let mut cut = false;
    for _ in 0..700 {
        post_message(&server, room, None, body.clone()).await;
        if metric(&server, "tandem_chat_members").await == 0.0 {
            cut = true;
            break;
        }
    }
    assert!(cut, "the stalled subscriber was never cut off");
    assert!(metric(&server, "tandem_slow_consumers_total").await >= 1.0);
    // What it finally reads ends with the close event naming the reason.
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    let mut tail = Vec::new();
    let _ = stalled.read_to_end(&mut tail);
    let text = String::from_utf8_lossy(&tail);
    assert!(text.contains("event: close"), "no close event at the end");
    assert!(
        text.contains("4008"),
        "the close event does not say too slow"
    );
}

#[actix_rt::test]
async fn browsers_on_allowed_origins_may_use_the_http_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--cors-origins", "https://app.example"]);
    let url = server.url("/rooms/cors/messages");
    // The preflight a browser sends before a JSON POST with an Idempotency-Key.
    let response = awc::Client::new()
        .request(actix_http::Method::OPTIONS, &url)
        .insert_header(("Origin", "https://app.example"))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .insert_header((
            "Access-Control-Request-Headers",
            "content-type,idempotency-key",
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        "https://app.example"
    );
    let response = awc::Client::new()
        .get(&url)
        .insert_header(("Origin", "https://app.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        "https://app.example"
    );
    // Another origin gets no permission.
    let response = awc::Client::new()
        .get(&url)
        .insert_header(("Origin", "https://evil.example"))
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[actix_rt::test]
async fn sessions_end_at_token_expiry_unless_a_refresh_replaces_the_token() {
    const SECRET: &str = "a chat token-expiry test secret";
    let token = |sub: &str, perm: &str, secs: u64| {
        hs256(
            SECRET,
            json!({"sub": sub, "rooms": ["team:*"], "perm": perm}),
            secs,
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--jwt-secret", SECRET, "--jwt-leeway-secs", "0"],
    );
    let room = "team:expiry";
    let short = token("ada", "write", 3);
    let (mut kept, _) = Chat::join_as(&server, room, json!({}), Some(&short)).await;
    let (mut lapsed, _) = Chat::join_as(&server, room, json!({}), Some(&short)).await;
    let mut sse = Sse::open(
        &server,
        &format!("/rooms/{room}/events?token={short}"),
        None,
    )
    .await;
    sse.next_of("joined").await;

    // Refusals leave the old expiry in place.
    for (bad, why) in [
        (token("bob", "write", 60), "another subject"),
        (token("ada", "read", 60), "another right"),
        ("not a token".to_owned(), "invalid token"),
    ] {
        kept.send(&json!({"type": "refresh", "token": bad})).await;
        let error = kept.next_of("error").await;
        assert_eq!(error["code"], "unauthorized", "{error}");
        assert!(
            error["message"].as_str().unwrap().contains(why),
            "{why}: {error}"
        );
    }
    kept.send(&json!({"type": "refresh", "token": token("ada", "write", 60)}))
        .await;
    let refreshed = kept.next_of("refreshed").await;
    assert!(
        refreshed["valid_until"].as_u64().unwrap() > 30,
        "{refreshed}"
    );

    // The session without a refresh ends at expiry with 4010, the SSE stream with a
    // close event; the refreshed one carries on past it.
    let closed = lapsed.next_of("closed").await;
    assert_eq!(closed["code"], 4010, "{closed}");
    let close = sse.next_of("close").await;
    assert_eq!(close.data["code"], 4010, "{:?}", close.data);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ack = kept.publish(Some("after"), json!("still here")).await;
    assert_eq!(ack["id"], "after", "{ack}");
    assert_eq!(metric(&server, "tandem_tokens_expired_total").await, 2.0);
}
