//! The document over plain HTTP: read the state, apply an update. Each answer is given only
//! once the state it reflects is durable.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;

use super::{authorize, read_body, routed_room, ApiError, AppState};
use crate::metrics;
use crate::registry::send_to_room;
use crate::room::{ApplyUpdate, DurableReply, ReadState, RoomError};

/// Query of `GET /rooms/{room}/state`.
#[derive(Debug, Deserialize)]
pub struct StateQuery {
    /// `json` for the root types as JSON; otherwise a binary v1 update.
    format: Option<String>,
}

/// Waits for a room's durable reply.
pub(super) async fn durable(reply: DurableReply) -> Result<Bytes, ApiError> {
    reply
        .await
        .map_err(|_| ApiError::Unavailable("room stopped before the write was durable".into()))?
        .map_err(ApiError::from)
}

/// `GET /rooms/{room}/state[?format=json]`.
pub async fn get_state(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<StateQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = routed_room(&req, &state, &path)?;
    authorize(&req, &state, &name, false)?;
    let json = match query.format.as_deref() {
        None | Some("binary") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown format {other:?}; use json or binary"
            )))
        }
    };
    let reply = send_to_room(&state.registry, &name, || ReadState { json }).await??;
    let body = durable(reply).await?;
    let content_type = if json {
        "application/json"
    } else {
        "application/octet-stream"
    };
    Ok(HttpResponse::Ok().content_type(content_type).body(body))
}

/// `POST /rooms/{room}/update`: the body is one v1 Yjs update; 204 once it is durable.
pub async fn post_update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = routed_room(&req, &state, &path)?;
    authorize(&req, &state, &name, true)?;
    let body = read_body(&req, payload, state.config.max_message_bytes).await?;
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "empty body; expected a Yjs v1 update".into(),
        ));
    }
    metrics::get().bytes_in.inc_by(body.len() as u64);
    let reply = send_to_room(&state.registry, &name, || ApplyUpdate {
        update: body.clone(),
    })
    .await?
    .map_err(|e: RoomError| ApiError::from(e))?;
    durable(reply).await?;
    Ok(HttpResponse::NoContent().finish())
}
