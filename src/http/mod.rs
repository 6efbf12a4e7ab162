//! The HTTP edge: the route table, the shared state handlers see, and the one place where
//! errors become HTTP responses. The only module that knows actix-web's request types.
//!
//! Routes:
//! - `GET /yjs/{room}` — WebSocket upgrade, y-websocket protocol ([`yjs`], [`upgrade`]);
//! - `GET /rooms/{room}/state`, `POST /rooms/{room}/update` — the document over HTTP ([`api`]);
//! - `GET /rooms/{room}/ws` (WebSocket), `GET /rooms/{room}/events` (SSE),
//!   `POST|GET /rooms/{room}/messages` — the chat stream ([`chat`]);
//! - `GET /route/{room}`, `GET /cluster` — who owns what ([`cluster`]);
//! - `GET /healthz`, `GET /readyz`, `GET /metrics` — operations ([`ops`]);
//! - `GET /`, `GET /r/{room}`, `GET /demo/*` — the demo page ([`demo`]).

mod api;
mod chat;
mod cluster;
mod demo;
pub mod forward;
mod ops;
mod proxy;
pub mod upgrade;
mod yjs;

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use thiserror::Error;

use crate::auth::{Access, AuthError, Authenticator, Grant};
use crate::cluster::placement::{Owner, Placement};
use crate::config::Config;
use crate::metrics;
use crate::registry::Registry;
use crate::room::{RoomError, RoomName, RoomNameError};
use crate::session::placement::SessionThreads;
use crate::storage::Store;

/// What every handler can reach.
pub struct AppState {
    /// The room registry (one handle shared by every session: cloning an `Addr`
    /// allocates).
    pub registry: Arc<Addr<Registry>>,
    /// The store (for readiness).
    pub store: Arc<dyn Store>,
    /// The running configuration.
    pub config: Config,
    /// Verifies tokens (shared with chat sessions, which verify `refresh` tokens).
    pub auth: Arc<Authenticator>,
    /// Live WebSocket sessions (for the connection limit).
    pub connections: Arc<AtomicUsize>,
    /// False once shutdown has begun.
    pub ready: AtomicBool,
    /// Turns true when the server shuts down: every WebSocket session closes ("going away").
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Which node owns which room, when this node is one of a cluster.
    pub placement: Option<Arc<Placement>>,
    /// Which thread each WebSocket session runs on.
    pub session_threads: Arc<SessionThreads>,
}

/// Registers every route, and the JSON answers for what matches none.
///
/// `{room}` also matches an empty segment (`/yjs/`, `/rooms//state`), so that an empty
/// room name gets the same 400 with a reason as any other invalid one, before any upgrade.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("invalid query: {e}")).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("invalid path: {e}")).into()),
    )
    .route("/yjs/{room:[^/]*}", web::get().to(yjs::upgrade))
    .route("/rooms/{room:[^/]*}/state", web::get().to(api::get_state))
    .route(
        "/rooms/{room:[^/]*}/update",
        web::post().to(api::post_update),
    )
    .route("/rooms/{room:[^/]*}/ws", web::get().to(chat::upgrade))
    .route("/rooms/{room:[^/]*}/events", web::get().to(chat::events))
    .route(
        "/rooms/{room:[^/]*}/messages",
        web::post().to(chat::publish),
    )
    .route("/rooms/{room:[^/]*}/messages", web::get().to(chat::read))
    .route("/route/{room:[^/]*}", web::get().to(cluster::route))
    .route("/cluster", web::get().to(cluster::cluster))
    .route("/healthz", web::get().to(ops::healthz))
    .route("/readyz", web::get().to(ops::readyz))
    .route("/metrics", web::get().to(ops::metrics))
    .route("/", web::get().to(demo::page))
    .route("/r/{room}", web::get().to(demo::page))
    .route("/demo/app.js", web::get().to(demo::script))
    .route("/demo/app.css", web::get().to(demo::stylesheet))
    .default_service(web::to(not_found));
}

/// Any request no route takes: 404 with the reason in JSON.
async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no endpoint {} {}",
        req.method(),
        req.path()
    )))
}

