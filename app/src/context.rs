//! What every request handler needs, built once at startup and shared by both listeners.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::prestop::{DrainRevert, PrestopToken};
use crate::state::Lifecycle;

/// The response type of both listeners: small, fully buffered bodies.
pub type HttpResponse = Response<Full<Bytes>>;

/// Handler context. Each connection gets its own copy behind its own `Arc`, so the reference
/// count that every request bumps is not shared (and bounced) between cores.
#[derive(Clone)]
pub struct AppContext {
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
    pub default_work: Duration,
    pub max_work: Duration,
    pub drain_delay: Duration,
    /// What only the admin listener needs, behind one `Arc` so that cloning the context per
    /// connection copies no strings.
    pub admin: Arc<AdminSettings>,
    /// Body of `GET /`, computed once.
    pub hello_body: Bytes,
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
    pub fn new(config: &Config, lifecycle: Lifecycle, metrics: Metrics) -> Self {
        // HOSTNAME is the pod name in Kubernetes: it tells a client which replica answered.
        let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "graceful-app".to_owned());
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
            default_work: config.default_work(),
            max_work: config.max_work(),
            drain_delay: config.drain_delay(),
            admin,
            hello_body: Bytes::from(format!("hello from {instance}\n")),
        }
    }

    /// Builds a plain-text response; once draining started it carries `Connection: close`, so
    /// keep-alive clients reconnect (through the proxy, to a replica that is still ready).
    pub fn respond(&self, status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
        let mut response = Response::new(Full::new(body.into()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.lifecycle.phase().is_draining() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
