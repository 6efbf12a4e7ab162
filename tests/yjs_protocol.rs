//! End to end against the real binary: the y-websocket protocol, awareness cleanup, bad
//! input, the HTTP API, idle deactivation and graceful shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tandem::protocol::ysync::{encode_awareness, parse_awareness, AwarenessEntry, Message};
use yrs::updates::decoder::Decode;
use yrs::Update;

fn awareness(client_id: u64, clock: u32, json: &str) -> Message {
    Message::Awareness(
        encode_awareness(&[AwarenessEntry {
            client_id,
            clock,
            json,
        }])
        .into(),
    )
}

/// Waits for an awareness message that mentions `client_id`; returns its JSON.
async fn awareness_of(client: &mut YClient, client_id: u64) -> String {
    loop {
        match client.recv().await {
            Received::Message(Message::Awareness(payload)) => {
                let entries = parse_awareness(&payload).unwrap();
                if let Some(e) = entries.iter().find(|e| e.client_id == client_id) {
                    return e.json.to_owned();
                }
            }
            Received::Message(_) | Received::Denied(_) => {}
            Received::Closed(code, reason) => panic!("closed: {code} {reason}"),
        }
    }
}

#[actix_rt::test]
async fn edits_reach_other_sessions_but_are_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut a = YClient::synced(&server, "echo").await;
    let mut b = YClient::synced(&server, "echo").await;
    a.append("hello").await;
    b.next_update().await;
    assert_eq!(b.text(), "hello");
    // The sender must not get its own update back.
    let echoed = loop {
        match a.recv_within(Duration::from_millis(500)).await {
            None => break false,
            Some(Received::Message(Message::Update(_))) => break true,
            Some(_) => {}
        }
    };
    assert!(!echoed, "the sender received its own update");
    // A duplicate changes nothing, so nobody hears of it.
    let duplicate = common::local_append(&a.doc, "");
    a.send(&Message::Update(duplicate.into())).await;
    let heard = loop {
        match b.recv_within(Duration::from_millis(500)).await {
            None => break false,
            Some(Received::Message(Message::Update(_))) => break true,
            Some(_) => {}
        }
    };
    assert!(!heard, "an update that changes nothing was broadcast");
}

#[actix_rt::test]
async fn awareness_is_relayed_and_removed_when_a_session_drops() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut watcher = YClient::synced(&server, "aware").await;
    let mut leaver = YClient::synced(&server, "aware").await;
    leaver
        .send(&awareness(4242, 1, r#"{"user":{"name":"leaver"}}"#))
        .await;
    assert_eq!(
        awareness_of(&mut watcher, 4242).await,
        r#"{"user":{"name":"leaver"}}"#
    );

    // A late joiner gets the current states on connect.
    let mut late = YClient::connect(&server, "aware").await;
    assert!(awareness_of(&mut late, 4242).await.contains("leaver"));

    // Drop the socket without a close frame: the server must still clean up.
    drop(leaver);
    assert_eq!(awareness_of(&mut watcher, 4242).await, "null");
    assert_eq!(awareness_of(&mut late, 4242).await, "null");
}

#[actix_rt::test]
async fn malformed_frames_close_only_the_offending_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut writer = YClient::synced(&server, "bad").await;
    let mut reader = YClient::synced(&server, "bad").await;
    let cases: &[(&str, &[u8], u16)] = &[
        ("truncated varint", &[0x80], 4000),
        ("empty frame", &[], 4000),
        ("unknown message type", &[9, 0], 4001),
        ("auth from a client", &[2, 0], 4001),
        ("unknown sync type", &[0, 7, 0], 4001),
        ("length past the end", &[0, 2, 9, 1, 2], 4000),
        ("trailing bytes", &[0, 2, 2, 0, 0, 7], 4000),
        ("corrupt update", &[0, 2, 3, 0xff, 0xff, 0xff], 4002),
        ("undecodable state vector", &[0, 0, 2, 1, 0x80], 4000),
        ("lying awareness count", &[1, 2, 9, 1], 4000),
    ];
    for (name, frame, code) in cases {
        let mut bad = YClient::connect(&server, "bad").await;
        bad.send_raw(Bytes::copy_from_slice(frame)).await;
        let (got, reason) = bad.expect_close().await;
        assert_eq!(got, *code, "{name}: closed with {got} ({reason})");
        assert!(!reason.is_empty(), "{name}: close reason is empty");
    }
    let mut text = YClient::connect(&server, "bad").await;
    text.send_text("hello").await;
    assert_eq!(text.expect_close().await.0, 1003);

    // The room and its well-behaved sessions carry on.
    writer.append("still here").await;
    reader.next_update().await;
    assert_eq!(reader.text(), "still here");
    assert_eq!(http_get(&server, "/healthz").await.0, 200);
}

