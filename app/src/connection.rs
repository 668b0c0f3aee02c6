//! One connection's life, and how the drain ends it.
//!
//! A connection speaks HTTP/1.1 or h2c (see protocol.rs). hyper's `graceful_shutdown` ends
//! either kind cleanly: on HTTP/1 it closes an idle keep-alive connection at once and lets a
//! request in flight finish with `Connection: close`; on HTTP/2 it sends GOAWAY, lets the open
//! streams finish, and the client opens its next streams elsewhere. When it is called differs:
//! - HTTP/1 once the phase is Closing (the preStop hold is over) or Terminating. Before that,
//!   while Draining, responses carry `Connection: close`, which has no race; closing an idle
//!   HTTP/1 connection races with a request the client may be sending.
//! - HTTP/2 already once Draining: GOAWAY names the last stream the server will process, so a
//!   client knows which streams to send again, and there is no race to avoid.
//!
//! Two gaps remain, closed here:
//! - A connection accepted just before the drain whose request has not been read yet looks like
//!   "no data seen" to hyper, which would close it, dropping a request the client already sent.
//!   Such a connection gets a short grace for its first request instead.
//! - When the drain begins, the connection is polled once more before shutting down, so a
//!   request already sitting in the socket buffer is read and served, not reset.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::debug;

use crate::admin::admin_handler;
use crate::context::{AppContext, Workload};
use crate::handlers::main_handler;
use crate::metrics::ListenerKind;
use crate::protocol::{Protocol, sniff};
use crate::state::{Lifecycle, Phase};
use crate::write_stall::WriteStallGuard;

/// Settings every connection of one listener shares.
#[derive(Clone)]
pub struct ConnectionSettings {
    pub kind: ListenerKind,
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    /// How long a new connection may take to send its first bytes.
    pub header_read_timeout: Duration,
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
        service_fn(move |request: Request<Incoming>| {
            first.mark();
            let ctx = ctx.clone();
            async move {
                match (kind, &ctx.workload) {
                    (ListenerKind::Main, Workload::App(work)) => main_handler(&ctx, work, request)
                        .await
                        .map(|response| response.map(Either::Left)),
                    (ListenerKind::Main, Workload::Proxy(forwarder)) => {
                        forwarder.forward(&ctx, request).await
                    }
                    (ListenerKind::Admin, _) => admin_handler(&ctx, request)
                        .await
                        .map(|response| response.map(Either::Left)),
                }
            }
        })
    };
    let settings = settings.clone();
    let lifecycle = ctx.lifecycle.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let _guard = guard;
        let grace = settings.first_request_grace;
        let Some(protocol) = first_bytes(&stream, &settings, &lifecycle).await else {
            return;
        };
        let io = TokioIo::new(WriteStallGuard::new(stream, settings.write_timeout));
        let result = match protocol {
            Protocol::Http1 => {
                let connection = settings.http1.serve_connection(io, service);
                let drain = lifecycle.reached(Phase::Closing);
                let shutdown = http1::Connection::graceful_shutdown;
                // hyper's header read timeout already bounds a silent HTTP/1 client.
                drive(connection, drain, first, grace, None, shutdown).await
            }
            Protocol::Http2 => {
                let connection = settings.http2.serve_connection(io, service);
                let drain = lifecycle.reached(Phase::Draining);
                let shutdown = http2::Connection::graceful_shutdown;
                let silent = Some(settings.header_read_timeout);
                drive(connection, drain, first, grace, silent, shutdown).await
            }
        };
        if let Err(error) = result {
            debug!(listener = kind.as_str(), ?protocol, %error, "connection ended with an error");
        }
    });
}

/// Waits for the bytes that tell the protocol, within the header read timeout; once the
/// process terminates, within the first-request grace. `None`: close the connection.
async fn first_bytes(
    stream: &TcpStream,
    settings: &ConnectionSettings,
    lifecycle: &Lifecycle,
) -> Option<Protocol> {
    let terminating_grace = async {
        lifecycle.reached(Phase::Terminating).await;
        tokio::time::sleep(settings.first_request_grace).await;
    };
    tokio::select! {
        biased;
        sniffed = tokio::time::timeout(settings.header_read_timeout, sniff(stream)) => {
            match sniffed {
                Ok(Ok(protocol)) => protocol,
                Ok(Err(error)) => {
                    debug!(%error, "connection failed before its first byte");
                    None
                }
                Err(_elapsed) => None,
            }
        }
        () = terminating_grace => None,
    }
}

/// Runs the connection until it ends; once `drain_begins`, shuts it down gracefully. With
/// `silent_limit`, a connection that sent no request within it is shut down too (HTTP/2: a
/// client that opened a connection and sends nothing must not hold a slot forever).
async fn drive<C>(
    connection: C,
    drain_begins: impl Future<Output = ()>,
    first: Arc<FirstRequest>,
    grace: Duration,
    silent_limit: Option<Duration>,
    graceful_shutdown: fn(Pin<&mut C>),
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut connection = pin!(connection);
    // `biased`: the connection is polled before the drain is noticed, so bytes already
    // received are parsed first.
    tokio::select! {
        biased;
        result = connection.as_mut() => return result,
        () = drain_begins => {}
        () = silent_for(&first, silent_limit) => {
            // GOAWAY for a polite client; HTTP/2's graceful close waits for the client to
            // acknowledge a PING, which a client that sends nothing never does, so the
            // connection is dropped after the grace. It never had a request to lose.
            graceful_shutdown(connection.as_mut());
            return match tokio::time::timeout(grace, connection).await {
                Ok(result) => result,
                Err(_silent) => Ok(()),
            };
        }
    }
    if !first.seen() {
        tokio::select! {
            biased;
            result = connection.as_mut() => return result,
            () = first.arrived.notified() => {}
            () = tokio::time::sleep(grace) => {}
        }
    }
    graceful_shutdown(connection.as_mut());
    connection.await
}

/// Resolves when `limit` passed without a first request; never otherwise.
async fn silent_for(first: &FirstRequest, limit: Option<Duration>) {
    match limit {
        Some(limit) => {
            tokio::time::sleep(limit).await;
            if first.seen() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
