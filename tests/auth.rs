//! Tokens end to end: a server with a JWT key refuses every token beyond its rights, before
//! the WebSocket upgrade or the HTTP write, and a read-only session never changes a room.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tandem::protocol::ysync::Message;

const SECRET: &str = "an end-to-end test secret";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn unsigned(claims: serde_json::Value) -> String {
    use std::fmt::Write;
    let b64 = |bytes: &[u8]| {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, &b| acc << 8 | b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.write_char(A[(n >> (18 - 6 * i) & 63) as usize] as char)
                    .unwrap();
            }
        }
        out
    };
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

#[actix_rt::test]
async fn tokens_beyond_their_rights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--jwt-secret", SECRET]);
    let room = "team:notes";
    let writer =
        hs256(json!({"sub": "w", "exp": now() + 300, "rooms": ["team:*"], "perm": "write"}));
    let reader = hs256(json!({"sub": "r", "exp": now() + 300, "rooms": [room], "perm": "read"}));
    let forged = encode(
        &Header::default(),
        &json!({"exp": now() + 300, "rooms": ["*"], "perm": "write"}),
        &EncodingKey::from_secret(b"not the server's secret at all"),
    )
    .unwrap();
    let refused: Vec<(&str, Option<String>, u16)> = vec![
        ("no token", None, 401),
        (
            "expired",
            Some(hs256(
                json!({"exp": now() - 120, "rooms": ["*"], "perm": "write"}),
            )),
            401,
        ),
        (
            "not yet valid",
            Some(hs256(
                json!({"exp": now() + 600, "nbf": now() + 300, "rooms": ["*"], "perm": "write"}),
            )),
            401,
        ),
        ("bad signature", Some(forged), 401),
        (
            "alg none",
            Some(unsigned(
                json!({"exp": now() + 300, "rooms": ["*"], "perm": "write"}),
            )),
            401,
        ),
        ("garbage", Some("not.a.token".into()), 401),
        (
            "wrong room",
            Some(hs256(
                json!({"exp": now() + 300, "rooms": ["other"], "perm": "write"}),
            )),
            403,
        ),
    ];
    let mut accepted_beyond_rights = 0;
    let update = local_append(&yrs::Doc::new(), "must not land");
    for (name, token, status) in &refused {
        // WebSocket upgrade, with the token as a header and as a query parameter.
        let by_header = YClient::try_connect_url(&server.ws_url(room), token.as_deref()).await;
        let query_url = match token {
            Some(t) => format!("{}?token={t}", server.ws_url(room)),
            None => server.ws_url(room),
        };
        let by_query = YClient::try_connect_url(&query_url, None).await;
        for (how, result) in [("header", by_header), ("query", by_query)] {
            match result {
                Ok(_) => {
                    accepted_beyond_rights += 1;
                    eprintln!("{name} ({how}): upgrade accepted");
                }
                Err(e) => assert_eq!(e, format!("status {status}"), "{name} ({how})"),
            }
        }
        // HTTP read and write.
        let (got, body) =
            http_get_as(&server, &format!("/rooms/{room}/state"), token.as_deref()).await;
        assert_eq!(
            got,
            *status,
            "{name}: GET {}",
            String::from_utf8_lossy(&body)
        );
        let (got, _) = http_post_as(
            &server,
            &format!("/rooms/{room}/update"),
            update.clone(),
            token.as_deref(),
        )
        .await;
        if got < 300 {
            accepted_beyond_rights += 1;
        }
        assert_eq!(got, *status, "{name}: POST");
    }

    // Read-only over HTTP: may read, may not write.
    let path = format!("/rooms/{room}/update");
    assert_eq!(
        http_get_as(&server, &format!("/rooms/{room}/state"), Some(&reader))
            .await
            .0,
        200
    );
    let (got, body) = http_post_as(&server, &path, update.clone(), Some(&reader)).await;
    assert_eq!(got, 403, "{}", String::from_utf8_lossy(&body));
    if got < 300 {
        accepted_beyond_rights += 1;
    }

    // Read-only over WebSocket: syncs, sees others' edits, its own are refused.
    let mut watcher = YClient::try_connect_url(&server.ws_url(room), Some(&writer))
        .await
        .unwrap();
    watcher.sync().await;
    let mut read_only =
        YClient::try_connect_url(&format!("{}?token={reader}", server.ws_url(room)), None)
            .await
            .unwrap();
    read_only.sync().await;
    read_only
        .send(&Message::Update(update.clone().into()))
        .await;
    let denied = loop {
        match read_only.recv().await {
            Received::Denied(reason) => break reason,
            Received::Closed(code, reason) => panic!("read-only session closed: {code} {reason}"),
            Received::Message(_) => {}
        }
    };
    assert!(denied.contains("read-only"), "{denied}");
    let leaked = loop {
        match watcher.recv_within(Duration::from_millis(500)).await {
            None => break false,
            Some(Received::Message(Message::Update(_))) => break true,
            Some(_) => {}
        }
    };
    if leaked {
        accepted_beyond_rights += 1;
    }

    // The writer's edit reaches the reader; the room holds only that.
    let mut writer_client = YClient::try_connect_url(&server.ws_url(room), Some(&writer))
        .await
        .unwrap();
    writer_client.sync().await;
    writer_client.append("written").await;
    read_only.next_update().await;
    assert_eq!(read_only.text(), "written");
    let (_, state) = http_get_as(&server, &format!("/rooms/{room}/state"), Some(&writer)).await;
    let text = text_of_state(&state);
    if text.contains("must not land") {
        accepted_beyond_rights += 1;
    }
    assert_eq!(text, "written");
    assert_eq!(accepted_beyond_rights, 0);
}

