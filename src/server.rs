//! Wiring and ordered shutdown: open the store, start the room threads and the registry,
//! serve HTTP until the shutdown future resolves, then stop accepting, shut every room down
//! (sessions closed with "going away", final snapshots, flush), and stop.
//!
//! Shutdown is an argument so tests and embedders choose what triggers it; the binary
//! passes SIGTERM/Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_cors::Cors;
use actix_http::HttpService;
use actix_service::{map_config, IntoServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::http::header;
use actix_web::middleware::Condition;
use actix_web::{web, App};
use thiserror::Error;
use tokio::net::TcpSocket;
use tracing::{info, warn};

use crate::cluster::membership::{GossipConfig, GossipMembership, Member};
use crate::cluster::placement::Placement;
use crate::config::{ClusterConfig, Config};
use crate::http::{self, AppState};
use crate::registry::{Registry, RoomThreads, ShutdownAll};
use crate::session::placement::SessionThreads;
use crate::storage::{PostgresStore, SledStore, Store, StoreError};

/// Pending connections the kernel queues before the server accepts them (actix-web's
/// default; the listener is made here to log the address it really bound).
const BACKLOG: u32 = 1024;

/// Longest wait at shutdown for the rooms to stop, and then for the final flush.
const SHUTDOWN_ROOMS_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait at shutdown for sessions to finish their close handshakes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// Binding or serving failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The node could not join its cluster.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::membership::MembershipError),
    /// The HTTP server failed while running.
    #[error("HTTP server error: {0}")]
    Serve(std::io::Error),
}

/// CORS for browser apps on other origins: the chat's HTTP and SSE endpoints and the
/// document endpoints, with the headers they use. (WebSockets are not subject to CORS.)
fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
        .max_age(3600);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// A listening socket on `addr` with a backlog deep enough for bursts of connections.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

/// Waits until every session has finished its close handshake (the rooms have sent them
/// "going away"), for at most [`DRAIN_TIMEOUT`]. Upgraded sockets are not the HTTP
/// server's connections any more, so its graceful stop would not wait for them.
async fn drain(connections: &AtomicUsize) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while connections.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = connections.load(Ordering::Relaxed);
    if left > 0 {
        warn!(left, "sessions still open at shutdown; dropping them");
    }
}

/// Opens the store the configuration names: PostgreSQL when a URL is given, else the
/// embedded sled database in the data directory.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(postgres) = &config.postgres {
        info!(schema = %postgres.schema, "storing rooms in PostgreSQL");
        return Ok(Arc::new(PostgresStore::connect(postgres)?));
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StoreError::backend(format!("creating {}", config.data_dir.display()), e))?;
    Ok(Arc::new(SledStore::open_with_cache(
        &config.data_dir,
        config.flush,
        config.sled_cache_bytes,
    )?))
}

/// Starts gossiping and placing rooms for a cluster node bound at `addr`.
async fn join_cluster(
    cluster: &ClusterConfig,
    addr: SocketAddr,
) -> Result<(Arc<Placement>, Arc<GossipMembership>), ServerError> {
    let me = Member {
        id: cluster.node_id.clone(),
        url: cluster
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}")),
    };
    info!(node = %me.id, url = %me.url, gossip = %cluster.gossip_listen, seeds = ?cluster.seeds, "joining the cluster");
    let membership = GossipMembership::start(GossipConfig {
        me,
        listen: cluster.gossip_listen,
        seeds: cluster.seeds.clone(),
        cluster_id: cluster.cluster_id.clone(),
    })
    .await
    .map_err(ServerError::Cluster)?;
    let membership = Arc::new(membership);
    let placement = Placement::start(
        Arc::clone(&membership) as Arc<dyn crate::cluster::membership::Membership>
    );
    Ok((placement, membership))
}

/// Runs the server with the store its configuration names until `shutdown` resolves.
/// Must run inside an actix system (`actix_web::main` or `actix::System`).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), ServerError> {
    let store = open_store(&config)?;
    run_with_store(config, store, shutdown).await
}

/// Runs the server on a given store; see [`run`].
pub async fn run_with_store(
    config: Config,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), ServerError> {
    run_listening(config, store, shutdown, |_| {}).await
}

