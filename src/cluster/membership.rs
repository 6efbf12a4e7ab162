//! Who is in the cluster, as a stream of views: each live member's id and the URL clients
//! and other nodes reach it at. Behind one small trait with two implementations:
//! - [`GossipMembership`]: `chitchat` (gossip over UDP, phi-accrual failure detection),
//!   each node publishing its advertised URL as a key;
//! - [`StaticMembership`]: an in-memory twin whose view is set by hand, for a node that
//!   runs alone and for cluster scenarios run as fast tests.
//!
//! It knows nothing of rooms or the ring: placement turns views into rings. UDP gossip is
//! unauthenticated and chitchat has no consensus, so a view is advice; the store's epochs
//! stay the authority on who may write a room.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::id::NodeId;

/// The key under which a node publishes its advertised URL.
const URL_KEY: &str = "url";
/// The key under which a node publishes how many rooms it has active.
const ROOMS_KEY: &str = "rooms";

/// Gossip rounds per second: each round a node talks to a few peers. With the failure
/// detector's initial interval equal to it, a stopped node was declared dead after ~5
/// intervals here (chitchat's default initial interval of 5 s took ~12 s).
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// How long a dead node is remembered (so its stale state is not gossiped back in).
pub const DEAD_NODE_GRACE: Duration = Duration::from_secs(60);

/// A live member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Member {
    /// Its id (`--node-id`).
    pub id: NodeId,
    /// Where clients and other nodes reach it (`--advertise-url`), e.g. `http://10.0.0.5:4321`.
    pub url: String,
}

/// The live members, sorted by id (what the ring is built from), and the members the
/// failure detector holds dead (for operators; not in the ring).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub members: Vec<Member>,
    pub dead: Vec<Member>,
    /// Rooms active on each live member, as it last published (for operators).
    pub rooms: std::collections::BTreeMap<NodeId, u64>,
}

impl View {
    /// A view of `members`, sorted and without duplicate ids.
    pub fn new(mut members: Vec<Member>) -> Self {
        members.sort();
        members.dedup_by(|a, b| a.id == b.id);
        Self {
            members,
            dead: Vec::new(),
            rooms: Default::default(),
        }
    }

    /// The member with this id, if live.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.iter().find(|m| &m.id == id)
    }
}

/// A source of membership views.
pub trait Membership: Send + Sync + 'static {
    /// This node.
    fn this_node(&self) -> &Member;
    /// The current view, and every later one.
    fn watch(&self) -> watch::Receiver<View>;
    /// Tells the others how many rooms this node has active (shown in `/cluster`).
    fn publish_rooms(&self, _rooms: usize) {}
}

/// The in-memory twin: the view is what its owner sets.
pub struct StaticMembership {
    me: Member,
    views: watch::Sender<View>,
}

impl StaticMembership {
    /// A membership of `me` plus `others`.
    pub fn new(me: Member, others: Vec<Member>) -> Self {
        let mut members = others;
        members.push(me.clone());
        Self {
            me,
            views: watch::Sender::new(View::new(members)),
        }
    }

    /// Replaces the view (this node stays in it).
    pub fn set(&self, others: Vec<Member>) {
        let mut members = others;
        members.push(self.me.clone());
        self.views.send_replace(View::new(members));
    }
}

impl Membership for StaticMembership {
    fn this_node(&self) -> &Member {
        &self.me
    }

    fn watch(&self) -> watch::Receiver<View> {
        self.views.subscribe()
    }
}

/// Why gossip could not start.
#[derive(Debug, Error)]
pub enum MembershipError {
    /// chitchat could not start (the gossip address is taken, say).
    #[error("cannot start gossip on {addr}: {reason}")]
    Gossip {
        /// The gossip listen address.
        addr: SocketAddr,
        /// chitchat's error.
        reason: String,
    },
}

/// How a node gossips.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node.
    pub me: Member,
    /// UDP address to gossip on (`--gossip-listen`); also what peers are told to use.
    pub listen: SocketAddr,
    /// Gossip addresses of some members (`--seeds`; may include this node's own).
    pub seeds: Vec<String>,
    /// Nodes of other clusters are ignored (`--cluster-id`).
    pub cluster_id: String,
}

/// Membership from `chitchat`.
pub struct GossipMembership {
    me: Member,
    views: watch::Receiver<View>,
    chitchat: std::sync::Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    handle: Option<ChitchatHandle>,
}

