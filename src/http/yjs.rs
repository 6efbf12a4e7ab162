//! The WebSocket upgrade for `/yjs/{room}`: validate the room name, then hand the socket to
//! a [`Session`] with the configured frame limit.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{authorize, room_name, AppState};
use crate::auth::Access;
use crate::protocol::close;
use crate::room::RoomName;
use crate::session::Session;

/// `GET /yjs/{room}`: upgrade to a y-websocket session.
pub async fn upgrade(
    req: HttpRequest,
    path: web::Path<String>,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let name = room_name(&path)?;
    // Checked before the upgrade: a refused client gets a 401/403 with a reason, never a socket.
    let grant = authorize(&req, &state, &name, false)?;
    start(session(&state, name, grant.access), &req, stream, &state)
}

/// A session for `name` with this node's configuration (y-websocket unless made chat).
pub(super) fn session(state: &AppState, name: RoomName, access: Access) -> Session {
    Session::new(
        name,
        access,
        state.registry.clone(),
        state.config.session.clone(),
        Arc::clone(&state.connections),
    )
}

/// Completes the upgrade of `req` into `session` (y-websocket or chat) with the configured
/// frame limit.
pub(super) fn start(
    session: Session,
    req: &HttpRequest,
    stream: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, actix_web::Error> {
    // Over the connection limit the upgrade still happens, so that the client gets a close
    // code it understands (1013, try again later) instead of a failed handshake.
    let session = if state.connections.load(Ordering::Relaxed) >= state.config.max_connections {
        session.refusing(close::TRY_AGAIN_LATER)
    } else {
        session
    };
    ws::WsResponseBuilder::new(session, req, stream)
        .frame_size(state.config.max_message_bytes)
        .start()
}
