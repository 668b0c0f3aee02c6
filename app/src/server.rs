//! Binding, accept loops and the graceful drain of every connection.
//!
//! Each listener runs its own accept loop with its own connection limit. On SIGTERM the loops
//! stop accepting, take what is already in the kernel's accept backlog (those clients connected
//! before the signal and deserve an answer), close the listener, and wait for every connection
//! to close (see connection.rs for how each one is shut down).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::bind::bind_listeners;
use crate::config::{ServerConfig, ShutdownMode};
use crate::connection::{self, ConnectionSettings};
use crate::context::{AppContext, Workload};
use crate::error::AppError;
use crate::metrics::{ListenerKind, Metrics};
use crate::shutdown::Signals;
use crate::state::{Lifecycle, Phase};

/// Pause after a failed accept (for example EMFILE), so a persistent error cannot spin the CPU.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);
/// HTTP/2 keep-alive pings: a peer that vanished without a FIN is found within interval plus
/// timeout and its connection closed, instead of holding a slot until the drain.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `workload` until a termination signal, then drains. Returns Ok after a complete
/// drain. `program` names the binary in the one "listening" line on stdout.
pub async fn run(
    program: &'static str,
    config: &ServerConfig,
    workload: Workload,
) -> Result<(), AppError> {
    let lifecycle = Lifecycle::new();
    let metrics = Metrics::new();
    let ctx = Arc::new(AppContext::new(
        config,
        workload,
        lifecycle.clone(),
        metrics.clone(),
    ));
    // Installed before binding: a SIGTERM that arrives while starting still drains cleanly.
    let mut signals = Signals::install()?;

    let (main_listener, admin_listener) =
        bind_listeners(config.bind, config.port, config.admin_port)?;
    let main_addr = local_addr(ListenerKind::Main, &main_listener)?;
    let admin_addr = local_addr(ListenerKind::Admin, &admin_listener)?;
    // Ready before the announcement: whoever reads the "listening" line may probe /readyz at
    // once, and both listeners are bound (connections wait in the backlog until the accept
    // loops run).
    lifecycle.advance(Phase::Serving);
    announce(program, main_addr, admin_addr);
    announce_prestop_guard(config);
    // Reverts a preStop drain that no SIGTERM follows; ends by itself on termination.
    tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.admin.revert.run().await }
    });

    let settings = |kind| {
        let header_read_timeout = match kind {
            ListenerKind::Main => config.header_read_timeout(),
            ListenerKind::Admin => config.admin_header_read_timeout(),
        };
        ConnectionSettings {
            kind,
            http1: http1_builder(config, header_read_timeout),
            http2: http2_builder(config),
            header_read_timeout,
            first_request_grace: config.first_request_grace(),
            write_timeout: config.write_timeout(),
        }
    };
    let main_loop = tokio::spawn(accept_loop(
        main_listener,
        config.max_connections,
        settings(ListenerKind::Main),
        ctx.clone(),
    ));
    let admin_loop = tokio::spawn(accept_loop(
        admin_listener,
        config.admin_max_connections,
        settings(ListenerKind::Admin),
        ctx.clone(),
    ));
    info!(%main_addr, %admin_addr, "ready");

    let signal = signals.next().await;
    let was_draining = lifecycle.phase().is_draining();
    lifecycle.advance(Phase::Terminating);
    if config.shutdown_mode == ShutdownMode::Immediate {
        warn!(
            signal,
            "shutdown mode is immediate: exiting without draining"
        );
        return Ok(());
    }
    info!(
        signal,
        prestop_seen = was_draining,
        timeout_ms = config.shutdown_timeout_ms,
        "draining: readiness off, no new connections, finishing in-flight requests"
    );
    tokio::spawn(async move {
        loop {
            let again = signals.next().await;
            info!(signal = again, "already draining; signal ignored");
        }
    });

    let drained = tokio::time::timeout(config.shutdown_timeout(), async {
        // A join error means an accept loop panicked; its connections are gone either way.
        let _ = main_loop.await;
        let _ = admin_loop.await;
    })
    .await;
    match drained {
        Ok(()) => {
            info!(
                requests_answered = metrics.requests_answered(),
                "drained: every connection closed"
            );
            Ok(())
        }
        Err(_) => Err(AppError::ShutdownTimeout {
            timeout_ms: config.shutdown_timeout_ms,
            open_connections: metrics.open_connections(ListenerKind::Main)
                + metrics.open_connections(ListenerKind::Admin),
        }),
    }
}

