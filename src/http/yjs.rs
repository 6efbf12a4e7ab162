//! The WebSocket upgrade for `/yjs/{room}`: validate the room name, then hand the socket to
//! a [`Session`] with the configured frame limit.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use super::{authorize, room_name, AppState};
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
    let session = Session::new(
        name,
        grant.access,
        state.registry.clone(),
        state.config.session.clone(),
    );
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(state.config.max_message_bytes)
        .start()
}
