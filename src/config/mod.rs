//! Configuration: command-line flags, `TANDEM_*` environment variables and an optional TOML
//! file, in that order of precedence, over documented defaults. [`Settings`] is what a
//! source may set (every field optional); [`Config`] is the validated result the server
//! runs with. Nothing else in the crate reads flags, the environment or the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::auth::Authenticator;
use crate::id::NodeId;
use crate::room::{RoomConfig, StreamConfig};
use crate::session::SessionConfig;
use crate::storage::{FlushPolicy, PostgresConfig, DEFAULT_POSTGRES_SCHEMA};

mod settings;
pub use settings::Settings;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4321";
/// Default data directory (the sled database).
pub const DEFAULT_DATA_DIR: &str = "./tandem-data";
/// Default largest WebSocket frame / message / HTTP update body: 16 MiB. actix's own
/// default (64 KiB) is smaller than the SyncStep2 of a real document.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Default idle time before a room without sessions is deactivated.
pub const DEFAULT_ROOM_IDLE_SECS: f64 = 30.0;
/// Default seconds an unused document stays live before it is frozen.
pub const DEFAULT_DOC_FREEZE_SECS: f64 = 30.0;
/// Default number of logged updates that triggers a snapshot.
pub const DEFAULT_SNAPSHOT_EVERY_UPDATES: u64 = 10_000;
/// Default longest time between snapshots of a changing room.
pub const DEFAULT_SNAPSHOT_INTERVAL_SECS: f64 = 60.0;
/// Default interval between heartbeats (ping + keepalive when quiet); must stay under the
/// stock client's 30 s reconnect timer.
pub const DEFAULT_HEARTBEAT_INTERVAL_SECS: f64 = 10.0;
/// Default silence after which a session is considered dead.
pub const DEFAULT_HEARTBEAT_TIMEOUT_SECS: f64 = 30.0;
/// Default tolerated clock skew for token times.
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 5;
/// Default unread bytes after which a session is cut as too slow: 8 MiB.
pub const DEFAULT_MAX_OUTBOX_BYTES: u64 = 8 * 1024 * 1024;
/// Default messages per second per session (burst: two seconds' worth).
pub const DEFAULT_MAX_MESSAGES_PER_SEC: u32 = 500;
/// Default largest stored document (snapshot plus log): 256 MiB.
pub const DEFAULT_MAX_DOCUMENT_BYTES: u64 = 256 * 1024 * 1024;
/// Default active rooms per node.
pub const DEFAULT_MAX_ROOMS: usize = 100_000;
/// Default WebSocket sessions per node.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Default time a client has to send its request head (the WebSocket handshake).
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: f64 = 5.0;
/// Default chat messages kept per room.
pub const DEFAULT_STREAM_RETENTION_MESSAGES: u64 = 10_000;
/// Default age after which chat messages are dropped: 7 days.
pub const DEFAULT_STREAM_RETENTION_SECS: f64 = 7.0 * 86_400.0;
/// Default largest chat message body (compact JSON bytes).
pub const DEFAULT_MAX_CHAT_BODY_BYTES: usize = 64 * 1024;
/// Default life of a typing/status state.
pub const DEFAULT_TYPING_TTL_SECS: f64 = 5.0;
/// Default client message ids remembered per room for idempotent retries.
pub const DEFAULT_IDEMPOTENCY_WINDOW: usize = 10_000;
/// Default flush policy.
pub const DEFAULT_FLUSH: &str = "batch";
/// Default least time between a room's group commits under a steady stream, in ms: none.
/// 10 ms cut the server's CPU by 15-30% at 1,600 and 6,400 updates/s to 1,000 readers,
/// but slowed fan-out at 200/s and halved the acked throughput of windowed chat
/// publishers (BENCHMARKS.md, "Commit gap"), so it is the operator's choice.
pub const DEFAULT_COMMIT_GAP_MS: u64 = 0;
/// Largest accepted `commit-gap-ms`: beyond a second it is no longer live collaboration.
const MAX_COMMIT_GAP_MS: u64 = 1_000;
/// Default bound of sled's page cache (defined by the store).
pub use crate::storage::DEFAULT_SLED_CACHE_BYTES;

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The sled directory.
    pub data_dir: PathBuf,
    /// When updates become durable.
    pub flush: FlushPolicy,
    /// Bound of sled's page cache, in bytes.
    pub sled_cache_bytes: u64,
    /// PostgreSQL instead of sled, when set.
    pub postgres: Option<PostgresConfig>,
    /// Cluster membership, when this node is one of several.
    pub cluster: Option<ClusterConfig>,
    /// How HTTP and SSE requests for another node's rooms are answered.
    pub route_mode: RouteMode,
    /// Largest frame, message or update body.
    pub max_message_bytes: usize,
    /// Room behaviour.
    pub room: RoomConfig,
    /// Session behaviour.
    pub session: Arc<SessionConfig>,
    /// Threads of their own for room actors; 0: rooms run on the HTTP threads.
    pub room_threads: usize,
    /// Threads for HTTP and sessions.
    pub http_threads: usize,
    /// How tokens are verified.
    pub auth: AuthConfig,
    /// Active rooms per node.
    pub max_rooms: usize,
    /// WebSocket sessions per node.
    pub max_connections: usize,
    /// Time to receive a request head.
    pub handshake_timeout: Duration,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
}

