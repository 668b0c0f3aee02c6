//! The admin listener: preStop hook, readiness, liveness and metrics.

use std::convert::Infallible;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::METRICS_PATH;
#[cfg(doc)]
use crate::context::Workload;
use crate::context::{AppContext, HttpResponse};
use crate::state::Phase;

/// How often preStop looks at the requests in flight while it waits for the last one.
const SETTLE_POLL: Duration = Duration::from_millis(5);

/// The admin endpoints, as named by the configured paths.
enum Route {
    Prestop,
    Readiness,
    Liveness,
    Metrics,
}

/// Handles one request on the admin listener: 405 for a wrong method on a known path, 404 for
/// any other path.
pub async fn admin_handler<B>(
    ctx: &AppContext,
    request: Request<B>,
) -> Result<HttpResponse, Infallible> {
    let method = request.method();
    let readable = method == Method::GET || method == Method::HEAD;
    let path = request.uri().path();
    let admin = &ctx.admin;
    let route = if path == admin.prestop_path {
        Some(Route::Prestop)
    } else if path == admin.readiness_path {
        Some(Route::Readiness)
    } else if path == admin.liveness_path {
        Some(Route::Liveness)
    } else if path == METRICS_PATH {
        Some(Route::Metrics)
    } else {
        None
    };
    let response = match route {
        Some(Route::Prestop) if readable || method == Method::POST => {
            prestop(ctx, request.headers()).await
        }
        Some(Route::Readiness) if readable => readyz(ctx).await,
        Some(Route::Liveness) if readable => ctx.respond(StatusCode::OK, "ok\n"),
        Some(Route::Metrics) if readable => metrics(ctx),
        Some(_) => ctx.respond(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        None => ctx.respond(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// Flips readiness to false at once, then holds for the drain delay so that the endpoint can
/// leave every proxy before the kubelet sends SIGTERM. A SIGTERM during the hold ends it early:
/// nothing is gained by holding once the process is terminating.
///
/// The drain proxy does more after the hold (see [`Workload::settles_in_prestop`]): every
/// connection closes once answered, and the call returns when no request is in flight any more
/// (at most the longest request later), so the SIGTERM that the app behind it gets next finds
/// it idle.
///
/// With a token configured, a call without it is refused before anything changes: the pod
/// stays ready, and the refusal is counted (a rising count means someone is probing). It logs
/// at debug only: whoever reaches the admin port could otherwise flood the log.
async fn prestop(ctx: &AppContext, headers: &HeaderMap) -> HttpResponse {
    if let Some(token) = &ctx.admin.prestop_token
        && !token.admits(headers)
    {
        ctx.metrics.prestop_refused();
        debug!("preStop refused: missing or wrong X-Graceful-Prestop-Token");
        return ctx.respond(StatusCode::FORBIDDEN, "forbidden\n");
    }
    if ctx.admin.revert.begin() {
        info!(
            drain_delay_ms = ctx.drain_delay.as_millis() as u64,
            "preStop: readiness off, draining"
        );
    }
    tokio::select! {
        () = tokio::time::sleep(ctx.drain_delay) => {}
        () = ctx.lifecycle.reached(Phase::Terminating) => {}
    }
    if ctx.workload.settles_in_prestop() {
        ctx.lifecycle.advance(Phase::Closing);
        let waited = Instant::now();
        let left = requests_settled(ctx).await;
        info!(
            waited_ms = waited.elapsed().as_millis() as u64,
            in_flight = left,
            "preStop: hold over, connections closed, requests in flight settled"
        );
    }
    ctx.respond(StatusCode::OK, "draining\n")
}

/// Waits until no request is in flight on the main listener, at most the longest request; a
/// SIGTERM ends the wait (the drain after SIGTERM takes over). Returns what is still in flight.
async fn requests_settled(ctx: &AppContext) -> i64 {
    let deadline = Instant::now() + ctx.workload.max_request();
    loop {
        let in_flight = ctx.metrics.in_flight();
        if in_flight <= 0 || Instant::now() >= deadline {
            return in_flight;
        }
        tokio::select! {
            () = tokio::time::sleep(SETTLE_POLL) => {}
            () = ctx.lifecycle.reached(Phase::Terminating) => return ctx.metrics.in_flight(),
        }
    }
}

/// Ready while serving and, for the drain proxy, while the app behind it accepts connections.
async fn readyz(ctx: &AppContext) -> HttpResponse {
    if ctx.lifecycle.phase().is_ready() && ctx.workload.can_serve().await {
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
