//! A real cluster on loopback: three `tandem serve` processes gossiping over UDP and
//! sharing one PostgreSQL schema. Agreement on owners, HTTP routing by 307, and failover of
//! a killed owner's rooms. Skipped, saying so, where `TANDEM_TEST_POSTGRES_URL` is unset.
//!
//! Also: WebSocket relaying, a fourth node joining, an owner paused with SIGSTOP and woken,
//! and failover under edits and publishes over five trials. Not yet (issue 14): the
//! partition scenario in a network namespace.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A UDP port free at the moment (the gossip address must be known before start: each
/// node advertises the one it listens on).
fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Cluster {
    nodes: Vec<Option<Server>>,
    /// Each node's flags (kept to restart it as a new incarnation on the same port).
    flags: Vec<Vec<String>>,
    dirs: Vec<tempfile::TempDir>,
    seeds: String,
    gossip: Vec<u16>,
    schema: pg::Schema,
    /// Flags every node gets besides the cluster's.
    extra: Vec<String>,
}

impl Cluster {
    /// `n` nodes running, gossip ports reserved for `capacity` (the seeds name them all).
    fn start(url: &str, n: usize, capacity: usize) -> Cluster {
        Self::start_with(url, n, capacity, &[])
    }

    fn start_with(url: &str, n: usize, capacity: usize, extra: &[&str]) -> Cluster {
        let schema = pg::Schema::new(url, "cluster");
        let gossip: Vec<u16> = (0..capacity).map(|_| udp_port()).collect();
        let seeds = gossip
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            flags: Vec::new(),
            dirs: Vec::new(),
            seeds,
            gossip,
            schema,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..n {
            cluster.add();
        }
        cluster
    }

    /// Starts the next node.
    fn add(&mut self) -> usize {
        let i = self.nodes.len();
        let dir = tempfile::tempdir().unwrap();
        let mut flags = self.schema.flags();
        flags.extend([
            "--node-id".into(),
            format!("node-{i}"),
            "--gossip-listen".into(),
            format!("127.0.0.1:{}", self.gossip[i]),
            "--seeds".into(),
            self.seeds.clone(),
            "--cluster-id".into(),
            self.schema.name.clone(),
            "--max-messages-per-sec".into(),
            "0".into(),
        ]);
        flags.extend(self.extra.iter().cloned());
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.nodes.push(Some(Server::start(dir.path(), &args)));
        self.flags.push(flags);
        self.dirs.push(dir);
        i
    }

    /// Restarts a killed node (a new incarnation) on its port.
    fn restart(&mut self, i: usize, port: u16) {
        let args: Vec<&str> = self.flags[i].iter().map(String::as_str).collect();
        self.nodes[i] = Some(Server::start_on(port, self.dirs[i].path(), &args));
    }

    fn live(&self) -> impl Iterator<Item = &Server> {
        self.nodes.iter().flatten()
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("a live node")
    }

