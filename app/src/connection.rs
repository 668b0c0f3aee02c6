//! One connection's life, and how the drain ends it.
//!
//! hyper's `graceful_shutdown` closes idle keep-alive connections at once and lets a request in
//! flight finish with `Connection: close`. Two gaps remain, closed here:
//! - A connection accepted just before SIGTERM (or taken from the backlog during the drain)
//!   whose request has not been read yet looks like "no data seen" to hyper, which would close
//!   it, dropping a request the client already sent. Such a connection gets a short grace for
//!   its first request instead.
//! - When the drain begins, the connection is polled once more before shutting down, so a
//!   request already sitting in the socket buffer is read and served, not reset.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::debug;

use crate::admin::admin_handler;
use crate::context::AppContext;
use crate::handlers::main_handler;
use crate::metrics::ListenerKind;
use crate::state::Phase;
use crate::write_stall::WriteStallGuard;

/// Settings every connection of one listener shares.
#[derive(Clone)]
pub struct ConnectionSettings {
    pub kind: ListenerKind,
    pub http: http1::Builder,
    /// How long a connection that has not sent its first request yet may still send it once
    /// the drain began.
    pub first_request_grace: Duration,
    /// How long a write may stay blocked by a peer that does not read (see write_stall.rs).
    pub write_timeout: Duration,
}

/// Tells the drain whether the connection has delivered a request yet.
#[derive(Default)]
struct FirstRequest {
    seen: AtomicBool,
    arrived: Notify,
}

impl FirstRequest {
    fn mark(&self) {
        if !self.seen.swap(true, Ordering::AcqRel) {
            self.arrived.notify_one();
        }
    }

    fn seen(&self) -> bool {
        self.seen.load(Ordering::Acquire)
    }
}

/// Serves one connection on its own task. The permit (a slot of the listener's connection
/// limit) is held until the connection is closed; the drain waits for all permits.
pub fn spawn(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    settings: &ConnectionSettings,
    ctx: &Arc<AppContext>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "could not set TCP_NODELAY");
    }
    let kind = settings.kind;
    let guard = ctx.metrics.connection_opened(kind);
    let first = Arc::new(FirstRequest::default());
    let service = {
        let ctx = Arc::new(AppContext::clone(ctx));
        let first = first.clone();
        service_fn(move |request| {
            first.mark();
            let ctx = ctx.clone();
            async move {
                match kind {
                    ListenerKind::Main => main_handler(ctx, request).await,
                    ListenerKind::Admin => admin_handler(ctx, request).await,
                }
            }
        })
    };
    let connection = settings.http.serve_connection(
        TokioIo::new(WriteStallGuard::new(stream, settings.write_timeout)),
        service,
    );
    let drain_begins = {
        let lifecycle = ctx.lifecycle.clone();
        async move { lifecycle.reached(Phase::Terminating).await }
    };
    let grace = settings.first_request_grace;
    tokio::spawn(async move {
        let _permit = permit;
        let _guard = guard;
        if let Err(error) = drive(connection, drain_begins, first, grace).await {
            debug!(listener = kind.as_str(), %error, "connection ended with an error");
        }
    });
}

/// Runs the connection until it ends; once the drain begins, shuts it down gracefully.
async fn drive<S, B>(
    connection: http1::Connection<TokioIo<WriteStallGuard<TcpStream>>, S>,
    drain_begins: impl Future<Output = ()>,
    first: Arc<FirstRequest>,
    grace: Duration,
) -> hyper::Result<()>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connection = pin!(connection);
    // `biased`: the connection is polled before the drain is noticed, so bytes already
    // received are parsed first.
    tokio::select! {
        biased;
        result = connection.as_mut() => return result,
        () = drain_begins => {}
    }
    if !first.seen() {
        tokio::select! {
            biased;
            result = connection.as_mut() => return result,
            () = first.arrived.notified() => {}
            () = tokio::time::sleep(grace) => {}
        }
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}
