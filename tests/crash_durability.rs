//! Crash durability: whatever a client has seen must survive `kill -9`.
//!
//! A writer streams updates; an observer records every update the server sends it; the
//! server is killed with SIGKILL at a random moment, restarted on the same sled directory,
//! and the restored document must contain every update the observer saw. Repeated.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::pg;
use common::*;
use rand::Rng;
use tandem::protocol::ysync::Message;

const ROUNDS: usize = 10;

fn markers(text: &str) -> BTreeSet<String> {
    text.split(';')
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

#[actix_rt::test]
async fn updates_seen_by_a_client_survive_kill_9() {
    seen_updates_survive_kill_9(&[]).await;
}

/// The same on PostgreSQL (a schema of its own).
#[actix_rt::test]
async fn updates_seen_by_a_client_survive_kill_9_on_postgres() {
    let Some(url) = pg::url("updates_seen_by_a_client_survive_kill_9_on_postgres") else {
        return;
    };
    let schema = pg::Schema::new(&url, "crash");
    seen_updates_survive_kill_9(&schema.flags()).await;
}

async fn seen_updates_survive_kill_9(store: &[String]) {
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    // No rate limit: the writer streams as fast as it can.
    let mut flags = vec!["--max-messages-per-sec", "0"];
    flags.extend(store);
    let mut server = Server::start(dir.path(), &flags);
    let mut total_seen = 0;
    for round in 0..ROUNDS {
        let room = format!("crash-{round}");
        let mut observer = YClient::synced(&server, &room).await;
        let mut writer = YClient::synced(&server, &room).await;

        // The writer streams updates until the connection dies.
        let writer_task = actix_rt::spawn(async move {
            for i in 0..200_000u32 {
                let update = local_append(&writer.doc, &format!("r{round}w{i};"));
                if !writer.try_send(&Message::Update(update.into())).await {
                    break;
                }
                if i % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });

        // Kill at a random moment from another thread.
        let pid = server.pid();
        let delay = rand::thread_rng().gen_range(50..600);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
        });

        // The observer records everything the server sent it, until the socket dies.
        loop {
            match observer.recv_within(Duration::from_secs(15)).await {
                Some(Received::Message(Message::Update(u))) => observer.apply(&u),
                Some(Received::Message(_)) | Some(Received::Denied(_)) => {}
                Some(Received::Closed(..)) | None => break,
            }
        }
        killer.join().unwrap();
        let _ = writer_task.await;
        server.kill9();

        let seen = markers(&observer.text());
        server = server.restart();
        let (status, state) = http_get(&server, &format!("/rooms/{room}/state")).await;
        assert_eq!(status, 200);
        let restored = markers(&text_of_state(&state));
        let lost: Vec<_> = seen.difference(&restored).collect();
        assert!(
            lost.is_empty(),
            "round {round} (kill after {delay} ms): {} of {} seen updates lost, e.g. {:?}",
            lost.len(),
            seen.len(),
            lost.iter().take(5).collect::<Vec<_>>()
        );
        total_seen += seen.len();
        eprintln!(
            "round {round}: kill after {delay} ms, {} seen, {} restored",
            seen.len(),
            restored.len()
        );
    }
    assert!(
        total_seen > 0,
        "the observer never saw an update; the test proved nothing"
    );
}
