//! The admin listener: preStop hook, readiness, liveness and metrics.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode};
use tracing::{info, warn};

use crate::context::{AppContext, HttpResponse};
use crate::state::Phase;

/// Handles one request on the admin listener.
pub async fn admin_handler<B>(
    ctx: Arc<AppContext>,
    request: Request<B>,
) -> Result<HttpResponse, Infallible> {
    let method = request.method();
    let readable = method == Method::GET || method == Method::HEAD;
    let response = match request.uri().path() {
        "/prestop" if readable || method == Method::POST => prestop(&ctx).await,
        "/readyz" if readable => readyz(&ctx),
        "/livez" if readable => ctx.respond(StatusCode::OK, "ok\n"),
        "/metrics" if readable => metrics(&ctx),
        "/prestop" | "/readyz" | "/livez" | "/metrics" => {
            ctx.respond(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => ctx.respond(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// Flips readiness to false at once, then holds for the drain delay so that the endpoint can
/// leave every proxy before the kubelet sends SIGTERM. A SIGTERM during the hold ends it early:
/// nothing is gained by holding once the process is terminating.
async fn prestop(ctx: &AppContext) -> HttpResponse {
    if ctx.lifecycle.advance(Phase::Draining) {
        info!(
            drain_delay_ms = ctx.drain_delay.as_millis() as u64,
            "preStop: readiness off, draining"
        );
    }
    tokio::select! {
        () = tokio::time::sleep(ctx.drain_delay) => {}
        () = ctx.lifecycle.reached(Phase::Terminating) => {}
    }
    ctx.respond(StatusCode::OK, "draining\n")
}

fn readyz(ctx: &AppContext) -> HttpResponse {
    if ctx.lifecycle.phase().is_ready() {
        ctx.respond(StatusCode::OK, "ready\n")
    } else {
        ctx.respond(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

fn metrics(ctx: &AppContext) -> HttpResponse {
    let phase = ctx.lifecycle.phase();
    ctx.metrics
        .set_phase_flags(phase.is_ready(), phase.is_draining());
    match ctx.metrics.render() {
        Ok(text) => {
            let mut response = ctx.respond(StatusCode::OK, text);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(error) => {
            warn!(%error, "rendering metrics failed");
            ctx.respond(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n")
        }
    }
}
