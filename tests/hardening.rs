//! Limits that hold from the first byte, against the real binary: an oversized frame is
//! refused at its head and never buffered, protocol errors close with a frame, a client
//! that stops reading is cut on time, a bulk writer is slowed (never cut) by the message
//! rate, and every HTTP error is JSON with a reason.

mod common;

use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use actix_http::ws::{Frame, Item, Message as WsMessage};
use bytes::Bytes;
use common::raw::{client_frame, handshake, Raw};
use common::*;
use tandem::protocol::ysync::Message;

#[path = "../examples/support/trace.rs"]
#[allow(dead_code)] // shared with the load generator, which uses all of it
mod trace;

/// A masked client frame head: `first` is FIN/RSV/opcode, `len` the declared payload.
fn head(first: u8, len: u64) -> Vec<u8> {
    let mut out = vec![first];
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    out
}

/// Reads frames until a close arrives (bounded); returns its code and reason.
fn close_of(raw: &mut Raw) -> Option<(u16, String)> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match raw.frame()? {
            Frame::Close(reason) => {
                let reason = reason?;
                return Some((
                    u16::from(reason.code),
                    reason.description.unwrap_or_default(),
                ));
            }
            _ => continue,
        }
    }
    None
}

/// Writes up to `total` bytes of zeros from another thread, stopping at the first error
/// (the server dropped the connection) or after 20 s; returns what was written.
fn pump(raw: &Raw, total: usize) -> thread::JoinHandle<usize> {
    let mut stream = raw.stream.try_clone().expect("clone the socket");
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    thread::spawn(move || {
        let chunk = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let mut sent = 0;
        while sent < total && started.elapsed() < Duration::from_secs(20) {
            match stream.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        sent
    })
}

#[test]
fn an_oversized_frame_is_refused_at_its_head_and_never_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-message-bytes", "65536"]);
    // Warm up: the first sessions allocate the server's per-thread structures.
    for path in ["/yjs/warm", "/rooms/warm/ws"] {
        let mut raw = Raw::connect(&server);
        raw.send(handshake(path).as_bytes());
        assert_eq!(raw.head().0, 101);
    }
    let cases = [
        ("/yjs/big", 0x82, 512u64 << 20),
        ("/rooms/big/ws", 0x81, 512 << 20),
        ("/yjs/huge", 0x82, 1 << 62),
    ];
    for (path, first, declared) in cases {
        let mut raw = Raw::connect(&server);
        raw.send(handshake(path).as_bytes());
        assert_eq!(raw.head().0, 101, "{path}");
        let rss_before = rss_kib(server.pid());
        raw.send(&head(first, declared));
        let sent_at = Instant::now();
        let payload = pump(&raw, 64 << 20);
        let (code, reason) = close_of(&mut raw).expect("a close frame");
        let took = sent_at.elapsed();
        let sent = payload.join().unwrap();
        let growth_kib = rss_kib(server.pid()).saturating_sub(rss_before);
        eprintln!(
            "{path}: {declared} bytes declared: closed {code} ({reason}) after {took:?}; \
             {} MiB of payload sent; server RSS grew {growth_kib} KiB",
            sent >> 20
        );
        assert_eq!(code, 1009, "{path}: {reason}");
        assert!(
            took < Duration::from_secs(1),
            "{path}: refused after {took:?}"
        );
        assert!(
            growth_kib < 1024,
            "{path}: server RSS grew {growth_kib} KiB"
        );
    }
}

#[test]
fn a_fragmented_message_is_refused_at_the_head_that_takes_it_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-message-bytes", "65536"]);
    let mut raw = Raw::connect(&server);
    raw.send(handshake("/yjs/fragments").as_bytes());
    assert_eq!(raw.head().0, 101);
    let first = Bytes::from(vec![0u8; 40_000]);
    raw.send(&client_frame(WsMessage::Continuation(Item::FirstBinary(
        first,
    ))));
    // 40,000 + 40,000 > 65,536: the continuation's head alone is refused, its payload
    // never sent.
    raw.send(&head(0x80, 40_000));
    let started = Instant::now();
    let (code, reason) = close_of(&mut raw).expect("a close frame");
    assert_eq!(code, 1009, "{reason}");
    assert!(
        reason.contains("80000"),
        "the reason names the size: {reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn protocol_errors_close_with_1002_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "RSV1 without an extension",
            head(0x80 | 0x40 | 0x2, 0),
            "reserved",
        ),
        ("unmasked frame", vec![0x82, 0x00], "masked"),
        ("unknown opcode", head(0x80 | 0x3, 0), "opcode"),
    ];
    for (name, frame, expected) in cases {
        let mut raw = Raw::connect(&server);
        raw.send(handshake("/yjs/protocol").as_bytes());
        assert_eq!(raw.head().0, 101);
        raw.send(&frame);
        let (code, reason) = close_of(&mut raw).unwrap_or_else(|| panic!("{name}: no close"));
        assert_eq!(code, 1002, "{name}: {reason}");
        assert!(reason.contains(expected), "{name}: {reason}");
    }
}