    /// Waits until every live node sees exactly the live nodes.
    async fn converged(&self) {
        let want = self.live().count();
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in self.live() {
            loop {
                let (_, body) = http_get(node, "/cluster").await;
                let view: Value = serde_json::from_slice(&body).unwrap();
                let alive = view["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
                if alive == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node never saw {want} members: {view}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn index_of(node_id: &str) -> usize {
    node_id.strip_prefix("node-").unwrap().parse().unwrap()
}

async fn owner_seen_by(node: &Server, room: &str) -> (String, String) {
    let (status, body) = http_get(node, &format!("/route/{room}")).await;
    assert_eq!(status, 200);
    let route: Value = serde_json::from_slice(&body).unwrap();
    (
        route["owner"]["id"].as_str().unwrap().to_owned(),
        route["owner"]["url"].as_str().unwrap().to_owned(),
    )
}

/// Publishes through `node` following redirects; the ack's seq.
async fn publish_via(node: &Server, room: &str, id: &str) -> Result<u64, String> {
    let mut response = awc::Client::new()
        .post(node.url(&format!("/rooms/{room}/messages")))
        .insert_header(("Idempotency-Key", id))
        .timeout(Duration::from_secs(20))
        .send_json(&json!({ "id": id }))
        .await
        .map_err(|e| e.to_string())?;
    let body = response.body().await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!(
            "{}: {}",
            response.status(),
            String::from_utf8_lossy(&body)
        ));
    }
    let ack: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    ack["seq"]
        .as_u64()
        .ok_or_else(|| format!("no seq in {ack}"))
}

#[actix_rt::test]
async fn nodes_agree_on_owners_route_by_redirect_and_take_over_a_dead_owners_rooms() {
    let Some(url) = pg::url("cluster") else {
        return;
    };
    let mut cluster = Cluster::start(&url, 3, 3);
    cluster.converged().await;

    // Agreement: every node names the same owner for 10,000 rooms.
    let rooms: Vec<String> = (0..10_000).map(|i| format!("agree-{i}")).collect();
    let mut owners: Vec<HashMap<String, String>> = Vec::new();
    for node in cluster.live() {
        let answers: Vec<(String, String)> = futures_util::stream::iter(rooms.iter())
            .map(|room| async move { (room.clone(), owner_seen_by(node, room).await.0) })
            .buffer_unordered(32)
            .collect()
            .await;
        owners.push(answers.into_iter().collect());
    }
    assert!(
        owners.iter().all(|o| *o == owners[0]),
        "nodes disagree on owners"
    );
    let mut load: HashMap<&str, usize> = HashMap::new();
    for owner in owners[0].values() {
        *load.entry(owner).or_default() += 1;
    }
    assert_eq!(load.len(), 3, "every node owns rooms: {load:?}");

    // Routing: a non-owner answers 307 to the owner, with the ring version.
    let room = "routed";
    let (owner_id, owner_url) = owner_seen_by(cluster.node(0), room).await;
    let owner_index: usize = owner_id.strip_prefix("node-").unwrap().parse().unwrap();
    let other = (owner_index + 1) % 3;
    let response = awc::Client::builder()
        .disable_redirects()
        .finish()
        .get(cluster.node(other).url(&format!("/rooms/{room}/messages")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 307);
    let location = response
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(location.starts_with(&owner_url), "{location}");
    assert!(response.headers().contains_key("tandem-ring-version"));

    // Clients that follow redirects publish through any node; the owner sequences them.
    let mut acked = HashMap::new();
    for n in 0..30 {
        let via = cluster.node(n % 3);
        let id = format!("m{n}");
        acked.insert(id.clone(), publish_via(via, room, &id).await.unwrap());
    }
    let mut seqs: Vec<u64> = acked.values().copied().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());

    // Every node shows the owner's active rooms (gossiped every 2 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = http_get(cluster.node(other), "/cluster").await;
        let view: Value = serde_json::from_slice(&body).unwrap();
        let owned = view["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == owner_id.as_str())
            .and_then(|m| m["rooms_owned"].as_u64());
        if owned.is_some_and(|n| n >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the owner's rooms never showed: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SSE through a non-owner (EventSource follows the 307): resumes with Last-Event-ID,
    // then gets live messages.
    let mut sse = common::chat::Sse::open(
        cluster.node(other),
        &format!("/rooms/{room}/events"),
        Some(25),
    )
    .await;
    for expected in 26..=30 {
        assert_eq!(sse.next_of("message").await.id, Some(expected));
    }
    publish_via(cluster.node(owner_index), room, "live")
        .await
        .unwrap();
    assert_eq!(sse.next_of("message").await.id, Some(31));
    drop(sse);

    // WebSockets: y-websocket clients on all three nodes (two of them relayed to the
    // owner) edit one room and converge; a chat member on a non-owner publishes and one on
    // the owner receives it.
    let doc_room = "relayed";
    let mut clients = Vec::new();
    for node in cluster.live() {
        clients.push(YClient::synced(node, doc_room).await);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.append(&format!("c{i};")).await;
    }
    let deadline = Instant::now() + WAIT;
    for client in &mut clients {
        while ["c0;", "c1;", "c2;"]
            .iter()
            .any(|m| !client.text().contains(m))
        {
            assert!(
                Instant::now() < deadline,
                "clients never converged: {}",
                client.text()
            );
            match client.recv_within(Duration::from_millis(200)).await {
                Some(Received::Message(tandem::protocol::ysync::Message::Update(u))) => {
                    client.apply(&u)
                }
                Some(Received::Closed(code, reason)) => panic!("closed: {code} {reason}"),
                _ => {}
            }
        }
    }
    let texts: Vec<String> = clients.iter().map(YClient::text).collect();
    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
    let proxied: f64 = {
        let mut sum = 0.0;
        for node in cluster.live() {
            sum += metric(node, "tandem_proxied_sessions").await;
        }
        sum
    };
    assert_eq!(proxied, 2.0, "two of the three sessions are relayed");
    let (chat_owner_id, _) = owner_seen_by(cluster.node(0), "chat-relayed").await;
    let chat_owner: usize = chat_owner_id
        .strip_prefix("node-")
        .unwrap()
        .parse()
        .unwrap();
    let (mut listener, _) =
        common::chat::Chat::join(cluster.node(chat_owner), "chat-relayed", json!({})).await;
    let (mut speaker, _) = common::chat::Chat::join(
        cluster.node((chat_owner + 1) % 3),
        "chat-relayed",
        json!({}),
    )
    .await;
    let ack = speaker.publish(Some("hello"), json!({"text": "hi"})).await;
    let message = listener.next_of("message").await;
    assert_eq!(message["seq"], ack["seq"]);
    drop(clients);

    // Failover: kill -9 the owner; another node serves the room within 10 s, with every
    // acknowledged message.
    cluster.nodes[owner_index].as_mut().unwrap().kill9();
    cluster.nodes[owner_index] = None;
    let killed = Instant::now();
    let survivor = cluster.node(other);
    let deadline = killed + Duration::from_secs(20);
    let seq = loop {
        match publish_via(survivor, room, "after-failover").await {
            Ok(seq) => break seq,
            Err(e) => {
                assert!(Instant::now() < deadline, "never served again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let failover = killed.elapsed();
    assert_eq!(
        seq, 32,
        "the stream continues after every acknowledged message"
    );
    assert_holds(survivor, room, &acked, "the failover").await;
    eprintln!("failover: served again {failover:?} after kill -9");
    let (_, body) = http_get(survivor, "/cluster").await;
    let view: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        view["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == owner_id.as_str() && m["state"] == "dead"),
        "the killed node is not reported dead: {view}"
    );
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    cluster.converged().await;
}

/// Edits a room through `node` until the connection ends; what an observer on the same
/// node saw is what the cluster acknowledged.
async fn observe_until_closed(observer: &mut YClient) -> Option<(u16, String)> {
    loop {
        match observer.recv_within(Duration::from_secs(15)).await {
            Some(Received::Message(tandem::protocol::ysync::Message::Update(u))) => {
                observer.apply(&u)
            }
            Some(Received::Closed(code, reason)) => return Some((code, reason)),
            Some(_) => {}
            None => return None,
        }
    }
}

/// Asserts the room's stream (read through `node`) holds every acknowledged id at its seq.
async fn assert_holds(node: &Server, room: &str, acked: &HashMap<String, u64>, when: &str) {
    let (status, body) = http_get(node, &format!("/rooms/{room}/messages?limit=1000")).await;
    assert_eq!(status, 200, "{when}");
    let page: Value = serde_json::from_slice(&body).unwrap();
    let stored: HashMap<&str, u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["seq"].as_u64().unwrap()))
        .collect();
    for (id, seq) in acked {
        assert_eq!(
            stored.get(id.as_str()),
            Some(seq),
            "{when}: acknowledged {id} lost"
        );
    }
}

fn markers(text: &str) -> std::collections::BTreeSet<String> {
    text.split(';')
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn state_text(node: &Server, room: &str) -> String {
    let (status, state) = http_get(node, &format!("/rooms/{room}/state")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&state));
    text_of_state(&state)
}

#[actix_rt::test]
async fn a_joining_node_takes_its_share_and_moved_sessions_lose_nothing() {
    let Some(url) = pg::url("a_joining_node_takes_its_share_and_moved_sessions_lose_nothing")
    else {
        return;
    };
    let mut cluster = Cluster::start(&url, 3, 4);
    cluster.converged().await;
    // Sessions in 24 rooms, each through node 0 (relayed where node 0 is no owner), each
    // with some acknowledged text.
    let rooms: Vec<String> = (0..24).map(|i| format!("join-{i}")).collect();
    let mut clients = Vec::new();
    for room in &rooms {
        let mut client = YClient::synced(cluster.node(0), room).await;
        client.append(&format!("{room}-before;")).await;
        clients.push(client);
    }
    for room in &rooms {
        let deadline = Instant::now() + WAIT;
        while !state_text(cluster.node(1), room).await.contains("before") {
            assert!(Instant::now() < deadline, "{room} never held its text");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let sample: Vec<String> = (0..400).map(|i| format!("share-{i}")).collect();
    let mut before = Vec::new();
    for room in &sample {
        before.push(owner_seen_by(cluster.node(0), room).await.0);
    }

    let newcomer = cluster.add();
    cluster.converged().await;
    // About a quarter of the rooms move, all of them to the newcomer.
    let mut moved = 0;
    for (room, old) in sample.iter().zip(&before) {
        let now = owner_seen_by(cluster.node(0), room).await.0;
        if now != *old {
            assert_eq!(index_of(&now), newcomer, "{room} moved between old nodes");
            moved += 1;
        }
    }
    let share = moved as f64 / sample.len() as f64;
    eprintln!("a fourth node took {:.1}% of the rooms", share * 100.0);
    assert!((0.15..0.35).contains(&share), "moved {share}");

    // Sessions of moved rooms are told "room moved"; they reconnect through routing and
    // find everything, then edit on the new owner.
    let mut closed = 0;
    for (room, mut client) in rooms.iter().zip(clients) {
        let owner = index_of(&owner_seen_by(cluster.node(0), room).await.0);
        if owner != newcomer {
            continue;
        }
        let (code, reason) = observe_until_closed(&mut client)
            .await
            .unwrap_or_else(|| panic!("{room}: its session was never moved"));
        assert_eq!(code, 4011, "{room}: {reason}");
        closed += 1;
        let mut again = YClient::synced(cluster.node(0), room).await;
        assert!(
            again.text().contains(&format!("{room}-before")),
            "{room} lost its text"
        );
        again.append(&format!("{room}-after;")).await;
        let deadline = Instant::now() + WAIT;
        while !state_text(cluster.node(newcomer), room)
            .await
            .contains("after")
        {
            assert!(
                Instant::now() < deadline,
                "{room}: the new owner never took the edit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        closed > 0,
        "no session's room moved; the test proved nothing"
    );
}

#[actix_rt::test]
async fn a_paused_owner_is_fenced_when_it_wakes_and_nothing_acknowledged_is_lost() {
    let Some(url) = pg::url("a_paused_owner_is_fenced_when_it_wakes") else {
        return;
    };
    let cluster = Cluster::start(&url, 3, 3);
    cluster.converged().await;
    let room = "paused";
    let owner = index_of(&owner_seen_by(cluster.node(0), room).await.0);
    let other = (owner + 1) % 3;
    // On the owner: a writer and an observer (what the owner acknowledged).
    let mut observer = YClient::synced(cluster.node(owner), room).await;
    let mut writer = YClient::synced(cluster.node(owner), room).await;
    for i in 0..20 {
        writer.append(&format!("old{i};")).await;
    }
    while markers(&observer.text()).len() < 20 {
        match observer.recv_within(WAIT).await {
            Some(Received::Message(tandem::protocol::ysync::Message::Update(u))) => {
                observer.apply(&u)
            }
            other => panic!("unexpected before the pause: {other:?}"),
        }
    }

    // Pause the owner; the others take the room and accept writes.
    let pid = cluster.node(owner).pid().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    let taken = Instant::now();
    // A WebSocket relayed to it now (the others still route there for a few seconds) is
    // answered 502 once the paused owner stays silent, not left hanging.
    let port = cluster.node(other).port;
    let relayed_to_paused = actix_rt::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let head = format!(
            "GET /yjs/{room} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(15), socket.read(&mut answer))
            .await
            .expect("the relay to a paused owner hung")
            .unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    });
    let deadline = taken + Duration::from_secs(30);
    let third = (owner + 2) % 3;
    let mut taker = loop {
        // Both the others must have dropped the paused node: one that still routes to it
        // would relay to a process that accepts connections but never answers.
        let (id, _) = owner_seen_by(cluster.node(other), room).await;
        let (seen_by_third, _) = owner_seen_by(cluster.node(third), room).await;
        if index_of(&id) != owner && index_of(&seen_by_third) != owner {
            break YClient::synced(cluster.node(other), room).await;
        }
        assert!(Instant::now() < deadline, "the others never took the room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        taker.text().contains("old19"),
        "the new owner lacks acknowledged updates"
    );
    // While paused, the old owner's client keeps writing (its updates wait in the socket).
    for i in 0..5 {
        writer.append(&format!("stale{i};")).await;
    }
    for i in 0..10 {
        taker.append(&format!("new{i};")).await;
    }
    let deadline = Instant::now() + WAIT;
    while !state_text(cluster.node(other), room).await.contains("new9") {
        assert!(
            Instant::now() < deadline,
            "the new owner never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Relayed to the paused owner (the others still routed there): refused with 502.
    let answer = relayed_to_paused.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");

    // Wake it: its next write is refused by the store, it steps down with 4011.
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    let closed = observe_until_closed(&mut observer).await;
    let (code, reason) = closed.expect("the woken owner never closed its sessions");
    assert_eq!(code, 4011, "{reason}");
    // Whatever the old owner acknowledged before the pause, and everything the new owner
    // acknowledged, is in the room; the documents converge wherever it is read.
    cluster.converged().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let texts = [
            state_text(cluster.node(0), room).await,
            state_text(cluster.node(1), room).await,
            state_text(cluster.node(2), room).await,
        ];
        let seen = markers(&texts[0]);
        let complete = (0..20).all(|i| seen.contains(&format!("old{i}")))
            && (0..10).all(|i| seen.contains(&format!("new{i}")));
        if complete && texts.iter().all(|t| *t == texts[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "never converged: {texts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(cluster.node(owner), "tandem_rooms_fenced_total").await >= 1.0);
}

#[actix_rt::test]
async fn failover_under_edits_and_publishes_loses_nothing_over_five_trials() {
    let Some(url) = pg::url("failover_under_edits_and_publishes_loses_nothing") else {
        return;
    };
    let mut cluster = Cluster::start(&url, 3, 3);
    cluster.converged().await;
    let mut worst = Duration::ZERO;
    for trial in 0..5 {
        let room = format!("busy-{trial}");
        let victim = index_of(&owner_seen_by(cluster.node(0), &room).await.0);
        let via = (victim + 1) % 3;
        // Continuous edits through a survivor (relayed to the owner), an observer there too,
        // and continuous chat publishes over HTTP.
        let mut observer = YClient::synced(cluster.node(via), &room).await;
        let mut writer = YClient::synced(cluster.node(via), &room).await;
        let writing = actix_rt::spawn(async move {
            let mut sent = 0;
            for i in 0..100_000u32 {
                let update = local_append(&writer.doc, &format!("t{i};"));
                if !writer
                    .try_send(&tandem::protocol::ysync::Message::Update(update.into()))
                    .await
                {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        });
        // The observer reads all along (what sits unread in a socket when a relayed
        // connection is reset was never seen).
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen_so_far = std::sync::Arc::clone(&progress);
        let observing = actix_rt::spawn(async move {
            let closed = loop {
                match observer.recv_within(Duration::from_secs(15)).await {
                    Some(Received::Message(tandem::protocol::ysync::Message::Update(u))) => {
                        observer.apply(&u);
                        let n = markers(&observer.text()).len();
                        seen_so_far.store(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(Received::Closed(code, reason)) => break Some((code, reason)),
                    Some(_) => {}
                    None => break None,
                }
            };
            (observer.text(), closed)
        });
        let mut acked = HashMap::new();
        for n in 0..20 {
            let id = format!("p{n}");
            acked.insert(
                id.clone(),
                publish_via(cluster.node(via), &room, &id).await.unwrap(),
            );
        }
        // Kill while edits flow, once a good number were acknowledged.
        let deadline = Instant::now() + WAIT;
        while progress.load(std::sync::atomic::Ordering::Relaxed) < 30 {
            assert!(
                Instant::now() < deadline,
                "trial {trial}: edits never flowed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let port = cluster.node(victim).port;
        cluster.nodes[victim].as_mut().unwrap().kill9();
        cluster.nodes[victim] = None;
        let killed = Instant::now();
        let (text, closed) = observing.await.unwrap();
        let sent = writing.await.unwrap_or(0);
        let seen = markers(&text);
        assert!(sent >= seen.len(), "trial {trial}");
        assert!(
            matches!(
                closed,
                Some((1006, _)) | Some((1011, _)) | Some((4011, _)) | None
            ),
            "trial {trial}: {closed:?}"
        );
        // The room is served again by a survivor, with every acknowledged message.
        let seq = loop {
            match publish_via(cluster.node(via), &room, "after").await {
                Ok(seq) => break seq,
                Err(e) => {
                    assert!(
                        killed.elapsed() < Duration::from_secs(20),
                        "trial {trial}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let failover = killed.elapsed();
        worst = worst.max(failover);
        assert_eq!(
            seq, 21,
            "trial {trial}: the stream continues after every ack"
        );
        let stored = markers(&state_text(cluster.node(via), &room).await);
        let lost: Vec<_> = seen.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "trial {trial}: updates seen then lost: {lost:?}"
        );
        assert!(!seen.is_empty(), "trial {trial}: nothing was observed");
        eprintln!(
            "trial {trial}: {} updates seen, all kept; served again after {failover:?}",
            seen.len()
        );
        // The killed node comes back as a new incarnation.
        cluster.restart(victim, port);
        cluster.converged().await;
        assert_holds(cluster.node(via), &room, &acked, &format!("trial {trial}")).await;
    }
    assert!(worst < Duration::from_secs(10), "worst failover {worst:?}");
}

#[actix_rt::test]
async fn in_proxy_mode_http_and_sse_are_forwarded_to_the_owner() {
    let Some(url) = pg::url("in_proxy_mode_http_and_sse_are_forwarded_to_the_owner") else {
        return;
    };
    let cluster = Cluster::start_with(&url, 2, 2, &["--route-mode", "proxy"]);
    cluster.converged().await;
    let room = "forwarded";
    let owner = index_of(&owner_seen_by(cluster.node(0), room).await.0);
    let other = cluster.node(1 - owner);
    let client = awc::Client::builder().disable_redirects().finish();
    // A publish through the non-owner is answered by it (no redirect), durably, by the owner.
    for n in 0..5 {
        let mut response = client
            .post(other.url(&format!("/rooms/{room}/messages")))
            .insert_header(("Idempotency-Key", format!("f{n}")))
            .send_json(&json!({ "n": n }))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let ack: Value = serde_json::from_slice(&response.body().await.unwrap()).unwrap();
        assert_eq!(ack["seq"], n + 1);
    }
    let mut response = client
        .get(other.url(&format!("/rooms/{room}/messages?limit=10")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let page: Value = serde_json::from_slice(&response.body().await.unwrap()).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 5);
    // SSE streams through the non-owner: a resume, then a live message.
    let mut sse = common::chat::Sse::open(other, &format!("/rooms/{room}/events"), Some(3)).await;
    assert_eq!(sse.next_of("message").await.id, Some(4));
    assert_eq!(sse.next_of("message").await.id, Some(5));
    publish_via(cluster.node(owner), room, "live")
        .await
        .unwrap();
    assert_eq!(sse.next_of("message").await.id, Some(6));
    // Bad requests are still answered by the routes: a bad room name is a 400 here.
    let response = client
        .get(other.url("/rooms/.bad/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}