/// A burst of updates is applied in batches (one transaction per sender's run): nothing is
/// lost or reordered, nobody hears their own edits, and a refused update in the middle of
/// a burst closes only its sender, keeping what it sent before.
#[actix_rt::test]
async fn bursts_from_two_writers_merge_and_a_refused_update_closes_only_its_sender() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut observer = YClient::synced(&server, "burst").await;
    let mut a = YClient::synced(&server, "burst").await;
    let mut b = YClient::synced(&server, "burst").await;
    let mut a_sent = String::new();
    // Interleaved and pipelined: nothing waits for the server between sends.
    for i in 0..400 {
        let s = format!("a{i},");
        a.append(&s).await;
        a_sent.push_str(&s);
        b.append(&format!("b{i},")).await;
    }
    a.send_raw(Bytes::from_static(&[0, 2, 3, 0xff, 0xff, 0xff]))
        .await;
    for i in 0..50 {
        if !a
            .try_send(&Message::Update(
                local_append(&a.doc, &format!("late{i},")).into(),
            ))
            .await
        {
            break;
        }
    }
    let (code, reason) = a.expect_close().await;
    assert_eq!(code, 4002, "closed with {code} ({reason})");

    // Everything before the refusal arrives; what came after it never does.
    let expected_len = a_sent.len() + (0..400).map(|i| format!("b{i},").len()).sum::<usize>();
    while observer.text().len() < expected_len {
        observer.next_update().await;
    }
    let text = observer.text();
    assert_eq!(text.len(), expected_len, "{text}");
    assert!(
        !text.contains("late"),
        "an update after the refused one was applied"
    );
    let a_part: String = text
        .split(',')
        .filter(|s| s.starts_with('a'))
        .map(|s| format!("{s},"))
        .collect();
    assert_eq!(a_part, a_sent, "a's edits are missing or out of order");
    for i in 0..400 {
        assert!(text.contains(&format!("b{i},")), "b{i} is missing");
    }

    // b hears a's edits, never its own, and stays connected.
    while b.text() != text {
        match b.recv().await {
            Received::Message(Message::Update(u)) => {
                let authors = Update::decode_v1(&u).unwrap().state_vector();
                assert!(
                    !authors.contains_client(&b.doc.client_id()),
                    "b received its own edits"
                );
                b.apply(&u);
            }
            Received::Closed(code, reason) => panic!("b was closed: {code} {reason}"),
            _ => {}
        }
    }
    b.append("after").await;
    observer.next_update().await;
    assert!(observer.text().ends_with("after"));

    // What was acknowledged by broadcast is what the store holds.
    let (status, state) = http_get(&server, "/rooms/burst/state").await;
    assert_eq!(status, 200);
    assert_eq!(text_of_state(&state), observer.text());
}

#[actix_rt::test]
async fn invalid_room_names_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for name in [
        "..",
        ".hidden",
        "a%2Fb",
        "a%00b",
        "caf%C3%A9",
        &"x".repeat(129),
    ] {
        let (status, body) = http_get(&server, &format!("/rooms/{name}/state")).await;
        assert_eq!(status, 400, "{name}: {:?}", String::from_utf8_lossy(&body));
        assert!(
            String::from_utf8_lossy(&body).contains("room name"),
            "{name}"
        );
        let refused = YClient::try_connect(&server, name).await;
        assert!(refused.is_err(), "{name}: upgrade accepted");
    }
}