fn local_addr(kind: ListenerKind, listener: &TcpListener) -> Result<SocketAddr, AppError> {
    listener.local_addr().map_err(|source| AppError::LocalAddr {
        listener: kind.as_str(),
        source,
    })
}

/// Prints the one stdout line that scripts and tests parse to learn the bound ports (useful
/// with port 0): `<program> listening main=<addr> admin=<addr>`.
fn announce(program: &str, main_addr: SocketAddr, admin_addr: SocketAddr) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(
        stdout,
        "{program} listening main={main_addr} admin={admin_addr}"
    )
    .and_then(|()| stdout.flush());
    if let Err(error) = written {
        // A closed stdout must not stop the server; the log line below still tells the ports.
        debug!(%error, "could not print the listening line");
    }
    info!(%main_addr, %admin_addr, "listening");
}

/// Says once how the preStop path is guarded; never the token itself.
fn announce_prestop_guard(config: &ServerConfig) {
    if config.prestop_token.is_some() {
        info!(
            path = %config.prestop_path,
            "preStop requires the X-Graceful-Prestop-Token header"
        );
    } else {
        info!(
            path = %config.prestop_path,
            "preStop path is unauthenticated: any client that reaches the admin port can start \
             a drain; set GRACEFUL_PRESTOP_TOKEN to require a token"
        );
    }
}

/// The HTTP/1 settings that keep slow or malformed clients from pinning the process.
fn http1_builder(config: &ServerConfig, header_read_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(usize::try_from(config.max_header_bytes).unwrap_or(usize::MAX))
        .keep_alive(true);
    builder
}

/// The HTTP/2 (h2c) settings: the same header limit, and pings that find vanished peers.
fn http2_builder(config: &ServerConfig) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Accepts connections until the process terminates, then drains them: takes what already
/// waits in the backlog, closes the listener, and waits until every connection closed.
async fn accept_loop(
    listener: TcpListener,
    max_connections: u64,
    settings: ConnectionSettings,
    ctx: Arc<AppContext>,
) {
    let kind = settings.kind;
    let slots = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let limit = Arc::new(Semaphore::new(slots as usize));
    let lifecycle = ctx.lifecycle.clone();
    loop {
        // At the limit we stop accepting: further clients wait in the kernel backlog instead
        // of being refused, and the header read timeout frees slots held by slow clients.
        let permit = tokio::select! {
            biased;
            () = lifecycle.reached(Phase::Terminating) => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let accepted = tokio::select! {
            biased;
            () = lifecycle.reached(Phase::Terminating) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => connection::spawn(stream, permit, &settings, &ctx),
            Err(error) => {
                warn!(listener = kind.as_str(), %error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    let mut from_backlog = 0_usize;
    while let Some(stream) = try_accept(&listener).await {
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                from_backlog += 1;
                connection::spawn(stream, permit, &settings, &ctx);
            }
            Err(_) => drop(stream),
        }
    }
    drop(listener);
    debug!(
        listener = kind.as_str(),
        from_backlog, "listener closed, draining connections"
    );
    // Every open connection holds one slot: all slots free means all connections closed.
    let _all = limit.acquire_many(slots).await;
}

/// Takes one connection already waiting in the backlog, without waiting for a new one.
async fn try_accept(listener: &TcpListener) -> Option<TcpStream> {
    poll_fn(|cx| match listener.poll_accept(cx) {
        Poll::Ready(Ok((stream, _))) => Poll::Ready(Some(stream)),
        Poll::Ready(Err(_)) | Poll::Pending => Poll::Ready(None),
    })
    .await
}
