//! The WebSocket upgrade: how a checked handshake becomes a session on the bare socket.
//!
//! actix-http hands every `Upgrade: websocket` request, with its connection, to
//! [`service`] instead of its HTTP/1 dispatcher. The request still goes through the same
//! actix-web app as any other (routing, room name, authorization, the handshake check,
//! the connection limit), whose WebSocket handlers answer with a 101 response carrying a
//! [`Handover`]. This module writes that response and starts the session on the socket;
//! any other answer is written as is and the connection is closed.
//!
//! Why not actix-web's WebSocket support: its session keeps the HTTP dispatcher (with its
//! two 8 KiB buffers) alive for the connection's whole life, and an idle connection would
//! cost more memory than the room it is in. It also stops serving a session whose client
//! stops reading, so such a session could not even time out.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::{BodySize, MessageBody};
use actix_http::h1;
use actix_http::{ConnectionType, HttpMessage as _, Request, Response, StatusCode};
use actix_service::{fn_factory, fn_service, IntoServiceFactory, Service, ServiceFactory};
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::proxy::ProxyTo;
use super::{ApiError, AppState};
use crate::protocol::close;
use crate::session::SessionPlan;

/// The response extension that marks a 101 answer and holds the session to start.
struct Handover(SessionPlan);

/// The request extension that marks a request handed over by actix-http as an upgrade.
struct ViaUpgrade;

/// Whether `req` came through the upgrade service (a WebSocket handshake it can take over).
pub(super) fn via_upgrade(req: &HttpRequest) -> bool {
    req.extensions().contains::<ViaUpgrade>()
}

/// Accepts a WebSocket handshake for `plan`: the 101 response with the session attached,
/// or 400 with the reason when `req` is no valid WebSocket handshake.
pub(super) fn accept(
    plan: SessionPlan,
    req: &HttpRequest,
    state: &AppState,
) -> Result<HttpResponse, actix_web::Error> {
    let switching = actix_http::ws::handshake(req.head())
        .map_err(|e| ApiError::BadRequest(format!("not a WebSocket handshake: {e}")))?
        .finish();
    // actix-http hands over only `Upgrade: websocket` exactly, without a request body; a
    // looser handshake would get its 101 from the HTTP dispatcher and no session.
    if !req.extensions().contains::<ViaUpgrade>() {
        return Err(ApiError::BadRequest(
            "WebSocket handshake not recognised: send `Upgrade: websocket` and no body".into(),
        )
        .into());
    }
    // Over the connection limit, or while shutting down, the upgrade still happens, so
    // that the client gets a close code it understands (1013, try again later) instead of
    // a failed handshake.
    let full = state.connections.load(Ordering::Relaxed) >= state.config.max_connections;
    let plan = if full || !state.ready.load(Ordering::Relaxed) {
        plan.refusing(close::TRY_AGAIN_LATER)
    } else {
        plan.placed(&state.session_threads)
    };
    let mut response = HttpResponse::from(switching).map_into_boxed_body();
    response.extensions_mut().insert(Handover(plan));
    Ok(response)
}

/// The upgrade service for actix-http: each worker builds its own instance of `app` (the
/// same app that serves plain requests) and runs upgrade requests through it, each
/// answered within `timeout`.
pub fn service<F, I, A, B>(
    app: F,
    timeout: Duration,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, h1::Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    F: Fn() -> I + Clone + 'static,
    I: IntoServiceFactory<A, Request>,
    A: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
        > + 'static,
    B: MessageBody + 'static,
    A::Service: 'static,
    A::InitError: std::fmt::Debug,
{
    fn_factory(move || {
        let app = app().into_factory();
        async move {
            let app = app.new_service(AppConfig::default()).await.map_err(|e| {
                tracing::error!(error = ?e, "cannot build the app for WebSocket upgrades");
            })?;
            let app = Rc::new(app);
            Ok(fn_service(move |(req, framed)| {
                hand_over(Rc::clone(&app), req, framed, timeout)
            }))
        }
    })
}

/// Answers one upgrade request within `timeout` (a client that stops reading mid-handshake
/// is dropped). Failures are the client's (it left, or sent garbage): logged, not raised.
async fn hand_over<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    timeout: Duration,
) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    match tokio::time::timeout(timeout, answer(app, req, framed)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "WebSocket handshake failed"),
        Err(_) => debug!("WebSocket handshake timed out"),
    }
    Ok(())
}

/// Runs one upgrade request through the app, writes its answer, and starts the session
/// if the answer was a 101 with a [`Handover`].
async fn answer<S, B>(
    app: Rc<S>,
    req: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    req.extensions_mut().insert(ViaUpgrade);
    let mut response = match app.call(req).await {
        Ok(response) => response.into_parts().1.map_into_boxed_body(),
        Err(e) => e.error_response(),
    };
    if let Some(to) = response.extensions_mut().remove::<ProxyTo>() {
        // Another node owns the room: relay the connection there, handshake and all.
        let parts = framed.into_parts();
        actix::spawn(super::proxy::relay(parts.io, parts.read_buf, to));
        return Ok(());
    }
    let plan = response.extensions_mut().remove::<Handover>();
    let (head, body) = response.into_parts();
    let head: Response<()> = head.into();
    if let (Some(Handover(plan)), StatusCode::SWITCHING_PROTOCOLS) = (plan, head.status()) {
        framed
            .send(h1::Message::Item((head, BodySize::None)))
            .await?;
        let parts = framed.into_parts();
        plan.start(parts.io, &parts.read_buf);
        return Ok(());
    }
    // Not upgraded: an error (a small JSON reason) is written as it is, then the connection
    // closes. Any other answer (a document, an SSE stream) is not what was asked for.
    let (mut head, body) = if head.status().is_client_error() || head.status().is_server_error() {
        (head, body)
    } else {
        let refused = HttpResponse::BadRequest()
            .json(serde_json::json!({ "error": "this endpoint does not accept WebSockets" }));
        let (refused, body) = refused.into_parts();
        (Response::from(refused), body)
    };
    let bytes = actix_web::body::to_bytes(body)
        .await
        .map_err(|e| actix_web::error::ErrorInternalServerError(e.to_string()))?;
    head.head_mut().set_connection_type(ConnectionType::Close);
    debug!(status = %head.status(), "WebSocket upgrade refused");
    framed
        .send(h1::Message::Item((
            head,
            BodySize::Sized(bytes.len() as u64),
        )))
        .await?;
    if !bytes.is_empty() {
        framed.send(h1::Message::Chunk(Some(bytes))).await?;
    }
    framed.send(h1::Message::Chunk(None)).await?;
    Ok(())
}