#[actix_rt::test]
async fn http_api_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut live = YClient::synced(&server, "http").await;

    let author = yrs::Doc::new();
    let update = local_append(&author, "from http");
    let (status, body) = http_post(&server, "/rooms/http/update", update).await;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    live.next_update().await;
    assert_eq!(live.text(), "from http");

    let (status, state) = http_get(&server, "/rooms/http/state").await;
    assert_eq!(status, 200);
    assert_eq!(text_of_state(&state), "from http");
    let (status, json) = http_get(&server, "/rooms/http/state?format=json").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json, serde_json::json!({ "text": "from http" }));

    let (status, body) = http_post(&server, "/rooms/http/update", vec![0xff, 0xff, 0xff]).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("update"));
    let (status, _) = http_post(&server, "/rooms/http/update", vec![]).await;
    assert_eq!(status, 400);
    let (status, _) = http_get(&server, "/rooms/http/state?format=xml").await;
    assert_eq!(status, 400);
    assert_eq!(http_get(&server, "/readyz").await.0, 200);
    assert!(metric(&server, "tandem_updates_in_total").await >= 1.0);
}

#[actix_rt::test]
async fn idle_room_deactivates_and_reactivates_intact() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--room-idle-secs", "0.3"]);
    let mut writer = YClient::synced(&server, "idle").await;
    for i in 0..20 {
        writer.append(&format!("<{i}>")).await;
    }
    let expected = writer.text();
    // Wait until every update is in (an HTTP read is answered after them).
    let mut observer = YClient::synced(&server, "idle").await;
    while observer.text() != expected {
        observer.next_update().await;
    }
    writer.close().await;
    observer.close().await;

    let deadline = std::time::Instant::now() + WAIT;
    while metric(&server, "tandem_room_evictions_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "room was not deactivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&server, "tandem_rooms_active").await, 0.0);
    assert!(metric(&server, "tandem_snapshots_total").await >= 1.0);

    let again = YClient::synced(&server, "idle").await;
    assert_eq!(again.text(), expected);
    assert_eq!(metric(&server, "tandem_room_activations_total").await, 2.0);
}

#[actix_rt::test]
async fn a_frozen_document_keeps_serving_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--doc-freeze-secs", "0.2"]);
    let mut writer = YClient::synced(&server, "cold").await;
    let mut reader = YClient::synced(&server, "cold").await;
    writer.append("before").await;
    while reader.text() != "before" {
        reader.next_update().await;
    }
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&server, "tandem_document_freezes_total").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "document never froze");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Frozen with both sessions connected: an edit thaws it and reaches the other
    // session, a new session syncs everything, and so does the HTTP state.
    writer.append(" after").await;
    while reader.text() != "before after" {
        reader.next_update().await;
    }
    let late = YClient::synced(&server, "cold").await;
    assert_eq!(late.text(), "before after");
    wait_for_text(&server, "cold", "before after").await;
    // It froze again, and a joiner is answered from the frozen state.
    let frozen = metric(&server, "tandem_document_freezes_total").await;
    while metric(&server, "tandem_document_freezes_total").await <= frozen {
        assert!(
            std::time::Instant::now() < deadline,
            "document never froze again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, state) = http_get(&server, "/rooms/cold/state").await;
    assert_eq!(text_of_state(&state), "before after");
    let last = YClient::synced(&server, "cold").await;
    assert_eq!(last.text(), "before after");
}

/// With the default `--doc-freeze-secs` (30), a small document is frozen once it has been
/// unused for the floor (5 s), a large one not until its size says so.
#[actix_rt::test]
async fn small_documents_freeze_within_seconds_large_ones_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // ~640 KB stored: 20 s before it may freeze.
    let mut large = YClient::synced(&server, "large").await;
    large.append(&"lorem ipsum ".repeat(54_000)).await;
    wait_for_text(&server, "large", &"lorem ipsum ".repeat(54_000)).await;
    let mut small = YClient::synced(&server, "small").await;
    small.append("a short note").await;
    wait_for_text(&server, "small", "a short note").await;
    let written = std::time::Instant::now();
    let deadline = written + Duration::from_secs(15);
    while metric(&server, "tandem_document_freezes_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the small document never froze"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        written.elapsed() >= Duration::from_millis(4_500),
        "frozen after {:?}, before the 5 s floor",
        written.elapsed()
    );
    // Only the small one: the large one has 20 s to wait.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(metric(&server, "tandem_document_freezes_total").await, 1.0);
    // Both still serve what they hold.
    assert_eq!(
        YClient::synced(&server, "small").await.text(),
        "a short note"
    );
}

