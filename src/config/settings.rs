//! What one configuration source may set: the `tandem serve` flags (with their
//! `TANDEM_*` environment variables) and the TOML file share this one struct, every field
//! optional, so sources layer with [`Settings::or`]. No validation here: that is
//! [`Config::from_settings`](super::Config::from_settings)'s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use super::ConfigError;

/// Settings from one source; every field is optional so sources can be layered.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Address to listen on [default: 127.0.0.1:4321]
    #[arg(long, env = "TANDEM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded sled database [default: ./tandem-data]
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When updates become durable: "batch" (flush every group commit, before anyone sees
    /// the update) or "interval:MS" (background flush every MS ms; a crash may lose that
    /// window) [default: batch]
    #[arg(long, env = "TANDEM_FLUSH")]
    pub flush: Option<String>,
    /// Least time between two group commits of one room, in ms, while its updates arrive
    /// faster than the store commits them: the room gathers what arrives until then, so
    /// each recipient gets one frame for it all (fewer frames and less CPU for up to this
    /// much more latency; light traffic never waits); 0: commit as soon as the last one
    /// ends [default: 0]
    #[arg(long, env = "TANDEM_COMMIT_GAP_MS")]
    pub commit_gap_ms: Option<u64>,
    /// Bound of sled's page cache, in bytes [default: 67108864]
    #[arg(long, env = "TANDEM_SLED_CACHE_BYTES")]
    pub sled_cache_bytes: Option<u64>,
    /// Store rooms in PostgreSQL at this URL (e.g. postgres://user@host:5432/db) instead of
    /// the embedded sled database; needed by clusters [default: none, sled]
    #[arg(long, env = "TANDEM_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// PostgreSQL schema for Tandem's tables, created if missing; deployments sharing a
    /// database use one each [default: tandem]
    #[arg(long, env = "TANDEM_POSTGRES_SCHEMA")]
    pub postgres_schema: Option<String>,
    /// Most PostgreSQL connections the server opens [default: 8]
    #[arg(long, env = "TANDEM_POSTGRES_POOL_SIZE")]
    pub postgres_pool_size: Option<usize>,
    /// This node's id in a cluster (1-64 of A-Z a-z 0-9 _ - .) [default: none, one node]
    #[arg(long, env = "TANDEM_NODE_ID")]
    pub node_id: Option<String>,
    /// The URL clients and other nodes reach this node at, e.g. http://10.0.0.5:4321
    /// [default: http:// and the listen address]
    #[arg(long, env = "TANDEM_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// UDP address this node gossips on (cluster membership) [default: none]
    #[arg(long, env = "TANDEM_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,
    /// Gossip addresses of some members, comma-separated (may include this node's own)
    /// [default: none]
    #[arg(long, env = "TANDEM_SEEDS")]
    pub seeds: Option<String>,
    /// Nodes gossip only with nodes of the same cluster id [default: tandem]
    #[arg(long, env = "TANDEM_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// How a node answers an HTTP or SSE request for a room another node owns: "redirect"
    /// (307 to the owner) or "proxy" (forward it there); WebSockets are always relayed
    /// [default: redirect]
    #[arg(long, env = "TANDEM_ROUTE_MODE")]
    pub route_mode: Option<String>,
    /// Largest WebSocket frame, reassembled message or HTTP update body, in bytes
    /// [default: 16777216]
    #[arg(long, env = "TANDEM_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Seconds a room without sessions stays active before it is deactivated [default: 30]
    #[arg(long, env = "TANDEM_ROOM_IDLE_SECS")]
    pub room_idle_secs: Option<f64>,
    /// Longest seconds a room's document may go unused (no edit, no sync) before it is
    /// held encoded, a fraction of its live size, until next needed (small documents go
    /// sooner: after 5 s plus 1 s per 32 KiB stored); 0: never [default: 30]
    #[arg(long, env = "TANDEM_DOC_FREEZE_SECS")]
    pub doc_freeze_secs: Option<f64>,
    /// Logged updates that trigger a snapshot (which compacts the log) [default: 10000]
    #[arg(long, env = "TANDEM_SNAPSHOT_EVERY_UPDATES")]
    pub snapshot_every_updates: Option<u64>,
    /// Longest seconds between snapshots of a changing room [default: 60]
    #[arg(long, env = "TANDEM_SNAPSHOT_INTERVAL_SECS")]
    pub snapshot_interval_secs: Option<f64>,
    /// Seconds between heartbeats: a ping, plus a keepalive message when the session was
    /// otherwise quiet [default: 10]
    #[arg(long, env = "TANDEM_HEARTBEAT_INTERVAL_SECS")]
    pub heartbeat_interval_secs: Option<f64>,
    /// Seconds of silence (not even a pong) after which a session is closed [default: 30]
    #[arg(long, env = "TANDEM_HEARTBEAT_TIMEOUT_SECS")]
    pub heartbeat_timeout_secs: Option<f64>,
    /// Threads of their own for room actors; 0 runs each room on one of the HTTP threads
    /// (its name picks which), next to the sessions it sends to [default: 0]
    #[arg(long, env = "TANDEM_ROOM_THREADS")]
    pub room_threads: Option<usize>,
    /// Threads that run HTTP and WebSocket sessions [default: number of CPUs less one, at
    /// least one: the store's flush and the kernel's network work keep a CPU]
    #[arg(long, env = "TANDEM_HTTP_THREADS")]
    pub http_threads: Option<usize>,
    /// Unread bytes (sent to a client, not yet read by it) after which the session is
    /// closed as too slow [default: 8388608]
    #[arg(long, env = "TANDEM_MAX_OUTBOX_BYTES")]
    pub max_outbox_bytes: Option<u64>,
    /// Messages per second a session may send, burst two seconds' worth; 0 disables
    /// [default: 500]
    #[arg(long, env = "TANDEM_MAX_MESSAGES_PER_SEC")]
    pub max_messages_per_sec: Option<u32>,
    /// Largest stored document (snapshot plus log) in bytes; updates beyond it are refused
    /// [default: 268435456]
    #[arg(long, env = "TANDEM_MAX_DOCUMENT_BYTES")]
    pub max_document_bytes: Option<u64>,
    /// Active rooms per node; beyond it new rooms are refused with 1013 / 503
    /// [default: 100000]
    #[arg(long, env = "TANDEM_MAX_ROOMS")]
    pub max_rooms: Option<usize>,
    /// WebSocket sessions per node; beyond it new ones are closed with 1013
    /// [default: 50000]
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send its request head (the handshake) [default: 5]
    #[arg(long, env = "TANDEM_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<f64>,
    /// Shared secret for HS256 tokens (at least 16 bytes). Without a secret or public key
    /// the server runs open: anyone may read and write any room
    #[arg(long, env = "TANDEM_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA → RS256, EC P-256 → ES256) for verifying tokens
    #[arg(long, env = "TANDEM_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Seconds of clock skew tolerated when checking `exp` and `nbf` [default: 5]
    #[arg(long, env = "TANDEM_JWT_LEEWAY_SECS")]
    pub jwt_leeway_secs: Option<u64>,
    /// Chat messages kept per room; older ones are dropped [default: 10000]
    #[arg(long, env = "TANDEM_STREAM_RETENTION_MESSAGES")]
    pub stream_retention_messages: Option<u64>,
    /// Seconds a chat message is kept [default: 604800, 7 days]
    #[arg(long, env = "TANDEM_STREAM_RETENTION_SECS")]
    pub stream_retention_secs: Option<f64>,
    /// Largest chat message body, in bytes of compact JSON [default: 65536]
    #[arg(long, env = "TANDEM_MAX_CHAT_BODY_BYTES")]
    pub max_chat_body_bytes: Option<usize>,
    /// Seconds a typing/status state lasts unless set again [default: 5]
    #[arg(long, env = "TANDEM_TYPING_TTL_SECS")]
    pub typing_ttl_secs: Option<f64>,
    /// Client message ids remembered per room for idempotent retries; 0 disables
    /// [default: 10000]
    #[arg(long, env = "TANDEM_IDEMPOTENCY_WINDOW")]
    pub idempotency_window: Option<usize>,
    /// Browser origins allowed to call the HTTP and SSE endpoints from other sites
    /// (CORS), comma-separated, e.g. "https://app.example.com"; "*" allows any
    /// [default: none, same-origin only]
    #[arg(long, env = "TANDEM_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
}