/// Reads a request body of at most `limit` bytes: one that declares or sends more is
/// refused with a JSON 413 as soon as that is known, without buffering the excess.
pub(crate) async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An error at the HTTP edge, with the status it maps to.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The room name in the path is invalid.
    #[error("invalid room name: {0}")]
    RoomName(#[from] RoomNameError),
    /// The request body was refused.
    #[error("{0}")]
    BadRequest(String),
    /// The server cannot serve this now.
    #[error("{0}")]
    Unavailable(String),
    /// The document would exceed its size limit.
    #[error("document would exceed {0} bytes")]
    TooLarge(u64),
    /// The request body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No endpoint has this path (and method).
    #[error("{0}")]
    NotFound(String),
    /// Another node owns the room: 307 to it.
    #[error("room {room} is served by node {owner}")]
    Redirect {
        /// The room.
        room: String,
        /// The owner's id.
        owner: String,
        /// Where to go.
        location: String,
        /// The ring version that decided.
        ring_version: u64,
    },
    /// The request was redirected twice already and still did not reach the owner (the
    /// nodes' views of the cluster disagree for a moment): 503, retry shortly.
    #[error("room {0} is moving between nodes; retry shortly")]
    Bounced(String),
}

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::Invalid(e) => ApiError::BadRequest(e.to_string()),
            // Storage details stay in the log; the client learns only that it may retry.
            e @ RoomError::Store(_) => {
                tracing::error!(error = %e, "storage failure during a request");
                ApiError::Unavailable(e.public_message())
            }
            e @ (RoomError::Unavailable(_) | RoomError::Full { .. }) => {
                ApiError::Unavailable(e.public_message())
            }
            RoomError::TooLarge { limit } => ApiError::TooLarge(limit),
            RoomError::BodyTooLarge { limit } => {
                ApiError::PayloadTooLarge(format!("message body is larger than {limit} bytes"))
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::RoomName(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooLarge(_) | ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Auth(e) if e.is_unauthenticated() => StatusCode::UNAUTHORIZED,
            ApiError::Auth(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Redirect { .. } => StatusCode::TEMPORARY_REDIRECT,
            ApiError::Bounced(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.status_code() == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, "1"));
        }
        if let ApiError::Redirect {
            location,
            ring_version,
            ..
        } = self
        {
            response.insert_header((header::LOCATION, location.as_str()));
            response.insert_header((RING_VERSION_HEADER, ring_version.to_string()));
        }
        response.json(serde_json::json!({ "error": self.to_string() }))
    }
}

/// Validates the `{room}` path segment.
fn room_name(raw: &str) -> Result<RoomName, ApiError> {
    Ok(RoomName::parse(raw)?)
}

/// The response header carrying the ring version that routed a request.
pub const RING_VERSION_HEADER: &str = "tandem-ring-version";
/// The query parameter that counts redirects between nodes.
const HOPS_PARAM: &str = "tandem_hops";

/// The query to send a request on to a room's owner with: the same, its hop count one
/// higher. A request that already bounced twice (the nodes' views disagree for a moment)
/// is refused with 503 rather than sent round in a loop.
pub(crate) fn next_hop_query(query: &str, room: &RoomName) -> Result<String, ApiError> {
    let mut hops = 0u32;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair
            .strip_prefix(HOPS_PARAM)
            .and_then(|v| v.strip_prefix('='))
        {
            Some(n) => hops = n.parse().unwrap_or(u32::MAX),
            None => kept.push(pair),
        }
    }
    if hops >= 2 {
        return Err(ApiError::Bounced(room.to_string()));
    }
    let hop = format!("{HOPS_PARAM}={}", hops + 1);
    kept.push(&hop);
    Ok(kept.join("&"))
}

/// Validates the `{room}` segment and routes the request: a room this node owns is served
/// here; any other gets a 307 to its owner (the same path and query, with a hop count), and
/// a request that already bounced twice gets 503 rather than a loop.
fn routed_room(req: &HttpRequest, state: &AppState, raw: &str) -> Result<RoomName, ApiError> {
    let room = room_name(raw)?;
    let Some(placement) = &state.placement else {
        return Ok(room);
    };
    let Owner::Remote(owner) = placement.owner(&room) else {
        return Ok(room);
    };
    let query = next_hop_query(req.query_string(), &room)?;
    let location = format!("{}{}?{query}", owner.url, req.path());
    metrics::get().redirects.inc();
    Err(ApiError::Redirect {
        room: room.to_string(),
        owner: owner.id.to_string(),
        location,
        ring_version: placement.snapshot().ring.version(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_is_counted_and_a_third_is_refused() {
        let room = RoomName::parse("r").unwrap();
        assert_eq!(next_hop_query("", &room).unwrap(), "tandem_hops=1");
        assert_eq!(
            next_hop_query("since=3&tandem_hops=1&limit=5", &room).unwrap(),
            "since=3&limit=5&tandem_hops=2"
        );
        assert!(matches!(
            next_hop_query("tandem_hops=2", &room),
            Err(ApiError::Bounced(_))
        ));
        assert!(next_hop_query("tandem_hops=junk", &room).is_err());
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The bearer token: `Authorization: Bearer …`, else the `token` query parameter (browsers
/// cannot set headers on a WebSocket).
fn token(req: &HttpRequest) -> Option<String> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    header.or_else(|| {
        web::Query::<TokenQuery>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().token)
    })
}

/// Authorizes `req` for `room`, requiring write access if `write`.
fn authorize(
    req: &HttpRequest,
    state: &AppState,
    room: &RoomName,
    write: bool,
) -> Result<Grant, ApiError> {
    let grant = state.auth.authorize(token(req).as_deref(), room)?;
    if write && grant.access != Access::Write {
        return Err(AuthError::ReadOnly.into());
    }
    Ok(grant)
}
