//! Cluster endpoints: `GET /route/{room}` (who owns a room, for clients that ask before
//! connecting) and `GET /cluster` (the members this node sees and its ring version). On a
//! node that runs alone they describe a cluster of one.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{room_name, ApiError, AppState, RING_VERSION_HEADER};
use crate::registry::ActiveRooms;

/// `GET /route/{room}`: `{"room", "owner": {"id", "url"}, "ring_version"}`.
pub async fn route(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let room = room_name(&path)?;
    let Some(placement) = &state.placement else {
        return Ok(HttpResponse::Ok().json(json!({ "room": room.as_str(), "owner": null })));
    };
    let snapshot = placement.snapshot();
    let owner = snapshot
        .ring
        .owner(&room)
        .and_then(|id| snapshot.view.member(id));
    Ok(HttpResponse::Ok()
        .insert_header((RING_VERSION_HEADER, snapshot.ring.version().to_string()))
        .json(json!({
            "room": room.as_str(),
            "owner": owner.map(|m| json!({ "id": m.id.as_str(), "url": m.url })),
            "ring_version": snapshot.ring.version().to_string(),
        })))
}

/// `GET /cluster`: this node, the members it sees (live ones, then those the failure
/// detector holds dead), the ring version, and how many rooms are active here.
pub async fn cluster(state: web::Data<AppState>) -> HttpResponse {
    let rooms_active = state.registry.send(ActiveRooms).await.unwrap_or(0);
    let Some(placement) = &state.placement else {
        return HttpResponse::Ok().json(json!({
            "node": null, "members": [], "ring_version": null, "rooms_active": rooms_active
        }));
    };
    let snapshot = placement.snapshot();
    let members: Vec<_> = snapshot
        .view
        .members
        .iter()
        .map(|m| {
            let rooms = if m.id == placement.me().id {
                Some(rooms_active as u64)
            } else {
                snapshot.view.rooms.get(&m.id).copied()
            };
            json!({ "id": m.id.as_str(), "url": m.url, "state": "alive", "rooms_owned": rooms })
        })
        .chain(
            snapshot
                .view
                .dead
                .iter()
                .map(|m| json!({ "id": m.id.as_str(), "url": m.url, "state": "dead" })),
        )
        .collect();
    HttpResponse::Ok().json(json!({
        "node": { "id": placement.me().id.as_str(), "url": placement.me().url },
        "members": members,
        "ring_version": snapshot.ring.version().to_string(),
        "rooms_active": rooms_active,
    }))
}
