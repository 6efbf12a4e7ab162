//! The WebSocket upgrade and the close handshake on the wire, driven over a raw TCP socket
//! so that every byte (and every end of the connection) is the server's own: frames sent
//! in the same packet as the handshake, upgrade requests to endpoints that are no
//! WebSockets, and a close the client never answers.

mod common;

use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, CloseReason, Frame, Message as WsMessage};
use bytes::{Bytes, BytesMut};
use common::raw::{client_frame, handshake, Raw};
use common::*;
use tandem::protocol::ysync::Message;

#[test]
fn a_frame_sent_with_the_handshake_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut raw = Raw::connect(&server);
    // The handshake and the first y-websocket message leave in one write, as a client
    // that does not wait for the 101 would send them.
    let step1 = Message::SyncStep1(Bytes::from_static(&[0])).encode();
    let mut packet = BytesMut::from(handshake("/yjs/pipelined").as_bytes());
    packet.extend_from_slice(&client_frame(WsMessage::Binary(step1)));
    raw.send(&packet);
    let (status, head) = raw.head();
    assert_eq!(status, 101, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no SyncStep2 answer");
        match raw.frame().expect("the session ended early") {
            Frame::Binary(bytes) => {
                if let Ok(Message::SyncStep2(_)) = Message::decode(&bytes) {
                    break;
                }
            }
            Frame::Ping(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[test]
fn upgrades_to_endpoints_that_are_no_websockets_get_an_http_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for (path, expected) in [
        // The chat's SSE endpoint streams forever: it must not be taken for an upgrade.
        ("/rooms/sse/events", 400),
        ("/no/such/endpoint", 404),
        ("/yjs/bad%00name", 400),
    ] {
        let mut raw = Raw::connect(&server);
        raw.send(handshake(path).as_bytes());
        let (status, head) = raw.head();
        assert_eq!(status, expected, "{path}: {head}");
        // The answer is complete and the connection ends (no hang, no socket).
        let body = raw.rest();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        assert_eq!(body.len(), length, "{path}: body {body:?}");
    }
    // A handshake without its key is no WebSocket request: 400 with the reason.
    let mut raw = Raw::connect(&server);
    raw.send(
        b"GET /yjs/nokey HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    );
    let (status, head) = raw.head();
    assert_eq!(status, 400, "{head}");
    assert!(!raw.rest().is_empty(), "the refusal carries a reason");
    // The server still upgrades valid requests afterwards.
    let mut raw = Raw::connect(&server);
    raw.send(handshake("/yjs/after").as_bytes());
    assert_eq!(raw.head().0, 101);
}

#[test]
fn the_close_handshake_is_answered_and_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    // The client closes: the server echoes the code and ends the TCP connection.
    let mut raw = Raw::connect(&server);
    raw.send(handshake("/yjs/closing").as_bytes());
    assert_eq!(raw.head().0, 101);
    raw.send(&client_frame(WsMessage::Close(Some(CloseReason {
        code: CloseCode::Normal,
        description: Some("bye".into()),
    }))));
    let mut echoed = None;
    while let Some(frame) = raw.frame() {
        if let Frame::Close(reason) = frame {
            echoed = reason.map(|r| r.code);
        }
    }
    assert_eq!(echoed, Some(CloseCode::Normal), "the close was not echoed");

    // The server closes (a text frame on the binary protocol) and the client never
    // answers: the server drops the connection by itself after its close timeout.
    let mut raw = Raw::connect(&server);
    raw.send(handshake("/yjs/closing").as_bytes());
    assert_eq!(raw.head().0, 101);
    raw.send(&client_frame(WsMessage::Text("not y-websocket".into())));
    let started = Instant::now();
    let mut code = None;
    while let Some(frame) = raw.frame() {
        if let Frame::Close(reason) = frame {
            code = reason.map(|r| u16::from(r.code));
        }
    }
    let waited = started.elapsed();
    assert_eq!(code, Some(1003), "closed without the unsupported-data code");
    assert!(
        waited < Duration::from_secs(8),
        "the unanswered close held the connection for {waited:?}"
    );
}

#[test]
fn shutdown_says_going_away_to_every_session_even_one_not_in_a_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut yjs = Raw::connect(&server);
    yjs.send(handshake("/yjs/leaving").as_bytes());
    assert_eq!(yjs.head().0, 101);
    // A chat session that has not sent `join` is in no room yet.
    let mut chat = Raw::connect(&server);
    chat.send(handshake("/rooms/leaving/ws").as_bytes());
    assert_eq!(chat.head().0, 101);
    std::thread::sleep(Duration::from_millis(200));

    server.sigterm();
    for (name, raw) in [("yjs", &mut yjs), ("chat", &mut chat)] {
        let mut code = None;
        while let Some(frame) = raw.frame() {
            if let Frame::Close(reason) = frame {
                code = reason.map(|r| u16::from(r.code));
                break;
            }
        }
        assert_eq!(code, Some(1001), "{name} session was not told 'going away'");
        raw.send(&client_frame(WsMessage::Close(None)));
    }
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_client_that_floods_pings_without_reading_is_held_back() {
    let dir = tempfile::tempdir().unwrap();
    // No message rate: what holds the flood back here is the write queue alone (the rate
    // would slow it too; tests/hardening.rs covers that).
    let server = Server::start(dir.path(), &["--max-messages-per-sec", "0"]);
    let mut raw = Raw::connect(&server);
    raw.send(handshake("/yjs/pings").as_bytes());
    assert_eq!(raw.head().0, 101);
    let rss_before = rss_kib(server.pid());

    // Every ping asks for a pong of the same size. A client that never reads them must
    // not make the server hold them: the server stops reading its frames, so its writes
    // stall long before 64 MB.
    let ping = client_frame(WsMessage::Ping(Bytes::from(vec![7u8; 125])));
    let mut batch = Vec::with_capacity(ping.len() * 512);
    for _ in 0..512 {
        batch.extend_from_slice(&ping);
    }
    raw.stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let limit = 64 * 1024 * 1024;
    let mut sent = 0usize;
    let started = Instant::now();
    while sent < limit && started.elapsed() < Duration::from_secs(60) {
        // Go on where a short write stopped, so that the frames stay whole.
        let at = sent % batch.len();
        match raw.stream.write(&batch[at..]) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("writing pings: {e}"),
        }
    }
    let growth_mib = rss_kib(server.pid()).saturating_sub(rss_before) / 1024;
    eprintln!(
        "sent {} MiB of pings before the server held back; RSS grew {growth_mib} MiB",
        sent >> 20
    );
    assert!(
        sent < limit,
        "the server read 64 MB of pings it could not answer"
    );
    assert!(growth_mib < 24, "server RSS grew {growth_mib} MiB");
}