#[actix_rt::test]
async fn a_client_that_stops_reading_during_a_burst_is_cut_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let heartbeat = Duration::from_secs(5);
    // The default outbox limit (8 MiB): 20 MB unread is over it but under the hard bound
    // (4x), so only the grace timer can cut the client once the burst is over.
    let server = Server::start(dir.path(), &["--heartbeat-interval-secs", "5"]);
    let room = "burst";
    let mut slow = YClient::synced(&server, room).await;
    let mut writer = YClient::synced(&server, room).await;
    // 20 MB in 64 KiB edits, as fast as the socket takes them (within the default rate's
    // burst), then nothing: no later traffic gives the server a reason to look again.
    let chunk = "y".repeat(64 * 1024);
    let started = Instant::now();
    for _ in 0..320 {
        writer.append(&chunk).await;
    }
    let burst = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(40);
    while metric(&server, "tandem_slow_consumers_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the silent client was never cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut = started.elapsed();
    eprintln!("burst of 20 MB sent in {burst:?}; the silent client was cut at {cut:?}");
    // The limit was passed during the burst: the cut comes within the grace (2 s) and one
    // heartbeat of its end, not at the heartbeat timeout (30 s).
    assert!(
        cut <= burst + Duration::from_secs(2) + heartbeat,
        "cut at {cut:?}, burst over at {burst:?}"
    );
    // What it had not begun to receive was dropped, so when it reads it finds the close
    // right after what its socket already held.
    let (code, reason) = slow.expect_close().await;
    assert_eq!(code, 4008, "{reason}");
    writer.append("still writing").await;
}

#[actix_rt::test]
async fn the_editing_trace_replayed_at_full_speed_completes_at_default_settings() {
    let file = std::env::var_os("TANDEM_TRACE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/automerge-paper.json.gz"),
        PathBuf::from,
    );
    // 100 edits per update, as a client that batches its edits sends them.
    let (updates, end) = trace::load_grouped(&file, 0, 100).expect("load the trace");
    assert_eq!(updates.len(), 2598);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let room = "trace";
    let mut observers = Vec::new();
    for _ in 0..2 {
        let mut observer = YClient::synced(&server, room).await;
        let end = end.clone();
        observers.push(actix_rt::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while observer.text() != end {
                assert!(
                    Instant::now() < deadline,
                    "the observer never got the whole trace"
                );
                match observer.recv().await {
                    Received::Message(Message::Update(u) | Message::SyncStep2(u)) => {
                        observer.apply(&u)
                    }
                    Received::Closed(code, reason) => panic!("observer closed: {code} {reason}"),
                    _ => {}
                }
            }
        }));
    }
    let mut writer = YClient::synced(&server, room).await;
    let started = Instant::now();
    for update in &updates {
        writer.send(&Message::Update(update.clone().into())).await;
    }
    let sent = started.elapsed();
    for observer in observers {
        observer.await.expect("observer task");
    }
    let done = started.elapsed();
    let throttled = metric(&server, "tandem_throttled_total").await;
    eprintln!(
        "{} updates written in {sent:?}; both observers had endContent at {done:?}; \
         the writer was throttled {throttled} times",
        updates.len()
    );
    // Over the rate's burst, so the writer was slowed (not closed): it is still in the room.
    assert!(throttled >= 1.0, "the writer was never throttled");
    // It still gets answers: its SyncStep1 (of an empty document) brings the whole text.
    let empty = yrs::updates::encoder::Encode::encode_v1(&yrs::StateVector::default());
    writer.send(&Message::SyncStep1(empty.into())).await;
    loop {
        match writer.recv().await {
            Received::Message(Message::SyncStep2(state)) => {
                assert_eq!(text_of_state(&state), end);
                break;
            }
            Received::Closed(code, reason) => panic!("the writer was closed: {code} {reason}"),
            _ => {}
        }
    }
}