/// Where the token verification key comes from.
#[derive(Clone)]
pub enum AuthConfig {
    /// No key: the server is open.
    Open,
    /// HS256 with this shared secret.
    Secret {
        /// The secret.
        secret: String,
        /// Tolerated clock skew.
        leeway_secs: u64,
    },
    /// RS256/ES256 with the PEM public key in this file.
    PublicKey {
        /// The key file.
        path: PathBuf,
        /// Tolerated clock skew.
        leeway_secs: u64,
    },
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        match self {
            AuthConfig::Open => f.write_str("Open"),
            AuthConfig::Secret { leeway_secs, .. } => write!(f, "Secret(leeway {leeway_secs}s)"),
            AuthConfig::PublicKey { path, leeway_secs } => {
                write!(f, "PublicKey({}, leeway {leeway_secs}s)", path.display())
            }
        }
    }
}

impl AuthConfig {
    /// Builds the verifier this configuration describes.
    pub fn authenticator(&self) -> Result<Authenticator, ConfigError> {
        let invalid = |e: crate::auth::KeyError| ConfigError::Invalid {
            name: "jwt key",
            reason: e.to_string(),
        };
        match self {
            AuthConfig::Open => Ok(Authenticator::open()),
            AuthConfig::Secret {
                secret,
                leeway_secs,
            } => Authenticator::with_secret(secret.as_bytes(), *leeway_secs).map_err(invalid),
            AuthConfig::PublicKey { path, leeway_secs } => {
                Authenticator::with_public_key(path, *leeway_secs).map_err(invalid)
            }
        }
    }
}

fn seconds(name: &'static str, value: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if !(min..=max).contains(&value) {
        return Err(ConfigError::Invalid {
            name,
            reason: format!("{value} is outside {min}..={max} seconds"),
        });
    }
    Ok(Duration::from_secs_f64(value))
}

fn commit_gap(ms: u64) -> Result<Duration, ConfigError> {
    if ms > MAX_COMMIT_GAP_MS {
        return Err(ConfigError::Invalid {
            name: "commit-gap-ms",
            reason: format!("{ms} is above {MAX_COMMIT_GAP_MS} ms"),
        });
    }
    Ok(Duration::from_millis(ms))
}

fn positive(name: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be at least 1".into(),
        });
    }
    Ok(value)
}

/// `*`, or a comma-separated list of `http(s)://host[:port]` origins.
fn parse_origins(text: &str) -> Result<Vec<String>, ConfigError> {
    let mut origins = Vec::new();
    for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let valid = origin == "*"
            || ["http://", "https://"].iter().any(|scheme| {
                origin
                    .strip_prefix(scheme)
                    .is_some_and(|host| !host.is_empty() && !host.contains('/'))
            });
        if !valid {
            return Err(ConfigError::Invalid {
                name: "cors-origins",
                reason: format!(
                    "{origin:?}; expected \"*\" or origins like https://app.example.com"
                ),
            });
        }
        origins.push(origin.to_owned());
    }
    Ok(origins)
}

/// How HTTP and SSE requests for a room another node owns are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// 307 to the owner (the default: the client talks to the owner directly).
    Redirect,
    /// Forwarded to the owner by this node.
    Proxy,
}

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Where clients and other nodes reach it; `None`: from the bound listen address.
    pub advertise_url: Option<String>,
    /// UDP gossip address.
    pub gossip_listen: SocketAddr,
    /// Gossip addresses of some members.
    pub seeds: Vec<String>,
    /// The cluster's id.
    pub cluster_id: String,
}

