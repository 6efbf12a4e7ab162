//! WebSocket proxying to a room's owner. Browsers do not follow redirects on an upgrade, so
//! a WebSocket for a room another node owns is relayed there: this node opens a TCP
//! connection to the owner, sends it the client's handshake (same path and query, with a
//! hop count), and from then on copies bytes both ways. The owner answers the handshake,
//! runs the session and enforces every limit; close codes, pings and the owner's refusals
//! (a 401, a 503 after two bounces) reach the client unchanged. Buffers are bounded (one
//! fixed buffer each way, so a side that stops reading stops the other by TCP
//! backpressure).
//!
//! An owner that does not answer the handshake within 10 s (paused, say: its kernel still
//! accepts connections) gets the client a 502 with `Retry-After`.
//!
//! Not yet (issue 14): re-pointing a proxied session at a room's new owner on handoff
//! without the client seeing a close; TLS to an `https://` owner.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::{next_hop_query, room_name, ApiError, AppState};
use crate::cluster::placement::Owner;
use crate::metrics;

/// Bytes buffered per direction of a proxied connection.
const BUFFER: usize = 16 * 1024;
/// Longest wait to reach the owner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the owner's first answer to the handshake (a paused owner accepts the
/// connection in its kernel but never answers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to relay a WebSocket handshake, and the handshake itself (the response extension
/// that [`super::upgrade`] acts on).
pub(super) struct ProxyTo {
    /// `host:port` of the owner.
    pub authority: String,
    /// The request head to send it.
    pub head: Vec<u8>,
    /// Live WebSocket connections on this node (a proxied one counts).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

/// For a WebSocket upgrade of a room another node owns: the answer that hands the
/// connection to the proxy. `None` when the room is served here (or there is no cluster).
pub(super) fn route_upgrade(
    req: &HttpRequest,
    state: &AppState,
    raw: &str,
) -> Result<Option<HttpResponse>, ApiError> {
    let Some(placement) = &state.placement else {
        return Ok(None);
    };
    if !super::upgrade::via_upgrade(req) {
        return Ok(None); // not a handshake this node could relay: routed as plain HTTP
    }
    let room = room_name(raw)?;
    let Owner::Remote(owner) = placement.owner(&room) else {
        return Ok(None);
    };
    let Some(authority) = owner.url.strip_prefix("http://") else {
        return Err(ApiError::Unavailable(format!(
            "room {room} is served by {}, which this node cannot relay to (TLS); connect there",
            owner.url
        )));
    };
    let query = next_hop_query(req.query_string(), &room)?;
    let authority = authority.trim_end_matches('/').to_owned();
    let head = request_head(req, &authority, &query);
    let full = state.connections.load(Ordering::Relaxed) >= state.config.max_connections;
    if full || !state.ready.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable(
            "this node is at its connection limit".into(),
        ));
    }
    debug!(room = %room, owner = %owner.id, "relaying a WebSocket to the room's owner");
    let mut response = HttpResponse::SwitchingProtocols().finish();
    response.extensions_mut().insert(ProxyTo {
        authority,
        head,
        connections: Arc::clone(&state.connections),
    });
    Ok(Some(response))
}

/// The client's handshake, re-addressed to the owner: its headers but `Host`, and
/// `X-Forwarded-For` with the client's address.
fn request_head(req: &HttpRequest, authority: &str, query: &str) -> Vec<u8> {
    let mut head = format!(
        "GET {}?{} HTTP/1.1\r\nHost: {authority}\r\n",
        req.path(),
        query
    );
    for (name, value) in req.headers() {
        if name == header::HOST || name.as_str() == "x-forwarded-for" {
            continue;
        }
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if let Some(peer) = req.peer_addr() {
        head.push_str(&format!("X-Forwarded-For: {}\r\n", peer.ip()));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Answers the client with a 502 (the owner did not answer) and logs why.
async fn unreachable_owner(client: &mut TcpStream, owner: &str, why: &str) {
    info!(owner, error = why, "cannot reach the room's owner");
    let body = r#"{"error":"the room's owner cannot be reached; retry shortly"}"#;
    let answer = format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
}

/// Relays one connection until either side closes. `early` holds bytes the client sent
/// after its handshake that were already read.
pub(super) async fn relay(mut client: TcpStream, early: BytesMut, to: ProxyTo) {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&to.authority));
    let mut owner = match connect.await {
        Ok(Ok(owner)) => owner,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            return unreachable_owner(&mut client, &to.authority, &why).await;
        }
    };
    let _ = owner.set_nodelay(true);
    if owner.write_all(&to.head).await.is_err() || owner.write_all(&early).await.is_err() {
        return;
    }
    // The owner's first bytes (its answer to the handshake) must come in time.
    let mut first = vec![0u8; BUFFER];
    let read = match tokio::time::timeout(ANSWER_TIMEOUT, owner.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => n,
        Ok(Ok(_)) => return unreachable_owner(&mut client, &to.authority, "closed").await,
        Ok(Err(e)) => return unreachable_owner(&mut client, &to.authority, &e.to_string()).await,
        Err(_) => return unreachable_owner(&mut client, &to.authority, "no answer").await,
    };
    if client.write_all(&first[..read]).await.is_err() {
        return;
    }
    drop(first);
    metrics::get().proxied_sessions.inc();
    to.connections.fetch_add(1, Ordering::Relaxed);
    let copied =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut owner, BUFFER, BUFFER).await;
    to.connections.fetch_sub(1, Ordering::Relaxed);
    metrics::get().proxied_sessions.dec();
    debug!(owner = %to.authority, result = ?copied, "relayed connection ended");
}