#[actix_rt::test]
async fn public_keys_verify_rs256_and_es256() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (alg, public, private) in [
        (Algorithm::RS256, "rs256-public.pem", "rs256-private.pem"),
        (
            Algorithm::ES256,
            "es256-public.pem",
            "es256-private.pk8.pem",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let key = fixtures.join(public);
        let server = Server::start(dir.path(), &["--jwt-public-key", key.to_str().unwrap()]);
        let pem = std::fs::read(fixtures.join(private)).unwrap();
        let signing = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let token = encode(
            &Header::new(alg),
            &json!({"exp": now() + 300, "rooms": ["k"], "perm": "write"}),
            &signing,
        )
        .unwrap();
        let (status, body) = http_get_as(&server, "/rooms/k/state", Some(&token)).await;
        assert_eq!(status, 200, "{alg:?}: {}", String::from_utf8_lossy(&body));
        // An HS256 token signed with the public key's bytes (algorithm confusion) fails.
        let confused = encode(
            &Header::default(),
            &json!({"exp": now() + 300, "rooms": ["k"], "perm": "write"}),
            &EncodingKey::from_secret(&std::fs::read(&key).unwrap()),
        )
        .unwrap();
        assert_eq!(
            http_get_as(&server, "/rooms/k/state", Some(&confused))
                .await
                .0,
            401,
            "{alg:?}"
        );
    }
}

#[actix_rt::test]
async fn a_y_websocket_session_ends_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--jwt-secret", SECRET, "--jwt-leeway-secs", "0"],
    );
    let token = hs256(json!({"sub": "w", "exp": now() + 3, "rooms": ["notes"], "perm": "write"}));
    let url = server.ws_url("notes");
    let mut client = YClient::try_connect_url(&url, Some(&token)).await.unwrap();
    client.sync().await;
    client.append("before expiry").await;
    let started = std::time::Instant::now();
    let (code, reason) = client.expect_close().await;
    let took = started.elapsed();
    assert_eq!(code, 4010, "{reason}");
    assert!(reason.contains("token expired"), "{reason}");
    assert!(
        took < Duration::from_secs(5),
        "closed {took:?} after the sync"
    );
    assert_eq!(metric(&server, "tandem_tokens_expired_total").await, 1.0);
    // What it wrote before expiry stays; a fresh token opens the room again.
    let fresh = hs256(json!({"sub": "w", "exp": now() + 60, "rooms": ["notes"], "perm": "read"}));
    let mut again = YClient::try_connect_url(&url, Some(&fresh)).await.unwrap();
    again.sync().await;
    assert_eq!(again.text(), "before expiry");
}