/// The cluster settings, when any is given: all or nothing, and only with PostgreSQL.
fn cluster_config(
    settings: &Settings,
    has_postgres: bool,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let given = settings.node_id.is_some()
        || settings.gossip_listen.is_some()
        || settings.seeds.is_some()
        || settings.cluster_id.is_some()
        || settings.advertise_url.is_some();
    if !given {
        return Ok(None);
    }
    let invalid = |name, reason: &str| ConfigError::Invalid {
        name,
        reason: reason.to_owned(),
    };
    if !has_postgres {
        return Err(invalid(
            "postgres-url",
            "a cluster needs the shared store: give --postgres-url with the cluster flags",
        ));
    }
    let node_id = settings
        .node_id
        .as_deref()
        .ok_or_else(|| invalid("node-id", "a cluster node needs --node-id"))?;
    let node_id = NodeId::parse(node_id).map_err(|e| invalid("node-id", &e.to_string()))?;
    let gossip_listen = settings
        .gossip_listen
        .ok_or_else(|| invalid("gossip-listen", "a cluster node needs --gossip-listen"))?;
    if let Some(url) = &settings.advertise_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "advertise-url",
                "must start with http:// or https://",
            ));
        }
    }
    Ok(Some(ClusterConfig {
        node_id,
        advertise_url: settings
            .advertise_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned()),
        gossip_listen,
        seeds: settings
            .seeds
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        cluster_id: settings
            .cluster_id
            .clone()
            .unwrap_or_else(|| "tandem".to_owned()),
    }))
}

/// Default most PostgreSQL connections.
pub const DEFAULT_POSTGRES_POOL_SIZE: usize = 8;

/// The PostgreSQL settings, when a URL is given.
fn postgres_config(settings: &Settings) -> Result<Option<PostgresConfig>, ConfigError> {
    let Some(url) = settings.postgres_url.clone().filter(|u| !u.is_empty()) else {
        if settings.postgres_schema.is_some() {
            return Err(ConfigError::Invalid {
                name: "postgres-schema",
                reason: "given without --postgres-url".into(),
            });
        }
        return Ok(None);
    };
    let pool_size = settings
        .postgres_pool_size
        .unwrap_or(DEFAULT_POSTGRES_POOL_SIZE);
    if !(2..=256).contains(&pool_size) {
        return Err(ConfigError::Invalid {
            name: "postgres-pool-size",
            reason: format!("{pool_size}; expected 2..=256"),
        });
    }
    Ok(Some(PostgresConfig {
        url,
        schema: settings
            .postgres_schema
            .clone()
            .unwrap_or_else(|| DEFAULT_POSTGRES_SCHEMA.to_owned()),
        pool_size,
    }))
}