impl GossipMembership {
    /// Starts gossiping; must run inside a tokio runtime that lives as long as the node.
    pub async fn start(config: GossipConfig) -> Result<Self, MembershipError> {
        // A restarted node is a new incarnation: its dead predecessor's state, still
        // gossiped by peers for a while, must not be taken for it.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let id = ChitchatId::new(config.me.id.as_str(), generation, config.listen);
        let failure_detector = FailureDetectorConfig {
            initial_interval: GOSSIP_INTERVAL,
            dead_node_grace_period: DEAD_NODE_GRACE,
            ..FailureDetectorConfig::default()
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: config.listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: failure_detector,
            marked_for_deletion_grace_period: DEAD_NODE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let handle = spawn_chitchat(
            chitchat_config,
            vec![(URL_KEY.to_owned(), config.me.url.clone())],
            &UdpTransport,
        )
        .await
        .map_err(|e| MembershipError::Gossip {
            addr: config.listen,
            reason: e.to_string(),
        })?;
        let chitchat = handle.chitchat();
        let mut live = chitchat.lock().await.live_nodes_watcher();
        let gossip_state = std::sync::Arc::clone(&chitchat);
        let (tx, views) = watch::channel(View::new(vec![config.me.clone()]));
        let me = config.me.clone();
        tokio::spawn(async move {
            loop {
                let mut view = {
                    let nodes = live.borrow_and_update();
                    let rooms = nodes
                        .iter()
                        .filter_map(|(id, state)| {
                            let node = NodeId::parse(&id.node_id).ok()?;
                            Some((node, state.get(ROOMS_KEY)?.parse().ok()?))
                        })
                        .collect();
                    let mut members: Vec<Member> = nodes
                        .iter()
                        .filter_map(|(id, state)| {
                            let node = NodeId::parse(&id.node_id).ok()?;
                            let url = state.get(URL_KEY)?.to_owned();
                            Some(Member { id: node, url })
                        })
                        .collect();
                    // This node is a member whatever its own detector says of itself.
                    members.push(me.clone());
                    let mut view = View::new(members);
                    view.rooms = rooms;
                    view
                };
                {
                    let state = gossip_state.lock().await;
                    let mut dead: Vec<Member> = state
                        .dead_nodes()
                        .filter_map(|id| {
                            let node = NodeId::parse(&id.node_id).ok()?;
                            let url = state.node_state(id)?.get(URL_KEY)?.to_owned();
                            Some(Member { id: node, url })
                        })
                        .filter(|m| view.member(&m.id).is_none())
                        .collect();
                    dead.sort();
                    dead.dedup_by(|a, b| a.id == b.id);
                    view.dead = dead;
                }
                if *tx.borrow() != view {
                    info!(
                        members = ?view.members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
                        "membership changed"
                    );
                    tx.send_replace(view);
                }
                if live.changed().await.is_err() {
                    warn!("gossip stopped; membership frozen");
                    return;
                }
            }
        });
        Ok(Self {
            me: config.me,
            views,
            chitchat,
            handle: Some(handle),
        })
    }

    /// Stops gossiping (others will declare this node dead).
    pub async fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.shutdown().await;
        }
    }
}

impl Membership for GossipMembership {
    fn this_node(&self) -> &Member {
        &self.me
    }

    fn watch(&self) -> watch::Receiver<View> {
        self.views.clone()
    }

    fn publish_rooms(&self, rooms: usize) {
        let chitchat = std::sync::Arc::clone(&self.chitchat);
        tokio::spawn(async move {
            chitchat
                .lock()
                .await
                .self_node_state()
                .set(ROOMS_KEY, rooms.to_string());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, port: u16) -> Member {
        Member {
            id: NodeId::parse(id).unwrap(),
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    #[test]
    fn the_twin_keeps_this_node_and_sorts() {
        let twin = StaticMembership::new(member("b", 2), vec![member("c", 3), member("a", 1)]);
        let ids = |v: &View| {
            v.members
                .iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&twin.watch().borrow()), ["a", "b", "c"]);
        twin.set(vec![member("a", 1)]);
        assert_eq!(ids(&twin.watch().borrow()), ["a", "b"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_gossiping_nodes_see_each_other_then_one_leaves() {
        // Three nodes on loopback UDP ports: each sees all three, then a stopped one goes.
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let config = GossipConfig {
                me: member(&format!("n{i}"), 4000 + i as u16),
                listen: format!("127.0.0.1:{port}").parse().unwrap(),
                seeds: seeds.clone(),
                cluster_id: "test".into(),
            };
            nodes.push(GossipMembership::start(config).await.unwrap());
        }
        let wait_for = |node: &GossipMembership, n: usize| {
            let mut views = node.watch();
            async move {
                tokio::time::timeout(Duration::from_secs(20), async {
                    while views.borrow_and_update().members.len() != n {
                        views.changed().await.unwrap();
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("never saw {n} members"));
            }
        };
        for node in &nodes {
            wait_for(node, 3).await;
        }
        let view = nodes[0].watch().borrow().clone();
        assert_eq!(view.members[1].url, "http://127.0.0.1:4001");
        let gone = nodes.pop().unwrap();
        gone.shutdown().await;
        let started = std::time::Instant::now();
        wait_for(&nodes[0], 2).await;
        wait_for(&nodes[1], 2).await;
        eprintln!("a stopped node left the view after {:?}", started.elapsed());
    }
}
