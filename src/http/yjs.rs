//! The WebSocket upgrade for `/yjs/{room}`: validate the room name and the token, then
//! accept the handshake with a y-websocket session ([`super::upgrade`] starts it).

use actix_web::{web, HttpRequest, HttpResponse};

use std::sync::Arc;

use super::{authorize, routed_room, upgrade, AppState};
use crate::auth::Grant;
use crate::room::RoomName;
use crate::session::SessionPlan;

/// `GET /yjs/{room}`: upgrade to a y-websocket session.
pub async fn upgrade(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if let Some(relayed) = super::proxy::route_upgrade(&req, &state, &path)? {
        return Ok(relayed);
    }
    let name = routed_room(&req, &state, &path)?;
    // Checked before the upgrade: a refused client gets a 401/403 with a reason, never a socket.
    let grant = authorize(&req, &state, &name, false)?;
    upgrade::accept(session(&state, name, &grant), &req, &state)
}

/// A session for `name` under `grant` with this node's configuration (y-websocket unless
/// made chat).
pub(super) fn session(state: &AppState, name: RoomName, grant: &Grant) -> SessionPlan {
    SessionPlan::new(
        name,
        grant,
        Arc::clone(&state.auth),
        state.registry.clone(),
        state.config.session.clone(),
        Arc::clone(&state.connections),
        state.shutdown.subscribe(),
    )
}