fn parse_flush(text: &str) -> Result<FlushPolicy, ConfigError> {
    let invalid = || ConfigError::Invalid {
        name: "flush",
        reason: format!("{text:?}; expected \"batch\" or \"interval:MS\" (MS in 1..=60000)"),
    };
    match text.split_once(':') {
        None if text == "batch" => Ok(FlushPolicy::EveryBatch),
        Some(("interval", ms)) => match ms.parse::<u64>() {
            Ok(ms) if (1..=60_000).contains(&ms) => Ok(FlushPolicy::Interval(ms)),
            _ => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

/// HTTP threads when none are asked for: one per CPU but one, and at least one.
///
/// Threads on every CPU leave none for the group commit's flush (the flusher and sled's
/// I/O threads) and for whatever else runs on the host. A broadcast keeps every session
/// thread busy for its whole sweep, and the scheduler then lets them finish their slices
/// before anything else runs: on this project's 2-CPU benchmark machine, two threads held a
/// co-located load generator off the CPU for 0.7 ms on average per wake (`perf sched`),
/// and one thread gave lower fan-out, chat-stream and trace latency at the same saturation
/// throughput (BENCHMARKS.md, "HTTP threads").
pub fn default_http_threads(cpus: usize) -> usize {
    cpus.saturating_sub(1).max(1)
}

impl Config {
    /// Applies defaults to `settings` and validates the result.
    pub fn from_settings(settings: Settings) -> Result<Config, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads =
            |name: &'static str, value: Option<usize>, least: usize, default: usize| match value
                .unwrap_or(default)
            {
                n if (least..=256).contains(&n) => Ok(n),
                n => Err(ConfigError::Invalid {
                    name,
                    reason: format!("{n}; expected {least}..=256"),
                }),
            };
        let max_message_bytes = settings
            .max_message_bytes
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if !(1024..=1 << 30).contains(&max_message_bytes) {
            return Err(ConfigError::Invalid {
                name: "max-message-bytes",
                reason: format!("{max_message_bytes}; expected 1024..=1073741824"),
            });
        }
        let sled_cache_bytes = settings
            .sled_cache_bytes
            .unwrap_or(DEFAULT_SLED_CACHE_BYTES);
        // sled asserts a cache of at least 256 bytes; anything under 1 MiB is a typo.
        if sled_cache_bytes < 1 << 20 {
            return Err(ConfigError::Invalid {
                name: "sled-cache-bytes",
                reason: format!("{sled_cache_bytes}; expected at least 1048576"),
            });
        }
        let snapshot_every_updates = settings
            .snapshot_every_updates
            .unwrap_or(DEFAULT_SNAPSHOT_EVERY_UPDATES);
        if snapshot_every_updates == 0 {
            return Err(ConfigError::Invalid {
                name: "snapshot-every-updates",
                reason: "must be at least 1".into(),
            });
        }
        let heartbeat_interval = seconds(
            "heartbeat-interval-secs",
            settings
                .heartbeat_interval_secs
                .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL_SECS),
            0.05,
            25.0,
        )?;
        let heartbeat_timeout = seconds(
            "heartbeat-timeout-secs",
            settings
                .heartbeat_timeout_secs
                .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT_SECS),
            0.1,
            3600.0,
        )?;
        if heartbeat_timeout <= heartbeat_interval {
            return Err(ConfigError::Invalid {
                name: "heartbeat-timeout-secs",
                reason: "must be longer than heartbeat-interval-secs".into(),
            });
        }
        let max_outbox_bytes = settings
            .max_outbox_bytes
            .unwrap_or(DEFAULT_MAX_OUTBOX_BYTES);
        let stream = StreamConfig {
            retention_messages: positive(
                "stream-retention-messages",
                settings
                    .stream_retention_messages
                    .unwrap_or(DEFAULT_STREAM_RETENTION_MESSAGES) as usize,
            )? as u64,
            retention_age: seconds(
                "stream-retention-secs",
                settings
                    .stream_retention_secs
                    .unwrap_or(DEFAULT_STREAM_RETENTION_SECS),
                0.1,
                10.0 * 365.0 * 86_400.0,
            )?,
            max_body_bytes: positive(
                "max-chat-body-bytes",
                settings
                    .max_chat_body_bytes
                    .unwrap_or(DEFAULT_MAX_CHAT_BODY_BYTES),
            )?
            .min(max_message_bytes),
            typing_ttl: seconds(
                "typing-ttl-secs",
                settings.typing_ttl_secs.unwrap_or(DEFAULT_TYPING_TTL_SECS),
                0.05,
                3600.0,
            )?,
            idempotency_window: settings
                .idempotency_window
                .unwrap_or(DEFAULT_IDEMPOTENCY_WINDOW),
            max_replay_bytes: max_outbox_bytes / 2,
        };
        let postgres = postgres_config(&settings)?;
        let cluster = cluster_config(&settings, postgres.is_some())?;
        let log_claims = cluster.is_some();
        let route_mode = match settings.route_mode.as_deref().unwrap_or("redirect") {
            "redirect" => RouteMode::Redirect,
            "proxy" => RouteMode::Proxy,
            other => {
                return Err(ConfigError::Invalid {
                    name: "route-mode",
                    reason: format!("{other:?}; expected redirect or proxy"),
                })
            }
        };
        Ok(Config {
            listen: match settings.listen {
                Some(addr) => addr,
                None => DEFAULT_LISTEN.parse().expect("the default address parses"),
            },
            data_dir: settings
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            flush: parse_flush(settings.flush.as_deref().unwrap_or(DEFAULT_FLUSH))?,
            sled_cache_bytes,
            postgres,
            cluster,
            route_mode,
            max_message_bytes,
            room: RoomConfig {
                idle_timeout: seconds(
                    "room-idle-secs",
                    settings.room_idle_secs.unwrap_or(DEFAULT_ROOM_IDLE_SECS),
                    0.01,
                    86_400.0,
                )?,
                snapshot_every_updates,
                max_document_bytes: settings
                    .max_document_bytes
                    .unwrap_or(DEFAULT_MAX_DOCUMENT_BYTES),
                snapshot_interval: seconds(
                    "snapshot-interval-secs",
                    settings
                        .snapshot_interval_secs
                        .unwrap_or(DEFAULT_SNAPSHOT_INTERVAL_SECS),
                    0.01,
                    86_400.0,
                )?,
                stream,
                log_claims,
                commit_gap: commit_gap(settings.commit_gap_ms.unwrap_or(DEFAULT_COMMIT_GAP_MS))?,
                freeze_after: match settings.doc_freeze_secs.unwrap_or(DEFAULT_DOC_FREEZE_SECS) {
                    0.0 => None,
                    secs => Some(seconds("doc-freeze-secs", secs, 0.01, 86_400.0)?),
                },
            },
            session: Arc::new(SessionConfig {
                max_message_bytes,
                heartbeat_interval,
                heartbeat_timeout,
                max_outbox_bytes,
                max_messages_per_sec: settings
                    .max_messages_per_sec
                    .unwrap_or(DEFAULT_MAX_MESSAGES_PER_SEC),
            }),
            auth: {
                let leeway_secs = settings.jwt_leeway_secs.unwrap_or(DEFAULT_JWT_LEEWAY_SECS);
                match (settings.jwt_secret, settings.jwt_public_key) {
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::Invalid {
                            name: "jwt-secret",
                            reason: "set either jwt-secret or jwt-public-key, not both".into(),
                        })
                    }
                    (Some(secret), None) => AuthConfig::Secret {
                        secret,
                        leeway_secs,
                    },
                    (None, Some(path)) => AuthConfig::PublicKey { path, leeway_secs },
                    (None, None) => AuthConfig::Open,
                }
            },
            max_rooms: positive("max-rooms", settings.max_rooms.unwrap_or(DEFAULT_MAX_ROOMS))?,
            max_connections: positive(
                "max-connections",
                settings.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            )?,
            handshake_timeout: seconds(
                "handshake-timeout-secs",
                settings
                    .handshake_timeout_secs
                    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
                0.1,
                300.0,
            )?,
            cors_origins: parse_origins(settings.cors_origins.as_deref().unwrap_or(""))?,
            // 0: rooms run on the HTTP threads.
            room_threads: threads("room-threads", settings.room_threads, 0, 0)?,
            http_threads: threads(
                "http-threads",
                settings.http_threads,
                1,
                default_http_threads(cpus),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.flush, FlushPolicy::EveryBatch);
        assert_eq!(config.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(config.room_threads, 0, "rooms run on the HTTP threads");
        assert!(config.http_threads >= 1);
    }

    #[test]
    fn http_threads_leave_one_cpu_but_never_go_below_one() {
        assert_eq!(default_http_threads(0), 1);
        assert_eq!(default_http_threads(1), 1);
        assert_eq!(default_http_threads(2), 1);
        assert_eq!(default_http_threads(8), 7);
    }

    #[test]
    fn flags_win_over_the_file() {
        let flags = Settings {
            room_idle_secs: Some(5.0),
            ..Settings::default()
        };
        let file: Settings = toml::from_str("room-idle-secs = 9\nflush = \"interval:20\"").unwrap();
        let config = Config::from_settings(flags.or(file)).unwrap();
        assert_eq!(config.room.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.flush, FlushPolicy::Interval(20));
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let cases = [
            ("flush = \"sometimes\"", "flush"),
            ("commit-gap-ms = 5000", "commit-gap-ms"),
            ("sled-cache-bytes = 100", "sled-cache-bytes"),
            ("route-mode = \"maybe\"", "route-mode"),
            ("node-id = \"n1\"", "postgres-url"),
            ("heartbeat-interval-secs = 40", "heartbeat-interval-secs"),
            ("max-message-bytes = 10", "max-message-bytes"),
            ("snapshot-every-updates = 0", "snapshot-every-updates"),
            ("cors-origins = \"app.example.com\"", "cors-origins"),
            ("cors-origins = \"https://a.example/path\"", "cors-origins"),
            ("stream-retention-messages = 0", "stream-retention-messages"),
            ("typing-ttl-secs = 0", "typing-ttl-secs"),
            ("room-threads = 257", "room-threads"),
            ("http-threads = 0", "http-threads"),
        ];
        for (toml_text, name) in cases {
            let settings: Settings = toml::from_str(toml_text).unwrap();
            let err = Config::from_settings(settings).unwrap_err().to_string();
            assert!(err.contains(name), "{toml_text}: {err}");
        }
        assert!(toml::from_str::<Settings>("no-such-key = 1").is_err());
    }
}