impl Settings {
    /// Reads settings from a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Fills every field this source left unset from `fallback`.
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            listen: self.listen.or(fallback.listen),
            data_dir: self.data_dir.or(fallback.data_dir),
            flush: self.flush.or(fallback.flush),
            commit_gap_ms: self.commit_gap_ms.or(fallback.commit_gap_ms),
            sled_cache_bytes: self.sled_cache_bytes.or(fallback.sled_cache_bytes),
            postgres_url: self.postgres_url.or(fallback.postgres_url),
            postgres_schema: self.postgres_schema.or(fallback.postgres_schema),
            postgres_pool_size: self.postgres_pool_size.or(fallback.postgres_pool_size),
            node_id: self.node_id.or(fallback.node_id),
            advertise_url: self.advertise_url.or(fallback.advertise_url),
            gossip_listen: self.gossip_listen.or(fallback.gossip_listen),
            seeds: self.seeds.or(fallback.seeds),
            cluster_id: self.cluster_id.or(fallback.cluster_id),
            route_mode: self.route_mode.or(fallback.route_mode),
            max_message_bytes: self.max_message_bytes.or(fallback.max_message_bytes),
            room_idle_secs: self.room_idle_secs.or(fallback.room_idle_secs),
            doc_freeze_secs: self.doc_freeze_secs.or(fallback.doc_freeze_secs),
            snapshot_every_updates: self
                .snapshot_every_updates
                .or(fallback.snapshot_every_updates),
            snapshot_interval_secs: self
                .snapshot_interval_secs
                .or(fallback.snapshot_interval_secs),
            heartbeat_interval_secs: self
                .heartbeat_interval_secs
                .or(fallback.heartbeat_interval_secs),
            heartbeat_timeout_secs: self
                .heartbeat_timeout_secs
                .or(fallback.heartbeat_timeout_secs),
            room_threads: self.room_threads.or(fallback.room_threads),
            http_threads: self.http_threads.or(fallback.http_threads),
            max_outbox_bytes: self.max_outbox_bytes.or(fallback.max_outbox_bytes),
            max_messages_per_sec: self.max_messages_per_sec.or(fallback.max_messages_per_sec),
            max_document_bytes: self.max_document_bytes.or(fallback.max_document_bytes),
            max_rooms: self.max_rooms.or(fallback.max_rooms),
            max_connections: self.max_connections.or(fallback.max_connections),
            handshake_timeout_secs: self
                .handshake_timeout_secs
                .or(fallback.handshake_timeout_secs),
            jwt_secret: self.jwt_secret.or(fallback.jwt_secret),
            jwt_public_key: self.jwt_public_key.or(fallback.jwt_public_key),
            jwt_leeway_secs: self.jwt_leeway_secs.or(fallback.jwt_leeway_secs),
            stream_retention_messages: self
                .stream_retention_messages
                .or(fallback.stream_retention_messages),
            stream_retention_secs: self
                .stream_retention_secs
                .or(fallback.stream_retention_secs),
            max_chat_body_bytes: self.max_chat_body_bytes.or(fallback.max_chat_body_bytes),
            typing_ttl_secs: self.typing_ttl_secs.or(fallback.typing_ttl_secs),
            idempotency_window: self.idempotency_window.or(fallback.idempotency_window),
            cors_origins: self.cors_origins.or(fallback.cors_origins),
        }
    }
}