#[actix_rt::test]
async fn sigterm_closes_sessions_with_going_away_and_keeps_the_data() {
    sigterm_keeps_every_room(&[]).await;
}

/// The same with the rooms on threads of their own instead of the HTTP threads (the
/// default): shutdown stops them before the threads go.
#[actix_rt::test]
async fn sigterm_keeps_every_room_on_threads_of_their_own() {
    sigterm_keeps_every_room(&["--room-threads", "2"]).await;
}

/// Several rooms (spread over the threads by their names) each get a text; SIGTERM closes
/// every session with "going away" and the restarted server has every text.
async fn sigterm_keeps_every_room(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), flags);
    let mut clients = Vec::new();
    for i in 0..6 {
        let room = format!("bye-{i}");
        let mut client = YClient::synced(&server, &room).await;
        client.append(&format!("kept {i}")).await;
        wait_for_text(&server, &room, &format!("kept {i}")).await;
        clients.push(client);
    }

    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    for client in &mut clients {
        assert_eq!(client.expect_close().await.0, 1001);
    }

    let server = server.restart();
    for i in 0..6 {
        let (_, state) = http_get(&server, &format!("/rooms/bye-{i}/state")).await;
        assert_eq!(text_of_state(&state), format!("kept {i}"));
    }
}

/// With two HTTP threads, the sessions of a small room move to the room's thread
/// (`tandem_sessions_moved_total` counts them) and those of a large room past the first
/// 16 stay where they were accepted; either way every session gets every update, and a
/// moved session reads what its client sent right behind the handshake.
#[actix_rt::test]
async fn sessions_run_on_their_rooms_thread_until_the_room_is_large() {
    const SPREAD_AT: usize = tandem::session::placement::SPREAD_AT as usize;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--http-threads", "2"]);
    let moved = || metric(&server, "tandem_sessions_moved_total");

    // A small room: actix deals connections out to the two workers in turn, so some of
    // these twelve arrive on the worker that is not the room's and move.
    let mut small = Vec::new();
    for _ in 0..12 {
        small.push(YClient::synced(&server, "small").await);
    }
    let moved_small = moved().await;
    assert!(
        (1.0..=12.0).contains(&moved_small),
        "{moved_small} of 12 sessions moved"
    );
    small[0].append("small room").await;
    for client in &mut small[1..] {
        client.next_update().await;
        assert_eq!(client.text(), "small room");
    }

    // A large room: only sessions that join while it holds fewer than SPREAD_AT move.
    let mut large = Vec::new();
    for _ in 0..SPREAD_AT * 2 + 8 {
        large.push(YClient::synced(&server, "large").await);
    }
    let moved_large = moved().await - moved_small;
    assert!(
        (1.0..=SPREAD_AT as f64).contains(&moved_large),
        "{moved_large} sessions of the large room moved"
    );
    large[SPREAD_AT + 3].append("large room").await;
    for (i, client) in large.iter_mut().enumerate() {
        if i != SPREAD_AT + 3 {
            client.next_update().await;
            assert_eq!(client.text(), "large room", "session {i}");
        }
    }

    // A client may send its first frame right behind its handshake request, before the
    // 101: the bytes read with the request move with the socket. Six raw clients (some
    // arrive on the other worker and move) each get the room's state for their SyncStep1.
    for client in small.into_iter().chain(large) {
        client.close().await;
    }
    let before = moved().await;
    let mut raws = Vec::new();
    for _ in 0..6 {
        let mut raw = common::raw::Raw::connect(&server);
        let mut request = common::raw::handshake("/yjs/small").into_bytes();
        let step1 = Message::SyncStep1(vec![0].into()).encode();
        request.extend_from_slice(&common::raw::client_frame(actix_http::ws::Message::Binary(
            step1,
        )));
        raw.send(&request);
        raws.push(raw);
    }
    for mut raw in raws {
        let result = tokio::task::spawn_blocking(move || {
            assert_eq!(raw.head().0, 101);
            loop {
                match raw.frame() {
                    Some(actix_http::ws::Frame::Binary(bytes)) => {
                        if let Ok(Message::SyncStep2(state)) = Message::decode(&bytes) {
                            return text_of_state(&state);
                        }
                    }
                    Some(_) => {}
                    None => panic!("the connection ended before the room's state came"),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(result, "small room");
    }
    assert!(moved().await > before, "none of six sessions moved");
}
