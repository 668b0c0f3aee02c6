//! What every request handler needs, built once at startup and shared by both listeners.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::config::ServerConfig;
use crate::handlers::AppWork;
use crate::metrics::Metrics;
use crate::prestop::{DrainRevert, PrestopToken};
use crate::proxy::{Forwarder, UpstreamBody};
use crate::state::Lifecycle;

/// The response type of the app's own handlers: small, fully buffered bodies.
pub type HttpResponse = Response<Full<Bytes>>;

/// A response body of either listener: one of ours, or the app's streamed through the proxy.
pub type ResponseBody = Either<Full<Bytes>, UpstreamBody>;

/// What the main listener serves. The listeners, the drain and the admin endpoints are the
/// same for both binaries; only this differs.
#[derive(Clone)]
pub enum Workload {
    /// graceful-app: answers by itself after an artificial work time.
    App(Arc<AppWork>),
    /// graceful-drain-proxy: forwards to the app over the pod's loopback.
    Proxy(Arc<Forwarder>),
}

impl Workload {
    /// The longest a request may take: preStop waits at most this long for the requests in
    /// flight.
    pub fn max_request(&self) -> Duration {
        match self {
            Workload::App(work) => work.max_work,
            Workload::Proxy(forwarder) => forwarder.max_request(),
        }
    }

    /// Whether preStop, after its hold, closes every connection and waits for the requests in
    /// flight. graceful-app does not: it finishes them after SIGTERM, as the protocol says, and
    /// its own drain is what the SIGTERM proofs test. The drain proxy must: the app behind it
    /// may exit at once on SIGTERM, so nothing may be in flight to it by then.
    pub fn settles_in_prestop(&self) -> bool {
        matches!(self, Workload::Proxy(_))
    }

    /// Whether the main listener can answer: always for the app; for the proxy, only while the
    /// app behind it accepts connections.
    pub async fn can_serve(&self) -> bool {
        match self {
            Workload::App(_) => true,
            Workload::Proxy(forwarder) => forwarder.upstream_accepts().await,
        }
    }
}

/// Handler context. Each connection gets its own copy behind its own `Arc`, so the reference
/// count that every request bumps is not shared (and bounced) between cores.
#[derive(Clone)]
pub struct AppContext {
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
    pub drain_delay: Duration,
    pub workload: Workload,
    /// What only the admin listener needs, behind one `Arc` so that cloning the context per
    /// connection copies no strings.
    pub admin: Arc<AdminSettings>,
}

/// The admin listener's routes and the preStop guards.
pub struct AdminSettings {
    pub prestop_path: String,
    pub readiness_path: String,
    pub liveness_path: String,
    /// `None`: the preStop path is open to any client of the admin port.
    pub prestop_token: Option<PrestopToken>,
    pub revert: DrainRevert,
}

impl AppContext {
    pub fn new(
        config: &ServerConfig,
        workload: Workload,
        lifecycle: Lifecycle,
        metrics: Metrics,
    ) -> Self {
        let admin = Arc::new(AdminSettings {
            prestop_path: config.prestop_path.clone(),
            readiness_path: config.readiness_path.clone(),
            liveness_path: config.liveness_path.clone(),
            prestop_token: config.prestop_token.clone(),
            revert: DrainRevert::new(lifecycle.clone(), metrics.clone(), config.prestop_revert()),
        });
        Self {
            lifecycle,
            metrics,
            drain_delay: config.drain_delay(),
            workload,
            admin,
        }
    }

    /// Builds a plain-text response; once draining started it carries `Connection: close`, so
    /// keep-alive clients reconnect (through the proxy, to a replica that is still ready).
    pub fn respond(&self, status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
        let mut response = Response::new(Full::new(body.into()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.mark_close_when_draining(&mut response);
        response
    }

    /// Adds `Connection: close` once draining started. On HTTP/2 hyper drops the header (it is
    /// not allowed there); HTTP/2 connections get GOAWAY instead (see connection.rs).
    pub fn mark_close_when_draining<B>(&self, response: &mut Response<B>) {
        if self.lifecycle.phase().is_draining() {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
}
