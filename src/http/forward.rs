//! `--route-mode proxy`: plain HTTP and SSE requests for a room another node owns are
//! forwarded there by this node (request and response streamed, never buffered) instead of
//! answered with a 307. For clients that cannot follow redirects, or networks where only
//! some nodes are reachable. WebSockets are relayed in every mode ([`super::proxy`]).
//! A middleware: it looks at the path only, and leaves everything else to the routes.

use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use tracing::debug;

use super::{next_hop_query, ApiError, AppState};
use crate::cluster::placement::Owner;
use crate::config::RouteMode;
use crate::id::RoomName;

/// Longest wait for the owner's response head (a long-poll waits up to 60 s before it).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(75);

/// Where `req` must be forwarded: the owner's URL for this path and query, when this node
/// runs in proxy mode, the request is a plain HTTP request for a room, and another node
/// owns the room. `Err` for a request that already bounced twice.
pub fn target(req: &ServiceRequest) -> Result<Option<String>, ApiError> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Ok(None);
    };
    let Some(placement) = &state.placement else {
        return Ok(None);
    };
    if state.config.route_mode != RouteMode::Proxy || req.headers().contains_key(header::UPGRADE) {
        return Ok(None);
    }
    let Some(rest) = req.path().strip_prefix("/rooms/") else {
        return Ok(None);
    };
    let Ok(room) = RoomName::parse(rest.split('/').next().unwrap_or("")) else {
        return Ok(None); // the route answers the bad name
    };
    let Owner::Remote(owner) = placement.owner(&room) else {
        return Ok(None);
    };
    let query = next_hop_query(req.query_string(), &room)?;
    Ok(Some(format!("{}{}?{}", owner.url, req.path(), query)))
}

/// Forwards `req` to `url` and streams the owner's answer back.
pub async fn forward(req: ServiceRequest, url: String) -> ServiceResponse<BoxBody> {
    let (http, payload) = req.into_parts();
    let mut request = awc::Client::new()
        .request_from(url.as_str(), http.head())
        .timeout(FORWARD_TIMEOUT)
        .no_decompress();
    if let Some(peer) = http.peer_addr() {
        request = request.insert_header(("x-forwarded-for", peer.ip().to_string()));
    }
    let response = match request.send_stream(payload).await {
        Ok(owner) => {
            let mut answer = HttpResponse::build(owner.status());
            for (name, value) in owner.headers() {
                if name != header::CONNECTION && name != header::TRANSFER_ENCODING {
                    answer.insert_header((name.clone(), value.clone()));
                }
            }
            answer.streaming(owner)
        }
        Err(e) => {
            debug!(%url, error = %e, "forwarding to the room's owner failed");
            actix_web::ResponseError::error_response(&ApiError::Unavailable(
                "the room's owner cannot be reached; retry shortly".into(),
            ))
        }
    };
    ServiceResponse::new(http, response)
}