#[actix_rt::test]
async fn a_flood_is_slowed_not_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-messages-per-sec", "20"]);
    let mut flooder = YClient::synced(&server, "flood").await;
    // 200 messages at 20/s with a burst of 40: the server reads the rest over ~8 s.
    let started = Instant::now();
    for _ in 0..200 {
        flooder.send(&Message::QueryAwareness).await;
    }
    flooder.append("after the flood").await;
    wait_for_text(&server, "flood", "after the flood").await;
    let took = started.elapsed();
    eprintln!("200 messages at 20/s were taken in {took:?}");
    assert!(
        took >= Duration::from_secs(6),
        "the rate was not applied: {took:?}"
    );
    assert!(metric(&server, "tandem_throttled_total").await >= 1.0);
}

#[actix_rt::test]
async fn every_http_error_is_json_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-message-bytes", "65536"]);
    let json_error = |status: u16, body: &Bytes, expected_status: u16, what: &str| {
        assert_eq!(status, expected_status, "{what}: {body:?}");
        let value: serde_json::Value =
            serde_json::from_slice(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body:?}"));
        let error = value["error"].as_str().unwrap_or_default().to_owned();
        assert!(!error.is_empty(), "{what}: no reason: {value}");
        error
    };
    let big = vec![b'1'; 100_000];
    for path in ["/rooms/r/update", "/rooms/r/messages"] {
        let (status, body) = http_post(&server, path, big.clone()).await;
        let error = json_error(status, &body, 413, path);
        assert!(error.contains("65536"), "{path}: {error}");
    }
    for path in [
        "/rooms//state",
        "/rooms//messages",
        "/rooms//events",
        "/yjs/",
    ] {
        let (status, body) = http_get(&server, path).await;
        let error = json_error(status, &body, 400, path);
        assert!(error.contains("empty"), "{path}: {error}");
    }
    for path in ["/rooms//update", "/rooms//messages"] {
        let (status, body) = http_post(&server, path, b"{}".to_vec()).await;
        json_error(status, &body, 400, path);
    }
    let (status, body) = http_get(&server, "/no/such/thing").await;
    json_error(status, &body, 404, "unknown path");
    // Upgrades to an empty name are refused before any upgrade, with the same JSON.
    for path in ["/yjs/", "/rooms//ws"] {
        let mut raw = Raw::connect(&server);
        raw.send(handshake(path).as_bytes());
        let (status, head) = raw.head();
        assert_eq!(status, 400, "{path}: {head}");
        let rest = raw.rest();
        let text = String::from_utf8_lossy(&rest);
        assert!(
            text.contains("\"error\"") && text.contains("empty"),
            "{path}: {text}"
        );
    }
}

#[actix_rt::test]
async fn a_throttled_writer_is_not_mistaken_for_a_slow_reader() {
    // While a writer is throttled its pongs wait behind its own unread frames: 300 edits
    // at 50/s keep it throttled for ~5 s, longer than the 3 s heartbeat timeout.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--max-messages-per-sec",
            "50",
            "--heartbeat-interval-secs",
            "1",
            "--heartbeat-timeout-secs",
            "3",
        ],
    );
    let room = "throttled";
    let mut writer = YClient::synced(&server, room).await;
    let mut other = YClient::synced(&server, room).await;
    for _ in 0..300 {
        writer.append("x").await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Another member's edits reach the writer, so the server waits for the writer's
        // pongs to know it reads them; reading answers the pings, as a live client does.
        other.append("y").await;
        while let Some(received) = other.recv_within(Duration::from_millis(10)).await {
            if let Received::Closed(code, reason) = received {
                panic!("the other member was closed: {code} {reason}");
            }
        }
        if let Some(Received::Closed(code, reason)) =
            writer.recv_within(Duration::from_millis(200)).await
        {
            panic!("the throttled writer was closed: {code} {reason}");
        }
        let (status, state) = http_get(&server, &format!("/rooms/{room}/state")).await;
        let text = text_of_state(&state);
        if status == 200 && text.matches('x').count() == 300 {
            break;
        }
        assert!(Instant::now() < deadline, "the edits never all arrived");
    }
    assert_eq!(metric(&server, "tandem_slow_consumers_total").await, 0.0);
}
