//! Operations endpoints: liveness, readiness and Prometheus metrics.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::metrics;

/// `GET /healthz`: the process is up and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// `GET /readyz`: the store is usable and the server is not shutting down.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.ready.load(Ordering::Relaxed) && state.store.is_ready() {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("not ready\n")
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics::get().render())
}