/// Runs the server on a given store and tells `listening` the address it bound (the one
/// the kernel picked when the configured port is 0) before serving; see [`run`].
pub async fn run_listening(
    config: Config,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + 'static,
    listening: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    // The metrics registry is a fixed cost of the process: built now, every series is at
    // `/metrics` from the start, and the first client does not wait while it is built (or
    // fault in the code it takes, counted as that client's room's memory).
    crate::metrics::get();
    let auth = config.auth.authenticator()?;
    if auth.is_open() {
        warn!("NO AUTHENTICATION CONFIGURED: anyone who can reach this server may read and write every room; set --jwt-secret or --jwt-public-key");
    }
    let listener = listen(config.listen).map_err(|source| ServerError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    let placement = match &config.cluster {
        Some(cluster) => Some(join_cluster(cluster, addr).await?),
        None => None,
    };
    // Rooms run on threads of their own, or (`--room-threads 0`) on the HTTP workers, each
    // of which adds itself as it starts.
    let arbiters: Vec<Arbiter> = (0..config.room_threads).map(|_| Arbiter::new()).collect();
    let room_threads = RoomThreads::default();
    for arbiter in &arbiters {
        room_threads.add(arbiter.handle());
    }
    let rooms_on_workers = arbiters.is_empty().then(|| room_threads.clone());
    let session_threads = SessionThreads::new(room_threads.clone());
    let mut registry = Registry::new(
        Arc::clone(&store),
        room_threads,
        Arc::new(config.room.clone()),
        config.max_rooms,
    );
    if let Some((placement, _)) = &placement {
        registry = registry.with_placement(Arc::clone(placement));
    }
    let registry = registry.start();
    let state = web::Data::new(AppState {
        registry: Arc::new(registry.clone()),
        store,
        config: config.clone(),
        auth: Arc::new(auth),
        connections: Arc::new(AtomicUsize::new(0)),
        ready: AtomicBool::new(true),
        shutdown: tokio::sync::watch::Sender::new(false),
        placement: placement.as_ref().map(|(p, _)| Arc::clone(p)),
        session_threads,
    });
    let app_state = state.clone();
    let cors_origins = config.cors_origins.clone();
    let app = move || {
        App::new()
            // Innermost: forwards requests for another node's rooms (--route-mode proxy).
            .wrap_fn(|req, routes| {
                use actix_service::Service as _;
                let answer: futures_util::future::LocalBoxFuture<
                    'static,
                    Result<actix_web::dev::ServiceResponse, actix_web::Error>,
                > = match http::forward::target(&req) {
                    Ok(None) => Box::pin(routes.call(req)),
                    Ok(Some(url)) => {
                        Box::pin(async move { Ok(http::forward::forward(req, url).await) })
                    }
                    Err(e) => {
                        let response = actix_web::ResponseError::error_response(&e);
                        Box::pin(std::future::ready(Ok(req.into_response(response))))
                    }
                };
                answer
            })
            .wrap(Condition::new(
                !cors_origins.is_empty(),
                cors(&cors_origins),
            ))
            .app_data(app_state.clone())
            .configure(http::routes)
    };
    match &config.postgres {
        Some(pg) => info!(%addr, postgres_schema = %pg.schema, "tandem listening"),
        None => info!(%addr, data_dir = %config.data_dir.display(), "tandem listening"),
    }
    // On stdout whatever the log level: the address to use (the bound one, when the
    // configured port was 0), for people and for scripts that start the server.
    println!("tandem listening on http://{addr}");
    println!(
        "open {} in a browser to write and chat together",
        page_url(addr)
    );
    listening(addr);
    let handshake_timeout = config.handshake_timeout;
    let builder = actix_server::Server::build();
    // Lets idle keep-alive connections go at once when the server stops.
    let stopping = builder.graceful_shutdown_signal();
    let server = builder
        .workers(config.http_threads)
        .disable_signals()
        .shutdown_timeout(5)
        .listen("tandem", listener, move || {
            // Called once on each worker's thread as it starts.
            if let Some(threads) = &rooms_on_workers {
                threads.add_this_worker();
            }
            let stopping = stopping.clone();
            HttpService::build()
                .client_request_timeout(handshake_timeout)
                // Time to drain a request body left unread after an error response (a 413),
                // so that the client reads the response instead of a reset.
                .client_disconnect_timeout(Duration::from_secs(1))
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                // Small frames must leave at once: with Nagle's algorithm on, an event
                // written right after another (a message, then its ack) waits for the
                // client's delayed ACK, ~40 ms.
                .tcp_nodelay(true)
                .local_addr(addr)
                // WebSocket handshakes leave the HTTP dispatcher for a bare socket.
                .upgrade(http::upgrade::service(app.clone(), handshake_timeout))
                .finish(map_config(app().into_factory(), |()| AppConfig::default()))
                .tcp()
        })
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let server = server.run();
    let handle = server.handle();
    actix::spawn(async move {
        shutdown.await;
        info!("shutting down: no new connections; flushing rooms");
        state.ready.store(false, Ordering::Relaxed);
        handle.pause().await;
        // Bounded: a stop must end even if a room or the database does not answer.
        match tokio::time::timeout(SHUTDOWN_ROOMS_TIMEOUT, registry.send(ShutdownAll)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "registry gone before shutdown"),
            Err(_) => warn!("rooms did not all stop in time; stopping anyway"),
        }
        match tokio::time::timeout(SHUTDOWN_ROOMS_TIMEOUT, state.store.flush_all()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the final flush failed"),
            Err(_) => warn!("the final flush did not end in time"),
        }
        // Sessions in a room were closed by it; this reaches the rest (chat sessions that
        // have not joined yet, sessions still joining).
        state.shutdown.send_replace(true);
        drain(&state.connections).await;
        handle.stop(true).await;
    });
    let result = server.await.map_err(ServerError::Serve);
    for arbiter in arbiters {
        arbiter.stop();
        let _ = arbiter.join();
    }
    info!("stopped");
    result
}

/// The demo page's URL for a person to open: a wildcard address becomes loopback, which a
/// browser on the same machine can reach.
fn page_url(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}/")
}
