//! The chat stream over HTTP: the WebSocket upgrade for `/rooms/{room}/ws`, the SSE
//! subscription, publishing with an `Idempotency-Key`, and history with long-poll. Each
//! handler only translates HTTP into a room message; the stream itself is the room's.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::api::durable;
use super::{authorize, read_body, routed_room, ApiError, AppState};
use crate::metrics;
use crate::registry::send_to_room;
use crate::room::{HttpPublish, ReadMessages, ReadReply, DEFAULT_PAGE, MAX_PAGE};
use crate::session::sse::{SseSession, Subscriber};
use crate::stream::wire::MAX_ID_BYTES;
use crate::stream::ResumeFrom;

/// Longest long-poll wait a client may ask for, in seconds.
pub const MAX_WAIT_SECS: f64 = 60.0;

/// `GET /rooms/{room}/ws`: upgrade to a chat-stream WebSocket session.
pub async fn upgrade(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if let Some(relayed) = super::proxy::route_upgrade(&req, &state, &path)? {
        return Ok(relayed);
    }
    let name = routed_room(&req, &state, &path)?;
    let grant = authorize(&req, &state, &name, false)?;
    let session = super::yjs::session(&state, name, &grant).chat(grant.subject, grant.info);
    super::upgrade::accept(session, &req, &state)
}

/// Where a subscriber or reader resumes: `since` (or SSE's `Last-Event-ID`), and `epoch`.
#[derive(Debug, Deserialize)]
pub struct PositionQuery {
    /// The last seq the client has seen.
    since: Option<u64>,
    /// The epoch `since` belongs to.
    epoch: Option<String>,
    /// Page size (reads only).
    limit: Option<usize>,
    /// Seconds to wait for a newer message (reads only).
    wait: Option<f64>,
}

fn query(req: &HttpRequest) -> Result<PositionQuery, ApiError> {
    web::Query::<PositionQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))
}

/// `GET /rooms/{room}/events[?since=N&epoch=E]`: subscribe with Server-Sent Events.
/// `Last-Event-ID` (sent by `EventSource` on reconnect) wins over `since`.
pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = routed_room(&req, &state, &path)?;
    let grant = authorize(&req, &state, &name, false)?;
    let q = query(&req)?;
    let last_event_id = match req.headers().get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be a message seq".into())
                })?,
        ),
    };
    if state.connections.load(std::sync::atomic::Ordering::Relaxed) >= state.config.max_connections
    {
        return Err(ApiError::Unavailable(
            "this node is at its connection limit".into(),
        ));
    }
    let resume = last_event_id.or(q.since).map(|since| ResumeFrom {
        epoch: q.epoch,
        since,
    });
    let expires_in = grant.remaining();
    let body = SseSession::start(
        name,
        Subscriber {
            subject: grant.subject,
            info: grant.info,
            access: grant.access,
            resume,
            expires_in,
        },
        state.registry.clone(),
        state.config.session.clone(),
        Arc::clone(&state.connections),
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// `POST /rooms/{room}/messages`: the body is the message (any JSON value); the answer,
/// once it is durable, is the `ack`. A retry with the same `Idempotency-Key` gets the
/// original seq and `"duplicate": true`.
pub async fn publish(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = routed_room(&req, &state, &path)?;
    let grant = authorize(&req, &state, &name, true)?;
    let body = read_body(&req, payload, state.config.max_message_bytes).await?;
    metrics::get().bytes_in.inc_by(body.len() as u64);
    let id = match req.headers().get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= MAX_ID_BYTES => Some(key.to_owned()),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "Idempotency-Key must be 1..={MAX_ID_BYTES} visible ASCII characters"
                )))
            }
        },
    };
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body must be JSON: {e}")))?;
    let reply = send_to_room(&state.registry, &name, || HttpPublish {
        subject: grant.subject.clone(),
        id: id.clone(),
        body: body.clone(),
    })
    .await??;
    let ack = durable(reply).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(ack))
}

/// `GET /rooms/{room}/messages[?since=N&epoch=E&limit=L&wait=S]`: a page of messages after
/// `since` (the latest page without it). With `wait`, a reader that is caught up is
/// answered when the next message arrives, or after `wait` seconds with an empty page.
pub async fn read(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = routed_room(&req, &state, &path)?;
    authorize(&req, &state, &name, false)?;
    let q = query(&req)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1..={MAX_PAGE}"
        )));
    }
    let wait = match q.wait {
        None => Duration::ZERO,
        Some(secs) if (0.0..=MAX_WAIT_SECS).contains(&secs) => Duration::from_secs_f64(secs),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "wait must be 0..={MAX_WAIT_SECS} seconds"
            )))
        }
    };
    let from = q.since.map(|since| ResumeFrom {
        epoch: q.epoch,
        since,
    });
    let read = |wait: bool| ReadMessages {
        from: from.clone(),
        limit,
        wait,
    };
    let page = match send_to_room(&state.registry, &name, || read(!wait.is_zero())).await?? {
        ReadReply::Page(page) => page,
        ReadReply::Wait(woken) => {
            // Woken by a delivery, timed out, or the room stopped: read again either way.
            let _ = tokio::time::timeout(wait, woken).await;
            match send_to_room(&state.registry, &name, || read(false)).await?? {
                ReadReply::Page(page) => page,
                ReadReply::Wait(_) => {
                    return Err(ApiError::Unavailable(
                        "the room answered a read with a wait".into(),
                    ))
                }
            }
        }
    };
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(page))
}
